"""Script-mode serving: a user's inference.py (model_fn/input_fn/predict_fn/output_fn) on the real TorchServe.

One ScriptServer (TorchServe on loopback) per module serves every test model side by side: the
example's examples/dog-breeds/inference.py on a resnet18 state_dict, a transform_fn module with a context
argument, the default functions on a TorchScript model, a faulty module (input_fn/predict_fn raising),
a BATCH_PREDICT module and the `.mar` that `localsage package` makes of the example. Startup faults run
serve/serve (the image's `serve`) as a host process; the docker tests run the image and the real
SageMaker SDK's local PyTorchModel.deploy.
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import torchvision
from PIL import Image

from localsage.host import torchserve_script
from test_serving import free_ports  # one helper for free loopback ports

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "dog-breeds" / "inference.py"
SERVE_SCRIPT = ROOT / "serve" / "serve"
CLASSES = ["Affenpinscher", "Basset_hound", "Beagle"]
T = 120


@contextlib.contextmanager
def serving_cli(cmd, out_path, env=None, ready_within=240):
    """`localsage serve ...` in a session of its own, up to its "serve: ready" line; Ctrl-C'd (SIGINT, SIGKILL
    after 40 s) on the way out. SIGINT stays at its default even where this suite runs as a background job (a
    shell's background jobs start with SIGINT ignored, and an ignored SIGINT is inherited)."""
    log = open(out_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + ready_within
        while "serve: ready" not in out_path.read_text():
            assert proc.poll() is None, out_path.read_text()[-3000:]
            assert time.monotonic() < deadline, out_path.read_text()[-3000:]
            time.sleep(0.5)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=40)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()


TRANSFORM = '''
import json

def model_fn(model_dir, context):
    return {"model_dir_seen": context.system_properties["model_dir"] == model_dir}

def transform_fn(model, body, content_type, accept, context):
    doc = {"type": type(body).__name__, "content_type": content_type, "accept": accept,
           "len": len(body), "model": model, "batch": len(context.request_processor)}
    if accept == "text/plain":
        return "plain:" + content_type, "text/plain"
    return json.dumps(doc)
'''

FAULTY = '''
import json, torch

class UnsupportedThingError(Exception):
    pass

def model_fn(model_dir):
    return torch.nn.Identity()

def input_fn(body, content_type):
    if content_type == "text/x-unsupported":
        raise UnsupportedThingError("cannot read " + content_type)
    if body == b"bad-input":
        raise ValueError("this body is bad")
    return body

def predict_fn(data, model, context):
    if data == b"boom":
        raise RuntimeError("predict exploded")
    return {"echo": data.decode(), "batch": len(context.request_processor)}

def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"
'''

BATCHED = '''
import json

BATCH_PREDICT = True

def model_fn(model_dir):
    return None

def input_fn(body, content_type):
    return body.decode()

def predict_fn(data, model):
    assert isinstance(data, list)
    return [{"item": d, "list_len": len(data)} for d in data]

def output_fn(prediction, accept):
    return json.dumps(prediction)
'''


class SumLast(torch.nn.Module):
    def forward(self, x):
        return x.float().sum(dim=-1)


def encode(img, fmt):
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def write_module(model_dir: Path, source: str, name="inference.py"):
    (model_dir / "code").mkdir(parents=True, exist_ok=True)
    (model_dir / "code" / name).write_text(source)
    return model_dir


def dog_model(path: Path) -> Path:
    """A SageMaker-style model dir: resnet18 state_dict + index_to_name.json + code/inference.py (the example)."""
    torch.manual_seed(0)
    path.mkdir(parents=True)
    model = torchvision.models.resnet18(weights=None, num_classes=len(CLASSES))
    torch.save(model.state_dict(), path / "model.pth")
    (path / "index_to_name.json").write_text(json.dumps({str(i): c for i, c in enumerate(CLASSES)}))
    (path / "code").mkdir()
    shutil.copyfile(EXAMPLE, path / "code" / "inference.py")
    return path


def model_tarball(model_dir: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        for entry in sorted(model_dir.iterdir()):
            tar.add(entry, arcname=entry.name)
    return dest


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("script-models")
    dogs = dog_model(root / "dogs")
    transform = write_module(root / "transform", TRANSFORM)
    faulty = write_module(root / "faulty", FAULTY)
    batched = write_module(root / "batched", BATCHED)
    defaults = root / "defaults"
    defaults.mkdir()
    torch.jit.script(SumLast()).save(str(defaults / "model.pt"))
    return {"dogs": dogs, "transform": transform, "faulty": faulty, "batched": batched, "defaults": defaults}


@pytest.fixture(scope="module")
def mar(models, tmp_path_factory):
    return torchserve_script.package_script(models["dogs"], tmp_path_factory.mktemp("store"), name="dogs-mar")


@pytest.fixture(scope="module")
def server(models, mar, tmp_path_factory):
    logs = tmp_path_factory.mktemp("script-logs")
    port, metrics, grpc, grpc2 = free_ports(4)
    # the faulty module gets a real batch window, so that good and bad requests share a batch
    ts = torchserve_script.ScriptServer({**models, "dogs-mar": mar}, port=port, metrics_port=metrics,
                              grpc_ports=(grpc, grpc2), log_path=logs / "torchserve.out",
                              batching={"faulty": {"batchSize": 8, "maxBatchDelay": 400}})
    try:
        ts.start(wait_s=300)
    except Exception:
        print((logs / "torchserve.out").read_text()[-5000:])
        raise
    yield ts
    ts.stop()


@pytest.fixture(scope="module")
def jpeg():
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)), "JPEG")


