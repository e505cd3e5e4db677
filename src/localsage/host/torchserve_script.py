"""Script-mode serving on the host: a SageMaker user's model dir (model.pth + code/inference.py) served
by serve/script_handler.py through a local TorchServe (`localsage serve` / `package`). The staging
rules live in serve/script_stage.py, shared with the image's serve/serve."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from localsage.core.serve_dir import serve_dir, serve_module
from localsage.host.torchserve import LocalServer, _bin, _jobs_dir


class ScriptLoadError(RuntimeError):
    """A script model's requirements, import or model_fn failed; the message has the reason."""


def script_stage():
    """serve/script_stage.py as a module."""
    return serve_module("script_stage.py")


def extract_model_tar(tarball, dest) -> Path:
    """A model.tar.gz unpacked as SageMaker does, refusing links out of dest, devices and absolute paths."""
    import tarfile

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    return dest


def is_script_model(model_dir, program=None) -> bool:
    stage = script_stage()
    return Path(model_dir).is_dir() and stage.is_script_model(str(model_dir), program or stage.program())


def resolve_model(model, jobs_dir=None) -> tuple[Path, bool]:
    """(model dir, unpacked) for a model dir, a job name (<jobs_dir>/<name>/model) or a model.tar.gz
    (unpacked into a temp dir: unpacked=True, the caller removes it)."""
    path = Path(model)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        return extract_model_tar(path, tempfile.mkdtemp(prefix="localsage-model-")), True
    if path.is_dir():
        return path, False
    candidate = _jobs_dir(jobs_dir) / str(model) / "model"
    if not candidate.is_dir():
        raise FileNotFoundError(f"no model {model!r}: not a model dir, a model.tar.gz or a job ({candidate})")
    return candidate, False


class ScriptServer(LocalServer):
    """LocalServer for script models: each model dir is staged (script_stage.stage) in the server's
    private workdir, its code/requirements.txt installed into workdir/site (on the workers'
    PYTHONPATH, never into this environment), and a worker's load failure stops the wait with
    ScriptLoadError. models: {name: model dir or .mar}; programs / code_dirs / batching: {name: entry point /
    source dir / model-config.yaml settings such as batchSize}."""

    def __init__(self, models: dict, programs=None, code_dirs=None, batching=None, **kwargs):
        super().__init__(models, **kwargs)
        stage = script_stage()
        self.failure_path = self.workdir / "startup-failure"
        self.env["LOCALSAGE_STARTUP_FAILURE"] = str(self.failure_path)
        site = self.workdir / "site"
        for name, model_dir in list(self.models.items()):
            program = (programs or {}).get(name) or stage.program(self.env)
            code_dir = (code_dirs or {}).get(name)
            if model_dir.suffix == ".mar" or not (code_dir or stage.is_script_model(str(model_dir), program)):
                continue  # a .mar (package_script) or a built-in model dir: served as it is
            config = {**stage.default_config(str(model_dir), program), **(batching or {}).get(name, {})}
            try:
                staged = stage.stage(str(model_dir), str(self.workdir / "models" / name), str(serve_dir()), config,
                                     program, name, code_dir)
                if stage.install_requirements(staged, self.env, target=str(site)):
                    self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), self.env.get("PYTHONPATH")]))
            except stage.StageError as e:
                shutil.rmtree(self.workdir, ignore_errors=True)
                raise ScriptLoadError(str(e)) from None
            self.models[name] = Path(staged)

    def startup_failure(self):
        return script_stage().read_failure(str(self.failure_path))

    def wait_healthy(self, wait_s=180.0):
        deadline = time.monotonic() + wait_s
        while True:
            reason = self.startup_failure()
            if reason:
                raise ScriptLoadError(reason)
            try:
                return super().wait_healthy(min(2.0, max(0.5, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
            except RuntimeError:
                raise ScriptLoadError(self.startup_failure() or "TorchServe exited; " + (
                    f"see {self.log_path}" if self.log_path else "its log is above")) from None


def serve_script(model_dir, port=8080, name="model", program=None, code_dir=None, env=None) -> int:
    """`localsage serve` for a script model: foreground TorchServe on 127.0.0.1:<port>; a load failure
    (requirements, import, model_fn) is printed and returns 1. env: extra variables for the workers."""
    try:
        server = ScriptServer({name: model_dir}, programs={name: program}, code_dirs={name: code_dir}, port=port,
                              env=env)
    except ScriptLoadError as e:
        print(f"serve: {e}", file=sys.stderr, flush=True)
        return 1
    program = program or script_stage().program()
    print(f"TorchServe (script mode, {program}): POST http://127.0.0.1:{port}/invocations "
          f"(or /predictions/{name}), GET /ping; Ctrl-C stops", flush=True)
    server.start(wait_s=0)
    try:
        server.wait_healthy(wait_s=600)
        print("serve: ready (model_fn succeeded in every worker)", flush=True)
        while server.proc.poll() is None:
            reason = server.startup_failure()
            if reason:
                raise ScriptLoadError(reason)
            time.sleep(1)
        return server.proc.returncode or 1
    except ScriptLoadError as e:
        print(f"serve: the script model cannot be served:\n{e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def package_script(model_dir, export_path="model-store", name="model", program=None, code_dir=None) -> Path:
    """`localsage package` for a script model: a .mar holding script_handler.py, code/ and the model files."""
    stage = script_stage()
    program = program or stage.program()
    work = Path(tempfile.mkdtemp(prefix="localsage-package-"))
    try:
        staged = Path(stage.stage(str(model_dir), str(work / "staged"), str(serve_dir()),
                                  stage.default_config(str(model_dir), program), program, name,
                                  str(code_dir) if code_dir else None))
        serialized = next((staged / f for f in ("model.pth", "model.pt") if (staged / f).is_file()), None)
        extras = work / "extras"  # its entries land at the root of the archive (code/ stays a folder)
        extras.mkdir()
        for entry in staged.iterdir():
            if entry.name not in ("MAR-INF", stage.HANDLER, "model-config.yaml") and entry != serialized:
                os.symlink(entry.resolve() if entry.is_symlink() else entry, extras / entry.name)
        Path(export_path).mkdir(parents=True, exist_ok=True)
        cmd = [_bin("torch-model-archiver"), "--model-name", name, "--version", "1.0",
               "--handler", str(staged / stage.HANDLER), "--extra-files", str(extras),
               "--config-file", str(staged / "model-config.yaml"), "--export-path", str(export_path), "--force"]
        if serialized is not None:
            cmd += ["--serialized-file", str(serialized)]
        subprocess.run(cmd, check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Path(export_path) / f"{name}.mar"
