"""The training checkpoint (checkpoints/last.pth, best.pth): what it holds, written atomically, loaded
without running pickle code (the checkpoint folder is synced from S3 on SageMaker).

Container-side; `train` passes its Parts and Progress in.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from localsage.core import files

log = logging.getLogger("localsage.container.train")
CHECKPOINT = "last.pth"
BEST = "best.pth"


def rng_state() -> dict:
    """Every generator's state as tensors and lists: loadable with torch.load(weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "state": list(internal), "gauss_next": gauss_next}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def state(epoch: int, parts, progress, scheduler_state: dict | None = None) -> dict:
    """What last.pth holds: train.Parts' model/optimizer/scheduler/scaler and train.Progress."""
    return {
        "epoch": epoch,
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": scheduler_state or parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "best": progress.best,
        "bad_epochs": progress.bad_epochs,
        "history": progress.history,
        "bad_files": {k: sorted(v) for k, v in progress.bad_files.items()},
        "rng": rng_state(),
    }


def save(path: Path, content: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(path, lambda f: torch.save(content, f))


def load(path: Path):
    """A checkpoint of ours holds tensors, numbers, strings, lists and dicts only: weights_only=True,
    so a planted pickle (the checkpoint folder is synced from S3 on SageMaker) cannot run code."""
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def resume(contract, parts, progress) -> None:
    """Continue from last.pth when there is one (SageMaker managed-spot semantics)."""
    state = load(contract.checkpoint_dir / CHECKPOINT)
    if state is None:
        return
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    # the schedule's position is the end of the last completed epoch: the optimizer's rates follow it
    for group, lr in zip(parts.optimizer.param_groups, parts.scheduler.get_last_lr()):
        group["lr"] = lr
    parts.scaler.load_state_dict(state["scaler"])
    progress.best, progress.bad_epochs, progress.history = state["best"], state["bad_epochs"], state["history"]
    progress.bad_files.update({k: set(v) for k, v in state["bad_files"].items()})
    set_rng_state(state["rng"])
    progress.start_epoch = state["epoch"] + 1
    log.info("resuming from checkpoint: epoch %d completed, continuing at epoch %d", state["epoch"],
             progress.start_epoch)