@pytest.fixture(scope="module")
def png():
    rng = np.random.default_rng(1)
    return encode(Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)).convert("RGBA"), "PNG")


def url(server, model):
    return f"{server.url}/predictions/{model}"


def check_top(preds, k):
    assert [p["label"] for p in preds] and len(preds) == k
    assert {p["label"] for p in preds} <= set(CLASSES)
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def reference_probs(models, raw):
    """The example's own functions in this process: what the server must answer."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dog_inference_ref", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.model_fn(str(models["dogs"]))
    return module.predict_fn(module.input_fn(raw, "image/jpeg"), model)["probs"][0]


# ------------------------------------------------------------------------------ the example script


@pytest.mark.integration
def test_example_jpeg_png_json(server, models, jpeg, png):
    r = requests.post(url(server, "dogs"), data=jpeg, headers={"Content-Type": "image/jpeg"}, timeout=T)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    preds = r.json()["predictions"]
    check_top(preds, 3)
    expected = reference_probs(models, jpeg)
    assert [p["index"] for p in preds] == expected.argsort(descending=True).tolist()
    assert preds[0]["probability"] == pytest.approx(float(expected.max()), abs=1e-4)

    r = requests.post(f"{server.url}/invocations?model_name=dogs", data=png, headers={"Content-Type": "image/png"},
                      timeout=T)
    assert r.status_code == 200, r.text
    check_top(r.json()["predictions"], 3)

    body = {"image": base64.b64encode(jpeg).decode(), "topk": 2}
    r = requests.post(url(server, "dogs"), json=body, timeout=T)
    assert r.status_code == 200, r.text
    assert [p["index"] for p in r.json()["predictions"]] == [p["index"] for p in preds[:2]]


@pytest.mark.integration
def test_example_npy_in_and_out(server, jpeg):
    array = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.uint8)
    buf = io.BytesIO()
    np.save(buf, array)
    r = requests.post(url(server, "dogs"), data=buf.getvalue(),
                      headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"}, timeout=T)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/x-npy"
    probs = np.load(io.BytesIO(r.content))
    assert probs.shape == (1, len(CLASSES)) and abs(probs.sum() - 1) < 1e-4
    # Accept */* -> SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT (application/json)
    r = requests.post(url(server, "dogs"), data=jpeg, headers={"Content-Type": "image/jpeg", "Accept": "*/*"},
                      timeout=T)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    # an Accept the script cannot produce: its UnsupportedAcceptError -> 406
    r = requests.post(url(server, "dogs"), data=jpeg, headers={"Content-Type": "image/jpeg", "Accept": "text/csv"},
                      timeout=T)
    assert r.status_code == 406, r.text
    assert r.json()["type"] == "UnsupportedAcceptError"


@pytest.mark.integration
def test_example_bad_requests(server, jpeg):
    r = requests.post(url(server, "dogs"), data=b"hello", headers={"Content-Type": "text/plain"}, timeout=T)
    assert r.status_code == 415 and r.json()["type"] == "UnsupportedContentTypeError", r.text
    r = requests.post(url(server, "dogs"), data=b"not an image", headers={"Content-Type": "image/jpeg"}, timeout=T)
    assert r.status_code == 400, r.text
    doc = r.json()
    assert set(doc) == {"code", "type", "message"} and doc["code"] == 400
    assert "Traceback" not in r.text and "File \"" not in r.text
    r = requests.post(url(server, "dogs"), data=jpeg, headers={"Content-Type": "image/jpeg"}, timeout=T)
    assert r.status_code == 200  # the worker keeps serving


@pytest.mark.integration
def test_packaged_mar_serves_the_same(server, jpeg, mar):
    a = requests.post(url(server, "dogs"), data=jpeg, headers={"Content-Type": "image/jpeg"}, timeout=T)
    b = requests.post(url(server, "dogs-mar"), data=jpeg, headers={"Content-Type": "image/jpeg"}, timeout=T)
    assert a.status_code == b.status_code == 200, b.text
    assert a.json() == b.json()
    with __import__("zipfile").ZipFile(mar) as z:
        names = set(z.namelist())
    assert {"code/inference.py", "script_handler.py", "script_defaults.py", "model.pth"} <= names


@pytest.mark.integration
def test_script_batching_defaults(server):
    desc = server.describe("dogs")
    assert (desc["batchSize"], desc["maxBatchDelay"]) == (1, 100)  # the toolkit's defaults
    desc = server.describe("batched")
    assert (desc["batchSize"], desc["maxBatchDelay"]) == (8, 5)  # BATCH_PREDICT = True


# --------------------------------------------------------------------- transform_fn, context, defaults


@pytest.mark.integration
def test_transform_fn_with_context_and_body_types(server):
    r = requests.post(url(server, "transform"), data=b"\x00\x01raw",
                      headers={"Content-Type": "application/octet-stream"}, timeout=T)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["type"] == "bytes" and doc["len"] == 5 and doc["accept"] == "application/json"
    assert doc["model"] == {"model_dir_seen": True}  # model_fn got the context too
    r = requests.post(url(server, "transform"), data='{"a": "é"}'.encode(),
                      headers={"Content-Type": "application/json; charset=utf-8", "Accept": "application/x-npy"},
                      timeout=T)
    doc = r.json()
    assert doc["type"] == "str" and doc["content_type"] == "application/json" and doc["len"] == 10
    assert doc["accept"] == "application/x-npy"
    assert r.headers["Content-Type"] == "application/x-npy"  # no (body, type): the Accept is the type
    r = requests.post(url(server, "transform"), data="1,2",
                      headers={"Content-Type": "text/csv", "Accept": "text/plain"}, timeout=T)
    assert r.status_code == 200 and r.text == "plain:text/csv"
    assert r.headers["Content-Type"].startswith("text/plain")  # the (body, content_type) return


@pytest.mark.integration
def test_default_functions_with_torchscript(server, png):
    r = requests.post(url(server, "defaults"), json=[[1, 2, 3, 4], [5, 6, 7, 8]], timeout=T)
    assert r.status_code == 200, r.text
    assert r.json() == [10.0, 26.0]
    r = requests.post(url(server, "defaults"), data="1,2,3\n4,5,6\n", headers={"Content-Type": "text/csv",
                                                                                 "Accept": "text/csv"}, timeout=T)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert [float(v) for v in r.text.split()] == [6.0, 15.0]
    buf = io.BytesIO()
    np.save(buf, np.ones((2, 3), dtype=np.float32))
    r = requests.post(url(server, "defaults"), data=buf.getvalue(),
                      headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"}, timeout=T)
    assert r.status_code == 200 and np.load(io.BytesIO(r.content)).tolist() == [3.0, 3.0]
    # an image -> float32 CHW in [0, 1]: the sum over the last axis is (3, H), each <= W
    r = requests.post(url(server, "defaults"), data=png, headers={"Content-Type": "image/png"}, timeout=T)
    assert r.status_code == 200, r.text
    out = np.array(r.json())
    assert out.shape == (3, 120) and 0 <= out.min() and out.max() <= 90
    r = requests.post(url(server, "defaults"), data=b"x", headers={"Content-Type": "text/html"}, timeout=T)
    assert r.status_code == 415 and r.json()["type"] == "UnsupportedContentType"
    r = requests.post(url(server, "defaults"), json=[1, 2], headers={"Accept": "image/gif"}, timeout=T)
    assert r.status_code == 406, r.text


# ----------------------------------------------------------------------------------- per-request faults


@pytest.mark.integration
def test_user_function_faults_answer_only_their_request(server):
    cases = [(b"bad-input", "application/octet-stream", 400, "ValueError"),
             (b"x", "text/x-unsupported", 415, "UnsupportedThingError"),
             (b"boom", "application/octet-stream", 500, "RuntimeError")]
    for body, ctype, code, kind in cases:
        r = requests.post(url(server, "faulty"), data=body, headers={"Content-Type": ctype}, timeout=T)
        assert r.status_code == code, r.text
        doc = r.json()
        assert doc["code"] == code and doc["type"] == kind and "Traceback" not in r.text
    assert "predict exploded" in doc["message"]


@pytest.mark.integration
def test_one_bad_request_in_a_batch(server):
    bodies = [b"good-0", b"boom", b"good-1", b"bad-input", b"good-2", b"good-3"]
    for _ in range(3):  # concurrent requests inside one 400 ms batch window
        with cf.ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: requests.post(url(server, "faulty"), data=b, timeout=T), bodies))
        codes = [r.status_code for r in answers]
        assert codes == [200, 500, 200, 400, 200, 200], [r.text for r in answers]
        good = [r.json() for r in answers if r.status_code == 200]
        assert [g["echo"] for g in good] == ["good-0", "good-1", "good-2", "good-3"]  # each got its own answer
        if max(g["batch"] for g in good) > 1:
            return
    pytest.fail("the requests never shared a TorchServe batch")


@pytest.mark.integration
def test_batch_predict_gets_one_list(server):
    bodies = [f"item-{i}" for i in range(6)]
    for _ in range(5):
        with cf.ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: requests.post(url(server, "batched"), data=b, timeout=T), bodies))
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        docs = [r.json() for r in answers]
        assert [d["item"] for d in docs] == bodies
        if max(d["list_len"] for d in docs) > 1:
            return
    pytest.fail("predict_fn never got more than one input (BATCH_PREDICT)")


# ------------------------------------------------------------------- serve/serve: startup and faults


def serve_env(model_dir, port, **extra):
    metrics, grpc = free_ports(2)
    while grpc + 1 in (port, metrics):
        (grpc,) = free_ports(1)
    env = {**os.environ, "LOCALSAGE_MODEL_DIR": str(model_dir), "LOCALSAGE_BIND_HOST": "127.0.0.1",
           "SAGEMAKER_BIND_TO_PORT": str(port), "LOCALSAGE_METRICS_PORT": str(metrics),
           "LOCALSAGE_GRPC_PORT": str(grpc), "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    for key in ("PIP_INDEX_URL", "PIP_FIND_LINKS", "SAGEMAKER_PROGRAM"):
        env.pop(key, None)
    env.update(extra)
    return env


STARTUP_FAULTS = {
    "model_fn raising": ("def model_fn(model_dir):\n    raise RuntimeError('weights are corrupt')\n",
                         "weights are corrupt"),
    "both transform_fn and predict_fn": ("def model_fn(d):\n    return 1\ndef predict_fn(x, m):\n    return x\n"
                                         "def transform_fn(m, b, c, a):\n    return b\n", "transform_fn replaces"),
    "import error": ("import no_such_module_anywhere\n", "no_such_module_anywhere"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(STARTUP_FAULTS))
def test_serve_exits_nonzero_when_the_script_cannot_load(tmp_path, case):
    source, reason = STARTUP_FAULTS[case]
    model = write_module(tmp_path / "model", source)
    (port,) = free_ports(1)
    r = subprocess.run([sys.executable, str(SERVE_SCRIPT)], env=serve_env(model, port), capture_output=True, text=True,
                       timeout=T)
    assert r.returncode != 0
    assert reason in r.stderr, r.stderr[-3000:]
    with pytest.raises(requests.ConnectionError):  # nothing answers /ping
        requests.get(f"http://127.0.0.1:{port}/ping", timeout=2)


@pytest.mark.integration
def test_serve_missing_module_and_offline_requirements(tmp_path, models):
    model = tmp_path / "model"
    shutil.copytree(models["dogs"], model)
    (port,) = free_ports(1)
    r = subprocess.run([sys.executable, str(SERVE_SCRIPT)],
                       env=serve_env(model, port, SAGEMAKER_PROGRAM="predictor.py"),
                       capture_output=True, text=True, timeout=T)
    assert r.returncode != 0 and "predictor" in r.stderr, r.stderr[-3000:]
    (model / "code" / "requirements.txt").write_text("some-package-nobody-has==1.0\n")
    r = subprocess.run([sys.executable, str(SERVE_SCRIPT)], env=serve_env(model, port), capture_output=True, text=True,
                       timeout=T)
    assert r.returncode != 0
    assert "requirements.txt" in r.stderr and "PIP_FIND_LINKS" in r.stderr, r.stderr[-3000:]


@pytest.mark.integration
def test_serve_entrypoint_serves_the_example(tmp_path, models, jpeg):
    """The image's `serve` as a host process on a plain SageMaker model dir (read-only, no MAR-INF)."""
    model = tmp_path / "opt-ml-model"
    shutil.copytree(models["dogs"], model)
    (port,) = free_ports(1)
    env = serve_env(model, port, SAGEMAKER_MODEL_SERVER_WORKERS="1", SAGEMAKER_TS_BATCH_SIZE="2",
                    SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT="application/x-npy")
    os.chmod(model, 0o555)
    log = open(tmp_path / "serve.out", "wb")
    proc = subprocess.Popen([sys.executable, str(SERVE_SCRIPT)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "serve.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "serve never became healthy"
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        out = (tmp_path / "serve.out").read_text()
        assert "batch=2" in out and "loading it once before TorchServe starts" in out
        r = requests.post(f"http://127.0.0.1:{port}/invocations", data=jpeg, headers={"Content-Type": "image/jpeg"},
                          timeout=T)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/x-npy"  # SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT
        assert np.load(io.BytesIO(r.content)).shape == (1, len(CLASSES))
    finally:
        os.chmod(model, 0o755)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert code == 0, (tmp_path / "serve.out").read_text()[-3000:]
    assert not list(model.glob("MAR-INF")), "serve wrote into the model dir"


# ------------------------------------------------------------------------------ localsage serve (CLI)


@pytest.mark.integration
def test_localsage_serve_tarball_with_entry_point_and_source_dir(tmp_path, models, jpeg):
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copyfile(models["dogs"] / "model.pth", plain / "model.pth")
    tarball = model_tarball(plain, tmp_path / "model.tar.gz")
    code = tmp_path / "src"
    code.mkdir()
    shutil.copyfile(EXAMPLE, code / "dogs.py")
    (port,) = free_ports(1)
    cmd = [sys.executable, "-m", "localsage", "serve", str(tarball), "--entry-point", "dogs.py", "--source-dir",
           str(code), "--port", str(port)]
    with serving_cli(cmd, tmp_path / "cli.out"):
        r = requests.post(f"http://127.0.0.1:{port}/invocations", data=jpeg, headers={"Content-Type": "image/jpeg"},
                          timeout=T)
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]][0].startswith("class_")  # no index_to_name.json


