"""The training contract and the process runner, end to end on generated data."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST_HP, TINY_HP
from localsage.cli import main as cli_main
from localsage.container import export, model
from localsage.core import hyperparameters, metrics
from localsage.host import runner
from localsage.host.jobplan import JobPlan


def tar_names(path):
    with tarfile.open(path) as tar:
        return set(tar.getnames())


# ---------------------------------------------------------------- end to end through the runner

@pytest.mark.integration
def test_trained_job_reaches_accuracy_and_packs_artifacts(trained_job):
    job_dir = Path(trained_job["JobDir"])
    final = {m["MetricName"]: m["Value"] for m in trained_job["FinalMetricDataList"]}
    assert final["valid_acc"] >= 0.9, final
    assert trained_job["Summary"]["best_valid_acc"] >= 0.9
    assert trained_job["Summary"]["test_acc"] >= 0.8
    model_files = tar_names(job_dir / "model.tar.gz")
    assert {export.WEIGHTS_FILE, export.CONFIG_FILE, export.INDEX_FILE} <= model_files
    output_files = tar_names(job_dir / "output.tar.gz")
    assert {"data/metrics.jsonl", "data/summary.json"} <= output_files
    assert "failure" not in output_files
    # config JSONs were written as SageMaker writes them: every hyperparameter a string
    hps = json.loads((job_dir / "input/config/hyperparameters.json").read_text())
    assert hps == {k: str(v) for k, v in FAST_HP.items()}
    resources = json.loads((job_dir / "input/config/resourceconfig.json").read_text())
    assert resources["current_host"] == "algo-1" and resources["hosts"] == ["algo-1"]


@pytest.mark.integration
def test_metric_lines_parse_with_the_published_regexes(trained_job):
    log = Path(trained_job["LogFile"]).read_text()
    epochs = int(trained_job["Summary"]["epochs_run"])
    for definition in metrics.METRIC_DEFINITIONS:
        found = re.findall(definition["Regex"], log)
        expected = 1 if definition["Name"].startswith("test_") else epochs
        assert len(found) == expected, definition
        float(found[-1])
    rows = metrics.read_jsonl(Path(trained_job["JobDir"]) / "output/data/metrics.jsonl")
    assert [r["epoch"] for r in rows if "epoch" in r] == list(range(1, epochs + 1))


@pytest.mark.integration
def test_exported_model_loads_without_training_code_and_predicts(trained_job, demo_data):
    from PIL import Image

    net, config = export.load_model(Path(trained_job["JobDir"]) / "model")
    assert config["classes"][0] == "Red_circle" and config["num_classes"] == 6
    index = json.loads((Path(trained_job["JobDir"]) / "model" / export.INDEX_FILE).read_text())
    assert index["0"] == "Red_circle"
    from torchvision.transforms import v2

    tf = v2.Compose([v2.Resize(config["resize_size"]), v2.CenterCrop(config["image_size"]), v2.ToImage(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(config["mean"], config["std"])])
    correct = total = 0
    for ci, folder in enumerate(sorted(p.name for p in (demo_data / "test").iterdir())):
        for path in sorted((demo_data / "test" / folder).iterdir()):
            x = tf(Image.open(path).convert("RGB")).unsqueeze(0)
            correct += int(net(x).argmax(1).item() == ci)
            total += 1
    assert correct / total >= 0.8


@pytest.mark.integration
def test_jobs_list_and_describe(trained_job, jobs_dir, capsys):
    assert cli_main(["jobs", "list", "--jobs-dir", str(jobs_dir)]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("trained-demo"))
    assert "Completed" in line and "valid_acc=" in line and "lr=0.003" in line
    assert cli_main(["jobs", "describe", "trained-demo", "--jobs-dir", str(jobs_dir)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["TrainingJobStatus"] == "Completed"
    assert Path(described["ModelArtifacts"]["S3ModelArtifacts"]).exists()
    assert described["AlgorithmSpecification"]["MetricDefinitions"] == metrics.METRIC_DEFINITIONS


def test_metric_definitions_command(capsys):
    cli_main(["metric-definitions"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == metrics.METRIC_DEFINITIONS
    line = metrics.format_line({"epoch": 3, "train_loss": 0.5, "valid_acc": 0.25, "valid_loss": float("nan")})
    parsed = metrics.parse_line("INFO " + line)
    assert parsed["epoch"] == 3 and parsed["train_loss"] == 0.5 and parsed["valid_acc"] == 0.25
    assert metrics.parse_line("no metrics here") is None


# ---------------------------------------------------------------- the entrypoint on a hand-made /opt/ml

def make_ml_root(root: Path, data: Path, hps: dict, separate_channels=True):
    (root / "input/config").mkdir(parents=True)
    (root / "input/data").mkdir(parents=True)
    channels = ["train", "valid", "test"] if separate_channels else ["training"]
    for ch in channels:
        src = data / ch if separate_channels else data
        shutil.copytree(src, root / "input/data" / ch)
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hps))
    (root / "input/config/inputdataconfig.json").write_text(
        json.dumps({ch: {"TrainingInputMode": "File"} for ch in channels}))
    (root / "input/config/resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    return root


def run_entry(root: Path, env_extra=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "localsage.container.train", "--ml-root", str(root)], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_entrypoint_on_handmade_opt_ml(tmp_path, small_data):
    root = make_ml_root(tmp_path / "ml", small_data, TINY_HP)
    proc = run_entry(root)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (root / "model" / export.WEIGHTS_FILE).exists()
    assert not (root / "output/failure").exists()
    assert (root / "checkpoints" / "last.pth").exists()
    summary = json.loads((root / "output/data/summary.json").read_text())
    assert summary["classes"] == ["Red_circle", "Green_square"]


@pytest.mark.integration
def test_entrypoint_single_training_channel_and_sm_env(tmp_path, small_data):
    root = make_ml_root(tmp_path / "ml", small_data, TINY_HP, separate_channels=False)
    other_model_dir = tmp_path / "elsewhere"
    proc = run_entry(root, {"SM_MODEL_DIR": str(other_model_dir), "SM_HPS": json.dumps({**TINY_HP, "seed": "3"})})
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (other_model_dir / export.CONFIG_FILE).exists()
    assert not (root / "model" / export.CONFIG_FILE).exists()
    assert json.loads((root / "output/data/summary.json").read_text())["hyperparameters"]["seed"] == 3


# ---------------------------------------------------------------- bad input

@pytest.mark.integration
@pytest.mark.parametrize("hp, needle", [
    ({"learning-rate": "0.1"}, "unknown hyperparameter"),
    ({"lr": "-1"}, "lr='-1'"),
    ({"batch-size": "abc"}, "batch-size='abc'"),
])
def test_bad_hyperparameters_fail_with_reason(small_data, jobs_dir, hp, needle):
    record = runner.train(small_data, {**TINY_HP, **hp}, jobs_dir=jobs_dir, echo=False)
    assert record["TrainingJobStatus"] == "Failed"
    assert needle in record["FailureReason"]
    assert record["ExitCode"] != 0
    failure = (Path(record["JobDir"]) / "output/failure").read_text()
    assert needle in failure
    assert "model" not in (record["ModelArtifacts"]["S3ModelArtifacts"] or "")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.integration
def test_missing_channel(tmp_path, small_data, jobs_dir):
    data = _copy(small_data, tmp_path / "d")
    shutil.rmtree(data / "valid")
    record = runner.train(data, TINY_HP, jobs_dir=jobs_dir, echo=False)
    assert record["TrainingJobStatus"] == "Failed"
    assert "valid" in record["FailureReason"] and "not found" in record["FailureReason"]


@pytest.mark.integration
def test_empty_class_folder(tmp_path, small_data, jobs_dir):
    data = _copy(small_data, tmp_path / "d")
    for f in (data / "train" / "002.Green_square").iterdir():
        f.unlink()
    record = runner.train(data, TINY_HP, jobs_dir=jobs_dir, echo=False)
    assert record["TrainingJobStatus"] == "Failed"
    assert "002.Green_square" in record["FailureReason"] and "no images" in record["FailureReason"]


@pytest.mark.integration
def test_mismatched_classes(tmp_path, small_data, jobs_dir):
    data = _copy(small_data, tmp_path / "d")
    (data / "valid" / "002.Green_square").rename(data / "valid" / "002.Green_squares")
    record = runner.train(data, TINY_HP, jobs_dir=jobs_dir, echo=False)
    assert record["TrainingJobStatus"] == "Failed"
    assert "class folders differ" in record["FailureReason"] and "Green_squares" in record["FailureReason"]


@pytest.mark.integration
def test_corrupt_images_skipped_and_counted_or_strict(tmp_path, jobs_dir):
    from localsage.container.demo_images import make_demo_data

    data = make_demo_data(tmp_path / "c", classes=2, per_class=10, size=40, corrupt=4)
    hp = {k: v for k, v in TINY_HP.items() if k != "max-steps"}
    record = runner.train(data, hp, jobs_dir=jobs_dir, echo=False)
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    assert record["Summary"]["skipped_images"] == 4
    assert record["Summary"]["skipped_by_split"]["train"] == 4
    assert Path(record["LogFile"]).read_text().count("skipped unreadable image") == 4

    strict = runner.train(data, {**hp, "strict-data": "true"}, jobs_dir=jobs_dir, echo=False)
    assert strict["TrainingJobStatus"] == "Failed"
    assert "unreadable image" in strict["FailureReason"] and "corrupt_" in strict["FailureReason"]


NO_NETWORK = r"""
# the job of test_pretrained_weights_offline_fail_before_training: no host but loopback is reachable
import socket

