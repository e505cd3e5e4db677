"""Script mode: a SageMaker user's own training script runs unchanged (process, docker, SDK local mode).

The rules checked here are the training toolkit's (aws/sagemaker-training-toolkit, PyTorch toolkit):
argv and SM_* variables, reserved keys, code sources, requirements, outcome files, torchrun.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from conftest import TINY_HP
from localsage.container.scriptmode import code as code_mod, env as env_mod, run as run_mod
from localsage.core import contract, hyperparameters, metrics
from localsage.host import records, runner
from localsage.host.jobplan import JobPlan

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "dog-breeds"
# the example at test size: resnet18 without weights, 32 px, 1 epoch
EXAMPLE_HP = {"epochs": 1, "batch-size": 8, "lr": 0.003, "arch": "resnet18", "weights": "none", "image-size": 32}
TEST_LOSS = {"Name": "test_loss", "Regex": r"Test set: Average loss: ([0-9.]+)"}
VALID_LOSS = {"Name": "valid_loss", "Regex": r"Validation set: Average loss: ([0-9.]+)"}
PROBE_HP = {"batch-size": 64, "arch": "resnet18", "flag": True, "lr": 0.001, "l": [1, 2], "d": {"b": 1, "a": 2},
            "x": "raw text", "_tuning_objective_metric": "valid_loss"}

PROBE = '''
import json, os, sys
import probe_dep
out = {"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd(), "dep": probe_dep.__file__}
os.makedirs(os.environ["SM_MODEL_DIR"], exist_ok=True)
with open(os.path.join(os.environ["SM_MODEL_DIR"], "probe.json"), "w") as f:
    json.dump(out, f)
print("probe: loss=0.75")
print("probe: loss=0.5")
'''


def tar_names(path) -> set:
    with tarfile.open(path) as tar:
        return {name.lstrip("./") for name in tar.getnames()} - {""}


def make_wheel(folder: Path) -> Path:
    """A one-module wheel (probe_dep 1.0), so requirements.txt installs offline with --no-index."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "probe_dep-1.0-py3-none-any.whl"
    info = "probe_dep-1.0.dist-info"
    files = {
        "probe_dep.py": "VALUE = 1\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: probe-dep\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return folder


@pytest.fixture(scope="session")
def probe_source(tmp_path_factory):
    src = tmp_path_factory.mktemp("probe-src")
    (src / "probe.py").write_text(PROBE)
    (src / "requirements.txt").write_text("probe-dep==1.0\n")
    wheels = make_wheel(tmp_path_factory.mktemp("wheels"))
    return src, wheels


def pip_env(wheels) -> dict:
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "FOO": "bar"}


