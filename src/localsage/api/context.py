"""`Api`: what every operation receives — the server folder, the jobs folder and backend, the resource store,
S3 and CloudWatch Logs, ARNs, and background work that ends with the server (spawn, on_shutdown)."""
from __future__ import annotations

import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from localsage.api.aws import ACCOUNT, DEFAULT_BUCKET, REGION, ROLE_ARN, Logs
from localsage.api.s3 import S3
from localsage.api.store import Store

LOG = logging.getLogger("localsage.api")
BACKENDS = ("docker", "process")
JOIN_TIMEOUT = 60.0  # seconds shutdown waits for background threads after the callbacks ran


class Api:
    account = ACCOUNT
    region = REGION
    role_arn = ROLE_ARN
    default_bucket = DEFAULT_BUCKET

    def __init__(self, root, jobs_dir=None, backend: str = "docker", image: str | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: one of {', '.join(BACKENDS)}")
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.jobs_dir = Path(jobs_dir).resolve() if jobs_dir else self.root / "jobs"
        self.backend = backend
        self.image = image or _default_image()
        self.store = Store(self.root)
        self.s3 = S3(self.root, self.account, self.region)
        self.logs = Logs(self.account, self.region)
        self.stopping = threading.Event()  # set at shutdown: background loops end
        self.threads: list[threading.Thread] = []
        self._callbacks: list[Callable[[], object]] = []
        self._lock = threading.Lock()
        self._shut = False

    @property
    def sdk_config_path(self) -> Path:
        return self.root / "sagemaker-config.yaml"

    def arn(self, kind_path: str, name: str) -> str:
        """arn:aws:sagemaker:<region>:<account>:<kind-path>/<name, lower-cased as SageMaker does>."""
        return f"arn:aws:sagemaker:{self.region}:{self.account}:{kind_path}/{name.lower()}"

    def spawn(self, name: str, fn: Callable, *args, **kwargs) -> threading.Thread:
        """Run fn(*args, **kwargs) in a tracked daemon thread; an exception is logged, never lost."""
        def run():
            try:
                fn(*args, **kwargs)
            except BaseException:  # a thread's death must show in the server's log
                LOG.error("background task %s failed:\n%s", name, traceback.format_exc())

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self.threads = [t for t in self.threads if t.is_alive()]
            self.threads.append(thread)
        thread.start()
        return thread

    def on_shutdown(self, fn: Callable[[], object]) -> Callable[[], object]:
        """Register cleanup (stop containers, mark records final); run last-registered first, once."""
        with self._lock:
            self._callbacks.append(fn)
        return fn

    def shutdown(self, join_timeout: float = JOIN_TIMEOUT) -> None:
        """Set `stopping`, run the callbacks (each one's failure logged, the rest still run), then wait for
        the background threads up to join_timeout seconds in all."""
        with self._lock:
            if self._shut:
                return
            self._shut = True
            callbacks, self._callbacks = list(reversed(self._callbacks)), []
        self.stopping.set()
        for fn in callbacks:
            try:
                fn()
            except Exception:
                LOG.error("shutdown callback %r failed:\n%s", fn, traceback.format_exc())
        deadline = time.monotonic() + join_timeout
        for thread in list(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        try:
            self.s3.mirror.sync_all()  # belt and braces: every object on disk before the process ends
        except Exception:
            LOG.error("final S3 sync failed:\n%s", traceback.format_exc())


def _default_image() -> str:
    from localsage.host.backends.docker import DEFAULT_IMAGE

    return DEFAULT_IMAGE