_LOCAL = ("127.0.0.1", "::1", "localhost")
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo


def _blocked_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL:
        raise OSError(101, "network is unreachable (blocked by the test)")
    return _connect(self, address)


def _blocked_getaddrinfo(host, *args, **kwargs):
    if host not in _LOCAL and host is not None:
        raise socket.gaierror(socket.EAI_NONAME, "name resolution blocked by the test")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.getaddrinfo = _blocked_connect, _blocked_getaddrinfo
"""


@pytest.mark.integration
def test_pretrained_weights_offline_fail_before_training(tmp_path, small_data, jobs_dir):
    blocker = tmp_path / "no-network"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_NETWORK)  # imported by the job's interpreter at start
    path = os.pathsep.join(p for p in (str(blocker), os.environ.get("PYTHONPATH")) if p)
    record = runner.train(small_data,
                          JobPlan(hyperparameters={**TINY_HP, "weights": "DEFAULT"},
                                  env={"TORCH_HOME": str(tmp_path / "torch-home"), "PYTHONPATH": path}),
                          jobs_dir=jobs_dir, echo=False)
    assert record["TrainingJobStatus"] == "Failed"
    reason = record["FailureReason"]
    assert "TORCH_HOME" in reason and "weights=none" in reason
    assert not (Path(record["JobDir"]) / "output/data/metrics.jsonl").exists()


def test_weights_from_a_local_state_dict(tmp_path):
    from torchvision import models

    path = tmp_path / "r18.pth"
    reference = models.get_model("resnet18", weights=None)
    torch.save(reference.state_dict(), path)
    net = model.build("resnet18", 3, str(path), freeze="backbone")
    assert torch.equal(net.conv1.weight, reference.conv1.weight)
    assert net.fc.out_features == 3
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    net = model.build("resnet18", 3, "none", freeze="until:layer4")
    assert not net.layer3[0].conv1.weight.requires_grad and net.layer4[0].conv1.weight.requires_grad


def test_hyperparameter_parsing():
    hp = hyperparameters.parse({"lr": "0.01", "batch-size": "64", "augment": "false", "batch_size": "32"})
    assert hp["lr"] == 0.01 and hp["batch-size"] == 32 and hp["augment"] is False
    for bad in ({"epochs": "0"}, {"optimizer": "adam"}, {"freeze": "some"}, {"lr": "nan"}):
        with pytest.raises(hyperparameters.HyperparameterError):
            hyperparameters.parse(bad)


# ---------------------------------------------------------------- stop, resume, atomic checkpoints

def wait_for(predicate, timeout, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.mark.integration
def test_sigterm_checkpoints_and_rerun_resumes(tmp_path, small_data):
    hp = {**TINY_HP, "epochs": "4", "max-steps": "0"}
    root = make_ml_root(tmp_path / "ml", small_data, hp)
    metrics_file = root / "output/data/metrics.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    proc = subprocess.Popen([sys.executable, "-m", "localsage.container.train", "--ml-root", str(root)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert wait_for(lambda: metrics_file.exists() and metrics_file.read_text().strip(), 240), "no epoch finished"
    proc.send_signal(signal.SIGTERM)
    t0 = time.time()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out[-2000:]
    assert time.time() - t0 < 30
    state = torch.load(root / "checkpoints/last.pth", weights_only=True)
    done = state["epoch"]
    assert done >= 1
    assert not (root / "model" / export.WEIGHTS_FILE).exists()

    rerun = run_entry(root)
    assert rerun.returncode == 0, rerun.stdout[-2000:]
    assert f"continuing at epoch {done + 1}" in rerun.stdout
    epochs = [r["epoch"] for r in metrics.read_jsonl(metrics_file) if "epoch" in r]
    assert epochs == list(range(1, 5)), epochs  # every epoch exactly once across the two runs
    assert (root / "model" / export.WEIGHTS_FILE).exists()


@pytest.mark.integration
def test_runner_stop_records_stopped(small_data, jobs_dir):
    hp = {**TINY_HP, "epochs": "5", "max-steps": "0"}
    record = runner.train(small_data, hp, jobs_dir=jobs_dir, echo=False, on_metrics=lambda m: m["epoch"] >= 1)
    assert record["TrainingJobStatus"] == "Stopped"
    assert record["EpochsCompleted"] < 5
    assert "after epoch 1" in record["StopReason"]


KILL_DURING_SAVE = r"""
import sys, torch
from pathlib import Path
from localsage.container.export import atomic_write_bytes
from localsage.host.jobplan import JobPlan
path = Path(sys.argv[1])
big = {"w": torch.randn(4_000_000)}
print("ready", flush=True)
while True:
    atomic_write_bytes(path, lambda f: torch.save(big, f))
"""


def test_checkpoint_never_half_written(tmp_path):
    target = tmp_path / "last.pth"
    torch.save({"w": torch.zeros(1)}, target)
    for delay in (0.05, 0.13, 0.27, 0.41):
        proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(target)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.kill()
        proc.wait()
        state = torch.load(target, weights_only=True)  # never a torn file
        assert state["w"].numel() in (1, 4_000_000)


def test_optimizers_are_fused():
    from localsage.container import recipe

    net = torch.nn.Linear(4, 2)
    for name in ("adamw", "sgd"):
        hp = {"optimizer": name, "lr": 0.01, "momentum": 0.9, "weight-decay": 1e-4}
        opt = recipe.make_optimizer(net, hp)
        assert opt.defaults["fused"] is True, name
        assert type(opt).__name__ == {"adamw": "AdamW", "sgd": "SGD"}[name]
