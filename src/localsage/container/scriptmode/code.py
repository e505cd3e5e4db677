"""The user's code: where it comes from and what it needs installed.

Facts (sagemaker-training-toolkit: files.py, modules.py, _entry_point_type.py):
- /opt/ml/code is used when it is not empty (SDK local mode with local_code mounts the source dir
  there); otherwise `sagemaker_submit_directory` is fetched into it: `s3://.../sourcedir.tar.gz`
  (boto3; region from AWS_REGION / SAGEMAKER_REGION, endpoint from S3_ENDPOINT_URL), a local
  directory (copied) or a local tarball (extracted);
- `requirements.txt` in the code dir is pip-installed before a `.py` program runs; a code dir with
  `setup.py` is pip-installed and its module run with `python -m`.

localsage's additions: tarballs are extracted with `filter="data"` (no absolute paths, links out
of the tree or device files); on the process backend (LOCALSAGE_PIP_TARGET set) and wherever the
interpreter's site-packages is not writable, pip installs into a separate `--target` folder that
goes first on PYTHONPATH, never into the environment that runs localsage. PIP_INDEX_URL,
PIP_FIND_LINKS and PIP_NO_INDEX reach pip through the environment (offline wheelhouses).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

from localsage.core import contract

REQUIREMENTS = "requirements.txt"
SETUP = "setup.py"
DEPS_DIR = ".deps"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", DEPS_DIR)


class CodeError(RuntimeError):
    """The code could not be fetched or its requirements not installed (the reason names what)."""


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="sm-code-"))


def extract(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise CodeError(f"cannot extract {archive}: {exc}") from exc


def download_s3(uri: str, dest: Path, environ) -> None:
    import boto3

    bucket, _, key = uri[len("s3://"):].partition("/")
    region = environ.get("AWS_REGION") or environ.get("SAGEMAKER_REGION")
    s3 = boto3.client("s3", region_name=region, endpoint_url=environ.get("S3_ENDPOINT_URL") or None)
    with tempfile.TemporaryDirectory(prefix="sm-submit-") as tmp:
        archive = Path(tmp) / "sourcedir.tar.gz"
        try:
            s3.download_file(bucket, key, str(archive))
        except Exception as exc:  # botocore errors: no credentials, 404, no network
            raise CodeError(f"cannot download {uri}: {exc}") from exc
        extract(archive, dest)


def prepare(root, submit_dir: str | None, environ=None) -> Path:
    """The folder holding the user's code (fetched into <root>/code when that is empty)."""
    environ = os.environ if environ is None else environ
    code = contract.code_dir(root)
    if code.is_dir() and any(code.iterdir()):
        return code
    if not submit_dir:
        raise CodeError(f"no code: {code} is empty and the sagemaker_submit_directory hyperparameter is not set")
    if submit_dir.startswith("file://"):
        submit_dir = submit_dir[len("file://"):]
    dest = _writable_dir(code)
    if submit_dir.startswith("s3://"):
        download_s3(submit_dir, dest, environ)
    elif Path(submit_dir).is_dir():
        shutil.copytree(submit_dir, dest, ignore=IGNORED, dirs_exist_ok=True)
    elif Path(submit_dir).is_file():
        extract(Path(submit_dir), dest)
    else:
        raise CodeError(f"sagemaker_submit_directory {submit_dir!r} is neither s3://, a folder nor a tarball")
    return dest


def _site_writable() -> bool:
    purelib = Path(sysconfig.get_paths()["purelib"])
    return os.access(purelib, os.W_OK)


def pip_target(code: Path, environ) -> str | None:
    """Where pip installs the job's requirements: None means the interpreter's own environment."""
    target = environ.get(contract.PIP_TARGET_ENV)
    if target:
        return target
    if _site_writable():
        return None  # a container: the image's environment, as the toolkit does
    return tempfile.mkdtemp(prefix="sm-deps-")


def pip_install(args: list, what: Path, target: str | None, environ, log) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        cmd += ["--target", target]
    log(f"installing {what}: {' '.join(cmd)}")
    proc = subprocess.run(cmd, cwd=what.parent if what.is_file() else what, env=dict(environ),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout.splitlines():
        log(line)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-8:])
        raise CodeError(f"pip install of {what} failed (exit {proc.returncode}):\n{tail}")


def install(code: Path, environ, log=print) -> str | None:
    """Install requirements.txt (or the setup.py package); returns the --target folder if one was used."""
    requirements = code / REQUIREMENTS
    setup = code / SETUP
    if not requirements.exists() and not setup.exists():
        return None
    target = pip_target(code, environ)
    if setup.exists():
        pip_install([str(code)], code, target, environ, log)
    elif requirements.exists():
        pip_install(["-r", str(requirements)], requirements, target, environ, log)
    return target
