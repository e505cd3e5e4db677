"""What every trial of a study shares, checked once before the first trial: the data can be read, the
pretrained weights the fixed hyperparameters name are available offline, the script is there. A problem
here would fail every trial the same way; it stops the study with one message instead."""
from __future__ import annotations

import os
from pathlib import Path

from localsage.core import hyperparameters
from localsage.host import backends, jobplan
from localsage.host.tune.settings import Tuning
from localsage.host.tune.space import TuneError

SPLITS = ("train", "valid", "test")


def check(t: Tuning) -> None:
    if not t.data:
        raise TuneError("--data is required for a new study")
    if not jobplan.is_remote(t.data):
        _check_folder(t)
    if not t.script:
        _check_weights(t)


def _check_folder(t: Tuning) -> None:
    data = Path(t.data)
    if not data.is_dir():
        raise TuneError(f"data folder not found: {t.data}")
    if not os.access(data, os.R_OK | os.X_OK):
        raise TuneError(f"data folder {t.data} is not readable")
    if t.script:  # the script decides its own layout
        return
    from localsage.container import data as data_mod
    from localsage.container.decode import decode

    try:
        indexed, _ = data_mod.load_splits({s: data / s for s in SPLITS if s != "test" or (data / s).is_dir()})
        for split, (paths, _, _) in indexed.items():
            decode(paths[0].decode())  # the first image of each split decodes
    except data_mod.DataError as exc:
        raise TuneError(f"every trial would fail on the data: {exc}") from None
    except Exception as exc:
        raise TuneError(f"every trial would fail on the data ({t.data}): {type(exc).__name__}: {exc}") from None


def _shared(t: Tuning, name: str):
    """The value every trial has for a built-in hyperparameter, or None when the space searches it."""
    if name in t.space:
        return None
    return str(t.fixed.get(name, hyperparameters.SPEC[name].default))


def _check_weights(t: Tuning) -> None:
    arch, weights = _shared(t, "arch"), _shared(t, "weights")
    if arch is None or backends.traits(t.backend).in_container:  # searched, or checked inside each container
        return
    from torchvision import models

    from localsage.container import model

    if arch not in models.list_models(module=models):
        raise TuneError(f"every trial would fail: unknown arch {arch!r} (see torchvision.models.list_models())")
    if weights is None:
        return
    try:
        model.check_weights_available(arch, weights)
    except model.WeightsError as exc:
        raise TuneError(f"no trial started: every trial would fail the same way: {exc}") from None
