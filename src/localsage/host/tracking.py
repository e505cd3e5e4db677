"""Every job an MLflow run, fed by the host: what localsage knows (hyperparameters, metric lines, verdicts,
artifacts, the outcome) is logged from the runner, so no container needs to reach the tracking store.

Where: `MLFLOW_TRACKING_URI` when set (a tracking server, or any store MLflow accepts), else a SQLite store
in the jobs folder (`mlflow.db`, artifacts in `mlartifacts/`), which `localsage ui` shows. `--no-tracking`
(LOCALSAGE_TRACKING=off) turns it off.

Never at a job's expense: every MLflow call runs in one daemon thread per run, off the training path; a
request waits at most TIMEOUT_S and is not retried; the first failure prints one warning and ends tracking
for that run (the job's own record stays complete). The run's id goes to `<job>/tracking.json` as soon as
it exists, so a job whose localsage was killed is closed KILLED when its record is reconciled.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path

from localsage.core import files

URI_ENV = "MLFLOW_TRACKING_URI"
RUN_ID_ENV = "MLFLOW_RUN_ID"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
OFF_ENV = "LOCALSAGE_TRACKING"  # "off": what --no-tracking sets
EXPERIMENT = "localsage"
STORE, ARTIFACTS = "mlflow.db", "mlartifacts"
RUN_FILE = "tracking.json"  # <job>/tracking.json: {"uri", "run_id"}
TIMEOUT_S = 10  # one request to a tracking server
CLOSE_S = 300  # all of a run's remaining calls (the model folder's upload among them) at the job's end
STATUS = {"Completed": "FINISHED", "Failed": "FAILED", "Stopped": "KILLED", "InProgress": "RUNNING"}
TAG = "localsage."  # our tags' prefix
BATCH = 500  # metrics a log_batch call (MLflow's limit is 1000, params 100)


def store_uri(jobs_dir) -> str:
    """The embedded default: a SQLite file in the jobs folder."""
    return f"sqlite:///{(Path(jobs_dir).resolve() / STORE)}"


def tracking_uri(jobs_dir, enabled: bool = True) -> str | None:
    """Where this job's run goes, or None when tracking is off."""
    if not enabled or os.environ.get(OFF_ENV, "").strip().lower() in ("off", "0", "false", "no"):
        return None
    return os.environ.get(URI_ENV) or store_uri(jobs_dir)


def client(uri: str):
    """An MlflowClient whose requests are bounded: one try, TIMEOUT_S each (MLflow's defaults are 7 retries
    with backoff and 120 s, minutes of a job's time against a server that is down)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(TIMEOUT_S))
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its migration and registry progress lines
    return MlflowClient(uri)


def experiment_id(mlflow, uri: str, jobs_dir=None) -> str:
    name = os.environ.get(EXPERIMENT_ENV) or EXPERIMENT
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///") and jobs_dir is not None:  # artifacts beside the store, not in the cwd
        location = (Path(jobs_dir).resolve() / ARTIFACTS).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # another job made it meanwhile
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class Run:
    """One MLflow run fed from a queue by its own daemon thread; calls never block the caller (but close)."""

    def __init__(self, uri: str, jobs_dir=None, run_id: str | None = None, label: str = "tracking"):
        self.uri, self.jobs_dir, self.run_id, self.label = uri, jobs_dir, run_id, label
        self.dead = False
        self.started = threading.Event()
        if run_id:
            self.started.set()
        self._mlflow = None
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"mlflow-{label}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- the worker
    def _work(self):
        while True:
            call = self._q.get()
            if call is None:
                return
            if self.dead:
                continue
            try:
                if self._mlflow is None:
                    self._mlflow = client(self.uri)
                call(self._mlflow)
            except Exception as exc:  # noqa: BLE001 -- any failure of the store ends tracking, never the job
                self.dead = True
                self.started.set()
                print(f"[{self.label}] warning: MLflow tracking at {redact(self.uri)} failed, the job goes on "
                      f"without it ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''})",
                      file=sys.stderr, flush=True)

    def submit(self, call) -> None:
        if not self.dead:
            self._q.put(call)

    def close(self, wait: float = CLOSE_S) -> bool:
        """Run what is queued and end the thread; False when it did not finish within `wait` seconds."""
        self._q.put(None)
        self._thread.join(wait)
        return not self._thread.is_alive()

    def wait_started(self, timeout: float = TIMEOUT_S * 2) -> str | None:
        self.started.wait(timeout)
        return None if self.dead else self.run_id

    # ---------------------------------------------------------------- what a job logs
    def start(self, name: str, params: dict, tags: dict, job_dir=None, parent: str | None = None) -> None:
        def call(mlflow):
            from mlflow.entities import Param

            all_tags = {"mlflow.runName": name, **{k: str(v) for k, v in tags.items() if v is not None}}
            if parent:
                all_tags["mlflow.parentRunId"] = parent
            run = mlflow.create_run(experiment_id(mlflow, self.uri, self.jobs_dir), run_name=name, tags=all_tags)
            self.run_id = run.info.run_id
            if job_dir is not None:
                files.atomic_write_json(Path(job_dir) / RUN_FILE, {"uri": redact(self.uri), "run_id": self.run_id})
            self.started.set()
            items = [Param(str(k)[:250], str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                mlflow.log_batch(self.run_id, params=items[i:i + 100])

        self.submit(call)

    def log_metrics(self, values: dict, step: int, timestamp: float | None = None) -> None:
        stamp = int((timestamp or time.time()) * 1000)
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            self.submit(lambda mlflow: _log_metrics(mlflow, self.run_id, numbers, step, stamp))

    def set_tags(self, tags: dict) -> None:
        clean = {k: str(v)[:5000] for k, v in tags.items() if v is not None}
        self.submit(lambda mlflow: [mlflow.set_tag(self.run_id, k, v) for k, v in clean.items()])

    def log_artifacts(self, pairs) -> None:
        """pairs: (local file or folder, artifact folder or None)."""
        present = [(Path(p), dest) for p, dest in pairs if Path(p).exists()]

        def call(mlflow):
            for path, dest in present:
                if path.is_dir():
                    mlflow.log_artifacts(self.run_id, str(path), dest)
                else:
                    mlflow.log_artifact(self.run_id, str(path), dest)

        if present:
            self.submit(call)

    def terminate(self, status: str) -> None:
        state = STATUS.get(status, "FAILED")
        self.submit(lambda mlflow: mlflow.set_terminated(self.run_id, state))


def _log_metrics(mlflow, run_id, numbers: dict, step: int, stamp: int):
    from mlflow.entities import Metric

    items = [Metric(k, v, stamp, int(step)) for k, v in numbers.items()]
    for i in range(0, len(items), BATCH):
        mlflow.log_batch(run_id, metrics=items[i:i + BATCH])


def redact(uri: str) -> str:
    """A URI as it may be printed or written: no user:password@."""
    if "://" in uri and "@" in uri.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


def read_run_file(job_dir) -> dict | None:
    try:
        return json.loads((Path(job_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def stored_run(job_dir) -> tuple[str, str] | None:
    """(tracking URI, run id) of a job's run, from <job>/tracking.json; None when it got none. A URI written
    without its credentials (redact) names the same store as $MLFLOW_TRACKING_URI now."""
    found = read_run_file(job_dir)
    if not found or not found.get("run_id"):
        return None
    uri = found["uri"]
    if "***" in uri:
        uri = os.environ.get(URI_ENV) or uri
    return uri, found["run_id"]


def reopen(job_dir, label: str) -> Run | None:
    """A Run on a job's existing run (to add to it after the job), or None when it has none."""
    stored = stored_run(job_dir)
    if stored is None:
        return None
    return Run(stored[0], jobs_dir=Path(job_dir).parent, run_id=stored[1], label=label)


