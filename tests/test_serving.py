"""Serving: the real TorchServe, real HTTP on loopback, the trained demo model.

One TorchServe per session serves the trained demo job's model dir (as exported) and the `.mar`
that `localsage package` makes from it. `serve/serve` (the SageMaker `serve` entrypoint) is run
as a host process against a copy of the model dir.
"""
from __future__ import annotations

import argparse
import ast
import base64
import concurrent.futures as cf
import contextlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from localsage.cli import serve as cli_serve
from localsage.container import export
from localsage.host import torchserve

ROOT = Path(__file__).resolve().parent.parent
HANDLER = ROOT / "serve" / "handler.py"
HANDLER_FILES = [HANDLER, *sorted(HANDLER.parent.glob("handler_*.py"))]
SERVE_SCRIPT = ROOT / "serve" / "serve"
T = 120  # seconds per HTTP request (this machine's cores are shared)
MAX_IMAGE_BYTES = 1_500_000  # the test server's handler byte limit (below TorchServe's 6.5 MB request limit)


def free_ports(n):
    """n distinct free loopback ports (all held open while choosing, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def load_handler_module():
    """serve/handler.py as TorchServe imports it: its directory (with its handler_*.py) on sys.path."""
    import importlib.util

    if str(HANDLER.parent) not in sys.path:
        sys.path.insert(0, str(HANDLER.parent))
    spec = importlib.util.spec_from_file_location("localsage_test_handler", HANDLER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve_module(name):
    """One of the handler's modules (serve/handler_*.py) by name, imported as the handler imports it."""
    import importlib

    if str(HANDLER.parent) not in sys.path:
        sys.path.insert(0, str(HANDLER.parent))
    return importlib.import_module(name)


def encode(img, fmt="JPEG", **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def model_dir(trained_job):
    return Path(trained_job["JobDir"]) / "model"


@pytest.fixture(scope="session")
def served_model_dir(model_dir, tmp_path_factory):
    """The exported model dir; made TorchServe-ready here only if export has not done it yet
    (test_export_writes_torchserve_dir checks that export does)."""
    if not (model_dir / export.MANIFEST).is_file():
        copy = tmp_path_factory.mktemp("tsdir") / "model"
        shutil.copytree(model_dir, copy)
        export.make_torchserve_dir(copy)
        return copy
    return model_dir


@pytest.fixture(scope="session")
def classes(served_model_dir):
    mapping = json.loads((served_model_dir / "index_to_name.json").read_text())
    return [mapping[str(i)] for i in range(len(mapping))]


@pytest.fixture(scope="session")
def mar(served_model_dir, tmp_path_factory):
    return torchserve.package(served_model_dir, tmp_path_factory.mktemp("store"), name="demo-mar")


@pytest.fixture(scope="session")
def server(served_model_dir, mar, tmp_path_factory):
    logs = tmp_path_factory.mktemp("tslogs")
    port, metrics_port, grpc, grpc_management = free_ports(4)
    ts = torchserve.LocalServer(
        {"demo": served_model_dir, "demo-mar": mar}, port=port,
        metrics_port=metrics_port, grpc_ports=(grpc, grpc_management),
        env={"LOCALSAGE_SERVE_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES)},
        log_path=logs / "torchserve.out",
    )
    ts.start(wait_s=240)
    yield ts
    ts.stop()
    assert not [p for p in ts.worker_pids() if psutil.pid_exists(p)]


@pytest.fixture(scope="session")
def predict_url(server):
    return server.url + "/predictions/demo"


@pytest.fixture(scope="session")
def test_images(demo_data):
    """Held-out demo images: [(path, true class index)]."""
    folders = sorted(p for p in (Path(demo_data) / "test").iterdir() if p.is_dir())
    return [(f, i) for i, folder in enumerate(folders) for f in sorted(folder.glob("*.jpg"))]


@pytest.fixture(scope="session")
def sample_jpeg(test_images):
    return test_images[0][0].read_bytes()


def check_predictions(preds, classes, k):
    assert isinstance(preds, list) and len(preds) == k
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 1e-4
    for p in preds:
        assert set(p) == {"label", "index", "probability"}
        assert classes[p["index"]] == p["label"]
    assert len({p["index"] for p in preds}) == k


def assert_alive(predict_url, sample_jpeg):
    r = requests.post(predict_url, data=sample_jpeg, headers={"Content-Type": "image/jpeg"}, timeout=T)
    assert r.status_code == 200, r.text
    assert "predictions" in r.json()


# ------------------------------------------------------------------------------- the artifact


def test_side_ports_are_free_distinct_and_avoid_taken_ones():
    """Metrics and gRPC beside a server: port + 2 when free, else (and always for gRPC beside a port other
    than 8080) ports the kernel picks, never the server's own port or a taken one (TorchServe exits on a
    taken gRPC port before it serves anything)."""
    port, free_next = free_ports(2)
    metrics, grpc = torchserve.side_ports(port, metrics=free_next)
    assert metrics == free_next and len({port, metrics, *grpc}) == 4
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        metrics, grpc = torchserve.side_ports(busy - 2)
        assert busy not in (metrics, *grpc) and len({busy - 2, metrics, *grpc}) == 4
        for p in (metrics, *grpc):  # all free now
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))


@pytest.mark.integration
def test_export_writes_torchserve_dir(model_dir):
    """The training job's model/ is a TorchServe model directory as exported (no extra step)."""
    manifest = json.loads((model_dir / export.MANIFEST).read_text())
    assert manifest["runtime"] == "python"
    assert manifest["model"]["handler"] == "handler.py"
    assert manifest["model"]["serializedFile"] == "model.pth"
    for path in HANDLER_FILES:  # the handler and its modules, as in serve/
        assert (model_dir / path.name).read_bytes() == path.read_bytes(), path.name
    assert (model_dir / "model-config.yaml").is_file()


