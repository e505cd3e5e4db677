"""SageMaker SDK v3 (sagemaker 3.x, in its own venv: `make install` makes .venv-sdk3) drives localsage's image
unchanged, in LOCAL_CONTAINER mode: ModelTrainer with a user's script (the SDK replaces the image's entrypoint
with its own driver), without one (the image's `train`, in docker's default 64 MB /dev/shm), with Torchrun; and
ModelBuilder serving the built-in model and a user's inference.py, each asked about one JPEG.

The clients are plain SDK programs in tests/clients/, run by the v3 venv's python: nothing of localsage is
imported on the client side. ModelBuilder always binds port 8080 and waits up to 1,200 s for a failed start, so
its tests run one at a time under a timeout of their own and remove what they started.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import REQUIRED, ROOT

pytestmark = [pytest.mark.docker, pytest.mark.integration]

CLIENTS = ROOT / "tests" / "clients"
EXAMPLE = ROOT / "examples" / "dog-breeds"
SDK3_PYTHON = Path(os.environ.get("LOCALSAGE_SDK3_PYTHON", ROOT / ".venv-sdk3" / "bin" / "python"))
TINY_SCRIPT_HP = ["epochs=1", "arch=resnet18", "weights=none", "image-size=32", "batch-size=8"]
TRAIN_TIMEOUT, SERVE_TIMEOUT = 420, 300


@pytest.fixture(scope="session")
def sdk3(image, tmp_path_factory):
    """The v3 client's python and the environment a user sets offline: dummy credentials, a region, the SDK's
    defaults file with telemetry off, and no role validation through IAM."""
    if not SDK3_PYTHON.exists():
        message = f"no SDK v3 client venv at {SDK3_PYTHON} (make install creates it)"
        pytest.fail(message) if REQUIRED else pytest.skip(message)
    version = subprocess.run([str(SDK3_PYTHON), "-c", "import sagemaker, importlib.metadata as m; "
                              "print(m.version('sagemaker'))"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("3."), version.stdout + version.stderr
    home = tmp_path_factory.mktemp("sdk3-home")
    defaults = home / "sagemaker-config.yaml"
    defaults.write_text(yaml.safe_dump({"SchemaVersion": "1.0", "SageMaker": {
        "PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_", "PYTHON"))}
    env.update(HOME=str(home), AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local",
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               SAGEMAKER_USER_CONFIG_OVERRIDE=str(defaults), SAGEMAKER_VALIDATE_ROLE="false")
    return env


def run_client(env, script, *args, timeout):
    proc = subprocess.run([str(SDK3_PYTHON), str(CLIENTS / script), *map(str, args)], env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc.returncode, proc.stdout


def trainer(env, root: Path, data: Path, *hp, source_dir=None, entry=None, processes=0):
    args = ["--image", "localsage:latest" if "IMAGE" not in os.environ else os.environ["IMAGE"],
            "--data", data, "--root", root, *[a for kv in hp for a in ("--hp", kv)]]
    if source_dir:
        args += ["--source-dir", source_dir, "--entry", entry]
    if processes:
        args += ["--processes", processes]
    rc, out = run_client(env, "v3_model_trainer.py", *args, timeout=TRAIN_TIMEOUT)
    assert rc == 0, out[-6000:]
    return out


def members(archive: Path) -> set:
    with tarfile.open(archive) as tar:
        return {name.lstrip("./") for name in tar.getnames()} - {""}


@pytest.fixture(scope="module")
def script_job(sdk3, small_data, tmp_path_factory):
    """ModelTrainer(source_code=examples/dog-breeds, entry train.py): the course-style script calls
    `smd.Hook.create_from_json_file()` with no hook config written by the SDK."""
    root = tmp_path_factory.mktemp("v3-script") / "root"
    out = trainer(sdk3, root, small_data, *TINY_SCRIPT_HP, source_dir=EXAMPLE, entry="train.py")
    return root, out


def test_model_trainer_runs_a_course_script_with_its_hook_and_tensors_come_back(script_job):
    root, out = script_job
    assert "Test set: Average loss:" in out
    assert {"model.pth", "model_info.json"} <= members(root / "compressed_artifacts" / "model.tar.gz")
    saved = members(root / "compressed_artifacts" / "output.tar.gz")
    assert any(n.startswith("tensors/") and n.endswith(".tfevents") for n in saved) or \
        any(n.startswith("tensors/index/") for n in saved), sorted(saved)[:20]


def test_localsage_debug_judges_a_v3_jobs_results(script_job, tmp_path):
    root, _ = script_job
    proc = subprocess.run([sys.executable, "-m", "localsage", "debug", str(root), "--into", str(tmp_path / "job")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "LossNotDecreasing" in proc.stdout, proc.stdout[-3000:]


GET_HOOK_SCRIPT = '''
import os, torch, smdebug.pytorch as smd
hook = smd.get_hook(create_if_not_exists=True)   # course scripts call it unconditionally
model = torch.nn.Linear(4, 2)
hook.register_module(model)
loss_fn = torch.nn.CrossEntropyLoss()
hook.register_loss(loss_fn)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(12):
    opt.zero_grad()
    loss = loss_fn(model(torch.randn(8, 4)), torch.randint(0, 2, (8,)))
    loss.backward()
    opt.step()
os.makedirs(os.environ["SM_MODEL_DIR"], exist_ok=True)
torch.save(model.state_dict(), os.path.join(os.environ["SM_MODEL_DIR"], "model.pth"))
print("trained", flush=True)
'''


def test_model_trainer_script_with_get_hook_create_if_not_exists(sdk3, small_data, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "hook_script.py").write_text(GET_HOOK_SCRIPT)
    root = tmp_path / "root"
    out = trainer(sdk3, root, small_data, source_dir=code, entry="hook_script.py")
    assert "trained" in out
    saved = members(root / "compressed_artifacts" / "output.tar.gz")
    assert any(n.startswith("tensors/") for n in saved), sorted(saved)[:20]


def test_model_trainer_without_source_code_trains_the_built_in_model_in_64mb_shm(sdk3, small_data, tmp_path):
    """No source_code: the image's own `train` runs at the default image size (224) in the compose file the SDK
    writes, which sets no shm_size (docker's 64 MB /dev/shm)."""
    root = tmp_path / "root"
    out = trainer(sdk3, root, small_data, "arch=resnet18", "weights=none", "epochs=1", "max-steps=2")
    compose = yaml.safe_load((root / "docker-compose.yaml").read_text())
    assert all("shm_size" not in service for service in compose["services"].values())
    assert "/dev/shm" in out, "the trainer says it sized its batch ring to a small /dev/shm"
    assert {"model.pth", "model_config.json"} <= members(root / "compressed_artifacts" / "model.tar.gz")


def test_model_trainer_torchrun_two_processes_train_data_parallel(sdk3, small_data, tmp_path):
    root = tmp_path / "root"
    out = trainer(sdk3, root, small_data, *TINY_SCRIPT_HP, source_dir=EXAMPLE, entry="train.py", processes=2)
    assert "rank 0/2" in out and "rank 1/2" in out, out[-4000:]
    assert "model.pth" in members(root / "compressed_artifacts" / "model.tar.gz")


# ------------------------------------------------------------------ ModelBuilder (port 8080, one at a time)

def remove_serving_containers(since: float):
    """What a ModelBuilder run left behind (its own cleanup is two calls; a timeout skips both)."""
    import docker

    client = docker.from_env()
    for c in client.containers.list(all=True):
        created = c.attrs.get("Created", "")
        if c.attrs["Config"].get("Cmd") == ["serve"] and "8080/tcp" in (c.attrs["HostConfig"].get("PortBindings")
                                                                        or {}):
            started = time.mktime(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            if started >= since - 5:
                c.remove(force=True)


def build_and_invoke(env, model_path: Path, jpeg: Path):
    since = time.time()
    try:
        rc, out = run_client(env, "v3_model_builder.py", "--image", os.environ.get("IMAGE", "localsage:latest"),
                             "--model-path", model_path, "--jpeg", jpeg, timeout=SERVE_TIMEOUT)
    finally:
        remove_serving_containers(since)
    assert rc == 0, out[-6000:]
    answer = json.loads([line for line in out.splitlines() if line.startswith('{"status"')][-1])
    return answer["body"]["predictions"]


def a_test_jpeg(data: Path) -> tuple[Path, str]:
    jpeg = sorted((data / "test").glob("*/*.jpg"))[0]
    return jpeg, jpeg.parent.name.split(".", 1)[-1]


def test_model_builder_serves_the_built_in_model(sdk3, trained_job, demo_data):
    jpeg, _ = a_test_jpeg(demo_data)
    classes = {p.name.split(".", 1)[-1] for p in (demo_data / "train").iterdir()}
    predictions = build_and_invoke(sdk3, Path(trained_job["JobDir"]) / "model", jpeg)
    assert predictions and predictions[0]["label"] in classes
    assert abs(sum(p["probability"] for p in predictions) - 1) < 0.02 or len(predictions) < len(classes)


def test_model_builder_serves_the_example_inference_py(sdk3, script_job, small_data, tmp_path):
    """The model the script job trained, with examples/dog-breeds/inference.py as code/inference.py (the name
    ModelBuilder's SAGEMAKER_PROGRAM defaults to)."""
    root, _ = script_job
    model = tmp_path / "model"
    model.mkdir()
    with tarfile.open(root / "compressed_artifacts" / "model.tar.gz") as tar:
        tar.extractall(model, filter="data")
    (model / "code").mkdir()
    shutil.copy(EXAMPLE / "inference.py", model / "code" / "inference.py")
    jpeg, _ = a_test_jpeg(small_data)
    predictions = build_and_invoke(sdk3, model, jpeg)
    classes = {p.name for p in (small_data / "train").iterdir()}
    assert predictions and {p["label"] for p in predictions} <= classes
