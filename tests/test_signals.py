"""Processes and records (issue #14, items 6, 8, 9, 10, 12): SIGTERM and SIGKILL to `localsage train`
(process and docker backends) and to `localsage serve` leave no process or container behind and a
final record; a dead runner's job never stays InProgress; atomic files; safe checkpoint loads; job names."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from conftest import TINY_HP
from localsage.core import files, procs
from localsage.host import jobplan, records, runner
from localsage.host.backends import docker as docker_backend

pytestmark = pytest.mark.integration  # every test here runs jobs, servers or containers

ROOT = Path(__file__).resolve().parent.parent
LONG_HP = {**TINY_HP, "epochs": "200", "max-steps": "0", "workers": "0", "threads": "1"}


def wait_for(predicate, timeout, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def cli(*args, **kwargs):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    return subprocess.Popen([sys.executable, "-m", "localsage", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def start_train(data, jobs_dir, name, *extra, hp=LONG_HP):
    hps = [a for k, v in hp.items() for a in ("--hp", f"{k}={v}")]
    proc = cli("train", "--data", str(data), "--jobs-dir", str(jobs_dir), "--name", name, *hps, *extra)
    metrics_file = jobs_dir / name / "output" / "data" / "metrics.jsonl"
    # the job is in its epoch loop (its own SIGTERM handler installed) once an epoch is recorded
    assert wait_for(lambda: metrics_file.exists() and metrics_file.read_text().strip(), 300), _out(proc)
    return proc


def _out(proc):
    if proc.poll() is None:
        proc.kill()
    return proc.communicate()[0][-3000:]


def gone(identity) -> bool:
    return procs.alive(identity) is False


def record_of(jobs_dir, name):
    return json.loads((jobs_dir / name / records.RECORD).read_text())


# ------------------------------------------------------------------ process backend


def test_sigterm_to_train_stops_the_job_and_records_stopped(small_data, tmp_path):
    jobs = tmp_path / "jobs"
    proc = start_train(small_data, jobs, "term-proc")
    child = json.loads((jobs / "term-proc" / "backend.json").read_text())["Process"]
    assert procs.alive(child)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1, out[-2000:]
    assert wait_for(lambda: gone(child), 10), "the training process outlived the CLI"
    record = record_of(jobs, "term-proc")
    assert record["TrainingJobStatus"] == "Stopped", record
    assert "SIGTERM" in record["StopReason"]
    assert record["ExitCode"] == 143  # the job checkpointed and exited as SageMaker's stop asks
    assert (jobs / "term-proc" / "checkpoints" / "last.pth").exists()


def test_sigkill_to_train_the_child_dies_and_jobs_list_finalises(small_data, tmp_path):
    jobs = tmp_path / "jobs"
    proc = start_train(small_data, jobs, "kill-proc")
    child = json.loads((jobs / "kill-proc" / "backend.json").read_text())["Process"]
    proc.kill()
    proc.communicate(timeout=30)
    assert wait_for(lambda: gone(child), 60), "the training process outlived a SIGKILLed CLI (no parent-death signal)"
    assert record_of(jobs, "kill-proc")["TrainingJobStatus"] == "InProgress"  # nobody could write it
    listed = subprocess.run([sys.executable, "-m", "localsage", "jobs", "list", "--jobs-dir", str(jobs)],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "kill-proc" in listed.stdout and "InProgress" not in listed.stdout and "Stopped" in listed.stdout
    record = record_of(jobs, "kill-proc")
    assert record["TrainingJobStatus"] == "Stopped" and "ended without recording" in record["StopReason"]
    assert record["EpochsCompleted"] >= 1 and record["TrainingEndTime"]


def test_a_dead_runner_is_reconciled_and_what_it_left_is_stopped(tmp_path):
    """No training: a record whose owner is dead and whose child still runs (as after a SIGKILL
    with no parent-death signal) is Stopped by `jobs describe`, and the child is killed."""
    jobs = tmp_path / "jobs"
    job = jobs / "orphan"
    (job / "output" / "data").mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    owner = procs.identity(dead.pid)
    dead.wait()
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        records.write_record(job, {"TrainingJobName": "orphan", "TrainingJobStatus": "InProgress", "Backend": "process",
                                  "TrainingStartTime": records._now(), "Owner": owner})
        (job / "backend.json").write_text(json.dumps({"Process": procs.identity(sleeper.pid)}))
        (jobs / "alive-one").mkdir()
        records.write_record(jobs / "alive-one", {"TrainingJobName": "alive-one", "TrainingJobStatus": "InProgress",
                                                 "Owner": procs.identity()})
        described = records.describe("orphan", jobs)
        assert described["TrainingJobStatus"] == "Stopped"
        assert sleeper.wait(10) == -signal.SIGKILL
        statuses = {r["TrainingJobName"]: r["TrainingJobStatus"] for r in records.list_jobs(jobs)}
        assert statuses == {"orphan": "Stopped", "alive-one": "InProgress"}  # a live owner's job is left alone
    finally:
        if sleeper.poll() is None:
            sleeper.kill()


# ------------------------------------------------------------------ docker backend


def containers_of(engine, name):
    return engine.containers.list(all=True, filters={"label": f"{docker_backend.LABEL}={name}"})


def test_sigterm_to_docker_train_stops_and_removes_the_container(engine, image, small_data, tmp_path):
    jobs = tmp_path / "jobs"
    proc = start_train(small_data, jobs, "term-docker", "--backend", "docker", "--image", image)
    assert containers_of(engine, "term-docker")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out[-2000:]
    assert not containers_of(engine, "term-docker")
    record = record_of(jobs, "term-docker")
    assert record["TrainingJobStatus"] == "Stopped" and "SIGTERM" in record["StopReason"]
    assert record["ExitCode"] == 143


def kill_then_jobs_list_reaps(engine, proc, container, jobs, name):
    """SIGKILL the CLI that owns `container`: the job's containers outlive it until `jobs list` removes them."""
    assert json.loads(container.labels[docker_backend.OWNER_LABEL])["pid"] == proc.pid
    proc.kill()
    proc.communicate(timeout=30)
    time.sleep(2)
    assert containers_of(engine, name), "expected the containers to outlive a SIGKILLed CLI until reaped"
    listed = subprocess.run([sys.executable, "-m", "localsage", "jobs", "list", "--jobs-dir", str(jobs)],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert not containers_of(engine, name)


def test_sigkill_to_docker_train_next_command_removes_the_orphan(engine, image, small_data, tmp_path):
    jobs = tmp_path / "jobs"
    proc = start_train(small_data, jobs, "kill-docker", "--backend", "docker", "--image", image)
    [container] = containers_of(engine, "kill-docker")
    kill_then_jobs_list_reaps(engine, proc, container, jobs, "kill-docker")
    assert record_of(jobs, "kill-docker")["TrainingJobStatus"] == "Stopped"


def test_sigkill_to_sagemaker_local_train_next_command_removes_its_containers(engine, image, small_data, tmp_path):
    """SDK local mode starts the containers through docker-compose: after a SIGKILL of the CLI they ran on
    (and compose with them) until `jobs list` reconciled the record: now it removes them too."""
    jobs = tmp_path / "jobs"
    hps = [a for k, v in LONG_HP.items() for a in ("--hp", f"{k}={v}")]
    proc = cli("train", "--data", str(small_data), "--jobs-dir", str(jobs), "--name", "kill-sml",
               "--backend", "sagemaker-local", "--image", image, *hps)
    assert wait_for(lambda: [c for c in containers_of(engine, "kill-sml") if c.status == "running"], 300), _out(proc)
    [container] = containers_of(engine, "kill-sml")
    children = psutil.Process(proc.pid).children(recursive=True)  # docker-compose
    kill_then_jobs_list_reaps(engine, proc, container, jobs, "kill-sml")
    record = record_of(jobs, "kill-sml")
    assert record["TrainingJobStatus"] == "Stopped" and "killed?" in record["StopReason"]
    _, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, [p.cmdline() for p in alive]


def test_docker_container_names_are_unique_per_run():
    assert docker_backend.container_name("a") != docker_backend.container_name("a")
    assert docker_backend.container_name("job-1").startswith("localsage-job-1-")


# ------------------------------------------------------------------ serve


def _free_base_port():
    for _ in range(50):
        base = random.randint(20000, 40000)
        try:
            for port in range(base, base + 5):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no five free ports")


@pytest.fixture(scope="module")
def tiny_job(small_data, tmp_path_factory):
    jobs = tmp_path_factory.mktemp("serve-jobs")
    record = runner.train(small_data, TINY_HP, name="tiny-serve", jobs_dir=jobs, echo=False)
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    return jobs


def port_free(port):
    """Nothing listens on the port any more (SO_REUSEADDR, as every server binds: a connection of the
    server's in TIME_WAIT does not count, a listening socket does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1)


def serving(jobs_dir):
    """`localsage serve` of the tiny job, once it answers /ping: (CLI process, port, its process tree)."""
    import requests

    port = _free_base_port()
    proc = cli("serve", "tiny-serve", "--jobs-dir", str(jobs_dir), "--port", str(port))

    def healthy():
        try:
            return requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200
        except requests.RequestException:
            return proc.poll() is not None  # exited: fail below with its output
    assert wait_for(healthy, 300) and proc.poll() is None, _out(proc)
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert any("java" in " ".join(p.cmdline()) for p in tree), [p.cmdline() for p in tree]
    return proc, port, tree


def test_sigterm_to_serve_stops_torchserve(tiny_job):
    proc, port, tree = serving(tiny_job)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=90)
    assert proc.returncode in (0, 130)
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    port_free(port)


def test_sigkill_to_serve_takes_the_jvm_and_workers_down(tiny_job):
    """No code of the CLI runs after SIGKILL: the server's guard (localsage.core.groupguard, parent-death
    signal) takes TorchServe's launcher, JVM and workers down and removes the private temp folder."""
    proc, port, tree = serving(tiny_job)
    assert any("model_service_worker" in " ".join(p.cmdline()) for p in tree), [p.cmdline() for p in tree]
    guard = next(p for p in tree if "localsage.core.groupguard" in " ".join(p.cmdline()))
    workdir = guard.cmdline()[guard.cmdline().index("--cleanup") + 1]
    assert os.path.isdir(workdir)
    proc.kill()
    proc.communicate(timeout=30)
    _, alive = psutil.wait_procs(tree, timeout=40)
    assert not alive, [p.cmdline() for p in alive]
    assert not os.path.exists(workdir)
    port_free(port)


