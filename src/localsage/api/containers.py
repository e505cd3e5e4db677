"""Model servers for endpoints and transform jobs: the model's data from S3 into a folder of the server's
(safely extracted), then either `docker run IMAGE serve` with it at /opt/ml/model, published on a free
127.0.0.1 port (docker picks it, so any number run at once), or, with the process backend, the local TorchServe
(host/torchserve_script.ScriptServer) on a free loopback port. Both answer SageMaker's /ping and /invocations.

Images: only what exists here. An ECR URI is used as is when that tag exists (as `make push` tags the local
image), else as its repository:tag; nothing is ever pulled. Every container is labelled with the server's
identity, and the guard (api/guard.py) removes them if the server is SIGKILLed."""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import tarfile
import threading
import time
import zlib
from pathlib import Path

from localsage.api import guard
from localsage.host import backends

LOG = logging.getLogger("localsage.api")
CONTAINER_PORT = 8080
KIND_LABEL = "localsage.api"  # "endpoint/<name>" or "transform-job/<name>"
ROOT_LABEL = "localsage.api.root"  # the server folder that started it
STOP_GRACE_S = 10
GPU_INSTANCE = re.compile(r"ml\.(p\d|g\d)[a-z0-9-]*\.")
HOST_ENV_REFUSED = re.compile(r"(LD_.*|PYTHON.*|PATH|HOME|TMPDIR|TEMP|JAVA_.*|LOCALSAGE_.*|LOG_LOCATION|"
                              r"METRICS_LOCATION)")
OPT_ML_MODEL, OPT_ML_CODE = "/opt/ml/model", "/opt/ml/code"
CONTAINER_OWNS = ("SAGEMAKER_BIND_TO_PORT", "LOCALSAGE_BIND_HOST")  # the published port is 8080 on every address
LOG_TAIL = 25
CLOUDWATCH_LINES = 20_000  # a server's lines copied to CloudWatch Logs (moto holds them in memory); all go to its file


class ServeError(Exception):
    """A model server that cannot start or serve; the message is the reason a record shows."""


def gpu_instance(instance_type: str | None) -> bool:
    return bool(instance_type and GPU_INSTANCE.match(instance_type + "."))


# -- model data ---------------------------------------------------------------------------------------------------
def model_source(container: dict) -> tuple[str | None, bool]:
    """(S3 URI, compressed) of a container definition's model data; (None, False) when it names none."""
    source = (container.get("ModelDataSource") or {}).get("S3DataSource")
    if source:
        return source["S3Uri"], source.get("CompressionType") == "Gzip"
    return container.get("ModelDataUrl") or None, True


def fetch_model(api, container: dict, dest: Path) -> Path:
    """The model's data, unpacked into dest (made empty first); ServeError when it cannot be."""
    uri, compressed = model_source(container)
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if not uri:
        return dest
    try:
        if compressed:
            bucket, key = api.s3.parse(uri)
            if not key or not api.s3.exists(bucket, key):
                raise ServeError(f"no model data at {uri}: upload the model.tar.gz there first")
            archive = dest.parent / f".{dest.name}.tar.gz"
            archive.write_bytes(api.s3.get(bucket, key))
            try:
                extract(archive, dest)
            finally:
                archive.unlink(missing_ok=True)
        else:
            api.s3.download(uri, dest)
    except (FileNotFoundError, ValueError) as exc:
        raise ServeError(f"cannot read the model data at {uri}: {exc}") from None
    return dest