@pytest.mark.integration
def test_torchserve_dir_contents(served_model_dir):
    import yaml

    manifest = json.loads((served_model_dir / export.MANIFEST).read_text())
    assert set(manifest) >= {"createdOn", "runtime", "model", "archiverVersion"}
    assert manifest["model"]["configFile"] == "model-config.yaml"
    config = yaml.safe_load((served_model_dir / "model-config.yaml").read_text())
    assert config["batchSize"] > 1 and config["maxBatchDelay"] > 0
    for name in ("model.pth", "model_config.json", "index_to_name.json", "handler.py"):
        assert (served_model_dir / name).is_file()


def test_handler_does_not_import_localsage():
    imported = set()
    for path in HANDLER_FILES:
        assert len(path.read_text().splitlines()) <= 400, path.name  # modules of one concern
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert "localsage" not in imported
    siblings = {p.stem for p in HANDLER_FILES}
    assert imported - siblings <= {"base64", "binascii", "http", "io", "ipaddress", "json", "logging", "math", "os",
                                   "re", "socket", "ssl", "time", "urllib", "numpy", "torch", "torchvision", "PIL",
                                   "ts"}, imported
    assert {"handler_defaults", "handler_errors", "handler_requests", "handler_images"} <= siblings


@pytest.mark.integration
def test_mar_package(mar):
    import zipfile

    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
    assert {"handler.py", "model.pth", "model_config.json", "index_to_name.json", "model-config.yaml"} <= names
    assert {p.name for p in HANDLER_FILES} <= names  # the handler's modules travel in the archive
    assert manifest["model"]["modelName"] == "demo-mar"


@pytest.mark.integration
def test_preprocessing_matches_training_eval_transform(served_model_dir, test_images):
    """The handler's pixels are exactly the training eval transform's (resize, crop, normalise)."""
    import torch

    from localsage.container import data
    from localsage.container.decode import decode
    from localsage.container.normalize import Normalize

    handler = load_handler_module()
    clf = handler.Classifier(str(served_model_dir))
    cfg = clf.cfg
    normalize = Normalize(cfg["mean"], cfg["std"])
    tf = data.eval_transform(cfg["image_size"], cfg["resize_size"])
    for path, _ in test_images[:5]:
        ours = clf._to_tensor([clf.preprocess_image(path.read_bytes())])
        img = decode(str(path), cfg["resize_size"])  # the training loader's decode (uint8 CHW)
        theirs = normalize(tf(img).unsqueeze(0))
        assert ours.shape == theirs.shape == (1, 3, cfg["image_size"], cfg["image_size"])
        assert torch.equal(ours, theirs)


# --------------------------------------------------------------------------------- good inputs


def _variants(jpeg):
    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    return {
        "jpeg": (encode(img), "image/jpeg"),
        "png": (encode(img, "PNG"), "image/png"),
        "grayscale": (encode(img.convert("L"), "PNG"), "image/png"),
        "rgba": (encode(img.convert("RGBA"), "PNG"), "application/x-image"),
        "palette": (encode(img.convert("P"), "GIF"), "image/gif"),
        "cmyk": (encode(img.convert("CMYK"), "JPEG"), "application/octet-stream"),
        "webp": (encode(img, "WEBP"), "image/webp"),
        "big-jpeg": (encode(img.resize((2000, 1500))), "image/jpeg"),  # DCT draft path
    }


@pytest.mark.integration
@pytest.mark.parametrize("variant", ["jpeg", "png", "grayscale", "rgba", "palette", "cmyk", "webp", "big-jpeg"])
def test_raw_image_bodies(predict_url, sample_jpeg, classes, variant):
    body, ctype = _variants(sample_jpeg)[variant]
    r = requests.post(predict_url, data=body, headers={"Content-Type": ctype}, timeout=T)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    check_predictions(r.json()["predictions"], classes, min(5, len(classes)))


@pytest.mark.integration
def test_put_without_content_type(predict_url, sample_jpeg, classes):
    """`curl -T img.jpg URL` sends a PUT with no image content type."""
    r = requests.put(predict_url, data=sample_jpeg, timeout=T)
    assert r.status_code == 200, r.text
    check_predictions(r.json()["predictions"], classes, 5)


@pytest.mark.integration
def test_base64_json(predict_url, sample_jpeg, classes):
    b64 = base64.b64encode(sample_jpeg).decode()
    r = requests.post(predict_url, json={"image": b64, "topk": 3}, timeout=T)
    assert r.status_code == 200, r.text
    check_predictions(r.json()["predictions"], classes, 3)
    raw = requests.post(predict_url, data=sample_jpeg, headers={"Content-Type": "image/jpeg"}, timeout=T).json()
    assert [p["index"] for p in r.json()["predictions"]] == [p["index"] for p in raw["predictions"][:3]]
    # data URL prefix and line-wrapped base64 are accepted too
    wrapped = "data:image/jpeg;base64," + "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    r = requests.post(predict_url, json={"image": wrapped, "topk": 1}, timeout=T)
    assert r.status_code == 200, r.text
    check_predictions(r.json()["predictions"], classes, 1)


@pytest.mark.integration
def test_base64_json_images_list(predict_url, sample_jpeg, test_images, classes):
    images = [base64.b64encode(p.read_bytes()).decode() for p, _ in test_images[:3]]
    r = requests.post(predict_url, json={"images": images, "topk": 2}, timeout=T)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 3
    for p in preds:
        check_predictions(p, classes, 2)


@pytest.mark.integration
def test_multipart(predict_url, sample_jpeg, classes):
    r = requests.post(predict_url, files={"data": ("dog.jpg", sample_jpeg, "image/jpeg")}, data={"topk": "2"},
                      timeout=T)
    assert r.status_code == 200, r.text
    check_predictions(r.json()["predictions"], classes, 2)


