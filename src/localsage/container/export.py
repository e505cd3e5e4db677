"""The exported model directory: what serving needs, loadable without localsage's training code.

    model/model.pth            state_dict of torchvision.models.get_model(arch, num_classes=N, weights=None)
    model/model_config.json    arch, num_classes, image_size, resize_size, mean, std, classes,
                               preprocess (data.preprocess_spec: resize/crop/interpolation/EXIF/mean/std)
    model/index_to_name.json   {"0": "Affenpinscher", ...}
    model/handler.py           serve/handler.py (TorchServe handler; needs torchvision, not localsage)
    model/handler_*.py         its modules (defaults, errors, requests, URLs, images), copied from serve/
    model/model-config.yaml    TorchServe batching/workers + handler settings
    model/MAR-INF/MANIFEST.json  as `torch-model-archiver --archive-format no-archive` writes it
so `torchserve --models name=<dir>` and SageMaker's /opt/ml/model serve the directory unchanged.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import torch

from localsage.core import files
from localsage.core.serve_dir import (  # serve/'s files and defaults (torch-free)
    HANDLER_FILE,
    handler_files,
    serving_defaults,
)

WEIGHTS_FILE = "model.pth"
CONFIG_FILE = "model_config.json"
INDEX_FILE = "index_to_name.json"


def model_config(arch, classes, image_size, resize_size, mean, std) -> dict:
    """model_config.json; "preprocess" is data.preprocess_spec, the one preprocessing spec training used."""
    from localsage.container.data import preprocess_spec

    return {
        "arch": arch,
        "num_classes": len(classes),
        "image_size": image_size,
        "resize_size": resize_size,
        "mean": list(mean),
        "std": list(std),
        "classes": list(classes),
        "preprocess": preprocess_spec(image_size, resize_size, mean, std),
    }


def atomic_write_bytes(path: Path, write) -> None:
    """files.atomic_write with a writer callback (kept for callers of the export API)."""
    files.atomic_write(path, write)


def save_model(model_dir, state_dict: dict, config: dict) -> Path:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(model_dir / WEIGHTS_FILE, lambda f: torch.save(state_dict, f))
    files.atomic_write_json(model_dir / CONFIG_FILE, config)
    index = {str(i): name for i, name in enumerate(config["classes"])}
    files.atomic_write_json(model_dir / INDEX_FILE, index)
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

MODEL_CONFIG_YAML = "model-config.yaml"


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
    files.atomic_write(model_dir / MODEL_CONFIG_YAML, header + yaml.safe_dump(config, sort_keys=False))
    manifest = {
        "createdOn": datetime.now().strftime("%d/%m/%Y %H:%M:%S"),
        "runtime": "python",
        "model": {"modelName": model_name, "serializedFile": WEIGHTS_FILE, "handler": HANDLER_FILE,
                  "modelVersion": version, "configFile": MODEL_CONFIG_YAML},
        "archiverVersion": _archiver_version(),
    }
    (model_dir / MANIFEST).parent.mkdir(exist_ok=True)
    files.atomic_write_json(model_dir / MANIFEST, manifest)
    return model_dir