def check_probe(record, job_dir: Path, model_dir: str, channel_dir: str, in_container: bool):
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    out = json.loads((job_dir / "model" / "probe.json").read_text())
    env = out["env"]
    # argv: sorted keys, --key value, one-letter keys -k, str() of the decoded value; no reserved keys
    assert out["argv"][1:] == ["--arch", "resnet18", "--batch-size", "64", "-d", "a=2,b=1", "--flag", "True",
                               "-l", "[1, 2]", "--lr", "0.001", "-x", "raw text"]
    assert json.loads(env["SM_HPS"]) == {k: v for k, v in PROBE_HP.items() if not k.startswith("_")}
    assert env["SM_HP_BATCH-SIZE"] == "64" and env["SM_HP_ARCH"] == "resnet18" and env["SM_HP_FLAG"] == "true"
    assert env["SM_HP_D"] == '{"a":2,"b":1}'
    assert not [k for k in env if k.startswith("SM_HP_") and ("SAGEMAKER" in k or "TUNING" in k)]
    assert json.loads(env["SM_USER_ARGS"]) == out["argv"][1:]
    assert env["SM_CHANNELS"] == '["training"]' and env["SM_CHANNEL_TRAINING"] == channel_dir
    assert env["SM_MODEL_DIR"] == model_dir
    assert env["SM_OUTPUT_DATA_DIR"].endswith("/output/data") and env["SM_INPUT_CONFIG_DIR"].endswith("/input/config")
    assert env["SM_USER_ENTRY_POINT"] == "probe.py" and env["SM_MODULE_NAME"] == "probe"
    assert json.loads(env["SM_HOSTS"]) == ["algo-1"] and env["SM_CURRENT_HOST"] == "algo-1"
    assert env["SM_NETWORK_INTERFACE_NAME"] == "eth0" and int(env["SM_NUM_CPUS"]) >= 1 and env["SM_NUM_GPUS"] == "0"
    training_env = json.loads(env["SM_TRAINING_ENV"])
    assert training_env["hyperparameters"]["batch-size"] == 64 and training_env["module_name"] == "probe"
    assert "sagemaker_program" not in training_env["additional_framework_parameters"]
    assert json.loads(env["SM_RESOURCE_CONFIG"])["hosts"] == ["algo-1"]
    assert "training" in json.loads(env["SM_INPUT_DATA_CONFIG"])
    assert env["TRAINING_JOB_NAME"] and env["FOO"] == "bar"  # --env reaches the script
    assert env["PYTHONPATH"].split(os.pathsep)[0] == out["cwd"]  # the code dir leads PYTHONPATH and is the cwd
    if in_container:
        assert out["cwd"] == "/opt/ml/code"
    else:
        assert out["cwd"] == str(job_dir / "code") and Path(out["cwd"], "probe.py").exists()
        # requirements.txt went into the job's own target, not into localsage's environment
        assert out["dep"].startswith(str(job_dir / "code" / ".deps"))
        assert subprocess.run([sys.executable, "-c", "import probe_dep"], capture_output=True).returncode != 0
    # metric_definitions: every match is a point; the last value is the final metric
    points = metrics.read_jsonl(contract.metric_points_file(job_dir))
    assert [(p["name"], p["value"], p["ordinal"]) for p in points] == [("loss", 0.75, 1), ("loss", 0.5, 2)]
    assert [(m["MetricName"], m["Value"]) for m in record["FinalMetricDataList"]] == [("loss", 0.5)]
    assert (job_dir / "output" / "success").exists() and not (job_dir / "output" / "failure").exists()


# ------------------------------------------------------------------ the toolkit's rules, as functions

def test_cmd_args_and_env_vars_follow_the_toolkit():
    assert env_mod.to_cmd_args({"b": None, "a-b": [1, "x"], "c": {"z": 1, "y": "q"}, "t": False}) == [
        "--a-b", "[1, 'x']", "-b", "", "-c", "y=q,z=1", "-t", "False"]
    assert env_mod.to_env_vars({"hp_batch-size": 64, "x": "s", "n": None, "d": {"b": [1], "a": 1}}) == {
        "SM_HP_BATCH-SIZE": "64", "SM_X": "s", "SM_N": "", "SM_D": '{"a":1,"b":[1]}'}


def test_builtin_parse_decodes_json_and_drops_reserved_keys():
    sdk = {**hyperparameters.encode({"arch": "resnet18", "epochs": 3, "lr": 0.01, "augment": False}),
           "sagemaker_program": '"train.py"', "sagemaker_region": '"us-east-1"', "_tuning_objective_metric": "x"}
    hp = hyperparameters.parse(sdk)
    assert (hp["arch"], hp["epochs"], hp["lr"], hp["augment"]) == ("resnet18", 3, 0.01, False)
    with pytest.raises(hyperparameters.HyperparameterError, match="sagemaker-nope"):
        hyperparameters.parse({"sagemaker-nope": "1"})  # only the SageMaker spellings are reserved


@pytest.mark.integration
def test_builtin_trainer_runs_an_sdk_encoded_map(small_data, tmp_path):
    hps = {**hyperparameters.encode(TINY_HP), "_tuning_objective_metric": '"valid_loss"',
           "sagemaker_container_log_level": "20", "sagemaker_job_name": '"x"', "sagemaker_region": '"us-east-1"'}
    record = runner.train(small_data, hps, jobs_dir=tmp_path, echo=False, name="builtin-encoded")
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    assert record["EpochsCompleted"] == 1