@pytest.mark.integration
def test_localsage_serve_prints_a_worker_load_failure(tmp_path):
    """A model_fn failing in TorchServe's worker: localsage serve prints the reason and exits 1."""
    model = write_module(tmp_path / "model", "def model_fn(model_dir):\n    raise OSError('no GPU in this worker')\n")
    (port,) = free_ports(1)
    r = subprocess.run([sys.executable, "-m", "localsage", "serve", str(model), "--port", str(port)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "no GPU in this worker" in r.stderr and "cannot be served" in r.stderr


# ------------------------------------------------------------------------------------- docker image


@pytest.mark.integration
@pytest.mark.docker
def test_image_has_sagemaker_inference(image):
    out = subprocess.run(["docker", "run", "--rm", image, "python", "-c",
                          "from sagemaker_inference import content_types, decoder, encoder; "
                          "print(content_types.JSON, decoder.decode('[1, 2]', content_types.JSON).tolist())"],
                         capture_output=True, text=True, timeout=T)
    assert out.returncode == 0 and out.stdout.split() == ["application/json", "[1,", "2]"], out.stderr


@pytest.mark.integration
@pytest.mark.docker
def test_container_serve_script_model(image, models, jpeg):
    (port,) = free_ports(1)
    name = f"localsage-scriptserve-{os.getpid()}"
    subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080",
                    "-v", f"{models['dogs'].resolve()}:/opt/ml/model:ro", image, "serve"], check=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
            assert time.monotonic() < deadline, logs.stdout[-3000:] + logs.stderr[-3000:]
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        r = requests.post(f"http://127.0.0.1:{port}/invocations", data=jpeg, headers={"Content-Type": "image/jpeg"},
                          timeout=T)
        assert r.status_code == 200, r.text
        check_top(r.json()["predictions"], 3)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.mark.integration
@pytest.mark.docker
def test_container_serve_exits_when_model_fn_fails(image, tmp_path):
    model = write_module(tmp_path / "model", "def model_fn(model_dir):\n    raise RuntimeError('bad weights')\n")
    r = subprocess.run(["docker", "run", "--rm", "-v", f"{model}:/opt/ml/model:ro", image, "serve"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "bad weights" in r.stderr, r.stdout[-2000:] + r.stderr[-2000:]


@pytest.mark.integration
@pytest.mark.docker
@pytest.mark.parametrize("case", ["whole pickled model", "SDK v3 InferenceSpec code"])
def test_container_serve_exits_with_the_clear_reason_for_known_failures(image, tmp_path, case):
    """The image (SDK v2's `sagemaker`, its warning off): `serve` stops at once with the one clear reason."""
    model = known_failure_model(tmp_path / "model", case)
    r = subprocess.run(["docker", "run", "--rm", "-v", f"{model}:/opt/ml/model:ro", image, "serve"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0, r.stdout[-2000:] + r.stderr[-2000:]
    if case == "whole pickled model":
        assert_weights_only_reason(r.stderr)
    else:
        assert "InferenceSpec needs SDK v3" in r.stderr and "sagemaker.serve.constants" in r.stderr, r.stderr[-3000:]
    assert "SageMakerV2DeprecationWarning" not in r.stdout + r.stderr  # SAGEMAKER_SUPPRESS_V2_WARNING=1


@pytest.mark.integration
@pytest.mark.docker
def test_sagemaker_sdk_pytorch_model_local_deploy(image, models, jpeg, tmp_path):
    """The real SDK: PyTorchModel(file:// model.tar.gz, entry_point, source_dir).deploy(1, 'local')."""
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.predictor import Predictor
    from sagemaker.pytorch import PyTorchModel
    from sagemaker.serializers import IdentitySerializer

    from localsage.host.backends import sagemaker_local

    plain = tmp_path / "plain"
    plain.mkdir()
    for f in ("model.pth", "index_to_name.json"):
        shutil.copyfile(models["dogs"] / f, plain / f)
    tarball = model_tarball(plain, tmp_path / "model.tar.gz")  # a copy: the SDK repacks file:// data in place
    source = tmp_path / "code"
    source.mkdir()
    shutil.copyfile(EXAMPLE, source / "inference.py")
    with sagemaker_local.local_aws_env():
        session = sagemaker_local.session(tmp_path / "sm", "scriptserve-test", init=True)
        model = PyTorchModel(model_data=f"file://{tarball}", entry_point="inference.py", source_dir=str(source),
                             framework_version="2.1", py_version="py310", image_uri=image,
                             code_location="s3://localsage-offline/code",  # else the SDK asks STS for a bucket
                             role="arn:aws:iam::111111111111:role/localsage-dummy",
                             sagemaker_session=session)
        predictor = model.deploy(initial_instance_count=1, instance_type="local")
        try:
            with tarfile.open(tarball) as tar:  # repacked in place with code/ (SAGEMAKER_PROGRAM=inference.py)
                assert "code/inference.py" in {n.lstrip("./") for n in tar.getnames()}
            # PyTorchPredictor's defaults: NumpySerializer / NumpyDeserializer (application/x-npy)
            array = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.uint8)
            probs = predictor.predict(array)
            assert probs.shape == (1, len(CLASSES)) and abs(float(probs.sum()) - 1) < 1e-4
            jpeg_predictor = Predictor(predictor.endpoint_name, sagemaker_session=session,
                                       serializer=IdentitySerializer("image/jpeg"), deserializer=JSONDeserializer())
            result = jpeg_predictor.predict(jpeg)
            check_top(result["predictions"], 3)
            assert int(np.argmax(probs[0])) == result["predictions"][0]["index"]
        finally:
            predictor.delete_endpoint()


def _tiny_wheel(folder: Path) -> Path:
    """A pure-Python wheel `tinydep 0.1` (module tinydep with VALUE = 42), for the offline install path."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tinydep-0.1-py3-none-any.whl"
    files = {"tinydep/__init__.py": "VALUE = 42\n",
             "tinydep-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinydep\nVersion: 0.1\n",
             "tinydep-0.1.dist-info/WHEEL": ("Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             "Tag: py3-none-any\n")}
    files["tinydep-0.1.dist-info/RECORD"] = "".join(f"{name},,\n" for name in [*files, "tinydep-0.1.dist-info/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def test_requirements_install_from_find_links_into_a_private_folder(tmp_path):
    stage = torchserve_script.script_stage()
    model = write_module(tmp_path / "model", "import tinydep\n")
    (model / "code" / "requirements.txt").write_text("# offline wheelhouse\ntinydep==0.1\n")
    wheels = _tiny_wheel(tmp_path / "wheels").parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    with pytest.raises(stage.StageError, match="requirements.txt"):
        stage.install_requirements(str(model), env, target=str(tmp_path / "site"))
    env.update(PIP_FIND_LINKS=str(wheels), PIP_NO_INDEX="1")
    assert stage.install_requirements(str(model), env, target=str(tmp_path / "site"))
    assert (tmp_path / "site" / "tinydep" / "__init__.py").read_text() == "VALUE = 42\n"
    (model / "code" / "requirements.txt").write_text("tinydep==9.9\n")  # not in the wheelhouse: pip's reason
    with pytest.raises(stage.StageError, match="pip install -r .*requirements.txt failed"):
        stage.install_requirements(str(model), env, target=str(tmp_path / "site2"))


# ------------------------------------------------- known load failures: whole pickled models, SDK v3 code

WHOLE_PICKLE = '''
import os, torch

def model_fn(model_dir):
    return torch.load(os.path.join(model_dir, "model.pth"))  # a whole pickled model, no weights_only
'''

SDK_V3 = '''
from sagemaker.serve.constants import Framework  # what SDK v3's ModelBuilder (InferenceSpec) writes
'''

SDK_V2_WARNING = ("/opt/venv/lib/python3.11/site-packages/sagemaker/__init__.py:86: SageMakerV2DeprecationWarning: "
                  "You are using the SageMaker Python SDK v2, which is on path of deprecation.\n"
                  "See https://github.com/aws/sagemaker-python-sdk/blob/master/migration.md for the migration guide.\n"
                  "  warn_v2_deprecation()\n")


def whole_pickle_model(path: Path) -> Path:
    """A tiny model saved whole with torch.save(model) and a model_fn that torch.loads it."""
    path.mkdir(parents=True)
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 2)), path / "model.pth")
    return write_module(path, WHOLE_PICKLE)


def script_errors():
    from localsage.core.serve_dir import serve_module

    return serve_module("script_errors.py")


def load_serve_entry():
    """serve/serve (no .py suffix) as a module, in this process."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("localsage_serve_entry", str(SERVE_SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def assert_weights_only_reason(text):
    """The one clear reason, once, naming both fixes."""
    errors = script_errors()
    assert text.count("torch.load refused a whole pickled model") == 1, text[-3000:]
    assert "state_dict" in text and f"{errors.FORCE_NO_WEIGHTS_ONLY}=1" in text and "--env" in text, text[-3000:]


def test_known_failures_get_one_clear_reason(tmp_path):
    errors = script_errors()
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 2)), tmp_path / "whole.pt")
    try:
        torch.load(tmp_path / "whole.pt")
    except Exception:  # noqa: BLE001 - the real error of this torch
        import traceback

        torch_error = traceback.format_exc()
    else:
        pytest.fail("torch.load loaded a whole pickled model with its default weights_only")
    reason = errors.reason(torch_error)
    assert_weights_only_reason(reason)
    assert "torch.nn.modules.container.Sequential" in reason and "\x1b[" not in reason
    v3 = ("Traceback (most recent call last):\n  File \"inference.py\", line 1, in <module>\n"
          "ModuleNotFoundError: No module named 'sagemaker.serve.constants'\n")
    reason = errors.reason(v3 + SDK_V2_WARNING)
    assert "sagemaker.serve.constants" in reason and "InferenceSpec" in reason and "SDK v2" in reason
    assert "model_path" in reason and "SAGEMAKER_PROGRAM" in reason and "code/inference.py" in reason
    assert errors.explain("ImportError: cannot import name 'InferenceSpec' from 'sagemaker.serve' (x.py)")
    assert errors.explain(v3, serving=False) is None  # a training job: not a serving limitation
    assert errors.explain("ModuleNotFoundError: No module named 'sagemaker'") is None
    assert errors.explain("RuntimeError: weights are corrupt") is None


def test_last_exception_is_the_tracebacks_not_a_trailing_warning():
    errors = script_errors()
    text = ("noise\nTraceback (most recent call last):\n  File \"a.py\", line 1, in <module>\n    import x\n"
            "    ^^^^^^^^\nValueError: first\n\nDuring handling of the above exception, another exception occurred:\n\n"
            "Traceback (most recent call last):\n  File \"b.py\", line 2, in f\n"
            "ModuleNotFoundError: No module named 'foo'\n" + SDK_V2_WARNING)
    assert errors.last_exception(text) == "ModuleNotFoundError: No module named 'foo'"
    multi = ("Traceback (most recent call last):\n  File \"c.py\", line 3\n"
             "RuntimeError: line one\nline two\n\ttab three\n")
    assert errors.last_exception(multi) == "RuntimeError: line one\nline two\n\ttab three"
    assert errors.last_exception("just a message\nlast words\n\n") == "last words"
    assert errors.reason("") == "(no output)"


def test_preflight_reason_is_the_last_traceback_not_a_trailing_warning(tmp_path, monkeypatch):
    """serve/serve's load-once check (in this process, its subprocess faked): the reason it exits with is the
    traceback's exception, not the SDK v2 deprecation warning printed after it."""
    serve_entry = load_serve_entry()
    model = write_module(tmp_path / "model", "import no_such_module_anywhere\n")
    stderr = ("Traceback (most recent call last):\n  File \"<string>\", line 4, in <module>\n"
              "ModuleNotFoundError: No module named 'no_such_module_anywhere'\n" + SDK_V2_WARNING)
    monkeypatch.setattr(serve_entry.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, stdout=None, stderr=stderr))
    (tmp_path / "work").mkdir()
    with pytest.raises(SystemExit) as e:
        serve_entry.stage_script(str(model), str(tmp_path / "work"), {"PATH": os.environ.get("PATH", "")})
    assert str(e.value).endswith("ModuleNotFoundError: No module named 'no_such_module_anywhere'"), str(e.value)
    assert "Deprecation" not in str(e.value)


