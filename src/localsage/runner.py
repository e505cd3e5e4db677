"""Create a job folder laid out as /opt/ml, run it with a backend, pack artifacts, record the job.

Job records follow DescribeTrainingJob's field names and live in jobs/<name>/job.json.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sys
import tarfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from . import backends, contract, files, metrics, procs
from .hyperparameters import to_strings

RECORD = "job.json"
LOG = "train.log"
BACKEND_INFO = "backend.json"
# SageMaker's TrainingJobName rule: letters, digits and (single or repeated) hyphens, at most 63
NAME_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")


def jobs_root(jobs_dir=None) -> Path:
    """The jobs folder: the given one, else $LOCALSAGE_JOBS_DIR, else ./jobs (the one place for this default)."""
    return Path(jobs_dir or os.environ.get("LOCALSAGE_JOBS_DIR") or "jobs")


def locate(job, jobs_dir=None) -> Path:
    """A job name (in the jobs folder) or a path to a job or output folder."""
    path = Path(job)
    if path.is_dir():
        return path
    candidate = jobs_root(jobs_dir) / str(job)
    if candidate.is_dir():
        return candidate
    raise FileNotFoundError(f"no job {str(job)!r} (looked for {path} and {candidate})")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def job_name(prefix="localsage") -> str:
    """<prefix>-<UTC time to the millisecond>, a valid job name whatever the prefix (a tuner's study
    name, say): other characters become hyphens and the prefix is cut to leave room for the time
    (23 characters) and a collision suffix (5)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d-%H-%M-%S-%f")[:-3]
    prefix = re.sub(r"[^a-zA-Z0-9]+", "-", str(prefix)).strip("-")[:34].strip("-") or "localsage"
    return f"{prefix}-{stamp}"


def check_name(name) -> str:
    """A job name as SageMaker accepts it (so it is also one safe folder name: no '/', no '..')."""
    name = str(name)
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"job name {name!r}: use letters, digits and hyphens only (no leading hyphen), "
                         "at most 63 characters, as SageMaker does")
    return name


def channels_for(data) -> dict:
    """A data folder with train/ valid/ [test/] is one `training` channel (the dogImages layout);
    a dict maps channel names to folders."""
    if isinstance(data, dict):
        return {name: _source(p) for name, p in data.items()}
    if is_remote(data):
        return {contract.COMBINED_CHANNEL: str(data)}
    data = Path(data).resolve()
    if not data.is_dir():
        raise FileNotFoundError(f"data folder not found: {data}")
    return {contract.COMBINED_CHANNEL: data}


def is_remote(source) -> bool:
    """An S3 URI (channels of the sagemaker backend) rather than a local folder."""
    return str(source).startswith("s3://")


def _source(source):
    return str(source) if is_remote(source) else Path(source).resolve()


def write_record(job_dir: Path, record: dict) -> None:
    files.atomic_write_json(Path(job_dir) / RECORD, record, default=str)


def read_record(job_dir) -> dict:
    return json.loads((Path(job_dir) / RECORD).read_text())


def pack(src: Path, dest: Path) -> Path | None:
    """Tar+gzip the contents of src (SageMaker's model.tar.gz / output.tar.gz have no top folder)."""
    if not src.is_dir():
        return None
    def write(f):
        with tarfile.open(fileobj=f, mode="w:gz", compresslevel=1) as tar:
            for child in sorted(src.iterdir()):
                tar.add(child, arcname=child.name)

    files.atomic_write(dest, write)
    return dest


def final_metrics(job_dir: Path) -> dict:
    rows = metrics.read_jsonl(job_dir / "output" / "data" / "metrics.jsonl")
    final = {}
    for row in rows:
        final.update(row)
    return final


def prepare(name, channels: dict, hyperparameters: dict, jobs_dir, instance_count=1) -> Path:
    job_dir = (Path(jobs_dir) / check_name(name)).resolve()
    try:  # exclusive: of two launches with one name, exactly one gets the folder
        job_dir.mkdir()
    except FileExistsError:
        raise FileExistsError(f"job {name!r} already exists at {job_dir}") from None
    contract.make_dirs(job_dir)
    contract.write_config(job_dir, hyperparameters, list(channels))
    for ch, src in channels.items():
        if is_remote(src):
            continue
        os.symlink(src, contract.data_dir(job_dir) / ch, target_is_directory=True)
    return job_dir


