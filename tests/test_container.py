"""The image, the docker backend and SageMaker SDK local mode (1 and 2 instances), with a real engine.

Without a docker engine these tests skip, unless LOCALSAGE_REQUIRE_DOCKER=1 (set by .ci/run): then
a missing engine or a failed image build is a failure. The image is built once per session with
`make -f .ci/docker.mk image` (a no-op when nothing changed).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import FAST_HP, TINY_HP
from localsage.container import export
from localsage.core import contract, metrics
from localsage.host import records, runner
from localsage.host.jobplan import JobPlan

pytestmark = [pytest.mark.docker, pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent
LABEL = "localsage.job"
MODEL_FILES = {export.WEIGHTS_FILE, "model_config.json", "index_to_name.json"}


def tar_names(path) -> set:
    with tarfile.open(path) as tar:
        return {name.lstrip("./") for name in tar.getnames()} - {""}


def job_containers(engine, name):
    return engine.containers.list(all=True, filters={"label": f"{LABEL}={name}"})


def valid_acc(job_dir: Path) -> float:
    rows = [r for r in metrics.read_jsonl(job_dir / "output" / "data" / "metrics.jsonl") if "valid_acc" in r]
    assert rows, "no epoch metrics written"
    return rows[-1]["valid_acc"]


def run_opt_ml(engine, image, ml: Path, data: Path, command=("train",), shm_size="1g", timeout=1800, **kwargs):
    """`docker run IMAGE <command>` over a hand-made /opt/ml with `data` as the training channel; returns
    (exit status, logs, the container's environment). The container is always removed."""
    container = engine.containers.run(
        image, list(command), detach=True, shm_size=shm_size,
        volumes={str(ml): {"bind": "/opt/ml", "mode": "rw"},
                 str(data): {"bind": "/opt/ml/input/data/training", "mode": "ro"}}, **kwargs)
    try:
        code = container.wait(timeout=timeout)["StatusCode"]
        return code, container.logs().decode(errors="replace"), container.attrs["Config"]["Env"]
    finally:
        container.remove(force=True)


# ------------------------------------------------------------------ the image by itself (BYOC)

def test_image_has_train_serve_and_sagemaker_settings(engine, image):
    attrs = engine.images.get(image).attrs
    config = attrs["Config"]
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert "PYTHONUNBUFFERED=1" in config["Env"]
    assert not config.get("Entrypoint"), "SageMaker passes `train`/`serve` as the command"
    assert not [e for e in config["Env"] if e.startswith("SM_")]
    out = engine.containers.run(image, ["sh", "-c", "for p in train serve java; do command -v $p; done"],
                                remove=True).decode()
    assert len(out.split()) == 3, out
    # the wheels reached pip over loopback during the build (.ci/build-image.sh): no layer holds them
    steps = [h.get("CreatedBy") or "" for h in engine.images.get(image).history()]
    assert not [s for s in steps if "wheelhouse" in s or "--from=" in s], steps
    out = engine.containers.run(image, ["sh", "-c", "test -e /tmp/build && echo left || echo clean"],
                                remove=True).decode()
    assert out.strip() == "clean"


def test_docker_run_train_with_only_the_json_files(engine, image, demo_data, tmp_path):
    """`docker run IMAGE train` on a hand-made /opt/ml: config JSONs and a channel, no SM_* variables."""
    ml = tmp_path / "ml"
    contract.make_dirs(ml)
    contract.write_config(ml, FAST_HP, [contract.COMBINED_CHANNEL])
    code, logs, env = run_opt_ml(engine, image, ml, demo_data)  # minutes on a quiet 2-core machine
    assert code == 0, logs[-3000:]
    assert not [e for e in env if e.startswith("SM_")]
    assert not (ml / "output" / "failure").exists()
    assert MODEL_FILES <= {p.name for p in (ml / "model").iterdir()}
    config = json.loads((ml / "model" / "model_config.json").read_text())
    assert len(config["classes"]) == 6
    assert valid_acc(ml) >= 0.9, logs[-3000:]
    assert "valid_acc=" in logs  # metric lines reach the container log (SageMaker's metric regexes read it)


def test_built_in_trainer_completes_at_224_px_on_dockers_default_64m_dev_shm(engine, image, small_data, tmp_path):
    """`docker run --shm-size=64m IMAGE train` (docker's default /dev/shm, what both SageMaker SDKs' local mode
    give) at the default 224-px crop and batch 64: two workers' batch ring alone would be 110 MiB (it failed
    with torch's "unable to allocate shared memory"). The trainer fits its loaders to /dev/shm, says so
    once naming the fix, and completes."""
    ml = tmp_path / "ml"
    contract.make_dirs(ml)
    hp = {"arch": "resnet18", "weights": "none", "epochs": "1", "max-steps": "2", "debug": "false", "seed": "0"}
    contract.write_config(ml, hp, [contract.COMBINED_CHANNEL])
    code, logs, _ = run_opt_ml(engine, image, ml, small_data, shm_size="64m", timeout=600)
    failure = ml / "output" / "failure"
    assert code == 0, (failure.read_text() if failure.exists() else "") + logs[-3000:]
    assert not failure.exists()
    assert logs.count("/dev/shm is small (64 MiB") == 1 and "docker run --shm-size=2g" in logs, logs[-3000:]
    assert MODEL_FILES <= {p.name for p in (ml / "model").iterdir()}


# ------------------------------------------------------------------ docker backend

def test_docker_backend_completes_with_artifacts(engine, image, small_data, tmp_path):
    record = runner.train(small_data, JobPlan(hyperparameters=TINY_HP, image=image), backend="docker",
                          jobs_dir=tmp_path, echo=False, name="docker-ok")
    job_dir = Path(record["JobDir"])
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    assert record["AlgorithmSpecification"]["TrainingImage"] == image
    assert MODEL_FILES <= tar_names(job_dir / "model.tar.gz")
    assert "data/metrics.jsonl" in tar_names(job_dir / "output.tar.gz")
    assert record["EpochsCompleted"] == 1
    assert "epoch=1;" in (job_dir / records.LOG).read_text()
    assert job_containers(engine, "docker-ok") == []


def test_docker_backend_bad_hyperparameter_fails_with_reason(engine, image, small_data, tmp_path):
    record = runner.train(small_data, JobPlan(hyperparameters={**TINY_HP, "lr": "-1"}, image=image), backend="docker",
                          jobs_dir=tmp_path, echo=False, name="docker-bad-hp")
    assert record["TrainingJobStatus"] == "Failed"
    assert record["ExitCode"] == 1
    assert "lr" in record["FailureReason"] and "HyperparameterError" in record["FailureReason"]
    assert job_containers(engine, "docker-bad-hp") == []


def test_docker_backend_stop_sends_sigterm_and_removes_the_container(engine, image, small_data, tmp_path):
    seen = []

    def on_metrics(values):
        seen.append(job_containers(engine, "docker-stop"))  # still running while it reports
        return values["epoch"] >= 1

    record = runner.train(small_data, JobPlan(hyperparameters={**TINY_HP, "epochs": "50"}, image=image),
                          backend="docker", jobs_dir=tmp_path, echo=False, name="docker-stop", on_metrics=on_metrics)
    assert record["TrainingJobStatus"] == "Stopped"
    assert record["EpochsCompleted"] < 50
    assert record["ExitCode"] == 143, "train should exit on SIGTERM (143), not be killed (137)"
    assert seen and seen[0], "the container was not running while the job reported metrics"
    assert job_containers(engine, "docker-stop") == []


def test_docker_backend_missing_image_fails_clearly(engine, small_data, tmp_path):
    record = runner.train(small_data, JobPlan(hyperparameters=TINY_HP, image="localsage-no-such-image:0"),
                          backend="docker", jobs_dir=tmp_path, echo=False, name="docker-no-image")
    assert record["TrainingJobStatus"] == "Failed"
    assert "localsage-no-such-image" in record["FailureReason"]


def test_pretrained_weights_come_offline_from_a_torch_home_channel(engine, image, small_data, tmp_path):
    """weights=DEFAULT in a container with no network: torchvision finds the file in $TORCH_HOME, given as a
    channel (README, "Pretrained weights offline"); without the channel the job fails saying where to put it."""
    import torch
    import torchvision

    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    checkpoints = tmp_path / "weights" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), checkpoints / url.rsplit("/", 1)[1])
    hp = [a for kv in {**TINY_HP, "weights": "DEFAULT"}.items() for a in ("--hp", "=".join(kv))]

    def train(name, *extra):
        proc = subprocess.run([sys.executable, "-m", "localsage", "train", "--backend", "docker", "--image", image,
                               "--jobs-dir", str(tmp_path / "jobs"), "--name", name, "--channel",
                               f"training={small_data}", *extra, *hp], capture_output=True, text=True, timeout=300)
        return json.loads((tmp_path / "jobs" / name / "job.json").read_text()), proc

    record, proc = train("weights-from-channel", "--channel", f"torchhome={tmp_path / 'weights'}",
                         "--env", "TORCH_HOME=/opt/ml/input/data/torchhome")
    assert record["TrainingJobStatus"] == "Completed", proc.stdout[-3000:] + proc.stderr[-3000:]
    record, _ = train("weights-missing")
    assert record["TrainingJobStatus"] == "Failed" and "hub/checkpoints" in record["FailureReason"]