def extract(archive: Path, dest: Path) -> Path:
    """A tar(.gz) unpacked as SageMaker does, refusing absolute paths, '..', links out of dest and devices."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise ServeError(f"the model data is not a readable tar.gz archive: {exc}") from None
    return dest


def fetch_code(api, env: dict, dest: Path) -> Path | None:
    """SAGEMAKER_SUBMIT_DIRECTORY as an s3://…/sourcedir.tar.gz (v2 without repacking): unpacked into dest,
    which the server serves as /opt/ml/code. None when the code is in the model (or named nowhere)."""
    submit = env.get("SAGEMAKER_SUBMIT_DIRECTORY", "")
    if not submit.startswith("s3://"):
        return None
    bucket, key = api.s3.parse(submit)
    if not key or not api.s3.exists(bucket, key):
        raise ServeError(f"no source code at SAGEMAKER_SUBMIT_DIRECTORY={submit}")
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = dest.parent / ".sourcedir.tar.gz"
    archive.write_bytes(api.s3.get(bucket, key))
    try:
        return extract(archive, dest)
    finally:
        archive.unlink(missing_ok=True)


# -- servers ------------------------------------------------------------------------------------------------------
class Server:
    """What endpoints and transform jobs drive: start(), then wait_ready(timeout, stop); url; failure() (None
    while it serves, else why not); log_tail(); stop(). Our lines and the container's go to `log_path` and to
    CloudWatch Logs (group, stream); the process backend's TorchServe writes to `log_path` only."""

    def __init__(self, api, kind: str, name: str, image: str, model_dir: Path, env: dict, log_path: Path,
                 log_stream: tuple[str, str], instance_type: str | None = None, code_dir: Path | None = None):
        self.api, self.kind, self.name, self.image = api, kind, name, image
        self.model_dir, self.code_dir = Path(model_dir), code_dir
        self.env, self.instance_type = dict(env), instance_type
        self.log_path, self.log_stream = Path(log_path), log_stream
        self.url: str | None = None
        self._log_lock = threading.Lock()
        self._copied = 0

    def log(self, line: str) -> None:
        with self._log_lock:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            self._copied += 1
            if self._copied > CLOUDWATCH_LINES:
                return
            if self._copied == CLOUDWATCH_LINES:
                line = f"localsage: the rest of this log is in {self.log_path} only (moto keeps logs in memory)"
        if self.kind == "endpoint":  # SDK v3 prints an endpoint's CloudWatch lines as rich markup, where a
            line = line.replace("[/", "\\[/")  # '[/opt/...]' (TorchServe's worker cmdline) is a closing tag: it raises
        try:
            self.api.logs.put(*self.log_stream, [line])
        except Exception:  # CloudWatch Logs is a courtesy copy; the file has the line
            pass

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float, stop: threading.Event) -> None:
        """Until /ping answers 200; ServeError with the log's tail when the server exits or the time is up."""
        import urllib3

        deadline = time.monotonic() + timeout
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=2))
        while not stop.is_set():
            failure = self.failure()
            if failure:
                raise ServeError(f"{failure}; its log ends:\n{self.log_tail()}")
            try:
                if self.url and http.request("GET", self.url + "/ping").status == 200:
                    return
            except urllib3.exceptions.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServeError(f"the model server did not answer /ping within {timeout:.0f} s; its log ends:\n"
                                 f"{self.log_tail()}")
            stop.wait(0.5)


