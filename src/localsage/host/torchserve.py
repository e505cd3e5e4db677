"""Serving: the TorchServe bits of the model directory, `.mar` packaging, the local TorchServe
launcher (`localsage serve JOB`, `make serve JOB=...`) and the `localsage predict` client.

The handler itself is serve/handler.py; it is copied into every exported model directory and
never imports localsage.
"""
from __future__ import annotations

import http.client
import json
import mimetypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from localsage.container.export import MANIFEST, MODEL_CONFIG_YAML, make_torchserve_dir
from localsage.core import procs
from localsage.core.serve_dir import HANDLER_FILE, handler_files, serve_dir, serve_module, serving_defaults


def _jobs_dir(jobs_dir):
    from localsage.host.records import jobs_root

    return jobs_root(jobs_dir)


def _model_name(job) -> str:
    path = Path(str(job).rstrip("/"))
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def job_model_dir(job, jobs_dir=None) -> Path:
    """A job name (<jobs_dir>/<name>/model) or a path to a model dir."""
    path = Path(job)
    if (path / MANIFEST).is_file() or (path / "model.pth").is_file():
        return path
    candidate = _jobs_dir(jobs_dir) / str(job) / "model"
    if not candidate.is_dir():
        raise FileNotFoundError(f"no model for job {job!r}: {candidate} does not exist")
    if not (candidate / MANIFEST).is_file():
        make_torchserve_dir(candidate)
    return candidate


def _bin(name: str) -> str:
    sibling = Path(sys.executable).parent / name
    return str(sibling) if sibling.exists() else (shutil.which(name) or name)


def package(job, export_path="model-store", name=None, jobs_dir=None) -> Path:
    """`localsage package JOB`: a .mar of the job's model dir (torch-model-archiver) in export_path."""
    model_dir = job_model_dir(job, jobs_dir)
    if not (model_dir / MANIFEST).is_file():
        make_torchserve_dir(model_dir)
    name = name or _model_name(job)
    version = json.loads((model_dir / MANIFEST).read_text())["model"].get("modelVersion", "1.0")
    # the handler's modules (a model dir exported before they existed has a self-contained handler.py)
    names = ["model_config.json", "index_to_name.json", *(p.name for p in handler_files() if p.name != HANDLER_FILE)]
    extra = [str(model_dir / f) for f in names if (model_dir / f).is_file()]
    Path(export_path).mkdir(parents=True, exist_ok=True)
    cmd = [_bin("torch-model-archiver"), "--model-name", name, "--version", version,
           "--serialized-file", str(model_dir / "model.pth"), "--handler", str(model_dir / HANDLER_FILE),
           "--extra-files", ",".join(extra), "--config-file", str(model_dir / MODEL_CONFIG_YAML),
           "--export-path", str(export_path), "--force"]
    subprocess.run(cmd, check=True)
    return Path(export_path) / f"{name}.mar"


# ---------------------------------------------------------------------------------------------
# local TorchServe


def read_properties(path) -> dict:
    props = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


