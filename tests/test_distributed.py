"""Data-parallel training from resourceconfig.json, without containers: two `train` processes on this
machine play two hosts ("127.0.0.1" is the leader, "localhost" the second host) over gloo."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import TINY_HP
from localsage.container import distributed, export
from localsage.core import contract, metrics

pytestmark = pytest.mark.integration  # every test here runs jobs, servers or containers


def test_world_layout():
    hosts = ["algo-1", "algo-2", "algo-3"]
    assert distributed.world_layout(["algo-1"], "algo-1", 0) == (0, 1, 0)
    assert distributed.world_layout(["algo-1"], "algo-1", 1) == (0, 1, 0)
    assert distributed.world_layout(hosts, "algo-2", 0) == (1, 3, 0)
    assert distributed.world_layout(hosts, "algo-3", 4, local_rank=2) == (10, 12, 2)
    with pytest.raises(ValueError):
        distributed.world_layout(hosts, "algo-9", 0)
    with pytest.raises(ValueError):
        distributed.world_layout(hosts, "algo-1", 2, local_rank=2)


def test_single_host_is_a_noop(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert distributed.setup(["algo-1"], "algo-1", 0) == (0, 1, 0)
    # several GPUs but no launcher: one process, so no rendezvous waiting for ranks nobody started
    assert distributed.setup(["algo-1"], "algo-1", 4) == (0, 1, 0)
    assert not distributed.active()
    assert distributed.all_reduce_sum([1, 2.5]) == [1.0, 2.5]


def test_cpu_threads_are_the_hyperparameter_else_the_given_share_else_the_hosts_cores(monkeypatch):
    from localsage.container import recipe
    from localsage.core import procs
    from localsage.host import backends

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cores = procs.cores()
    assert recipe.cpu_threads(0) == max(1, cores // 2)  # two processes on this host share its cores
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a share given by a tuner's worker or local mode
    assert recipe.cpu_threads(0) == 3
    assert recipe.cpu_threads(5) == 5  # the hyperparameter wins
    monkeypatch.setenv("OMP_NUM_THREADS", "auto")  # not a count: ignored
    assert recipe.cpu_threads(0) == max(1, cores // 2)
    assert backends.thread_share_env(8, 2) == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    assert backends.thread_share_env(2, 3) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


CUT_SHARES = """
import os, sys
from localsage.core import contract, procs
from localsage.container import data, recipe
from localsage.container.scriptmode import env as script_env
root = sys.argv[1]
contract.make_dirs(root)
contract.write_config(root, {"lr": "0.1"}, [contract.COMBINED_CHANNEL])
print(os.cpu_count(), procs.cores(), data.default_workers(), recipe.cpu_threads(0), script_env.load(root, {}).num_cpus)
"""


def test_every_cpu_share_is_cut_from_the_cores_this_process_may_run_on(tmp_path):
    # a job pinned to one core (docker --cpuset-cpus, taskset) on a machine of more: loader workers,
    # torch threads and SM_NUM_CPUS count the one core it has, not the machine's
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", CUT_SHARES, str(tmp_path / "ml")], env=env, capture_output=True,
                         text=True, preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    machine, cores, workers, threads, sm_num_cpus = map(int, out.stdout.split())
    assert machine == os.cpu_count() and cores == 1
    assert (workers, threads, sm_num_cpus) == (1, 1, 1)


@pytest.mark.parametrize("argv", [
    ["train", "--instance-count", "0"], ["train", "--instance-count", "-1"], ["train", "--instance-count", "two"],
    ["train", "--processes-per-host", "0"], ["train", "--backend", "sagemaker", "--dry-run", "--instance-count", "0"],
    ["train", "--backend", "sagemaker", "--dry-run", "--processes-per-host", "-3"],
    ["deploy", "some-job", "--instance-count", "0"], ["demo", "--parallel", "0"], ["demo", "--trials", "0"]])
def test_a_count_below_one_is_a_usage_error(tmp_path, capsys, argv):
    from localsage.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_:
        cli_main([*argv, "--jobs-dir", str(tmp_path / "jobs")] if argv[0] != "deploy" else argv)
    assert exit_.value.code == 2
    flag = next(a for a in argv if a in ("--instance-count", "--processes-per-host", "--parallel", "--trials"))
    assert f"argument {flag}: expected a whole number, at least 1" in capsys.readouterr().err
    assert not (tmp_path / "jobs").exists()


@pytest.mark.parametrize("backend", ["process", "docker"])
def test_a_one_host_backend_refuses_more_hosts_before_any_job(tmp_path, capsys, backend):
    """--instance-count 2 on the process backend used to run one host under a record saying two."""
    from localsage.cli import main as cli_main
    from localsage.host import records, runner

    jobs = tmp_path / "jobs"
    code = cli_main(["train", "--data", str(tmp_path), "--backend", backend, "--instance-count", "2",
                     "--jobs-dir", str(jobs)])
    assert code == 2
    assert f"the {backend} backend runs one instance, not 2; use --backend sagemaker-local" in capsys.readouterr().err
    assert not jobs.exists() or not any(jobs.iterdir())
    with pytest.raises(ValueError, match="instance_count must be a whole number, at least 1, got 0"):
        runner.train(tmp_path, {}, backend="sagemaker-local", jobs_dir=jobs, instance_count=0)
    assert records.list_jobs(jobs) == []


def test_processes_per_host_is_the_toolkit_override_else_the_gpus_else_one():
    from localsage.core.hyperparameters import HyperparameterError, processes_per_host

    key = "sagemaker_mpi_num_of_processes_per_host"
    assert processes_per_host({}, 0) == 1 and processes_per_host({}, 4) == 4
    for raw in ("2", '"2"', 2, " 2 "):  # as sent (JSON-encoded) or as decoded
        assert processes_per_host({key: raw}, 8) == 2
    for bad in ("0", "two", "1.5", True, "-1"):
        with pytest.raises(HyperparameterError, match=key):
            processes_per_host({key: bad}, 0)


def test_local_mode_hosts_share_the_cores_among_all_their_processes(tmp_path):
    """N local-mode hosts with P processes each (on CPU) split the machine's cores N x P ways; a GPU,
    one host, or the job's own thread settings leave the environment as it is."""
    from localsage.host.backends import JobSpec
    from localsage.host.backends.sagemaker_local import host_thread_env

    def job(count, env=None, **reserved):
        return JobSpec(name="j", dir=tmp_path, channels={}, hyperparameters={"lr": "0.1", **reserved},
                       instance_count=count, env=env or {})

    env, line = host_thread_env(job(2), gpu=False, cores=8)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "4" and "2 hosts share" in line
    env, line = host_thread_env(job(2, sagemaker_mpi_num_of_processes_per_host='"2"'), gpu=False, cores=8)
    assert env["OMP_NUM_THREADS"] == "2" and "2 processes on each of 2 hosts" in line
    env, line = host_thread_env(job(2, {"A": "1"}, sagemaker_mpi_num_of_processes_per_host="3"), gpu=False, cores=2)
    assert env == {"A": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # never below one thread
    assert host_thread_env(job(2), gpu=True, cores=8) == ({}, None)
    assert host_thread_env(job(1), gpu=False, cores=8) == ({}, None)
    assert host_thread_env(job(2, {"OMP_NUM_THREADS": "6"}), gpu=False, cores=8) == ({"OMP_NUM_THREADS": "6"}, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_hosts(tmp_path, data, hp):
    """Start the leader and the second host, wait for both; (roots, outputs)."""
    hosts = ["127.0.0.1", "localhost"]
    roots = []
    for host in hosts:
        root = tmp_path / host
        contract.make_dirs(root)
        contract.write_config(root, hp, [contract.COMBINED_CHANNEL], hosts=hosts, current_host=host)
        rc = root / "input/config/resourceconfig.json"
        rc.write_text(json.dumps({"current_host": host, "hosts": hosts}))  # no interface name: use any
        os.symlink(data, root / "input/data" / contract.COMBINED_CHANNEL)
        roots.append(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(MASTER_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen([sys.executable, "-m", "localsage.container.train", "--ml-root", str(r)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in roots]
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return roots, outs


def test_two_hosts_train_data_parallel(tmp_path, small_data):
    roots, outs = run_two_hosts(tmp_path, small_data, {**TINY_HP, "epochs": "2", "max-steps": "0", "workers": "0"})
    assert "rank=0 world_size=2" in outs[0] and "rank=1 world_size=2" in outs[1]
    # the leader writes the model and the metrics; the other host writes neither
    assert (roots[0] / "model" / export.WEIGHTS_FILE).exists()
    assert not list((roots[1] / "model").iterdir())
    assert not (roots[1] / "output/data/metrics.jsonl").exists()
    rows = [r for r in metrics.read_jsonl(roots[0] / "output/data/metrics.jsonl") if "epoch" in r]
    assert [r["epoch"] for r in rows] == [1, 2]
    # metric lines come from the leader only (one per epoch, not one per host)
    assert "epoch=" not in outs[1]


def test_a_rank_with_an_unreadable_batch_keeps_step_with_the_others(tmp_path):
    """One image per step and several corrupt files: some step has nothing readable on one rank but
    not on the other. That rank takes a zero-weight step instead of skipping it, so the gradient
    all-reduces stay paired and the job finishes instead of hanging."""
    from localsage.container.demo_images import make_demo_data

    data = make_demo_data(tmp_path / "bad", classes=2, per_class=8, size=32, seed=2, corrupt=5)
    roots, outs = run_two_hosts(tmp_path / "jobs", data,
                                {**TINY_HP, "epochs": "1", "max-steps": "0", "workers": "0", "batch-size": "1",
                                 "image-size": "64"})  # 64 px: resnet18's last BatchNorm sees 2x2 values
    assert "zero-weight step" in "".join(outs)
    summary = json.loads((roots[0] / "output/data/summary.json").read_text())
    assert summary["epochs_run"] == 1


def test_one_host_runs_a_process_per_slot_from_the_toolkit_override(tmp_path, small_data, capsys, monkeypatch):
    """`train --processes-per-host 2` (the built-in trainer too) sends sagemaker_mpi_num_of_processes_per_host=2,
    how the AWS toolkit sets processes per host and how a CPU machine gets more than one: the trainer
    launches two gloo ranks on one host itself, each with half the cores."""
    from localsage.cli import main as cli_main
    from localsage.container.data import default_workers
    from localsage.host import records

    jobs = tmp_path / "jobs"
    hp = {**TINY_HP, "epochs": "2", "max-steps": "0", "workers": "0"}
    args = ["train", "--data", str(small_data), "--jobs-dir", str(jobs), "--name", "two-ranks",
            "--processes-per-host", "2"]
    for name in ("MASTER_PORT", "LOCAL_RANK", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert cli_main(args + [x for k, v in hp.items() for x in ("--hp", f"{k}={v}")]) == 0, (
        capsys.readouterr().out[-3000:])
    record = records.describe("two-ranks", jobs)
    assert record["HyperParameters"]["sagemaker_mpi_num_of_processes_per_host"] == "2"
    log = (jobs / "two-ranks" / records.LOG).read_text()
    assert "rank=0 world_size=2 local_rank=0" in log and "rank=1 world_size=2 local_rank=1" in log
    threads = max(1, default_workers() // 2)
    assert log.count(f"threads={threads} ") >= 1, [line for line in log.splitlines() if "threads=" in line]
    rows = [r for r in metrics.read_jsonl(jobs / "two-ranks/output/data/metrics.jsonl") if "epoch" in r]
    assert [r["epoch"] for r in rows] == [1, 2]  # the leader reports once per epoch
    assert (jobs / "two-ranks/model" / export.WEIGHTS_FILE).exists()