def test_groupguard_stops_the_whole_group_when_its_owner_is_killed(tmp_path):
    """The guard alone, without TorchServe: its owner is SIGKILLed; the command's grandchild goes too."""
    folder = tmp_path / "private"
    folder.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", f"""
import signal, subprocess, sys, time
from localsage.core import procs
subprocess.Popen([sys.executable, "-m", "localsage.core.groupguard", "--cleanup", {str(folder)!r}, "--grace", "2", "--",
                  "sh", "-c", "sleep 300 & exec sleep 301"], start_new_session=True,
                 preexec_fn=procs.die_with_parent(signal.SIGTERM))
time.sleep(300)
"""])
    me = psutil.Process(owner.pid)
    sleepers = wait_for(lambda: [p for p in me.children(recursive=True) if p.name() == "sleep"][1:], 30)
    assert sleepers, "the guarded command did not start"
    tree = me.children(recursive=True)
    owner.kill()
    owner.wait()
    _, alive = psutil.wait_procs(tree, timeout=20)
    assert not alive, [p.cmdline() for p in alive]
    assert not folder.exists()


def test_a_killed_image_build_takes_its_wheel_server_down(tmp_path):
    """.ci/build-image.sh serves wheelhouse/ on loopback while `docker build` runs (here a stand-in that
    fetches one wheel through the URL it is given, then hangs). SIGKILL to the script runs no EXIT trap:
    the server must notice its parent is gone and stop, leaving no process and no open port."""
    repo, stub = tmp_path / "repo", tmp_path / "bin"
    (repo / ".ci").mkdir(parents=True)
    for name in ("build-image.sh", "wheel-server.py"):
        (repo / ".ci" / name).write_bytes((ROOT / ".ci" / name).read_bytes())
    (repo / "wheelhouse").mkdir()
    (repo / "wheelhouse" / "w-1.0-py3-none-any.whl").write_text("wheel bytes")
    stub.mkdir()
    (stub / "docker").write_text(f"""#!/bin/sh