def train(data, hyperparameters: dict | None = None, backend: str = "process", name: str | None = None,
          jobs_dir=None, image: str | None = None, instance_count: int = 1, on_metrics=None,
          env: dict | None = None, stop: threading.Event | None = None, echo: bool = True, tags: dict | None = None,
          backend_options: dict | None = None) -> dict:
    """Run one training job to the end; returns its record.

    on_metrics(values) is called for every metrics line in the job's log (every backend); when it
    returns True the job is stopped (SIGTERM) and recorded as Stopped.
    """
    jobs_dir = jobs_root(jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    module = backends.get(backend)
    reap(jobs_dir, docker=backend == "docker")  # containers and records a killed localsage left behind
    hps = to_strings(hyperparameters or {})
    channels = channels_for(data)
    if name:
        job_dir = prepare(name, channels, hps, jobs_dir, instance_count)
    else:  # a generated name: a launch in the same millisecond gets a suffix instead of the same folder
        for attempt in range(8):
            name = job_name() + (f"-{secrets.token_hex(2)}" if attempt else "")
            try:
                job_dir = prepare(name, channels, hps, jobs_dir, instance_count)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"could not find a free job name in {jobs_dir}")
    spec = backends.JobSpec(name=name, dir=job_dir, channels=channels, hyperparameters=hps, image=image,
                            instance_count=instance_count, env=dict(env or {}), options=dict(backend_options or {}))
    record = {
        "TrainingJobName": name,
        "TrainingJobStatus": "InProgress",
        "SecondaryStatus": "Training",
        "HyperParameters": hps,
        "AlgorithmSpecification": {
            "TrainingImage": image or "process:localsage.train",
            "TrainingInputMode": "File",
            "MetricDefinitions": metrics.METRIC_DEFINITIONS,
        },
        "InputDataConfig": [
            {"ChannelName": ch, "DataSource": {"S3DataSource": {"S3Uri": src}} if is_remote(src)
             else {"FileDataSource": {"FileUri": f"file://{src}"}}} for ch, src in channels.items()
        ],
        "OutputDataConfig": {"LocalPath": str(job_dir)},
        "ResourceConfig": {"InstanceType": backend, "InstanceCount": instance_count},
        "CreationTime": _now(),
        "TrainingStartTime": _now(),
        "Backend": backend,
        "JobDir": str(job_dir),
        "LogFile": str(job_dir / LOG),
        "Tags": tags or {},
        "Owner": procs.identity(),  # lets a later command tell a job whose runner was killed
    }
    write_record(job_dir, record)

    stop = stop or threading.Event()
    stop_reason = []
    log_file = open(job_dir / LOG, "a", buffering=1)

    bar = None
    if echo and sys.stdout.isatty():
        from tqdm import tqdm

        from .hyperparameters import SPEC

        epochs = str(hps.get("epochs", SPEC["epochs"].default))
        bar = tqdm(total=int(epochs) if epochs.isdigit() else None, desc=name, unit="epoch")

    def on_line(line: str):
        log_file.write(line + "\n")
        if bar is not None:
            bar.write(line)
        elif echo:
            print(f"[{name}] {line}", flush=True)
        values = metrics.parse_line(line)
        if bar is not None and values and "epoch" in values:
            bar.update(1)
        if values and "epoch" in values and on_metrics is not None and not stop.is_set():
            if on_metrics(values):
                stop_reason.append("stopped by the caller after epoch %d" % values["epoch"])
                stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        def interrupt(signum, frame):  # Ctrl-C and SIGTERM (docker, systemd, supervisors) alike
            if not stop.is_set():
                stop_reason.append("interrupted (Ctrl-C)" if signum == signal.SIGINT else f"interrupted ({signal.Signals(signum).name})")
                print(f"[{name}] stopping: SIGTERM sent to the job", file=sys.stderr, flush=True)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, interrupt)
    started = time.time()
    try:
        code = module.run(spec, on_line, stop)
    except Exception as exc:  # a backend that cannot start the job: record it as failed
        code = -1
        on_line(f"backend {backend} failed: {type(exc).__name__}: {exc}")
        contract.write_failure(job_dir / "output" / "failure", f"backend {backend} could not run the job: {exc}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log_file.close()
        if bar is not None:
            bar.close()
    elapsed = time.time() - started

    failure = job_dir / "output" / "failure"
    if code == 0:
        status, reason = "Completed", None
    elif stop.is_set():
        status, reason = "Stopped", (stop_reason[0] if stop_reason else "stopped")
    else:
        status = "Failed"
        reason = failure.read_text().strip() if failure.exists() else f"the job exited with code {code} and wrote no failure reason"
    finish(job_dir, record, status, reason, code, elapsed)
    if echo:
        print(f"[{name}] {status}" + (f": {reason}" if reason else "") + f" ({elapsed:.1f}s) -> {job_dir}", flush=True)
    return record


def finish(job_dir: Path, record: dict, status: str, reason: str | None, code, elapsed: float) -> dict:
    """Pack the artifacts and write the final record (updated in place, returned)."""
    files.clean_temp(job_dir / "model", job_dir / "output", job_dir / "checkpoints")
    final = final_metrics(job_dir)
    artifacts = {}
    if status == "Completed":
        artifacts["model"] = str(pack(job_dir / "model", job_dir / "model.tar.gz"))
    out = pack(job_dir / "output", job_dir / "output.tar.gz")
    if out:
        artifacts["output"] = str(out)
    summary_file = job_dir / "output" / "data" / "summary.json"
    try:
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    except (OSError, ValueError):
        summary = None
    record.update({
        "TrainingJobStatus": status,
        "SecondaryStatus": status,
        "TrainingEndTime": _now(),
        "TrainingTimeInSeconds": round(elapsed, 2),
        "ExitCode": code,
        "FinalMetricDataList": [{"MetricName": k, "Value": v} for k, v in final.items() if k != "epoch"],
        "EpochsCompleted": final.get("epoch", 0),
        "ModelArtifacts": {"S3ModelArtifacts": artifacts.get("model")},
        "OutputArtifacts": artifacts.get("output"),
        "Summary": summary,
    })
    if reason:
        record["FailureReason" if status == "Failed" else "StopReason"] = reason
    record.update(backend_info(job_dir))
    write_record(job_dir, record)
    return record


def backend_info(job_dir) -> dict:
    """Fields a backend left for the record in <job>/backend.json (e.g. the SageMaker job ARN)."""
    try:
        return json.loads((Path(job_dir) / BACKEND_INFO).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def list_jobs(jobs_dir=None) -> list:
    jobs_dir = jobs_root(jobs_dir)
    records = []
    for path in sorted(jobs_dir.glob(f"*/{RECORD}")):
        try:
            records.append(reconcile(path.parent, read_record(path.parent)))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(records, key=lambda r: r.get("CreationTime", ""))


def describe(name, jobs_dir=None, refresh=False) -> dict:
    job_dir = jobs_root(jobs_dir) / check_name(name)
    if not (job_dir / RECORD).exists():
        raise FileNotFoundError(f"no job named {name!r} in {job_dir.parent}")
    record = {**reconcile(job_dir, read_record(job_dir)), **backend_info(job_dir)}
    if refresh and record.get("Backend") == "sagemaker" and record.get("TrainingJobArn"):
        from .backends.sagemaker import refresh as refresh_remote

        record = refresh_remote(record)
    return record


# ------------------------------------------------------------------ jobs whose runner was killed

def reconcile(job_dir: Path, record: dict, engine=None) -> dict:
    """An InProgress record whose owner (the localsage process that ran it) is gone: stop what it
    left running (the process backend's child, the docker backend's container) and record the job
    Stopped with the reason. Records of live owners, or owners on another host, are left alone."""
    if record.get("TrainingJobStatus") != "InProgress" or procs.alive(record.get("Owner")) is not False:
        return record
    owner = record["Owner"]
    info = backend_info(job_dir)
    child = info.get("Process")
    if child and procs.terminate(child, signal.SIGKILL):
        pass
    container = info.get("Container")
    if container and record.get("Backend") == "docker":
        from .backends import docker as docker_backend

        docker_backend.remove(container, engine)
    started = datetime.fromisoformat(record["TrainingStartTime"]) if record.get("TrainingStartTime") else None
    elapsed = (datetime.now(timezone.utc) - started).total_seconds() if started else 0.0
    reason = (f"the localsage process that ran the job (pid {owner.get('pid')}) ended without recording "
              "an outcome (killed?); what it left running was stopped")
    return finish(Path(job_dir), record, "Stopped", reason, None, elapsed)


def reap(jobs_dir=None, docker: bool = False) -> list:
    """Reconcile every InProgress record in jobs_dir; with docker=True also remove every localsage
    container (of any jobs folder) whose owner is dead. Returns the names of jobs it stopped."""
    stopped = []
    if docker:
        from .backends import docker as docker_backend

        docker_backend.reap_orphans()
    root = jobs_root(jobs_dir)
    for path in sorted(root.glob(f"*/{RECORD}")) if root.is_dir() else []:
        try:
            record = read_record(path.parent)
            if record.get("TrainingJobStatus") == "InProgress":
                if reconcile(path.parent, record)["TrainingJobStatus"] != "InProgress":
                    stopped.append(record["TrainingJobName"])
        except (OSError, ValueError, KeyError):
            continue
    return stopped