def known_failure_model(folder, case: str):
    """A script model that fails to load for one of script_errors' known reasons."""
    return whole_pickle_model(folder) if case == "whole pickled model" else write_module(folder, SDK_V3)


@pytest.mark.integration
@pytest.mark.parametrize("case", ["whole pickled model", "SDK v3 InferenceSpec code"])
def test_serve_exits_with_the_clear_reason_for_known_failures(tmp_path, case):
    """The image's `serve` as a host process: fails fast (before TorchServe starts) with one clear reason."""
    model = known_failure_model(tmp_path / "model", case)
    (port,) = free_ports(1)
    env = serve_env(model, port)
    for key in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "SAGEMAKER_SUPPRESS_V2_WARNING"):
        env.pop(key, None)
    started = time.monotonic()
    r = subprocess.run([sys.executable, str(SERVE_SCRIPT)], env=env, capture_output=True, text=True, timeout=T)
    assert r.returncode != 0 and time.monotonic() - started < 90, r.stderr[-3000:]
    reason = r.stderr.strip().splitlines()
    assert "cannot be served" in r.stderr and "workers=" not in r.stdout  # TorchServe never started
    if case == "whole pickled model":
        assert_weights_only_reason(r.stderr)
    else:
        assert "sagemaker.serve.constants" in r.stderr and "InferenceSpec" in r.stderr, r.stderr[-3000:]
        assert "SAGEMAKER_PROGRAM" in r.stderr and "model_path" in r.stderr
    assert "Deprecation" not in reason[-1] and "migration guide" not in reason[-1], reason[-3:]