# allowed_urls is a list of regexes a model/workflow URL must match; this one matches nothing, so
# neither the model API (off anyway) nor the workflow API (TorchServe 0.12 has no switch) can fetch one.
DENY_ALL_URLS = "localsage-deny-all-urls^"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def unix_request(sock_path, method, path, timeout=10.0):
    """An HTTP request over a unix socket (TorchServe's management API here): (status, body bytes)."""
    conn = _UnixHTTPConnection(str(sock_path), timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def longest_response_timeout(models: dict, props: dict) -> int:
    """The longest responseTimeout of the models' model-config.yaml files and the server default."""
    import yaml

    longest = int(props.get("default_response_timeout", 120))
    for d in models.values():
        path = Path(d) / MODEL_CONFIG_YAML
        try:
            longest = max(longest, int((yaml.safe_load(path.read_text()) or {}).get("responseTimeout", 0)))
        except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
            continue  # a .mar, or no yaml: the default applies
    return longest


class LocalServer:
    """TorchServe as a child process group on loopback, with a private temp dir (TorchServe keeps
    its pid file and worker sockets in TMPDIR, so several servers can run side by side).

    Inference on loopback HTTP through serve/front.py (TorchServe's own inference API is a unix
    socket in the private folder), metrics on loopback HTTP; the management API only on a unix socket inside the
    private (0700) temp dir, as serve/serve does, so no other user and no web page posting to
    loopback can reach it; allowed_urls matches nothing (no model or workflow fetched from a URL)."""

    def __init__(self, models: dict, port=8080, metrics_port=None, grpc_ports=None,
                 host="127.0.0.1", env=None, log_path=None, extra_properties=None, front=True):
        if metrics_port is None or grpc_ports is None:  # unpinned: side_ports picks free ones (a pinned one held)
            picked_metrics, picked_grpc = side_ports(port, metrics_port)
            metrics_port, grpc_ports = metrics_port or picked_metrics, grpc_ports or picked_grpc
        self.models = {name: Path(d) for name, d in models.items()}
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        self.workdir = Path(tempfile.mkdtemp(prefix="localsage-ts-"))  # mode 0700
        self.management_socket = self.workdir / "management.sock"
        self.inference_socket = self.workdir / "inference.sock"  # behind serve/front.py on host:port
        props = read_properties(serve_dir() / "config.properties")
        props.update({
            "inference_address": f"unix:{self.inference_socket}" if front else f"http://{host}:{port}",
            "management_address": f"unix:{self.management_socket}",
            "metrics_address": f"http://127.0.0.1:{metrics_port}",
            # TorchServe always starts gRPC too; two servers must not share these ports
            "grpc_inference_port": str(grpc_ports[0]),
            "grpc_management_port": str(grpc_ports[1]),
            "allowed_urls": DENY_ALL_URLS,
        })
        props.update(extra_properties or {})
        self.metrics_url = props["metrics_address"]
        # front=False: TorchServe's own frontend on host:port (bench/front.py)
        self.props, self.use_front = props, front
        self.config = self.workdir / "config.properties"
        self.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.workdir / "store").mkdir()
        self.env = {**os.environ, **(env or {}), "TMPDIR": str(self.workdir), "TEMP": str(self.workdir),
                    "LOG_LOCATION": str(self.workdir / "logs"), "METRICS_LOCATION": str(self.workdir / "logs")}
        self.log_path = Path(log_path) if log_path else None  # None: inherit stdout/stderr
        self.proc = None

    def management(self, method, path, timeout=10.0):
        """(status, parsed JSON or text) of a management API call, over the private unix socket."""
        status, body = unix_request(self.management_socket, method, path, timeout)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode("utf-8", "replace")

    def describe(self, name) -> dict:
        status, doc = self.management("GET", f"/models/{name}")
        if status != 200:
            raise RuntimeError(f"describe model {name}: HTTP {status} {doc}")
        return doc[0]

    def command(self):
        specs = []
        for name, d in self.models.items():  # a model dir in place, or a .mar copied into the store
            specs.append(f"{name}={d.name if d.suffix == '.mar' else d.resolve()}")
        # serve/front.py on host:port before TorchServe: forms TorchServe's Java frontend cannot decode (it
        # answers them 500) and malformed HTTP get 4xx JSON; everything else is passed on unchanged
        front = serve_module("front.py").command(
            f"{self.host}:{self.port}", self.inference_socket, self.props["max_request_size"],
            longest_response_timeout(self.models, self.props)) if self.use_front else []
        return [*front, _bin("torchserve"), "--foreground", "--ncs", "--disable-token-auth",
                "--ts-config", str(self.config), "--model-store", str(self.workdir / "store"), "--models", *specs]

    def start(self, wait_s=180.0):
        for name, d in self.models.items():
            if d.suffix == ".mar":
                shutil.copyfile(d, self.workdir / "store" / d.name)
            elif not (d / MANIFEST).is_file():
                raise FileNotFoundError(f"{d} is not a TorchServe model dir (no {MANIFEST}); run make_torchserve_dir")
        self._log = open(self.log_path, "ab") if self.log_path else None
        # under localsage.core.groupguard, which takes the launcher, the JVM and the workers down with this
        # process even when it is SIGKILLed (the guard has a parent-death signal, they could not)
        guard = [sys.executable, "-m", "localsage.core.groupguard", "--cleanup", str(self.workdir), "--"]
        self.proc = subprocess.Popen(guard + self.command(), env=self.env, cwd=self.workdir, stdout=self._log,
                                     stderr=subprocess.STDOUT if self._log else None, start_new_session=True,
                                     preexec_fn=procs.die_with_parent(signal.SIGTERM))
        if wait_s:
            self.wait_healthy(wait_s)
        return self

    def wait_healthy(self, wait_s=180.0):
        import requests

        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"TorchServe exited with {self.proc.returncode}; see {self.log_path}")
            try:  # /ping can say Healthy before the workers have loaded: check each model's workers
                if requests.get(self.url + "/ping", timeout=2).status_code == 200 and all(
                    self.workers_ready(name) for name in self.models
                ):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"TorchServe not healthy after {wait_s} s; see {self.log_path}")

    def workers_ready(self, name) -> bool:
        try:
            desc = self.describe(name)
        except (OSError, RuntimeError, ValueError, IndexError):
            return False
        workers = desc.get("workers", [])
        return bool(workers) and len(workers) >= desc.get("minWorkers", 1) and all(
            w.get("status") == "READY" for w in workers)

    def worker_pids(self):
        import psutil

        if self.proc is None:
            return []
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        return [p.pid for p in children if "model_service_worker" in " ".join(p.cmdline())]

    def stop(self, grace_s=20.0):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:  # leftover workers, if any
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            if self._log:
                self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def side_ports(port: int, metrics: int | None = None) -> tuple[int, tuple[int, int]]:
    """(metrics port, (gRPC inference, gRPC management)) beside a server on `port`: metrics on `metrics`
    (default port + 2) and gRPC on TorchServe's 7070/7071 beside 8080, each only when free, else a port
    the kernel picks. All are held open while choosing, so none repeats; TorchServe always starts gRPC,
    and a taken port would stop it before it serves anything."""
    held = []

    def take(preferred):
        s = socket.socket()
        held.append(s)
        try:
            s.bind(("127.0.0.1", preferred or 0))
        except OSError:  # taken: the kernel picks one
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

    try:
        if port:
            take(port)  # held too, so the kernel never picks the server's own port
        metrics_port = take(metrics or (port + 2 if port else 0))
        grpc = (take(7070 if port == 8080 else 0), take(7071 if port == 8080 else 0))
    finally:
        for s in held:
            s.close()
    return metrics_port, grpc