class DockerServer(Server):
    """`docker run IMAGE serve`, the model read-only at /opt/ml/model, port 8080 on a free 127.0.0.1 port."""

    container = None

    def start(self) -> None:
        import docker

        from localsage.core import procs
        from localsage.host.backends import docker as docker_backend

        try:
            engine = docker_backend.client()
            image = docker_backend.local_image(self.image, engine)
        except (LookupError, docker.errors.DockerException) as exc:
            raise ServeError(str(exc)) from None
        guard.ensure_guard()
        kwargs = {}
        if gpu_instance(self.instance_type):
            if docker_backend.gpus_available(engine):
                kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
            else:
                self.log(f"localsage: {self.instance_type} asks for a GPU and this machine has none: CPU serving")
        env = {k: v for k, v in self.env.items() if k not in CONTAINER_OWNS}
        if os.getuid() != 0:
            kwargs["user"] = f"{os.getuid()}:{os.getgid()}"
            env.setdefault("HOME", "/tmp")
        volumes = {str(self.model_dir.resolve()): {"bind": OPT_ML_MODEL, "mode": "ro"}}
        if self.code_dir:
            volumes[str(Path(self.code_dir).resolve())] = {"bind": OPT_ML_CODE, "mode": "ro"}
            env["SAGEMAKER_SUBMIT_DIRECTORY"] = OPT_ML_CODE
        labels = {KIND_LABEL: f"{self.kind}/{self.name}", ROOT_LABEL: str(self.api.root),
                  guard.OWNER_LABEL: json.dumps(procs.identity())}
        name = f"localsage-{self.kind}-{self.name}-{secrets.token_hex(3)}"
        try:
            self.container = engine.containers.run(
                image, ["serve"], name=name, detach=True, environment=env, volumes=volumes, labels=labels,
                ports={f"{CONTAINER_PORT}/tcp": ("127.0.0.1", None)}, init=True, **kwargs)
            self.container.reload()
        except docker.errors.DockerException as exc:
            raise ServeError(f"docker could not start {image}: {exc}") from None
        self.log(f"localsage: container {name} of {image} ({self.image}) serving {self.kind} {self.name}")
        self.api.spawn(f"logs-{name}", self._pump)
        bound = (self.container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(f"{CONTAINER_PORT}/tcp")
        if bound:
            self.url = f"http://127.0.0.1:{bound[0]['HostPort']}"

    def _pump(self) -> None:
        pending = b""
        try:
            for chunk in self.container.logs(stream=True, follow=True, stdout=True, stderr=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.log(line.decode("utf-8", "replace").rstrip("\r"))
        except Exception:  # the container is gone: its last lines are already in the file
            pass
        if pending:
            self.log(pending.decode("utf-8", "replace"))

    def failure(self) -> str | None:
        import docker

        try:
            self.container.reload()
        except docker.errors.NotFound:
            return "the serving container is gone"
        except docker.errors.DockerException as exc:
            return f"cannot reach the docker engine ({exc})"
        state = self.container.attrs.get("State", {})
        if state.get("Status") in ("exited", "dead"):
            time.sleep(0.3)  # the log pump's last lines
            return f"the serving container exited with code {state.get('ExitCode')}"
        if self.url is None:
            return "the serving container has no published port"
        return None

    def stop(self) -> None:
        import docker

        if self.container is None:
            return
        try:
            self.container.stop(timeout=STOP_GRACE_S)
        except docker.errors.DockerException:
            pass
        try:
            self.container.remove(force=True)
        except docker.errors.DockerException:
            pass


class ProcessServer(Server):
    """The local TorchServe (built-in model dirs and script models alike), under localsage's group guard with
    a parent-death signal: start() must run in the thread that stays for the server's life."""

    server = None

    def start(self) -> None:
        from localsage.core import procs
        from localsage.host.torchserve_script import ScriptLoadError, ScriptServer

        env = host_env(self.env, self.model_dir, self.code_dir)
        port = procs.free_port()
        try:
            self.server = ScriptServer({"model": self.model_dir}, programs={"model": env.get("SAGEMAKER_PROGRAM")},
                                       code_dirs={"model": str(self.code_dir) if self.code_dir else None},
                                       port=port, host="127.0.0.1", env=env, log_path=self.log_path)
        except ScriptLoadError as exc:
            raise ServeError(f"the script model cannot be served: {exc}") from None
        self.log(f"localsage: local TorchServe on 127.0.0.1:{port} serving {self.kind} {self.name}")
        self.server.start(wait_s=0)
        self.url = f"http://127.0.0.1:{port}"

    def failure(self) -> str | None:
        reason = self.server.startup_failure()
        if reason:
            return f"the model failed to load: {reason}"
        if self.server.proc.poll() is not None:
            return f"TorchServe exited with code {self.server.proc.returncode}"
        return None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace_s=STOP_GRACE_S)


def host_env(env: dict, model_dir: Path, code_dir: Path | None) -> dict:
    """A model's Environment for a process on this machine: /opt/ml/model paths mapped to the model's folder,
    variables that would reach outside it or change the interpreter (LD_*, PYTHON*, PATH, LOCALSAGE_*, ...)
    dropped with a log line."""
    out = {}
    for key, value in env.items():
        if HOST_ENV_REFUSED.fullmatch(key):
            LOG.warning("model environment %s ignored by the process backend", key)
            continue
        if value == OPT_ML_MODEL or value.startswith(OPT_ML_MODEL + "/"):
            value = str(model_dir) + value[len(OPT_ML_MODEL):]
        out[key] = value
    submit = out.get("SAGEMAKER_SUBMIT_DIRECTORY", "")
    if code_dir:
        out["SAGEMAKER_SUBMIT_DIRECTORY"] = str(code_dir)
    elif submit and not Path(submit).resolve().is_relative_to(Path(model_dir).resolve()):
        out.pop("SAGEMAKER_SUBMIT_DIRECTORY")  # a host path a request names is never read
    return out


def make_server(api, kind: str, name: str, image: str, model_dir: Path, env: dict, log_path: Path,
                log_stream: tuple[str, str], instance_type: str | None = None, code_dir: Path | None = None):
    cls = DockerServer if backends.traits(api.backend).in_container else ProcessServer
    return cls(api, kind, name, image, model_dir, env, log_path, log_stream, instance_type, code_dir)


def reap(api) -> list:
    """At a server's start: remove this folder's serving containers whose server is gone (SIGKILL, crash)."""
    from localsage.core import procs
    from localsage.host.backends.docker import remove_labelled

    return remove_labelled(f"{ROOT_LABEL}={api.root}", lambda owner: procs.alive(owner) is not True)
