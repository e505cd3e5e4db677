"""A running job's log lines: to its log file, the terminal (a progress bar or plain lines), the MLflow run,
the caller's metrics callback (which may stop the job) and the metric_definitions scraper. And the two other
ways a job is told to stop: a signal to this process and SageMaker's max run."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

from localsage.host.records import LOG, MAX_RUNTIME


class JobLog:
    """on_metrics(values) sees every built-in epoch line; for scripts every scraped point
    {"name", "value", "timestamp", "ordinal"}. When it returns True the job is stopped."""

    def __init__(self, plan, job_dir, name, scraper, stop: threading.Event, reasons: list, echo=True,
                 run=None, on_metrics=None):
        self.plan, self.name, self.scraper, self.stop, self.reasons = plan, name, scraper, stop, reasons
        self.echo, self.run, self.on_metrics = echo, run, on_metrics
        self.file = open(job_dir / LOG, "a", buffering=1)
        self.bar = None
        if echo and sys.stdout.isatty() and plan.script is None:
            from tqdm import tqdm

            self.bar = tqdm(total=plan.epochs, desc=name, unit="epoch")
        self.step = 0  # the step of the built-in trainer's closing test metrics

    def __call__(self, line: str):
        self.file.write(line + "\n")
        if self.bar is not None:
            self.bar.write(line)
        elif self.echo:
            print(f"[{self.name}] {line}", flush=True)
        values = self.plan.epoch_values(line)
        if values:
            self._epoch(values)
        for point in self.scraper.scan(line) if self.scraper.patterns else ():
            if self.run is not None:
                self.run.log_metrics({point["name"]: point["value"]}, point["ordinal"], point.get("timestamp"))
            if self.plan.script is not None:
                self._ask(point, f"stopped by the caller after {point['name']} #{point['ordinal']}")

    def _epoch(self, values: dict):
        if self.bar is not None and "epoch" in values:
            self.bar.update(1)
        if self.run is not None:
            self.step = int(values.get("epoch", self.step))
            self.run.log_metrics({k: v for k, v in values.items() if k != "epoch"}, self.step)
        if "epoch" in values:
            self._ask(values, "stopped by the caller after epoch %d" % values["epoch"])

    def _ask(self, values, reason):
        if self.on_metrics is not None and not self.stop.is_set() and self.on_metrics(values):
            self.reasons.append(reason)
            self.stop.set()

    def close(self):
        self.file.close()
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, reasons: list, name: str):
    """Ctrl-C and SIGTERM (docker, systemd, supervisors) stop the job; only the main thread can listen."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def interrupt(signum, frame):
            if not stop.is_set():
                reasons.append("interrupted (Ctrl-C)" if signum == signal.SIGINT
                               else f"interrupted ({signal.Signals(signum).name})")
                print(f"[{name}] stopping: SIGTERM sent to the job", file=sys.stderr, flush=True)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def max_run(seconds, stop: threading.Event, reasons: list, name: str):
    """Stop the job after `seconds`, as SageMaker does at MaxRuntimeInSeconds."""
    if not seconds:
        yield
        return

    def expire():
        if not stop.is_set():
            reasons.append(f"{MAX_RUNTIME}: the job ran longer than max_run={seconds:g}s")
            print(f"[{name}] {reasons[-1]}: SIGTERM sent to the job", file=sys.stderr, flush=True)
            stop.set()

    timer = threading.Timer(float(seconds), expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