def serve_job(job, jobs_dir=None, port=8080, name=None, env=None) -> int:
    """Foreground TorchServe on 127.0.0.1:<port> with one job's model; Ctrl-C or SIGTERM (the CLI
    turns it into KeyboardInterrupt) stops it: the JVM and its workers, then the temp dir.
    env: extra variables for TorchServe and its workers."""
    model_dir = job_model_dir(job, jobs_dir)
    name = name or _model_name(job)
    server = LocalServer({name: model_dir}, port=port, env=env)
    print(f"TorchServe: POST http://127.0.0.1:{port}/predictions/{name} (or /invocations), GET /ping; "
          f"metrics {server.metrics_url}/metrics; management only on {server.management_socket}; "
          "Ctrl-C stops", flush=True)
    try:
        server.start(wait_s=0)
        return server.proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _uninterrupted(server.stop)


def _uninterrupted(fn):
    """Run fn with SIGINT/SIGTERM held off (a second Ctrl-C must not cut the cleanup short)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return fn()
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return fn()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# client


def default_topk() -> int:
    return serving_defaults().TOPK


def predict(endpoint: str, paths, model=None, topk=None, timeout=60.0) -> list:
    """POST each image file; returns [(path, status, json)]."""
    import requests

    endpoint = endpoint.rstrip("/")
    url = f"{endpoint}/predictions/{model}" if model else f"{endpoint}/invocations"
    topk = default_topk() if topk is None else topk
    results = []
    with requests.Session() as session:
        for path in paths:
            ctype = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
            body = Path(path).read_bytes()
            resp = session.post(url, data=body, params={"topk": topk}, headers={"Content-Type": ctype},
                                timeout=timeout)
            try:
                doc = resp.json()
            except ValueError:
                doc = {"message": resp.text[:200]}
            results.append((str(path), resp.status_code, doc))
    return results