# ------------------------------------------------------------------ SageMaker SDK local mode

AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE")


def test_sagemaker_local_one_instance(engine, image, small_data, tmp_path):
    before = {k: os.environ.get(k) for k in AWS_VARS}
    record = runner.train(small_data,
                          JobPlan(hyperparameters={**TINY_HP, "debug": "true"}, image=image,
                                  debugger_hook_config={"train.save_interval": "1"}),
                          backend="sagemaker-local", jobs_dir=tmp_path, echo=False, name="sm-local-1")
    job_dir = Path(record["JobDir"])
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    assert MODEL_FILES <= tar_names(job_dir / "model.tar.gz")
    assert "data/metrics.jsonl" in tar_names(job_dir / "output.tar.gz")
    log = (job_dir / records.LOG).read_text()
    assert "algo-1-" in log and "epoch=1;" in log  # the SDK's docker-compose output reached the job log
    # local mode writes no debughookconfig.json: the hook parameters reached the trainer all the same
    assert "smdebug hook from debughookconfig.json" in log
    assert {k: os.environ.get(k) for k in AWS_VARS} == before, "dummy AWS settings leaked into the process"
    assert job_containers(engine, "sm-local-1") == []


def test_sagemaker_local_failure_reason_reaches_the_record(engine, image, small_data, tmp_path):
    record = runner.train(small_data, JobPlan(hyperparameters={**TINY_HP, "arch": "nope"}, image=image),
                          backend="sagemaker-local", jobs_dir=tmp_path, echo=False, name="sm-local-bad")
    assert record["TrainingJobStatus"] == "Failed"
    assert "arch" in record["FailureReason"]


