"""The exported model directory: what serving needs, loadable without localsage's training code.

    model/model.pth            state_dict of torchvision.models.get_model(arch, num_classes=N, weights=None)
    model/model_config.json    arch, num_classes, image_size, resize_size, mean, std, classes
    model/index_to_name.json   {"0": "Affenpinscher", ...}
"""
from __future__ import annotations

import json
import os
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
    return model_dir


def load_model(model_dir):
    """Rebuild the exported model with torchvision only (as the serving handler does)."""
    from torchvision import models

    model_dir = Path(model_dir)
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    model = models.get_model(config["arch"], num_classes=config["num_classes"], weights=None)
    model.load_state_dict(torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return model.eval(), config
