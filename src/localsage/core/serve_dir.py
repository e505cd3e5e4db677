"""Where serve/ lives and the serving defaults it states (serve/handler_defaults.py): torch-free, so
the CLI, cloud and export all read the one place without loading the model code."""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

HANDLER_FILE = "handler.py"
HANDLER_MODULES = "handler_*.py"  # the handler's own modules in serve/, shipped beside it
DEFAULTS_FILE = "handler_defaults.py"


def serve_dir() -> Path:
    """Where serve/ (handler.py, config.properties, serve) lives: $LOCALSAGE_SERVE_DIR, the source
    checkout, <prefix>/share/localsage/serve (installed package) or /opt/localsage/serve (image)."""
    candidates = [os.environ.get("LOCALSAGE_SERVE_DIR"), Path(__file__).resolve().parents[3] / "serve",
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
def serve_module(filename):
    """A module of serve/ (it lives beside the handlers, outside this package), loaded once from its file."""
    name = "localsage_serve_" + filename.removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, serve_dir() / filename)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def serving_defaults():
    """serve/handler_defaults.py, the one place for serving defaults (workers, batching, timeout,
    topk, handler limits); the handler ships it, so it is read here from its file."""
    return serve_module(DEFAULTS_FILE)