def test_sagemaker_local_two_instances_train_data_parallel(engine, image, demo_data, tmp_path):
    # 16 per rank x 2 ranks = the single-process recipe's global batch of 32
    hp = {**FAST_HP, "batch-size": "16"}
    record = runner.train(demo_data, JobPlan(hyperparameters=hp, image=image), backend="sagemaker-local",
                          jobs_dir=tmp_path, echo=False, name="sm-local-2", instance_count=2)
    job_dir = Path(record["JobDir"])
    log = (job_dir / records.LOG).read_text()
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason") or log[-3000:]
    for rank, host in ((0, "algo-1-"), (1, "algo-2-")):
        assert any(f"host={host}" in line and f"rank={rank} world_size=2" in line
                   for line in log.splitlines()), log[-3000:]
    # both hosts are containers on this machine: each takes half its cores, not all of them (2.69x slower)
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    ready = [line for line in log.splitlines() if "job ready" in line]
    assert len(ready) == 2 and all(f" threads={share} " in line for line in ready), ready
    # metrics come from the leader only: one line per epoch, not one per host
    epochs = [m["epoch"] for m in map(metrics.parse_line, log.splitlines()) if m and "epoch" in m]
    assert epochs == list(range(1, int(hp["epochs"]) + 1)), epochs
    names = tar_names(job_dir / "model.tar.gz")
    assert MODEL_FILES <= names and sum(n.endswith(".pth") for n in names) == 1
    assert valid_acc(job_dir) >= 0.9


