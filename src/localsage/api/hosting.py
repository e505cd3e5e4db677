"""Endpoints at run time: one model server an endpoint (api/containers.py), each run by a thread of its own that
fetches the model, starts the server, waits for /ping, marks the endpoint InService (or Failed with the reason:
the server log's tail), watches it, and stops it when the endpoint is deleted or updated or the API stops.

The records (api.store "Endpoint") say what should run; `Hosting` holds what runs. At a server's start
(`start(api)`, or the first use) the serving containers of a previous run that died are removed, and every
endpoint that was InService, Creating or Updating is started again (Creating, then InService): endpoints come
back after a restart, as SageMaker's outlive a client. UpdateEndpoint is blue/green: the new config's server
starts beside the old one, takes the traffic once it answers, then the old one stops; if the new one fails the
old one keeps serving (InService, FailureReason says why the update failed)."""
from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import threading
import time
import traceback
import weakref
from pathlib import Path

from localsage.api import containers

LOG = logging.getLogger("localsage.api")
STARTUP_TIMEOUT_S = 600  # without ContainerStartupHealthCheckTimeoutInSeconds (script models may pip install)
STOP_WAIT_S = 60
DRAIN_S = 60  # an updated endpoint's old server answers what it was asked before it stops
RUNNING = ("InService", "Creating", "Updating", "SystemUpdating")
_HOSTINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_HOSTINGS_LOCK = threading.Lock()


def now() -> float:
    return round(time.time(), 3)


def hosting(api) -> Hosting:
    """The Api's endpoints at run time; made, and reconciled with the records, on first use."""
    with _HOSTINGS_LOCK:
        found = _HOSTINGS.get(api)
        if found is None:
            found = _HOSTINGS[api] = Hosting(api)
            found.reconcile()
    return found


def start(api) -> None:
    """For the server's start (after S3 is restored): reap dead runs' containers, bring endpoints back."""
    hosting(api)


