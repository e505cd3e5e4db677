"""The SageMaker operations the server answers: the `OPERATIONS` dicts of the modules that exist, merged
(`{"CreateTrainingJob": fn(api, request) -> dict, ...}`), and sagemaker-runtime's `RUNTIME`
(fn(api, endpoint_name, body, headers) -> (status, headers, body)) from runtime.py; and each module's optional
`on_start(api)`, run once before the first request (reconcile records a killed server left, restart endpoints).
A module not written yet is skipped; one that fails to import fails the server's start (a half-served API would
mislead)."""
from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Callable

MODULES = ("training", "tuning", "endpoints", "transform", "runtime", "tags")


def _module(name: str) -> ModuleType | None:
    full = f"localsage.api.{name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name == full:
            return None
        raise


@functools.lru_cache(maxsize=1)
def operations() -> dict[str, Callable]:
    merged: dict[str, Callable] = {}
    for name in MODULES:
        module = _module(name)
        for op, fn in (getattr(module, "OPERATIONS", None) or {}).items():
            if op in merged:
                raise RuntimeError(f"SageMaker operation {op} is defined twice (api/{name}.py and another module)")
            merged[op] = fn
    return merged


@functools.lru_cache(maxsize=1)
def runtime() -> Callable | None:
    module = _module("runtime")
    return getattr(module, "RUNTIME", None) if module else None


def loaded() -> list[str]:
    """The operation modules present (for the start-up line)."""
    return [name for name in MODULES if _module(name) is not None]


def on_start(api) -> None:
    """Each present module's `on_start(api)`, in MODULES order."""
    for name in MODULES:
        hook = getattr(_module(name), "on_start", None)
        if hook is not None:
            hook(api)