def test_sagemaker_local_two_hosts_of_two_processes_share_the_cores_four_ways(engine, image, small_data, tmp_path):
    """--processes-per-host 2 on 2 local-mode hosts: 4 gloo ranks across the two containers, each with a
    quarter of this machine's cores (never fewer than one thread), and one model from the leader."""
    record = runner.train(small_data,
                          JobPlan(hyperparameters={**TINY_HP, "max-steps": "0", "workers": "0"}, image=image,
                                  processes_per_host=2),
                          backend="sagemaker-local", jobs_dir=tmp_path, echo=False, name="sm-local-2x2",
                          instance_count=2)
    job_dir = Path(record["JobDir"])
    log = (job_dir / records.LOG).read_text()
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason") or log[-3000:]
    assert record["HyperParameters"]["sagemaker_mpi_num_of_processes_per_host"] == "2"
    for rank, host, local in ((0, "algo-1-", 0), (1, "algo-1-", 1), (2, "algo-2-", 0), (3, "algo-2-", 1)):
        wanted = f"rank={rank} world_size=4 local_rank={local}"
        assert any(f"host={host}" in line and wanted in line for line in log.splitlines()), log[-3000:]
    share = max(1, len(os.sched_getaffinity(0)) // 4)
    assert "2 processes on each of 2 hosts share" in log
    ready = [line for line in log.splitlines() if "job ready" in line]
    assert len(ready) == 4 and all(f" threads={share} " in line for line in ready), ready
    assert sum(n.endswith(".pth") for n in tar_names(job_dir / "model.tar.gz")) == 1


def test_sagemaker_local_stop_records_stopped(engine, image, small_data, tmp_path):
    record = runner.train(small_data, JobPlan(hyperparameters={**TINY_HP, "epochs": "50"}, image=image),
                          backend="sagemaker-local", jobs_dir=tmp_path, echo=False, name="sm-local-stop",
                          on_metrics=lambda m: m["epoch"] >= 1)
    assert record["TrainingJobStatus"] == "Stopped"
    assert record["ExitCode"] == 143, "train should exit on SIGTERM (143), not be killed (137)"
    assert record["EpochsCompleted"] < 50
    assert job_containers(engine, "sm-local-stop") == []


# ------------------------------------------------------------------ the image's default smdebug hook config

# A course-style script: it asks smdebug for the hook unconditionally, as public SageMaker course code does.
COURSE_SCRIPT = '''
import argparse
import torch
from torch import nn
import smdebug.pytorch as smd

parser = argparse.ArgumentParser()
parser.add_argument("--hook", default="json")
parser.add_argument("--steps", type=int, default=5)
args = parser.parse_args()
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
hook = smd.Hook.create_from_json_file() if args.hook == "json" else smd.get_hook(create_if_not_exists=True)
hook.register_module(model)
hook.register_loss(loss_fn)
hook.set_mode(smd.modes.TRAIN)
for _ in range(args.steps):
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 2, (4,))
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
hook.set_mode(smd.modes.EVAL)
with torch.no_grad():
    loss_fn(model(torch.randn(4, 3, 8, 8)), torch.randint(0, 2, (4,)))
print("course script done", flush=True)
'''
CODE_CHANNEL = "/opt/ml/input/data/code"  # where SDK v3 puts source_dir; its sm_train.sh runs python3 from there


def run_like_sdk_v3(engine, image, tmp_path, args, environment=None, volumes=None):
    """`docker run --entrypoint python3 -v code:... -v data:... IMAGE code/train_model.py ARGS`, as v3's
    ModelTrainer does (its driver runs the entry script directly: the image's `train` never runs)."""
    code, data, out = tmp_path / "code", tmp_path / "data", tmp_path / "output"
    for folder in (code, data, out):
        folder.mkdir(exist_ok=True)
    (code / "train_model.py").write_text(COURSE_SCRIPT)
    (data / "unused.txt").write_text("the script makes its own batches\n")
    binds = {str(code): {"bind": CODE_CHANNEL, "mode": "ro"},
             str(data): {"bind": "/opt/ml/input/data/training", "mode": "ro"},
             str(out): {"bind": "/opt/ml/output", "mode": "rw"}, **(volumes or {})}
    container = engine.containers.run(image, [f"{CODE_CHANNEL}/train_model.py", *args], entrypoint="python3",
                                      working_dir=CODE_CHANNEL, volumes=binds, detach=True,
                                      environment={"TRAINING_JOB_NAME": "v3-like", **(environment or {})})
    try:
        status = container.wait(timeout=600)["StatusCode"]
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert status == 0, logs[-3000:]
    assert "course script done" in logs
    return out


@pytest.mark.parametrize("how", ["json", "get_hook"])
def test_course_scripts_find_the_image_default_hook_config_under_an_sdk_v3_entrypoint(engine, image, tmp_path, how,
                                                                                       capsys):
    """Hook.create_from_json_file() / get_hook(create_if_not_exists=True) with nothing at
    /opt/ml/input/config: the image's default config saves localsage's collections under /opt/ml/output/tensors
    (inside output.tar.gz), and `localsage debug` reads them from v3's local_container_root."""
    from smdebug.trials import create_trial

    from localsage.cli import main
    from localsage.container import debug_hook as hook_mod
    from localsage.core.debug_names import LOSS_NAME

    out = run_like_sdk_v3(engine, image, tmp_path, ["--hook", how])
    tensors = out / "tensors"
    assert 0 in hook_mod.written_steps(tensors), sorted(p.name for p in out.iterdir())
    names = set(create_trial(str(tensors)).tensor_names())
    assert LOSS_NAME in names and any(n.endswith("weight") for n in names), names
    if how == "json":  # the SDK's local_container_root: compressed_artifacts/output.tar.gz of /opt/ml/output
        root = tmp_path / "v3-root"
        (root / "compressed_artifacts").mkdir(parents=True)
        with tarfile.open(root / "compressed_artifacts" / "output.tar.gz", "w:gz") as tar:
            for child in sorted(out.iterdir()):
                tar.add(child, arcname=child.name)
        assert main(["debug", str(root), "--only", "AllZero,LossNotDecreasing"]) == 0
        capsys.readouterr()
        rules_dir = root / "compressed_artifacts" / "output-unpacked" / "output" / "rules"
        assert json.loads((rules_dir / "AllZero.json").read_text())["datapoints"] > 0


def test_a_jobs_own_hook_config_wins_over_the_image_default(engine, image, tmp_path):
    """The platform's /opt/ml/input/config/debughookconfig.json (another folder, save_interval 2) is the one
    smdebug reads; LOCALSAGE_DEBUG_HOOK=off and a job's own SMDEBUG_CONFIG_FILE_PATH are left alone."""
    from localsage.container import debug_hook as hook_mod, smdebug_default

    config = tmp_path / "config"
    config.mkdir()
    (config / contract.DEBUGHOOKCONFIG_FILE).write_text(json.dumps({
        "LocalPath": "/opt/ml/output/job-tensors", "HookParameters": {"save_interval": "2"},
        "CollectionConfigurations": [{"CollectionName": "losses"}]}))
    out = run_like_sdk_v3(engine, image, tmp_path, ["--hook", "json", "--steps", "5"],
                          volumes={str(config): {"bind": "/opt/ml/input/config", "mode": "ro"}})
    steps = hook_mod.written_steps(out / "job-tensors")
    assert {0, 2, 4} <= set(steps) and not {1, 3} & set(steps), steps
    assert not (out / "tensors").exists()

    probe = ["python3", "-c", f"import os; print(os.environ.get({contract.SMDEBUG_CONFIG_ENV!r}))"]
    def seen(environment=None, volumes=None):
        return engine.containers.run(image, probe, environment=environment or {}, volumes=volumes or {},
                                     remove=True).decode().strip()
    assert seen() == smdebug_default.IMAGE_CONFIG
    assert seen(volumes={str(config): {"bind": "/opt/ml/input/config", "mode": "ro"}}) == "None"
    assert seen({contract.DEBUG_HOOK_ENV: "off"}) == "None"
    assert seen({contract.SMDEBUG_CONFIG_ENV: "/mine.json"}) == "/mine.json"


def test_the_image_default_leaves_the_built_in_trainer_off_with_debug_false(engine, image, small_data, tmp_path):
    """In a container where the image default is in force, `train` with debug=false saves no tensors: the
    built-in trainer decides from its hyperparameter, never from SMDEBUG_CONFIG_FILE_PATH."""
    from localsage.container import smdebug_default

    ml = tmp_path / "ml"
    contract.make_dirs(ml)
    contract.write_config(ml, {**TINY_HP, "max-steps": "1"}, [contract.COMBINED_CHANNEL])
    shell = (f"python3 -c 'import os; print(\"smdebug config:\", os.environ.get(\"{contract.SMDEBUG_CONFIG_ENV}\"))'"
             " && exec train")
    code, logs, _ = run_opt_ml(engine, image, ml, small_data, command=("sh", "-c", shell), timeout=900)
    assert code == 0, logs[-3000:]
    assert f"smdebug config: {smdebug_default.IMAGE_CONFIG}" in logs
    assert not [p for p in (ml / "output" / "tensors").rglob("*") if p.is_file()], logs[-3000:]
    assert MODEL_FILES <= {p.name for p in (ml / "model").iterdir()}