def test_submit_directory_tarball_is_extracted_safely(tmp_path):
    good = tmp_path / "sourcedir.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        data = b"print('hi')\n"
        info = tarfile.TarInfo("train.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    root = tmp_path / "ml"
    assert (code_mod.prepare(root, str(good)) / "train.py").read_bytes() == data
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(code_mod.CodeError, match="evil"):
        code_mod.prepare(tmp_path / "ml2", str(evil))
    assert not (tmp_path / "outside.py").exists()


def test_submit_directory_from_s3(tmp_path, monkeypatch):
    moto = pytest.importorskip("moto")
    import boto3

    archive = tmp_path / "sourcedir.tar.gz"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print(1)\n")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "train.py", arcname="train.py")
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    with moto.mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="localsage-test-code")
        boto3.client("s3", region_name="us-east-1").upload_file(str(archive), "localsage-test-code",
                                                                "job/source/sourcedir.tar.gz")
        code = code_mod.prepare(tmp_path / "ml", "s3://localsage-test-code/job/source/sourcedir.tar.gz")
    assert (code / "train.py").read_text() == "print(1)\n"


def test_torchrun_command_follows_the_toolkit():
    def tenv(hosts, current, gpus, **reserved):
        return env_mod.TrainingEnv(root=Path("/opt/ml"), hyperparameters={"lr": 0.1}, reserved={
            "sagemaker_torch_distributed_enabled": True, **reserved}, resource_config={}, input_data_config={},
            channels={}, hosts=hosts, current_host=current, num_gpus=gpus, num_cpus=2, program="t.py",
            module_dir=None, job_name="j")

    code = Path("/nonexistent")
    one = run_mod.command(tenv(["algo-1"], "algo-1", 0), code)
    assert one[-7:] == ["--nnodes", "1", "--nproc_per_node", "1", "t.py", "--lr", "0.1"]
    assert "--master_addr" not in one
    two = run_mod.command(tenv(["algo-1", "algo-2"], "algo-2", 4), code)
    assert two[-13:] == ["--nnodes", "2", "--nproc_per_node", "4", "--master_addr", "algo-1", "--master_port",
                         "7777", "--node_rank", "1", "t.py", "--lr", "0.1"]
    forced = run_mod.command(tenv(["algo-1"], "algo-1", 4, sagemaker_mpi_num_of_processes_per_host=2), code)
    assert forced[forced.index("--nproc_per_node") + 1] == "2"


def test_the_reason_is_the_workers_traceback_not_torchruns():
    lines = ["[rank1]: Traceback (most recent call last):", '[rank1]:   File "t.py", line 3', "[rank1]: KeyError: 'x'",
             "Traceback (most recent call last):", '  File "torchrun", line 8',
             "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: "]
    assert run_mod.error_message(lines).endswith("KeyError: 'x'")


def test_failure_file_shape():
    text = run_mod.failure_text(3, run_mod.error_message(
        ["noise", "Traceback (most recent call last):", '  File "t.py", line 1', "ValueError: boom", "tail"]),
        ["python", "t.py"])
    assert text == 'ExecuteUserScriptError:\nExitCode 3\nErrorMessage "Traceback (most recent call last):\n' \
                   '  File "t.py", line 1\nValueError: boom"\nCommand "python t.py"'
    assert "OutOfMemory" in run_mod.failure_text(137, "", ["x"])


WHOLE_PICKLE = '''
import os, torch
path = os.path.join(os.environ["SM_MODEL_DIR"], "whole.pt")
torch.save(torch.nn.Sequential(torch.nn.Linear(4, 2)), path)  # the whole model, as course projects do
model = torch.load(path)  # no weights_only: torch >= 2.6 refuses it unless TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
print("loaded", type(model).__name__)
'''


def assert_weights_only_reason(reason):
    """The clear reason, once, within the 1,024 characters SageMaker shows as FailureReason."""
    shown = reason[:1024]
    assert reason.count("torch.load refused a whole pickled model") == 1, reason
    assert "state_dict" in shown and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1" in shown and "--env" in shown, reason