@pytest.mark.integration
@pytest.mark.parametrize("case", ["whole pickled model", "SDK v3 InferenceSpec code"])
def test_localsage_serve_exits_with_the_clear_reason_for_known_failures(tmp_path, case):
    """`localsage serve`: the worker's load failure stops the server at once with the one clear reason."""
    model = known_failure_model(tmp_path / "model", case)
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    r = subprocess.run([sys.executable, "-m", "localsage", "serve", str(model), "--port", str(port)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "cannot be served" in r.stderr
    if case == "whole pickled model":
        assert_weights_only_reason(r.stderr)
    else:
        assert r.stderr.count("InferenceSpec needs SDK v3") == 1 and "sagemaker.serve.constants" in r.stderr, r.stderr


@pytest.mark.integration
def test_localsage_serve_env_loads_a_trusted_whole_pickled_model(tmp_path):
    """--env TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 reaches the workers: the same model serves."""
    model = whole_pickle_model(tmp_path / "model")
    (port,) = free_ports(1)
    cmd = [sys.executable, "-m", "localsage", "serve", str(model), "--port", str(port),
           "--env", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"]
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    with serving_cli(cmd, tmp_path / "cli.out", env=env):
        r = requests.post(f"http://127.0.0.1:{port}/invocations", json=[[1.0, 2.0, 3.0, 4.0]], timeout=T)
        assert r.status_code == 200, r.text
        assert np.array(r.json()).shape == (1, 2)


def test_env_flag_of_localsage_serve_is_key_value(tmp_path):
    from localsage.cli import main as cli_main

    with pytest.raises(SystemExit, match="--env expects KEY=VALUE"):
        cli_main(["serve", str(tmp_path), "--env", "NOVALUE"])