# ------------------------------------------------------------------ a localsage job as a run

def job_tags(record: dict) -> dict:
    spec = record.get("AlgorithmSpecification") or {}
    tags = record.get("Tags") or {}
    return {
        TAG + "job": record.get("TrainingJobName"),
        TAG + "backend": record.get("Backend"),
        TAG + "image": spec.get("TrainingImage"),
        TAG + "entry_point": spec.get("EntryPoint") or "built-in",
        TAG + "instance_count": (record.get("ResourceConfig") or {}).get("InstanceCount"),
        TAG + "status": record.get("TrainingJobStatus"),
        TAG + "job_dir": record.get("JobDir"),
        TAG + "study": tags.get("tune-study"),
        TAG + "trial": tags.get("tune-trial"),
    }


def start_job(record: dict, job_dir, uri: str, parent: str | None = None) -> Run:
    run = Run(uri, jobs_dir=Path(job_dir).parent, label=record["TrainingJobName"])
    run.start(record["TrainingJobName"], record.get("HyperParameters") or {}, job_tags(record), job_dir, parent)
    return run


def script_env(run: Run, uri: str, in_container: bool, job_env: dict) -> dict:
    """What a script job gets so that its own `mlflow.log_metric` lands in the job's run. On the host: the
    store and the run. In a container only when the user gave the job a tracking server it can reach
    (`--env MLFLOW_TRACKING_URI=http://<host>:5000`): localsage never hands a container the host's loopback
    server or its SQLite file."""
    if in_container and not job_env.get(URI_ENV):
        return {}
    run_id = run.wait_started()
    if not run_id:
        return {}
    return {RUN_ID_ENV: run_id} if in_container else {URI_ENV: uri, RUN_ID_ENV: run_id}


def job_artifacts(job_dir, completed: bool) -> list:
    out = Path(job_dir) / "output"
    pairs = [(out / "data" / name, "data") for name in ("metrics.jsonl", "metric_points.jsonl", "summary.json")]
    pairs += [(out / "rules", "rules"), (out / "report" / "report.html", "report")]
    if completed:
        pairs.append((Path(job_dir) / "model", "model"))
    return pairs


def finish_job(run: Run, record: dict, job_dir, wait: float = CLOSE_S) -> None:
    """The outcome, verdicts and artifacts, then the run's end; waits for the queue (bounded)."""
    status = record.get("TrainingJobStatus", "Failed")
    run.set_tags({**job_tags(record), TAG + "failure_reason": record.get("FailureReason"),
                  TAG + "stop_reason": record.get("StopReason")})
    run.log_artifacts(job_artifacts(job_dir, status == "Completed"))
    run.terminate(status)
    if not run.close(wait):
        print(f"[{run.label}] warning: MLflow tracking did not finish within {wait:.0f}s; the job's own record "
              "is complete", file=sys.stderr, flush=True)


def close_orphan(job_dir, record: dict) -> None:
    """A job whose localsage was killed: its run (if it got one) ends KILLED with the record's reason."""
    run = reopen(job_dir, record.get("TrainingJobName", "tracking"))
    if run is not None:
        finish_job(run, record, job_dir, wait=TIMEOUT_S * 3)


def attach(job_dir, pairs) -> None:
    """Artifacts made after the job (verdicts of `localsage debug`, its report) into the job's run, if any."""
    if tracking_uri(Path(job_dir).parent) is None:
        return
    run = reopen(job_dir, Path(job_dir).name)
    if run is None:
        return
    run.log_artifacts(pairs)
    run.close(TIMEOUT_S * 3)