def test_a_whole_pickled_model_leads_the_failure_message(tmp_path):
    import torch

    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 2)), tmp_path / "whole.pt")
    proc = subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(tmp_path / 'whole.pt')!r})"],
                          capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                               if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"})
    assert proc.returncode != 0
    message = run_mod.error_message(["noise", *proc.stderr.splitlines()])
    text = run_mod.failure_text(1, message, ["python", "t.py"])
    assert text.startswith('ExecuteUserScriptError:\nExitCode 1\nErrorMessage "torch.load refused a whole pickled')
    assert_weights_only_reason(text)
    assert "Traceback (most recent call last)" in text  # the program's own traceback follows
    assert run_mod.error_message(["Traceback (most recent call last):", '  File "t.py", line 1',
                                  "ModuleNotFoundError: No module named 'sagemaker.serve.constants'"]).startswith(
        "Traceback")  # a serving limitation, not a training one


# ------------------------------------------------------------------ process backend

@pytest.mark.integration
def test_probe_on_the_process_backend(probe_source, small_data, tmp_path):
    src, wheels = probe_source
    record = runner.train(small_data,
                          JobPlan.for_script("probe.py", source_dir=src, hyperparameters=PROBE_HP, env=pip_env(wheels),
                                             metric_definitions=[metrics.definition(r"loss=probe: loss=([0-9.]+)")]),
                          jobs_dir=tmp_path, echo=False, name="probe-process")
    job_dir = Path(record["JobDir"])
    check_probe(record, job_dir, str(job_dir / "model"), str(job_dir / "input/data/training"), in_container=False)
    hps = json.loads((job_dir / "input/config/hyperparameters.json").read_text())
    assert hps["batch-size"] == "64" and hps["arch"] == '"resnet18"' and hps["sagemaker_program"] == '"probe.py"'
    out = json.loads((job_dir / "model" / "probe.json").read_text())
    hook = json.loads(Path(out["env"][contract.SMDEBUG_CONFIG_ENV]).read_text())
    assert hook["LocalPath"] == str(job_dir / "output" / "tensors") and hook["CollectionConfigurations"]


@pytest.mark.integration
def test_a_failed_requirements_install_names_the_file(probe_source, small_data, tmp_path):
    src, wheels = probe_source
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "probe.py").write_text(PROBE)
    (tmp_path / "src" / "requirements.txt").write_text("no-such-package-xyz==9\n")
    record = runner.train(small_data,
                          JobPlan.for_script("probe.py", source_dir=tmp_path / "src", env=pip_env(wheels)),
                          jobs_dir=tmp_path / "jobs", echo=False, name="bad-reqs")
    assert record["TrainingJobStatus"] == "Failed"
    assert "requirements.txt" in record["FailureReason"] and "no-such-package-xyz" in record["FailureReason"]


@pytest.mark.integration
@pytest.mark.parametrize("body, expected", [
    ("import sys\nprint('half way')\nsys.exit(3)\n", ["ExitCode 3"]),
    ("def f():\n    raise ValueError('boom in the script')\nf()\n", ["ExitCode 1", "ValueError: boom in the script"]),
])
def test_a_failing_script_is_failed_with_the_reason(small_data, tmp_path, body, expected):
    (tmp_path / "fail.py").write_text(body)
    record = runner.train(small_data, JobPlan.for_script(str(tmp_path / "fail.py"), hyperparameters={"epochs": 1}),
                          jobs_dir=tmp_path / "jobs", echo=False, name="fail")
    assert record["TrainingJobStatus"] == "Failed" and record["ExitCode"] == 1
    reason = record["FailureReason"]
    assert reason.startswith("ExecuteUserScriptError:") and 'Command "' in reason and "fail.py --epochs 1" in reason
    for text in expected:
        assert text in reason
    assert not (Path(record["JobDir"]) / "output" / "success").exists()


@pytest.mark.integration
def test_a_job_that_torch_loads_a_whole_pickled_model(small_data, tmp_path, monkeypatch):
    """The failure file (and so FailureReason) carries the clear reason; the job's --env switch loads it."""
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    (tmp_path / "whole.py").write_text(WHOLE_PICKLE)
    record = runner.train(small_data, JobPlan.for_script(str(tmp_path / "whole.py")), jobs_dir=tmp_path / "jobs",
                          echo=False, name="whole-pickle")
    assert record["TrainingJobStatus"] == "Failed"
    assert_weights_only_reason((Path(record["JobDir"]) / "output" / "failure").read_text())
    assert_weights_only_reason(record["FailureReason"])
    record = runner.train(small_data,
                          JobPlan.for_script(str(tmp_path / "whole.py"), env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}),
                          jobs_dir=tmp_path / "jobs", echo=False, name="whole-pickle-trusted")
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


