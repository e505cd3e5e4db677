"""The exported model directory: what serving needs, loadable without localsage's training code.

    model/model.pth            state_dict of torchvision.models.get_model(arch, num_classes=N, weights=None)
    model/model_config.json    arch, num_classes, image_size, resize_size, mean, std, classes
    model/index_to_name.json   {"0": "Affenpinscher", ...}
    model/handler.py           serve/handler.py (TorchServe handler; needs torchvision, not localsage)
    model/handler_*.py         its modules (defaults, errors, requests, URLs, images), copied from serve/
    model/model-config.yaml    TorchServe batching/workers + handler settings
    model/MAR-INF/MANIFEST.json  as `torch-model-archiver --archive-format no-archive` writes it
so `torchserve --models name=<dir>` and SageMaker's /opt/ml/model serve the directory unchanged.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path

import torch

WEIGHTS_FILE = "model.pth"
CONFIG_FILE = "model_config.json"
INDEX_FILE = "index_to_name.json"


def model_config(arch, classes, image_size, resize_size, mean, std) -> dict:
    return {
        "arch": arch,
        "num_classes": len(classes),
        "image_size": image_size,
        "resize_size": resize_size,
        "mean": list(mean),
        "std": list(std),
        "classes": list(classes),
    }


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temp file in the same folder, fsync, then rename: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_model(model_dir, state_dict: dict, config: dict) -> Path:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(model_dir / WEIGHTS_FILE, lambda f: torch.save(state_dict, f))
    (model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    index = {str(i): name for i, name in enumerate(config["classes"])}
    (model_dir / INDEX_FILE).write_text(json.dumps(index, indent=2))
    make_torchserve_dir(model_dir)
    return model_dir


def load_model(model_dir):
    """Rebuild the exported model with torchvision only (as the serving handler does)."""
    from torchvision import models

    model_dir = Path(model_dir)
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    model = models.get_model(config["arch"], num_classes=config["num_classes"], weights=None)
    model.load_state_dict(torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return model.eval(), config


# ------------------------------------------------------------------------------ TorchServe bits

MANIFEST = Path("MAR-INF") / "MANIFEST.json"
HANDLER_FILE = "handler.py"
HANDLER_MODULES = "handler_*.py"  # the handler's own modules in serve/, shipped beside it
DEFAULTS_FILE = "handler_defaults.py"
MODEL_CONFIG_YAML = "model-config.yaml"


def serve_dir() -> Path:
    """Where serve/ (handler.py, config.properties, serve) lives: $LOCALSAGE_SERVE_DIR, the source
    checkout, <prefix>/share/localsage/serve (installed package) or /opt/localsage/serve (image)."""
    candidates = [os.environ.get("LOCALSAGE_SERVE_DIR"), Path(__file__).resolve().parents[2] / "serve",
                  Path(sys.prefix) / "share" / "localsage" / "serve", "/opt/localsage/serve"]
    for candidate in candidates:
        if candidate and (Path(candidate) / HANDLER_FILE).is_file():
            return Path(candidate)
    raise FileNotFoundError("serve/handler.py not found (needed in every exported model dir); "
                            "set LOCALSAGE_SERVE_DIR to the repository's serve/ folder")


def handler_files() -> list:
    """serve/handler.py and its modules: what every exported model dir and .mar carries."""
    folder = serve_dir()
    return [folder / HANDLER_FILE, *sorted(folder.glob(HANDLER_MODULES))]


@functools.lru_cache(maxsize=None)
def serving_defaults():
    """serve/handler_defaults.py, the one place for serving defaults (workers, batching, timeout,
    topk, handler limits); the handler ships it, so it is read here from its file."""
    path = serve_dir() / DEFAULTS_FILE
    spec = importlib.util.spec_from_file_location("localsage_handler_defaults", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serving_env() -> dict:
    """The container `serve` variables with their defaults, as SageMaker passes them (strings)."""
    server = serving_defaults().SERVER
    return {"SAGEMAKER_MODEL_SERVER_WORKERS": str(server["minWorkers"]),
            "SAGEMAKER_TS_BATCH_SIZE": str(server["batchSize"]),
            "SAGEMAKER_TS_MAX_BATCH_DELAY": str(server["maxBatchDelay"]),
            "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(server["responseTimeout"])}


def _archiver_version() -> str:
    try:
        from model_archiver import __version__

        return __version__
    except ImportError:
        return "0.12.0"


def make_torchserve_dir(model_dir, model_name: str = "model", version: str = "1.0", **batching) -> Path:
    """Make an exported model dir a TorchServe model directory in place: copy handler.py and its
    modules, write model-config.yaml (batching, workers, handler settings) and MAR-INF/MANIFEST.json."""
    import yaml

    model_dir = Path(model_dir)
    for needed in (WEIGHTS_FILE, CONFIG_FILE):
        if not (model_dir / needed).is_file():
            raise FileNotFoundError(f"{model_dir / needed} missing: not an exported localsage model dir")
    defaults = serving_defaults()
    unknown = set(batching) - set(defaults.SERVER)
    if unknown:
        raise TypeError(f"unknown batching settings {sorted(unknown)}; known: {sorted(defaults.SERVER)}")
    for path in handler_files():
        shutil.copyfile(path, model_dir / path.name)
    config = {**defaults.SERVER, **batching, "handler": {"topk": defaults.TOPK}}
    header = ("# TorchServe per-model settings. Handler settings (handler_defaults.HANDLER) go under `handler:`;\n"
              "# LOCALSAGE_SERVE_<NAME> environment variables override them. serve/serve applies SAGEMAKER_* on top.\n")
    (model_dir / MODEL_CONFIG_YAML).write_text(header + yaml.safe_dump(config, sort_keys=False))
    manifest = {
        "createdOn": datetime.now().strftime("%d/%m/%Y %H:%M:%S"),
        "runtime": "python",
        "model": {"modelName": model_name, "serializedFile": WEIGHTS_FILE, "handler": HANDLER_FILE,
                  "modelVersion": version, "configFile": MODEL_CONFIG_YAML},
        "archiverVersion": _archiver_version(),
    }
    (model_dir / MANIFEST).parent.mkdir(exist_ok=True)
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return model_dir
