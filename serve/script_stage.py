"""Staging a SageMaker script-mode model dir for TorchServe (used by serve/serve and localsage.host.torchserve).

A SageMaker user's model dir is plain: `model.pth` (or `model.pt`) + `code/inference.py` (+ optional
`code/requirements.txt`), no model_config.json, no MAR-INF/. `stage()` builds beside it what TorchServe
needs: a folder of symlinks to the model's files plus script_handler.py and script_defaults.py (copied
from serve/), a model-config.yaml (batching, workers, `handler: {program: ...}`) and
MAR-INF/MANIFEST.json. The model dir itself is never written to (/opt/ml/model may be read-only).

Batching: the toolkit's batch 1 / 100 ms, or batch 8 / 5 ms when the module sets BATCH_PREDICT = True
(read from its source, without importing it); SAGEMAKER_* variables override either (serve/serve).
Standalone: stdlib and PyYAML (a TorchServe dependency) only.
"""

import ast
import json
import os
import shutil
import subprocess
import sys

HANDLER = "script_handler.py"
# shared limits, known failures' reasons, the error type
HELPERS = ("script_defaults.py", "script_errors.py", "handler_defaults.py", "handler_errors.py")
CODE_DIR = "code"
DEFAULT_PROGRAM = "inference.py"
REQUIREMENTS = "requirements.txt"
SCRIPT_DEFAULTS = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 100, "responseTimeout": 60}
BATCH_PREDICT_DEFAULTS = {"batchSize": 8, "maxBatchDelay": 5}
SKIP = {"MAR-INF", "model-config.yaml", HANDLER, *HELPERS}


class StageError(Exception):
    """The model dir cannot be served as a script model; the message says why."""


def program(env=None):
    env = os.environ if env is None else env
    return (env.get("SAGEMAKER_PROGRAM") or DEFAULT_PROGRAM).strip()


def module_file(model_dir, prog):
    name = prog[:-3] if prog.endswith(".py") else prog
    for candidate in (os.path.join(model_dir, CODE_DIR, name + ".py"),
                      os.path.join(model_dir, CODE_DIR, name, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def submitted_code_dir(model_dir, env=None, prog=None):
    """The code folder when it is not model_dir/code: $SAGEMAKER_SUBMIT_DIRECTORY when it is a local folder
    with the module (SDK local mode with local_code mounts source_dir at /opt/ml/code), else None."""
    env = os.environ if env is None else env
    prog = prog or program(env)
    submit = env.get("SAGEMAKER_SUBMIT_DIRECTORY", "")
    if module_file(model_dir, prog) or not submit or not os.path.isdir(submit):
        return None
    name = prog[:-3] if prog.endswith(".py") else prog
    if os.path.isfile(os.path.join(submit, name + ".py")) or os.path.isfile(os.path.join(submit, name, "__init__.py")):
        return submit
    return None


def is_script_model(model_dir, prog=None):
    """code/<program> exists, or a plain SageMaker dir: a *.pt/*.pth file and neither MAR-INF/ nor
    model_config.json (the default functions serve it)."""
    if module_file(model_dir, prog or program()):
        return True
    if (os.path.isfile(os.path.join(model_dir, "MAR-INF", "MANIFEST.json"))
            or os.path.isfile(os.path.join(model_dir, "model_config.json"))):
        return False
    return any(name.endswith((".pt", ".pth")) for name in os.listdir(model_dir))


def batch_predict(path):
    """True when the module source has a top-level `BATCH_PREDICT = True`."""
    if not path:
        return False
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return False  # the worker's import reports it properly
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "BATCH_PREDICT"
                                                for t in node.targets):
            return isinstance(node.value, ast.Constant) and node.value.value is True
    return False


def default_config(model_dir, prog):
    config = dict(SCRIPT_DEFAULTS)
    if batch_predict(module_file(model_dir, prog)):
        config.update(BATCH_PREDICT_DEFAULTS)
    return config


def install_requirements(model_dir, env=None, target=None, python=None):
    """pip-install code/requirements.txt (before the server says healthy). Offline rule as for training:
    only with PIP_INDEX_URL or PIP_FIND_LINKS set; otherwise a StageError naming the file.
    target: install into this folder (put it on PYTHONPATH) instead of the running environment."""
    env = dict(os.environ if env is None else env)
    path = os.path.join(model_dir, CODE_DIR, REQUIREMENTS)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        wanted = [line.strip() for line in f if line.strip() and not line.strip().startswith("#")]
    if not wanted:
        return None
    if not (env.get("PIP_INDEX_URL") or env.get("PIP_FIND_LINKS")):
        raise StageError(f"{path} lists {len(wanted)} requirement(s) but no package index is configured: set "
                         "PIP_INDEX_URL (a reachable index) or PIP_FIND_LINKS (a local wheelhouse), or install them "
                         "into the image and empty the file")
    cmd = [python or sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-r", path]
    if target:
        cmd += ["--target", target]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise StageError(f"pip install -r {path} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    return path


def _symlink_tree(src, dst, skip=()):
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name not in skip:
            os.symlink(os.path.join(os.path.abspath(src), name), os.path.join(dst, name))


def stage(model_dir, dest, serve_dir, config, prog=None, model_name="model", code_dir=None):
    """Build dest (must not exist) as a TorchServe model dir serving model_dir's script model.
    code_dir: use this folder as code/ instead of model_dir/code (`--source-dir`)."""
    import yaml

    prog = prog or program()
    if code_dir is not None:
        if not os.path.isdir(code_dir):
            raise StageError(f"source dir {code_dir} does not exist")
        _symlink_tree(model_dir, dest, SKIP | {CODE_DIR})
        os.symlink(os.path.abspath(code_dir), os.path.join(dest, CODE_DIR))
    else:
        _symlink_tree(model_dir, dest, SKIP)
    for name in (HANDLER, *HELPERS):
        shutil.copyfile(os.path.join(serve_dir, name), os.path.join(dest, name))
    with open(os.path.join(dest, "model-config.yaml"), "w") as f:
        yaml.safe_dump({**config, "handler": {"program": prog}}, f, sort_keys=False)
    os.makedirs(os.path.join(dest, "MAR-INF"))
    manifest = {"runtime": "python", "model": {"modelName": model_name, "handler": HANDLER, "modelVersion": "1.0",
                                               "configFile": "model-config.yaml"}}
    with open(os.path.join(dest, "MAR-INF", "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return dest


def read_failure(path):
    """The reason a worker wrote to $LOCALSAGE_STARTUP_FAILURE, or None."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return text or None