SLOW = '''
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "child.pid"), "w").write(str(child.pid))
for i in range(600):
    print(f"step {i}", flush=True)
    time.sleep(0.2)
'''


@pytest.mark.integration
def test_sigterm_mid_script_stops_the_process_group(small_data, tmp_path):
    (tmp_path / "slow.py").write_text(SLOW)
    record = runner.train(small_data,
                          JobPlan.for_script(str(tmp_path / "slow.py"),
                                             metric_definitions=[{"Name": "step", "Regex": r"step (\d+)"}]),
                          jobs_dir=tmp_path / "jobs", echo=False, name="stop-me",
                          on_metrics=lambda p: p["ordinal"] >= 3)
    assert record["TrainingJobStatus"] == "Stopped" and record["ExitCode"] == 143
    pid = int((Path(record["JobDir"]) / "output/data/child.pid").read_text())
    deadline = time.time() + 10
    while alive(pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(pid), "the script's own child did not get SIGTERM (the process group's)"
    assert not (Path(record["JobDir"]) / "output" / "failure").exists()


@pytest.mark.integration
def test_max_run_stops_a_local_job(small_data, tmp_path):
    (tmp_path / "slow.py").write_text(SLOW)
    record = runner.train(small_data, JobPlan.for_script(str(tmp_path / "slow.py"), max_run=2),
                          jobs_dir=tmp_path / "jobs", echo=False, name="too-long")
    assert record["TrainingJobStatus"] == "Stopped" and record["SecondaryStatus"] == "MaxRuntimeExceeded"


CHECKPOINTING = '''
import os, sys
path = os.path.join(os.environ["SM_CHECKPOINT_DIR"], "runs.txt")
runs = int(open(path).read()) + 1 if os.path.exists(path) else 1
open(path, "w").write(str(runs))
print(f"run {runs}")
sys.exit(0 if runs >= 2 else 1)
'''


@pytest.mark.integration
def test_checkpoints_survive_a_restart_with_the_same_name(small_data, tmp_path):
    (tmp_path / "ckpt.py").write_text(CHECKPOINTING)
    first = runner.train(small_data, JobPlan.for_script(str(tmp_path / "ckpt.py")), jobs_dir=tmp_path / "jobs",
                         echo=False, name="again")
    assert first["TrainingJobStatus"] == "Failed"
    second = runner.train(small_data, JobPlan.for_script(str(tmp_path / "ckpt.py")), jobs_dir=tmp_path / "jobs",
                          echo=False, name="again")
    assert second["TrainingJobStatus"] == "Completed"
    assert "run 2" in (Path(second["JobDir"]) / records.LOG).read_text()


@pytest.mark.integration
def test_shell_entry_point(small_data, tmp_path):
    (tmp_path / "run.sh").write_text('echo "args: $@"; echo "model: $SM_MODEL_DIR"\n')
    record = runner.train(small_data,
                          JobPlan.for_script(str(tmp_path / "run.sh"), hyperparameters={"epochs": 2}, debug=False),
                          jobs_dir=tmp_path / "jobs", echo=False, name="sh")
    assert not contract.debughookconfig_file(record["JobDir"]).exists()  # --no-debug-tensors
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    log = (Path(record["JobDir"]) / records.LOG).read_text()
    assert "args: --epochs 2" in log and f"model: {record['JobDir']}/model" in log


@pytest.fixture(scope="session")
def example_job(small_data, tmp_path_factory):
    """The example script trained once on the process backend (shared by the tests below)."""
    return runner.train(small_data,
                        JobPlan.for_script("train.py", source_dir=EXAMPLE, hyperparameters=EXAMPLE_HP,
                                           metric_definitions=[TEST_LOSS, VALID_LOSS]),
                        jobs_dir=tmp_path_factory.mktemp("example-jobs"), echo=False, name="example")


@pytest.mark.integration
def test_example_trains_on_the_process_backend(example_job):
    record = example_job
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    job_dir = Path(record["JobDir"])
    names = tar_names(job_dir / "model.tar.gz")
    assert {"model.pth", "model_info.json", "code/inference.py", "code/train.py"} <= names
    log = (job_dir / records.LOG).read_text()
    final = {m["MetricName"]: m["Value"] for m in record["FinalMetricDataList"]}
    last_test = [line for line in log.splitlines() if "Test set: Average loss:" in line][-1]
    assert f"{final['test_loss']:.4f}" in last_test
    assert set(final) == {"test_loss", "valid_loss"}


@pytest.mark.integration
def test_the_scripts_smdebug_tensors_exist(example_job):
    from smdebug.trials import create_trial

    tensors = Path(example_job["JobDir"]) / "output" / "tensors"
    trial = create_trial(str(tensors))
    names = trial.tensor_names()
    assert any("CrossEntropyLoss_output_0" in n for n in names), names[:20]
    assert trial.tensor_names(collection="weights")


@pytest.mark.integration
def test_two_processes_train_data_parallel_with_torch_distributed(small_data, tmp_path):
    record = runner.train(small_data,
                          JobPlan.for_script("train.py", source_dir=EXAMPLE, distribution="torch_distributed",
                                             hyperparameters=EXAMPLE_HP, metric_definitions=[TEST_LOSS],
                                             processes_per_host=2),
                          jobs_dir=tmp_path, echo=False, name="ddp")
    log = (Path(record["JobDir"]) / records.LOG).read_text()
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason") or log[-3000:]
    assert "rank 0/2" in log and "rank 1/2" in log, log[-3000:]
    assert "--nnodes 1 --nproc_per_node 2" in log and "--master_addr" not in log
    assert "model.pth" in tar_names(Path(record["JobDir"]) / "model.tar.gz")


# ------------------------------------------------------------------ docker and the real SDK

@pytest.mark.integration
@pytest.mark.docker
def test_probe_on_the_docker_backend(image, probe_source, small_data, tmp_path):
    src, wheels = probe_source
    env = {**pip_env("/opt/ml/code/wheels"), "PIP_FIND_LINKS": "/opt/ml/code/wheels"}
    work = tmp_path / "src"
    import shutil

    shutil.copytree(src, work)
    shutil.copytree(wheels, work / "wheels")
    record = runner.train(small_data,
                          JobPlan.for_script("probe.py", source_dir=work, hyperparameters=PROBE_HP, image=image,
                                             env=env,
                                             metric_definitions=[metrics.definition(r"loss=probe: loss=([0-9.]+)")]),
                          backend="docker", jobs_dir=tmp_path / "jobs", echo=False, name="probe-docker")
    check_probe(record, Path(record["JobDir"]), "/opt/ml/model", "/opt/ml/input/data/training", in_container=True)


@pytest.mark.integration
@pytest.mark.docker
def test_example_on_the_docker_backend_and_a_failing_script(image, small_data, tmp_path):
    record = runner.train(small_data,
                          JobPlan.for_script("train.py", source_dir=EXAMPLE, hyperparameters=EXAMPLE_HP, image=image,
                                             metric_definitions=[TEST_LOSS]),
                          backend="docker", jobs_dir=tmp_path, echo=False, name="example-docker")
    job_dir = Path(record["JobDir"])
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    assert "model.pth" in tar_names(job_dir / "model.tar.gz")
    assert list((job_dir / "output" / "tensors" / "index").rglob("*.json")), "no smdebug tensors from the script"
    assert [m["MetricName"] for m in record["FinalMetricDataList"]] == ["test_loss"]
    (tmp_path / "fail.py").write_text("raise RuntimeError('docker boom')\n")
    failed = runner.train(small_data, JobPlan.for_script(str(tmp_path / "fail.py"), image=image), backend="docker",
                          jobs_dir=tmp_path, echo=False, name="fail-docker")
    assert failed["TrainingJobStatus"] == "Failed" and "RuntimeError: docker boom" in failed["FailureReason"]


@pytest.mark.integration
@pytest.mark.docker
def test_the_sdks_pytorch_estimator_trains_the_example(image, small_data, tmp_path):
    """sagemaker.pytorch.PyTorch(entry_point=..., image_uri=our image) in local mode, as a user writes it."""
    from localsage.host.backends import sagemaker_local

    with sagemaker_local.local_aws_env():
        from sagemaker.pytorch import PyTorch

        estimator = PyTorch(entry_point="train.py", source_dir=str(EXAMPLE), image_uri=image,
                            role=sagemaker_local.DUMMY_ROLE, instance_count=1, instance_type="local",
                            hyperparameters=EXAMPLE_HP, output_path=f"file://{tmp_path / 'out'}",
                            sagemaker_session=sagemaker_local.session(tmp_path / "work", "sdk-example"))
        estimator.fit({"training": f"file://{small_data}"}, job_name="sdk-example", logs=False)
        model = next((tmp_path / "out").rglob("model.tar.gz"))
        assert "model.pth" in tar_names(model)
        # right after fit, as users do: the SDK repacks the job's model.tar.gz with code/inference.py
        from sagemaker.deserializers import JSONDeserializer
        from sagemaker.serializers import IdentitySerializer

        estimator.code_location = "s3://localsage-offline/code"  # else the SDK's repack asks STS for a bucket
        estimator.framework_version, estimator.py_version = "2.1", "py310"  # the model's repack rule needs them
        predictor = estimator.deploy(initial_instance_count=1, instance_type="local", entry_point="inference.py",
                                     serializer=IdentitySerializer("image/jpeg"), deserializer=JSONDeserializer())
        try:
            jpeg = next((Path(small_data) / "test").rglob("*.jpg")).read_bytes()
            result = predictor.predict(jpeg)
            labels = {p.name for p in (Path(small_data) / "train").iterdir()}
            top = result["predictions"][0]
            assert 0 <= top["probability"] <= 1 and any(top["label"] in name for name in labels), result
        finally:
            predictor.delete_endpoint()


@pytest.mark.integration
@pytest.mark.docker
def test_two_instances_torch_distributed_in_sdk_local_mode(image, small_data, tmp_path):
    record = runner.train(small_data,
                          JobPlan.for_script("train.py", source_dir=EXAMPLE, distribution="torch_distributed",
                                             hyperparameters=EXAMPLE_HP, image=image),
                          backend="sagemaker-local", jobs_dir=tmp_path, echo=False, name="sm-script-2",
                          instance_count=2)
    log = (Path(record["JobDir"]) / records.LOG).read_text()
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason") or log[-3000:]
    assert "rank 0/2" in log and "rank 1/2" in log, log[-3000:]
    assert "--master_addr" in log and "--node_rank" in log
    assert "model.pth" in tar_names(Path(record["JobDir"]) / "model.tar.gz")


@pytest.mark.integration
def test_the_train_command_runs_a_script(probe_source, small_data, tmp_path):
    src, wheels = probe_source
    cmd = [sys.executable, "-m", "localsage", "train", "--entry-point", "probe.py", "--source-dir", str(src),
           "--data", str(small_data), "--jobs-dir", str(tmp_path), "--name", "cli", "--hp", "batch-size=64",
           "--hp", "arch=resnet18", "--hp", "flag=true", "--metric-definition", "loss=probe: loss=([0-9.]+)",
           "--env", "PIP_NO_INDEX=1", "--env", f"PIP_FIND_LINKS={wheels}", "--env", "FOO=bar"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads((tmp_path / "cli" / "model" / "probe.json").read_text())
    assert out["argv"][1:] == ["--arch", "resnet18", "--batch-size", "64", "--flag", "True"]
    assert out["env"]["FOO"] == "bar"
    record = records.read_record(tmp_path / "cli")
    assert record["FinalMetricDataList"][0]["Value"] == 0.5
    bad = subprocess.run(cmd[:-10] + ["--name", "bad", "--metric-definition", "x=no group"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "capture group" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_script_only_flags_without_an_entry_point_are_refused_before_any_job(tmp_path):
    """The built-in trainer has no use for a script's flags: a clear refusal, not a silently ignored flag."""
    from localsage.cli import main as cli_main

    base = ["train", "--data", str(tmp_path), "--jobs-dir", str(tmp_path / "jobs")]
    for extra in (["--inference-entry-point", "inference.py"], ["--distribution", "torch_distributed"]):
        with pytest.raises(SystemExit, match="need --entry-point"):
            cli_main(base + extra)
    assert not (tmp_path / "jobs").exists()