@pytest.mark.integration
def test_topk_header_query_and_max(server, predict_url, sample_jpeg, classes):
    r = requests.post(predict_url, data=sample_jpeg,
                      headers={"Content-Type": "image/jpeg", "X-Topk": str(len(classes))}, timeout=T)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    check_predictions(preds, classes, len(classes))
    assert abs(sum(p["probability"] for p in preds) - 1.0) < 1e-3
    # SageMaker custom attributes header
    r = requests.post(predict_url, data=sample_jpeg, timeout=T, headers={
        "Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "trace=1;topk=2"})
    check_predictions(r.json()["predictions"], classes, 2)
    # /invocations passes query parameters through (/predictions/<model> does not)
    r = requests.post(server.url + "/invocations", params={"model_name": "demo", "topk": 3}, data=sample_jpeg,
                      headers={"Content-Type": "image/jpeg"}, timeout=T)
    assert r.status_code == 200, r.text
    check_predictions(r.json()["predictions"], classes, 3)


def _exif_rotated_jpeg():
    """An image stored rotated with EXIF orientation 6 (as a camera writes it): 20x40 stored, 40x20
    upright, left half red and right half blue when upright."""
    upright = Image.new("RGB", (40, 20), (255, 0, 0))
    upright.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=95)


def _model_copy(served_model_dir, tmp_path, **config):
    copy = tmp_path / "model"
    shutil.copytree(served_model_dir, copy)
    cfg = json.loads((copy / "model_config.json").read_text())
    cfg.update(config)
    (copy / "model_config.json").write_text(json.dumps(cfg))
    return copy, cfg


@pytest.mark.integration
def test_preprocess_spec_read_from_model_config(served_model_dir, tmp_path, predict_url, sample_jpeg):
    """The handler's preprocessing is model_config.json's "preprocess" spec: sizes, interpolation,
    antialias and EXIF policy all come from it; without it (older models) it is derived from
    image_size/resize_size/mean/std and what training did then (no EXIF transpose)."""
    import torch
    from torchvision.transforms import v2

    handler = load_handler_module()
    legacy = handler.Classifier(str(served_model_dir))
    cfg = legacy.cfg
    if "preprocess" not in cfg:
        assert legacy.spec == {"resize": cfg["resize_size"], "crop": cfg["image_size"], "interpolation": "bilinear",
                               "antialias": True, "exif_transpose": False, "mean": cfg["mean"], "std": cfg["std"]}
    spec = {"resize": 80, "crop": 64, "interpolation": "bicubic", "antialias": False, "exif_transpose": True,
            "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    copy, _ = _model_copy(served_model_dir, tmp_path, preprocess=spec)
    clf = handler.Classifier(str(copy))
    assert clf.spec == spec
    ours = clf._to_tensor([clf.preprocess_image(sample_jpeg)])
    img = torch.from_numpy(np.array(Image.open(io.BytesIO(sample_jpeg)).convert("RGB"))).permute(2, 0, 1)
    expected = v2.Compose([v2.Resize(80, interpolation=v2.InterpolationMode.BICUBIC, antialias=False),
                           v2.CenterCrop(64)])(img).float().unsqueeze(0)
    mean = torch.tensor(spec["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec["std"]).view(1, 3, 1, 1) * 255
    assert ours.shape == (1, 3, 64, 64)
    assert torch.allclose(ours, (expected - mean) / std, atol=1e-4)
    # EXIF policy from the spec: transposed when it says so, left as stored otherwise
    body = _exif_rotated_jpeg()
    images = serve_module("handler_images")
    upright = images.open_image(body, clf.settings, spec)
    assert upright.size == (40, 20)
    left, right = upright.getpixel((5, 10)), upright.getpixel((35, 10))
    assert left[0] > 200 > left[2] and right[2] > 200 > right[0]
    assert images.open_image(body, clf.settings, {**spec, "exif_transpose": False}).size == (20, 40)
    assert requests.post(predict_url, data=body, headers={"Content-Type": "image/jpeg"}, timeout=T).status_code == 200
    # a spec the handler cannot honour stops the model from loading, with the reason
    for bad, words in (({**spec, "interpolation": "lanczos9"}, "interpolation"), ({**spec, "crop": 0}, "crop"),
                       ({k: v for k, v in spec.items() if k != "exif_transpose"}, "exif_transpose"),
                       ({**spec, "std": [0.2, 0, 0.3]}, "std")):
        with pytest.raises(ValueError, match=words):
            images.read_preprocess_spec({**cfg, "preprocess": bad})


@pytest.mark.integration
def test_accuracy_on_held_out_images_through_batching(predict_url, test_images, trained_job, server, classes):
    """All held-out demo images, sent concurrently so TorchServe batches them: the served labels
    reach the job's own test accuracy (same preprocessing), which is >= 0.9."""

    def send(item):
        path, _ = item
        r = requests.post(predict_url, data=path.read_bytes(), headers={"Content-Type": "image/jpeg"}, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["predictions"][0]["index"]

    with cf.ThreadPoolExecutor(8) as pool:
        predicted = list(pool.map(send, test_images))
    correct = sum(p == t for p, (_, t) in zip(predicted, test_images))
    accuracy = correct / len(test_images)
    assert accuracy >= 0.9, accuracy
    job_test_acc = trained_job["Summary"]["test_acc"]
    assert abs(accuracy - job_test_acc) <= 1.0 / len(test_images) + 1e-9, (accuracy, job_test_acc)
    assert max_logged_batch(server) > 1


def max_logged_batch(server):
    sizes = [0]
    for path in (server.workdir / "logs").glob("*.log"):
        for match in re.finditer(r"LocalsageBatchSize\.Count:(\d+)", path.read_text(errors="replace")):
            sizes.append(int(match.group(1)))
    return max(sizes)


@pytest.mark.integration
def test_mar_model_serves_same_predictions(server, sample_jpeg):
    headers = {"Content-Type": "image/jpeg"}
    a = requests.post(server.url + "/predictions/demo", data=sample_jpeg, headers=headers, timeout=T).json()
    b = requests.post(server.url + "/predictions/demo-mar", data=sample_jpeg, headers=headers, timeout=T).json()
    assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]


# ---------------------------------------------------------------------------------- bad inputs


def _png_header_only(width, height):
    """A PNG signature + IHDR claiming width x height, with a valid CRC and no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def _png(jpeg):
    return encode(Image.open(io.BytesIO(jpeg)), "PNG")


def _bomb_png():
    """10000 x 10000 (100 MP) in a few KB."""
    return encode(Image.new("1", (10000, 10000)), "PNG", optimize=True)


DEEP_JSON = b'{"image": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
HUGE = "7" * 5000  # over Python's 4300-digit int-string limit


def _flat_png(width, height):
    """A flat RGB image of width x height in a small, fast-to-make PNG."""
    return encode(Image.new("RGB", (width, height), (90, 120, 30)), "PNG")


BAD = {
    # name: (requests kwargs builder(jpeg) , expected status, expected error type or None)
    "empty body": (lambda j: dict(data=b"", headers={"Content-Type": "image/jpeg"}), 400, "EmptyBody"),
    "non-image bytes": (lambda j: dict(data=b"hello, not an image" * 10, headers={"Content-Type": "image/jpeg"}),
                        400, "NotAnImage"),
    "truncated jpeg": (lambda j: dict(data=j[: len(j) // 2], headers={"Content-Type": "image/jpeg"}), 400, None),
    "truncated png": (lambda j: dict(data=encode(Image.open(io.BytesIO(j)), "PNG")[:300],
                                     headers={"Content-Type": "image/png"}), 400, None),
    "header-only png": (lambda j: dict(data=_png_header_only(64, 64), headers={"Content-Type": "image/png"}),
                        400, None),
    "unsupported content type": (lambda j: dict(data=b"a,b\n1,2\n", headers={"Content-Type": "text/csv"}),
                                 415, "UnsupportedContentType"),
    "malformed json": (lambda j: dict(data=b'{"image": ', headers={"Content-Type": "application/json"}),
                       400, "InvalidJSON"),
    "json not an object": (lambda j: dict(json=[1, 2, 3]), 400, "InvalidJSON"),
    "json without image": (lambda j: dict(json={"picture": "x"}), 400, "MissingImage"),
    "malformed base64": (lambda j: dict(json={"image": "@@@not base64@@@"}), 400, "InvalidBase64"),
    "base64 of non-image": (lambda j: dict(json={"image": base64.b64encode(b"text").decode()}), 400, "NotAnImage"),
    "image not a string": (lambda j: dict(json={"image": 12345}), 400, "InvalidBase64"),
    "empty images list": (lambda j: dict(json={"images": []}), 400, "InvalidJSON"),
    "too many images": (lambda j: dict(json={"images": [base64.b64encode(j).decode()] * 17}), 413, "TooManyImages"),
    "over byte limit": (lambda j: dict(data=j + os.urandom(MAX_IMAGE_BYTES), headers={"Content-Type": "image/jpeg"}),
                        413, "ImageTooLarge"),
    "over byte limit base64": (lambda j: dict(json={"image": base64.b64encode(
                                   os.urandom(MAX_IMAGE_BYTES + 10)).decode()}),
                               413, "ImageTooLarge"),
    "over request size limit": (lambda j: dict(data=os.urandom(7_000_000), headers={"Content-Type": "image/jpeg"}),
                                413, None),
    "decompression bomb": (lambda j: dict(data=_bomb_png(), headers={"Content-Type": "image/png"}),
                           413, "ImageTooLarge"),
    "huge dimensions header": (lambda j: dict(data=_png_header_only(60000, 60000) + _png(j)[33:],
                                              headers={"Content-Type": "image/png"}), 413, "ImageTooLarge"),
    "topk zero": (lambda j: dict(json={"image": base64.b64encode(j).decode(), "topk": 0}), 400, "InvalidTopK"),
    "topk too big": (lambda j: dict(json={"image": base64.b64encode(j).decode(), "topk": 7}), 400, "InvalidTopK"),
    "topk not int": (lambda j: dict(json={"image": base64.b64encode(j).decode(), "topk": "three"}), 400, "InvalidTopK"),
    "topk bool": (lambda j: dict(json={"image": base64.b64encode(j).decode(), "topk": True}), 400, "InvalidTopK"),
    "topk header out of range": (lambda j: dict(data=j, headers={"Content-Type": "image/jpeg", "X-Topk": "-1"}),
                                 400, "InvalidTopK"),
    "url input disabled": (lambda j: dict(json={"url": "https://example.com/dog.jpg"}), 403, "URLInputDisabled"),
    # Python's own limits (recursion, int-string digits) inside one request: that request's 400
    "deep json": (lambda j: dict(data=DEEP_JSON, headers={"Content-Type": "application/json"}), 400, "InvalidJSON"),
    "deep json no content type": (lambda j: dict(data=DEEP_JSON, headers={"Content-Type": ""}), 400, "InvalidJSON"),
    "topk 5000 digits header": (lambda j: dict(data=j, headers={"Content-Type": "image/jpeg", "X-Topk": HUGE}),
                                400, "InvalidTopK"),
    "topk 5000 digits custom attributes": (lambda j: dict(data=j, headers={
        "Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "topk=" + HUGE}), 400, "InvalidTopK"),
    "topk 5000 digits json": (lambda j: dict(data=b'{"image": "' + base64.b64encode(j) + b'", "topk": ' + HUGE.encode()
                                             + b"}", headers={"Content-Type": "application/json"}), 400, "InvalidJSON"),
    "topk 5000 digits json string": (lambda j: dict(json={"image": base64.b64encode(j).decode(), "topk": HUGE}),
                                     400, "InvalidTopK"),
    "topk 5000 digits form field": (lambda j: dict(files={"data": ("x.jpg", j, "image/jpeg")}, data={"topk": HUGE}),
                                    400, "InvalidTopK"),
    "topk 400 digits json int": (lambda j: dict(json={"image": base64.b64encode(j).decode(), "topk": int("9" * 400)}),
                                 400, "InvalidTopK"),
    "too many pixels in one request": (lambda j: dict(json={
                                           "images": [base64.b64encode(_flat_png(5000, 5000)).decode()] * 3}),
                                       413, "RequestTooExpensive"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_4xx_and_server_keeps_serving(predict_url, sample_jpeg, classes, case):
    assert len(classes) == 6  # the topk cases assume the 6-class demo model
    build, status, kind = BAD[case]
    r = requests.post(predict_url, timeout=T, **build(sample_jpeg))
    assert r.status_code == status, (r.status_code, r.text[:300])
    if kind is not None:
        body = r.json()
        assert body["code"] == status and body["type"] == kind and body["message"], body
    assert_alive(predict_url, sample_jpeg)


@pytest.mark.integration
def test_bad_item_fails_only_itself_in_a_batch(predict_url, sample_jpeg, server):
    """Good JPEGs batched with truncated ones, 200,000-deep JSON and 5,000-digit topk values (which
    escaped the handler before and made TorchServe answer 503 for the whole batch): every good
    request 200, every bad one its own 400."""
    bad = [
        (dict(data=sample_jpeg[: len(sample_jpeg) // 3], headers={"Content-Type": "image/jpeg"}), "InvalidImage"),
        (dict(data=DEEP_JSON, headers={"Content-Type": "application/json"}), "InvalidJSON"),
        (dict(data=sample_jpeg, headers={"Content-Type": "image/jpeg", "X-Topk": HUGE}), "InvalidTopK"),
    ]
    cases = [(dict(data=sample_jpeg, headers={"Content-Type": "image/jpeg"}), None) if i % 2 == 0 else bad[i // 2 % 3]
             for i in range(30)]

    def send(case):
        r = requests.post(predict_url, timeout=120, **case[0])
        return r.status_code, r.json()

    with cf.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(send, cases))
    for (status, body), (_, kind) in zip(results, cases):
        if kind is None:
            assert status == 200 and "predictions" in body, body
        else:
            assert status == 400 and body["type"] == kind and body["code"] == 400, body
    assert max_logged_batch(server) > 1


class FakeContext:
    """What the handler uses of TorchServe's Context: per-request headers, status and content type."""

    def __init__(self, headers=None):
        self.headers, self.status, self.types = headers or {}, {}, {}

    def get_request_header(self, idx, key):
        return self.headers.get(idx, {}).get(key)

    def get_all_request_header(self, idx):
        return self.headers.get(idx, {})

    def set_response_status(self, code, phrase, idx):
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.types[idx] = value


@pytest.mark.integration
def test_one_request_failure_never_fails_its_batch(served_model_dir, sample_jpeg, monkeypatch):
    """In-process batches: an unexpected exception while decoding one request is that request's own
    400; a forward pass that fails for one image is that request's own 500; the rest answer."""
    import torch

    handler = load_handler_module()
    clf = handler.Classifier(str(served_model_dir))
    failing = _flat_png(64, 64)  # decodes fine; the patched forward pass below fails on it
    poison = b"\x89PNG poison"
    real_image, real_predict = clf.pre.image, clf.predict

    def image(raw, budget=None, what="image"):
        if raw == poison:
            raise RuntimeError("a bug provoked by these bytes")
        return real_image(raw, budget, what)

    def predict(crops):
        if any(bool((c == torch.tensor([90, 120, 30], dtype=c.dtype)).all()) for c in crops):  # `failing`
            raise RuntimeError("forward pass failed")
        return real_predict(crops)

    monkeypatch.setattr(clf.pre, "image", image)
    monkeypatch.setattr(clf, "predict", predict)
    batch = [{"body": sample_jpeg}, {"body": poison}, {"body": failing}, {"body": sample_jpeg},
             {"body": b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"}]
    ctx = FakeContext()
    out = clf.handle(batch, ctx)
    assert len(out) == len(batch)
    assert "predictions" in out[0] and "predictions" in out[3] and 0 not in ctx.status and 3 not in ctx.status
    assert ctx.status[1] == (400, "InvalidRequest") and out[1]["code"] == 400
    assert ctx.status[2] == (500, "InternalError") and out[2]["code"] == 500
    assert ctx.status[4] == (400, "InvalidJSON")
    assert set(ctx.types.values()) == {"application/json"}


@pytest.mark.integration
def test_extreme_aspect_ratio_is_cropped_before_resizing(served_model_dir, predict_url, classes):
    """An 86-byte 2000x1 PNG used to become a 3x256x512000 tensor (393 MB; 20000x1: ~4 GB): the image
    is centre-cropped to max_aspect before the resize, so the resize input and output stay small."""
    handler = load_handler_module()
    tiny = encode(Image.new("RGB", (2000, 1), (200, 10, 10)), "PNG")
    assert len(tiny) < 100
    r = requests.post(predict_url, data=tiny, headers={"Content-Type": "image/png"}, timeout=T)
    assert r.status_code == 200, r.text
    check_predictions(r.json()["predictions"], classes, 5)
    clf = handler.Classifier(str(served_model_dir))
    seen = []
    geometry = clf.pre.geometry

    def recording(chw):
        out = geometry(chw)
        seen.append((tuple(chw.shape), tuple(out.shape)))
        return out

    clf.pre.geometry = recording
    max_aspect = clf.settings["max_aspect"]
    resize, crop = clf.spec["resize"], clf.spec["crop"]
    for size in ((20000, 1), (1, 20000), (30000, 3), (300, 200)):
        hwc = clf.preprocess_image(encode(Image.new("RGB", size, (1, 2, 3)), "PNG"))
        assert tuple(hwc.shape) == (crop, crop, 3)
    for (_, h, w), (_, oh, ow) in seen:
        assert max(h, w) <= max_aspect * min(h, w)
        assert oh * ow <= resize * resize * max_aspect + resize
    assert seen[-1][0] == (3, 200, 300)  # ordinary ratios untouched (the training transform exactly)


@pytest.mark.integration
def test_time_budgets_per_request_and_per_batch(served_model_dir, sample_jpeg):
    """A request may not spend more than request_time_s decoding (413 before its next image); once a
    batch has spent its share of the response timeout, requests not yet started get a 503 to retry.
    The budgets' clock is the test's: each decoded image costs one "second"."""
    handler = load_handler_module()
    b64 = base64.b64encode(sample_jpeg).decode()

    def with_clock(clf):
        now = [0.0]
        real = clf.pre.image

        def image(raw, budget=None, what="image"):
            out = real(raw, budget, what)
            now[0] += 1.0
            return out

        clf.pre.image = image
        clf.clock = lambda: now[0]
        return clf

    clf = with_clock(handler.Classifier(str(served_model_dir), env={"LOCALSAGE_SERVE_REQUEST_TIME_S": "1.5"}))
    ctx = FakeContext()
    out = clf.handle([{"body": json.dumps({"images": [b64] * 3}).encode()}, {"body": sample_jpeg}], ctx)
    assert ctx.status[0][0] == 413 and out[0]["type"] == "RequestTooExpensive" and "images[2]" in out[0]["message"]
    assert 1 not in ctx.status and "predictions" in out[1]

    clf = handler.Classifier(str(served_model_dir))
    assert clf.batch_time_s == 60 * clf.settings["batch_time_fraction"]  # responseTimeout default
    clf = with_clock(clf)
    clf.batch_time_s = 1.5
    ctx = FakeContext()
    out = clf.handle([{"body": sample_jpeg}] * 4, ctx)
    assert 0 not in ctx.status and 1 not in ctx.status and "predictions" in out[1]  # started in time
    assert ctx.status[2] == ctx.status[3] == (503, "ServerBusy") and out[2]["code"] == 503

    budget = serve_module("handler_images").Budget({**clf.settings, "max_request_pixels": 100}, None)
    budget.charge(60, "a")
    with pytest.raises(serve_module("handler_errors").RequestError) as e:
        budget.charge(60, "b")
    assert e.value.code == 413


def _listening_ports(root_pid):
    ports = set()
    procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            ports |= {c.laddr.port for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    return ports


@pytest.mark.integration
def test_local_config_is_loopback_only_and_model_api_off(server):
    props = torchserve.read_properties(ROOT / "serve" / "config.properties")
    for key in ("inference_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), (key, props[key])
    assert props["management_address"].startswith("http://127.0.0.1:")  # plain TorchServe; LocalServer: a socket
    assert props["allowed_urls"] == torchserve.DENY_ALL_URLS
    assert props["enable_model_api"] == "false"
    assert int(props["max_request_size"]) >= 6_500_000
    assert props["metrics_mode"] == "prometheus"


SHIPPED_CONFIG = ROOT / "serve" / "config.properties"


def test_shipped_config_has_no_fixed_folder_and_management_stays_off_the_network():
    """serve/config.properties names no fixed path (a folder in /tmp that may not exist, or that another user
    could make first); management is on loopback for plain TorchServe, and LocalServer moves it to a unix socket
    in its own 0700 folder."""
    props = torchserve.read_properties(SHIPPED_CONFIG)
    assert not [k for k, v in props.items() if "unix:" in v or "/tmp" in v], props
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", props["management_address"]), props["management_address"]
    server = torchserve.LocalServer({}, port=free_ports(1)[0])
    try:
        written = torchserve.read_properties(server.config)
        assert written["management_address"] == f"unix:{server.management_socket}"
        assert server.management_socket.parent == server.workdir and (server.workdir.stat().st_mode & 0o077) == 0
    finally:
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.mark.integration
def test_serve_config_as_shipped_starts_plain_torchserve(tmp_path):
    """`torchserve --ts-config serve/config.properties` as a user would run it: it stays up, /ping answers and
    management answers on loopback. Only the port numbers move (this machine's 8080 may be taken)."""
    text = SHIPPED_CONFIG.read_text()
    ports = iter(free_ports(8))
    moved = re.sub(r"(?m)^((?:inference|management|metrics)_address=http://127\.0\.0\.1:)\d+$",
                   lambda m: f"{m.group(1)}{next(ports)}", text)
    moved = re.sub(r"(?m)^(grpc_(?:inference|management)_port=)\d+$", lambda m: f"{m.group(1)}{next(ports)}", moved)
    assert re.sub(r"\d+", "N", moved) == re.sub(r"\d+", "N", text)  # nothing but numbers changed
    config = tmp_path / "config.properties"
    config.write_text(moved)
    props = torchserve.read_properties(config)
    (tmp_path / "store").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path), "LOG_LOCATION": str(tmp_path / "logs"),
           "METRICS_LOCATION": str(tmp_path / "logs")}
    log = open(tmp_path / "ts.out", "wb")
    proc = subprocess.Popen([torchserve._bin("torchserve"), "--foreground", "--ncs", "--ts-config", str(config),
                             "--model-store", str(tmp_path / "store")], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "ts.out").read_text()[-3000:]  # it did not stop
            assert time.monotonic() < deadline, (tmp_path / "ts.out").read_text()[-3000:]
            with contextlib.suppress(requests.RequestException):
                if requests.get(props["inference_address"] + "/ping", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        assert requests.get(props["management_address"] + "/models", timeout=10).status_code == 200
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.integration
def test_local_management_api_is_private_and_fetches_no_url(server, served_model_dir):
    """`localsage serve`'s TorchServe: the management API is only a unix socket in the server's 0700
    folder (no TCP port any local user or a web page posting to loopback could reach); registering
    a workflow or a model from a URL is refused; scaling workers is not reachable over HTTP."""
    import stat

    props = torchserve.read_properties(server.config)
    assert props["management_address"] == f"unix:{server.management_socket}"
    mode = server.workdir.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o700 and mode.st_uid == os.getuid()
    assert stat.S_ISSOCK(server.management_socket.stat().st_mode)
    # every TCP port the server listens on is inference, metrics or gRPC: none speaks management
    expected = {server.port, int(props["metrics_address"].rsplit(":", 1)[1]),
                int(props["grpc_inference_port"]), int(props["grpc_management_port"])}
    assert _listening_ports(server.proc.pid) <= expected
    for port in expected - {int(props["grpc_inference_port"]), int(props["grpc_management_port"])}:
        base = f"http://127.0.0.1:{port}"
        assert requests.put(base + "/models/demo", params={"min_worker": 8}, timeout=10).status_code >= 400
        assert requests.post(base + "/workflows", params={"url": "http://127.0.0.1:1/x.war"},
                             timeout=10).status_code >= 400
        assert requests.get(base + "/models", timeout=10).status_code >= 400
    assert len(server.worker_pids()) == 2  # one per model: nothing scaled
    # on the socket itself (its owner): no workflow or model is fetched from a URL
    status, body = server.management("POST", "/workflows?url=http://127.0.0.1:1/evil.war")
    assert 400 <= status < 500 and "allowed" in str(body).lower(), (status, body)
    status, body = server.management("POST", "/workflows?url=file:///etc/passwd")
    assert 400 <= status < 500, (status, body)
    status, body = server.management("POST", "/models?url=https://example.com/x.mar")
    assert 400 <= status < 500, (status, body)
    status, desc = server.management("GET", "/models/demo")
    assert status == 200 and desc[0]["workers"]


@pytest.mark.integration
def test_predict_cli_prints_a_table(server, test_images, classes, capsys):
    parser = argparse.ArgumentParser()
    cli_serve.add_parser(parser.add_subparsers(dest="command"))
    paths = [str(p) for p, _ in test_images[:2]]
    assert parser.parse_args(["predict", "x.jpg"]).topk == 5  # one default: handler_defaults.TOPK
    args = parser.parse_args(["predict", "--endpoint", server.url, "--model", "demo", "--topk", "2", *paths])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["IMAGE", "LABEL", "PROBABILITY"]
    assert len(out) == 3
    for line, (path, truth) in zip(out[1:], test_images[:2]):
        assert line.startswith(str(path)) and line.split()[1] in classes


# ------------------------------------------------------------------------------ URL validation


def test_url_validation_rules():
    urls, errors = serve_module("handler_urls"), serve_module("handler_errors")
    allow = ["93.184.215.14", "localhost", "127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "fe80::1",
             "0.0.0.0", "::ffff:127.0.0.1", "2130706433", "0x7f000001", "192.168.1.10", "100.64.0.1"]

    def rejected(url, code=403, allowlist=allow):
        with pytest.raises(errors.RequestError) as e:
            urls.validate_url(url, allowlist)
        assert e.value.code == code, (url, e.value.message)
        return e.value.message

    # a public address on the allow-list passes and is pinned (validation only: no traffic is sent)
    assert urls.validate_url("https://93.184.215.14/dog.jpg", allow) == ("https", "93.184.215.14", 443, "/dog.jpg",
                                                                          "93.184.215.14")
    assert urls.validate_url("http://93.184.215.14:8000/a?b=1", allow)[2:4] == (8000, "/a?b=1")
    for url in ("ftp://93.184.215.14/x.jpg", "file:///etc/passwd", "gopher://93.184.215.14/", "javascript:alert(1)"):
        assert "http" in rejected(url)
    assert "allow-list" in rejected("https://example.org/dog.jpg")
    assert "credentials" in rejected("https://user:pw@93.184.215.14/x.jpg")
    for url in ("http://localhost/x.jpg", "http://127.0.0.1/x.jpg", "http://10.0.0.1/x.jpg",
                "http://169.254.169.254/latest/meta-data/", "http://[::1]/x.jpg", "http://[fe80::1]/x.jpg",
                "http://0.0.0.0/x.jpg", "http://[::ffff:127.0.0.1]/x.jpg", "http://2130706433/x.jpg",
                "http://0x7f000001/x.jpg", "http://192.168.1.10/x.jpg", "http://100.64.0.1/x.jpg"):
        msg = rejected(url)
        assert "non-public" in msg or "cannot resolve" in msg, (url, msg)
    rejected("http://[::1/x.jpg", code=400)  # malformed
    rejected("http://93.184.215.14:99999/x.jpg", code=400)  # bad port
    rejected("https:///nohost", code=400)
    rejected(123, code=400)
    # allow-list matching: exact host or a ".domain" suffix, never a bare substring
    assert urls._host_allowed("img.example.com", [".example.com"])
    assert not urls._host_allowed("evilexample.com", [".example.com"])
    assert not urls._host_allowed("example.com.evil.net", ["example.com"])
    assert urls._host_allowed("Example.COM.", ["example.com"])


def test_url_settings_from_env():
    errors = serve_module("handler_errors")
    s = errors.load_settings({"topk": 3}, {"LOCALSAGE_SERVE_ALLOW_URLS": "true",
                                           "LOCALSAGE_SERVE_URL_ALLOWLIST": "a.com, .b.org",
                                           "LOCALSAGE_SERVE_MAX_PIXELS": "1000"})
    assert s["allow_urls"] is True and s["url_allowlist"] == ["a.com", ".b.org"]
    assert s["max_pixels"] == 1000 and s["topk"] == 3
    assert errors.load_settings(None, {})["allow_urls"] is False


# ------------------------------------------------------------------- SageMaker `serve` (host process)


def _unix_get(sock_path, path):
    class Conn(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(sock_path)

    conn = Conn("localhost")
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


@pytest.mark.integration
def test_sagemaker_serve_entrypoint(served_model_dir, tmp_path, sample_jpeg, classes):
    model = tmp_path / "opt-ml-model"
    shutil.copytree(served_model_dir, model)
    (port,) = free_ports(1)
    # the other ports come from SAGEMAKER_SAFE_PORT_RANGE; its first port is taken, so it is skipped
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    lo = taken.getsockname()[1]
    safe = range(lo, lo + 40)
    env = {**os.environ, "LOCALSAGE_MODEL_DIR": str(model), "LOCALSAGE_BIND_HOST": "127.0.0.1",
           "SAGEMAKER_BIND_TO_PORT": str(port), "SAGEMAKER_SAFE_PORT_RANGE": f"{safe[0]}-{safe[-1]}",
           "SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SAGEMAKER_TS_BATCH_SIZE": "4",
           "SAGEMAKER_TS_MAX_BATCH_DELAY": "20", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "30",
           "LOCALSAGE_SERVE_ALLOW_URLS": "true", "LOCALSAGE_SERVE_URL_ALLOWLIST": "127.0.0.1,localhost",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "serve.out", "wb")
    proc = subprocess.Popen([sys.executable, str(SERVE_SCRIPT)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "serve.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "serve never became healthy"
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/ping", timeout=2).status_code == 200:  # no token needed
                    break
            time.sleep(0.5)
        # the first answer may wait for the worker to load (/ping says Healthy before that)
        r = requests.post(url + "/invocations", data=sample_jpeg, headers={"Content-Type": "image/jpeg"}, timeout=300)
        assert r.status_code == 200, r.text
        check_predictions(r.json()["predictions"], classes, 5)
        r = requests.post(url + "/invocations", json={"image": base64.b64encode(sample_jpeg).decode(), "topk": 2},
                          timeout=T)
        assert r.status_code == 200, r.text
        check_predictions(r.json()["predictions"], classes, 2)
        # URL inputs enabled and loopback allow-listed: still refused after resolution (no request made)
        r = requests.post(url + "/invocations", json={"url": f"http://127.0.0.1:{port}/ping"}, timeout=T)
        assert r.status_code == 403 and "non-public" in r.json()["message"], r.text
        # management is not on the network port; the SAGEMAKER_* settings reached TorchServe
        assert requests.get(url + "/models", timeout=10).status_code in (400, 404, 405)
        out = (tmp_path / "serve.out").read_text()
        # metrics and both gRPC ports inside SAGEMAKER_SAFE_PORT_RANGE (not 8082/7070/7071), the busy one skipped
        listening = _listening_ports(proc.pid) - {port}
        assert len(listening) == 3 and listening <= set(safe) - {lo}, (listening, safe)
        metrics_port = int(re.search(r"metrics 127\.0\.0\.1:(\d+)", out).group(1))
        assert metrics_port in listening
        assert "ts_inference_requests_total" in requests.get(f"http://127.0.0.1:{metrics_port}/metrics",
                                                             timeout=10).text
        workdir = re.search(r"workdir (\S+)\)", out).group(1)
        status, body = _unix_get(os.path.join(workdir, "management.sock"), "/models/model")
        assert status == 200
        desc = json.loads(body)[0]
        assert (desc["batchSize"], desc["maxBatchDelay"], desc["minWorkers"], desc["responseTimeout"]) == (4, 20, 1, 30)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
    finally:
        taken.close()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert code == 0, (tmp_path / "serve.out").read_text()[-3000:]
    time.sleep(1)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not os.path.exists(workdir)


@pytest.mark.integration
def test_serve_entrypoint_rejects_non_torchserve_dir(tmp_path):
    env = {**os.environ, "LOCALSAGE_MODEL_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, str(SERVE_SCRIPT)], env=env, capture_output=True, text=True, timeout=T)
    assert r.returncode != 0 and "MANIFEST" in r.stderr
    for bad in ("9000", "9000-8000", "a-b", "0-10"):
        r = subprocess.run([sys.executable, str(SERVE_SCRIPT)], env={**env, "SAGEMAKER_SAFE_PORT_RANGE": bad},
                           capture_output=True, text=True, timeout=T)
        assert r.returncode != 0 and "SAGEMAKER_SAFE_PORT_RANGE" in r.stderr, (bad, r.stderr)


# ------------------------------------------------------------------------- container (docker image)


@pytest.mark.integration
@pytest.mark.docker
def test_container_serve(image, served_model_dir, sample_jpeg, classes):
    (port,) = free_ports(1)
    name = f"localsage-serve-test-{os.getpid()}"
    subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080",
                    "-v", f"{served_model_dir.resolve()}:/opt/ml/model:ro", image, "serve"], check=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert time.monotonic() < deadline, subprocess.run(["docker", "logs", name], capture_output=True,
                                                               text=True).stdout[-3000:]
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/ping", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        r = requests.post(url + "/invocations", data=sample_jpeg, headers={"Content-Type": "image/jpeg"}, timeout=T)
        assert r.status_code == 200, r.text
        check_predictions(r.json()["predictions"], classes, 5)
        t0 = time.monotonic()
        subprocess.run(["docker", "stop", "-t", "30", name], check=True, capture_output=True)
        assert time.monotonic() - t0 < 20  # SIGTERM stopped it; no SIGKILL timeout
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.mark.integration
@pytest.mark.docker
def test_sagemaker_sdk_local_mode_deploy(image, trained_job, sample_jpeg, classes, tmp_path):
    """The real SDK v2 local mode: Model(image, file:// model.tar.gz).deploy(1, 'local'), predict, delete."""
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer

    from localsage.host.backends import sagemaker_local

    tarball = Path(trained_job["JobDir"]) / "model.tar.gz"
    with tarfile.open(tarball) as tar:
        assert "MAR-INF/MANIFEST.json" in {n.lstrip("./") for n in tar.getnames()}
    with sagemaker_local.local_aws_env():  # dummy region and credentials, only while the SDK runs
        session = sagemaker_local.session(tmp_path / "sm", "serve-test", init=True)
        model = Model(image_uri=image, model_data=f"file://{tarball.resolve()}",
                      role="arn:aws:iam::111111111111:role/localsage-dummy", sagemaker_session=session,
                      predictor_cls=Predictor)
        predictor = model.deploy(initial_instance_count=1, instance_type="local",
                                 serializer=IdentitySerializer("image/jpeg"), deserializer=JSONDeserializer())
        try:
            result = predictor.predict(sample_jpeg)
            check_predictions(result["predictions"], classes, 5)
        finally:
            predictor.delete_endpoint()