def clip(reason: str, limit: int = 1024) -> str:
    """A FailureReason within SageMaker's 1,024 characters: its first line, then as much of its end (the log's
    last lines) as fits."""
    if len(reason) <= limit:
        return reason
    head = reason.splitlines()[0][:limit // 3]
    return f"{head}\n...\n{reason[-(limit - len(head) - 5):]}"


def lookup(api, kind: str, name) -> dict | None:
    """A record by a name read from another record (None when missing or not a valid name)."""
    from localsage.core.contract import NAME_PATTERN

    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        return None
    return api.store.get(kind, name)


def variant_summary(runner: Runner) -> list:
    variant = runner.variant
    count = int(variant.get("InitialInstanceCount") or 1)
    weight = float(variant.get("InitialVariantWeight", 1.0))
    image = runner.container.get("Image", "")
    summary = {"VariantName": variant["VariantName"], "CurrentWeight": weight, "DesiredWeight": weight,
               "DeployedImages": [{"SpecifiedImage": image, "ResolvedImage": image,
                                   "ResolutionTime": runner.started}]}
    if variant.get("ServerlessConfig"):
        summary["CurrentServerlessConfig"] = summary["DesiredServerlessConfig"] = variant["ServerlessConfig"]
    else:
        summary["CurrentInstanceCount"] = summary["DesiredInstanceCount"] = count
    return [summary]


class Runner:
    """One endpoint config's model server, in a thread that stays until it is stopped (the process backend's
    parent-death signal is tied to the thread that started TorchServe)."""

    def __init__(self, hosting: Hosting, name: str, config: dict, model: dict):
        self.hosting, self.api, self.name = hosting, hosting.api, name
        self.config_name = config["EndpointConfigName"]
        self.variant = config["ProductionVariants"][0]
        self.container = model["PrimaryContainer"]
        self.run_id = secrets.token_hex(4)
        self.folder = hosting.folder(name) / self.run_id
        self.stop, self.done = threading.Event(), threading.Event()
        self.server = None
        self.pool = None
        self.started = now()
        self.inflight = 0  # invocations being answered: a retired runner stops after the last one
        self.idle = threading.Condition()
        self.retired = False

    @property
    def variant_name(self) -> str:
        return self.variant["VariantName"]

    @contextlib.contextmanager
    def request(self):
        with self.idle:
            self.inflight += 1
        try:
            yield self.pool
        finally:
            with self.idle:
                self.inflight -= 1
                self.idle.notify_all()

    def retire(self) -> None:
        """Superseded by an update: stop once the invocations it is answering are answered."""
        self.retired = True
        self.stop.set()

    def log_stream(self) -> tuple[str, str]:
        return f"/aws/sagemaker/Endpoints/{self.name}", f"{self.variant_name}/i-{self.run_id}"

    def run(self) -> None:
        try:
            self._serve()
        except containers.ServeError as exc:
            self.hosting.failed(self, str(exc))
        except Exception as exc:  # ours: the endpoint still ends Failed, never stuck in Creating
            LOG.error("endpoint %s failed:\n%s", self.name, traceback.format_exc())
            self.hosting.failed(self, f"localsage could not start the endpoint: {type(exc).__name__}: {exc}")
        finally:
            if self.retired:
                with self.idle:
                    self.idle.wait_for(lambda: self.inflight == 0, timeout=DRAIN_S)
            if self.server is not None:
                self.server.stop()
            if self.pool is not None:
                self.pool.close()
            shutil.rmtree(self.folder, ignore_errors=True)
            self.done.set()

    def _serve(self) -> None:
        import urllib3

        env = dict(self.container.get("Environment") or {})
        self.folder.mkdir(parents=True, exist_ok=True)
        model_dir = containers.fetch_model(self.api, self.container, self.folder / "model")
        code_dir = containers.fetch_code(self.api, env, self.folder / "code")
        self.server = containers.make_server(
            self.api, "endpoint", self.name, self.container.get("Image") or self.api.image, model_dir, env,
            self.folder / "serve.log", self.log_stream(), self.variant.get("InstanceType"), code_dir)
        if self.stop.is_set():
            return
        self.server.start()
        timeout = self.variant.get("ContainerStartupHealthCheckTimeoutInSeconds") or STARTUP_TIMEOUT_S
        self.server.wait_ready(timeout, self.stop)
        if self.stop.is_set():
            return
        host, _, port = self.server.url.rpartition("/")[2].partition(":")
        self.pool = urllib3.HTTPConnectionPool(host, int(port), maxsize=16, block=False, retries=False)
        self.started = now()
        self.hosting.ready(self)
        while not self.stop.wait(2.0):
            failure = self.server.failure()
            if failure:
                self.hosting.died(self, f"{failure}; its log ends:\n{self.server.log_tail()}")
                return


class Hosting:
    def __init__(self, api):
        self.api = api
        self.lock = threading.RLock()
        self.live: dict[str, Runner] = {}  # serving traffic
        self.pending: dict[str, Runner] = {}  # starting (Creating, or Updating beside a live one)
        api.on_shutdown(self.shutdown)

    def folder(self, name: str) -> Path:
        return self.api.root / "endpoints" / name

    # -- what operations ask ------------------------------------------------------------------------------------
    def launch(self, name: str, config: dict, model: dict) -> Runner:
        """Start a runner for the endpoint (its record already says Creating or Updating)."""
        runner = Runner(self, name, config, model)
        with self.lock:
            previous = self.pending.pop(name, None)
            self.pending[name] = runner
        if previous is not None:
            previous.stop.set()
        self.api.spawn(f"endpoint-{name}-{runner.run_id}", runner.run)
        return runner

    def serving(self, name: str) -> Runner | None:
        return self.live.get(name)

    def remove(self, name: str) -> None:
        """DeleteEndpoint: stop what runs for it (waiting up to STOP_WAIT_S), then its folder."""
        with self.lock:
            runners = [r for r in (self.pending.pop(name, None), self.live.pop(name, None)) if r is not None]
        for runner in runners:
            runner.stop.set()
        deadline = time.monotonic() + STOP_WAIT_S
        for runner in runners:
            runner.done.wait(max(0.0, deadline - time.monotonic()))
        shutil.rmtree(self.folder(name), ignore_errors=True)

    # -- what runners report ------------------------------------------------------------------------------------
    def ready(self, runner: Runner) -> None:
        with self.lock:
            if self.pending.get(runner.name) is not runner:
                runner.stop.set()  # deleted or superseded while starting
                return
            del self.pending[runner.name]
            old = self.live.get(runner.name)
            self.live[runner.name] = runner
            record = self.api.store.get("Endpoint", runner.name)
            if record is not None:
                record.pop("FailureReason", None)
                record.update(EndpointStatus="InService", EndpointConfigName=runner.config_name,
                              LastModifiedTime=now(), ProductionVariants=variant_summary(runner))
                self.api.store.put("Endpoint", runner.name, record)
        if old is not None:
            old.retire()
        LOG.info("endpoint %s: InService at %s", runner.name, runner.server.url)

    def failed(self, runner: Runner, reason: str) -> None:
        with self.lock:
            if self.pending.get(runner.name) is not runner:
                return
            del self.pending[runner.name]
            if runner.name in self.live:  # an update failed: the old config keeps serving
                self.api.store.update("Endpoint", runner.name, EndpointStatus="InService", LastModifiedTime=now(),
                                      FailureReason=clip(f"The update to {runner.config_name} failed: {reason}"))
            else:
                self.api.store.update("Endpoint", runner.name, EndpointStatus="Failed", LastModifiedTime=now(),
                                      FailureReason=clip(reason))
        LOG.warning("endpoint %s failed: %s", runner.name, reason)

    def died(self, runner: Runner, reason: str) -> None:
        with self.lock:
            if self.live.get(runner.name) is not runner:
                return
            del self.live[runner.name]
            record = self.api.store.get("Endpoint", runner.name)
            if record is not None and runner.name not in self.pending:
                record.pop("ProductionVariants", None)
                record.update(EndpointStatus="Failed", LastModifiedTime=now(), FailureReason=clip(reason))
                self.api.store.put("Endpoint", runner.name, record)
        LOG.warning("endpoint %s: its model server stopped: %s", runner.name, reason)

    # -- start and stop -----------------------------------------------------------------------------------------
    def reconcile(self) -> None:
        removed = containers.reap(self.api)
        if removed:
            LOG.info("removed %d serving container(s) a previous run left: %s", len(removed), ", ".join(removed))
        for record in self.api.store.list("Endpoint"):
            name = record.get("EndpointName")
            if not name:
                continue
            if record.get("EndpointStatus") == "Deleting":
                self.api.store.delete("Endpoint", name)
                shutil.rmtree(self.folder(name), ignore_errors=True)
                continue
            if record.get("EndpointStatus") not in RUNNING:
                continue
            for stale in self.folder(name).glob("*"):  # run folders of the previous server
                shutil.rmtree(stale, ignore_errors=True)
            config = lookup(self.api, "EndpointConfig", record.get("EndpointConfigName"))
            model = config and lookup(self.api, "Model", config["ProductionVariants"][0].get("ModelName"))
            if not model:
                record.pop("ProductionVariants", None)
                record.update(EndpointStatus="Failed", LastModifiedTime=now(),
                              FailureReason="At the API's restart, its endpoint config or model no longer exists.")
                self.api.store.put("Endpoint", name, record)
                continue
            LOG.info("endpoint %s: starting again (it was %s when the API stopped)", name, record["EndpointStatus"])
            record.pop("ProductionVariants", None)
            record.pop("FailureReason", None)
            record.update(EndpointStatus="Creating", LastModifiedTime=now())
            self.api.store.put("Endpoint", name, record)
            self.launch(name, config, model)

    def shutdown(self) -> None:
        """The API stops: every model server stops; the records stay as they are (they come back at start)."""
        with self.lock:
            runners = [*self.pending.values(), *self.live.values()]
            self.pending.clear()
            self.live.clear()
        for runner in runners:
            runner.stop.set()
        deadline = time.monotonic() + STOP_WAIT_S
        for runner in runners:
            runner.done.wait(max(0.0, deadline - time.monotonic()))