for a; do case $a in WHEELS_URL=*) url=${{a#WHEELS_URL=}};; esac; done
{sys.executable} -c 'import sys, urllib.request; \
print(urllib.request.urlopen(sys.argv[1] + "w-1.0-py3-none-any.whl").read().decode())' "$url" > fetched.tmp
mv fetched.tmp fetched
exec sleep 300
""")
    (stub / "docker").chmod(0o755)
    script = subprocess.Popen(["bash", ".ci/build-image.sh", "localsage:test"], cwd=repo,
                              env={**os.environ, "PATH": f"{stub}:{os.environ['PATH']}",
                                   "DOCKER_PYTHON": sys.executable},
                              stderr=subprocess.PIPE, text=True)
    tree = []
    try:
        assert wait_for(lambda: (repo / "fetched").exists(), 30), "the build never reached the wheel server"
        assert (repo / "fetched").read_text().strip() == "wheel bytes"
        tree = psutil.Process(script.pid).children(recursive=True)
        server = [p for p in tree if "wheel-server.py" in " ".join(p.cmdline())]
        assert len(server) == 1, [p.cmdline() for p in tree]
        port = next(c.laddr.port for c in server[0].net_connections() if c.status == psutil.CONN_LISTEN)
        script.kill()
        script.wait()
        _, alive = psutil.wait_procs(server, timeout=15)
        assert not alive, "the wheel server outlived its killed build script"
        port_free(port)
    finally:
        for p in tree:
            if p.is_running():
                p.kill()


# ------------------------------------------------------------------ resume after a mid-epoch stop (onecycle)


def test_onecycle_resumes_after_a_mid_epoch_sigterm(tmp_path, demo_data):
    from test_training import make_ml_root

    hp = {**TINY_HP, "epochs": "1", "max-steps": "0", "batch-size": "2", "scheduler": "onecycle",
          "workers": "0", "threads": "1"}
    root = make_ml_root(tmp_path / "ml", demo_data, hp)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    cmd = [sys.executable, "-m", "localsage.container.train", "--ml-root", str(root)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # a quarter of the first epoch done: stop in the middle of it
        lines.append(line)
        if "train: step" in line:
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stdout.readlines()
    assert proc.wait(60) == 143, "".join(lines)[-2000:]
    assert "stopped mid-epoch 1" in "".join(lines)
    (root / "checkpoints" / ".last.pth.abc123.partial").write_bytes(b"torn")  # a killed writer's leftover
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert "continuing at epoch 1" in rerun.stdout
    assert not list((root / "checkpoints").glob(".*"))


# ------------------------------------------------------------------ checkpoints load without pickle code


class Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_in_the_checkpoint_does_not_run(tmp_path, small_data):
    from test_training import make_ml_root, run_entry

    root = make_ml_root(tmp_path / "ml", small_data, TINY_HP)
    marker = tmp_path / "pwned"
    (root / "checkpoints").mkdir()
    torch.save({"epoch": Planted(marker)}, root / "checkpoints" / "last.pth")
    proc = run_entry(root)
    assert not marker.exists(), "torch.load ran code from the checkpoint"
    assert proc.returncode == 1
    assert "Unpickl" in (root / "output" / "failure").read_text()


def test_own_checkpoint_is_weights_only(tmp_path):
    from localsage.container import checkpoint, train
    from localsage.container.recipe import Parts

    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    random.random()
    state = checkpoint.state(3, Parts(net, net, None, None, opt, sched, torch.amp.GradScaler("cuda", enabled=False)),
                             train.Progress(bad_files={"train": {1, 2}}))
    checkpoint.save(tmp_path / "last.pth", state)
    import numpy as np

    expected = (random.random(), np.random.rand(), torch.rand(3))
    loaded = checkpoint.load(tmp_path / "last.pth")  # weights_only=True
    assert loaded["epoch"] == 3 and loaded["bad_files"] == {"train": [1, 2]}
    checkpoint.set_rng_state(loaded["rng"])  # every generator continues where the checkpoint left it
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


# ------------------------------------------------------------------ atomic files


def test_torn_last_line_is_skipped_and_the_next_row_is_whole(tmp_path):
    path = tmp_path / "metrics.jsonl"
    files.append_line(path, json.dumps({"epoch": 1, "valid_acc": 0.5}))
    with open(path, "a") as f:
        f.write('{"epoch": 2, "valid_')  # a kill in the middle of a write
    assert files.read_jsonl(path) == [{"epoch": 1, "valid_acc": 0.5}]
    files.append_line(path, json.dumps({"epoch": 2, "valid_acc": 0.7}))
    assert [r["epoch"] for r in files.read_jsonl(path)] == [1, 2]
    job = tmp_path / "job"
    (job / "output" / "data").mkdir(parents=True)
    (job / "output" / "data" / "metrics.jsonl").write_text('{"epoch": 1, "valid_acc": 0.5}\n{"epoch": 2, "va')
    assert records.final_metrics(job) == {"epoch": 1, "valid_acc": 0.5}


def test_atomic_write_is_unique_per_writer_and_leaves_nothing(tmp_path):
    target = tmp_path / "job.json"
    errors = []

    def writer(i):
        try:
            for n in range(50):
                files.atomic_write_json(target, {"writer": i, "n": n, "pad": "x" * 5000})
                json.loads(target.read_text())  # never torn
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.name for p in tmp_path.iterdir()] == ["job.json"]
    (tmp_path / ".last.pth.x1y2.partial").write_bytes(b"")
    assert [p.name for p in files.clean_temp(tmp_path)] == [".last.pth.x1y2.partial"]


# ------------------------------------------------------------------ job names


@pytest.mark.parametrize("name", ["../x", "/abs/x", "a/b", "-lead", "x" * 64, "under_score", "dot.name"])
def test_bad_job_names_are_refused(small_data, tmp_path, name):
    jobs = tmp_path / "jobs"
    with pytest.raises(ValueError, match="letters, digits and hyphens"):
        runner.train(small_data, TINY_HP, name=name, jobs_dir=jobs, echo=False)
    assert not (tmp_path / "x").exists() and not Path("/abs/x").exists()


def test_job_folder_is_created_exclusively(small_data, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    results = []

    def prepare():
        try:
            results.append(runner.prepare("same-name", jobplan.channels_for(small_data), {}, jobs))
        except FileExistsError as exc:
            results.append(exc)

    threads = [threading.Thread(target=prepare) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, Path) for r in results) == 1
    assert records.check_name("x" * 63) and records.check_name("a-b--c1")
    assert records.check_name(records.job_name("my_study.v2" + "y" * 80 + "-t007"))  # generated names always pass
