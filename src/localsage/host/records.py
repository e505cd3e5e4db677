"""Job records: the jobs folder, job names, job.json (DescribeTrainingJob's field names), the final
record and artifacts of a finished job, and jobs whose runner was killed (reconciled on the next look)."""
from __future__ import annotations

import json
import os
import re
import tarfile
from datetime import datetime, timezone
from pathlib import Path

from localsage.core import contract, files, metrics, procs
from localsage.host import backends
from localsage.host.script_job import copy_inference_code

RECORD = "job.json"


LOG = "train.log"


BACKEND_INFO = backends.INFO_FILE


# SageMaker's TrainingJobName rule: letters, digits and (single or repeated) hyphens, at most 63


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
    if not contract.NAME_PATTERN.fullmatch(name):
        raise ValueError(f"job name {name!r}: use letters, digits and hyphens only (no leading hyphen), "
                         "at most 63 characters, as SageMaker does")
    return name


OUTPUT_UPLOADED_APART = (contract.tensors_dir("").name, contract.profiler_dir("").name)


def write_record(job_dir: Path, record: dict) -> None:
    files.atomic_write_json(Path(job_dir) / RECORD, record, default=str)


def read_record(job_dir) -> dict:
    return json.loads((Path(job_dir) / RECORD).read_text())


def pack(src: Path, dest: Path, leave_out=()) -> Path | None:
    """Tar+gzip the contents of src (SageMaker's model.tar.gz / output.tar.gz have no top folder), without
    the top-level entries named in leave_out."""
    if not src.is_dir():
        return None
    def write(f):
        with tarfile.open(fileobj=f, mode="w:gz", compresslevel=1) as tar:
            for child in sorted(src.iterdir()):
                if child.name not in leave_out:
                    tar.add(child, arcname=child.name)

    files.atomic_write(dest, write)
    return dest


def final_metrics(job_dir: Path) -> dict:
    rows = metrics.read_jsonl(job_dir / "output" / "data" / "metrics.jsonl")
    final = {}
    for row in rows:
        final.update(row)
    return final


def finish(job_dir: Path, record: dict, status: str, reason: str | None, code, elapsed: float,
           script=None, scraped=()) -> dict:
    """Pack the artifacts and write the final record (updated in place, returned). script: a script job's
    Script (its inference code goes into model/code/); scraped: its metric_definitions' final values."""
    files.clean_temp(job_dir / "model", job_dir / "output", job_dir / "checkpoints")
    final = final_metrics(job_dir)
    artifacts = {}
    if status == "Completed" and script is not None:
        copy_inference_code(script, job_dir)
    if status == "Completed":
        artifacts["model"] = str(pack(job_dir / "model", job_dir / "model.tar.gz"))
    # SageMaker uploads debugger tensors and profiler traces on their own (debug-output/, profiler-output/),
    # never inside output.tar.gz: they stay in output/ (hundreds of MB of weights would be packed twice)
    out = pack(job_dir / "output", job_dir / "output.tar.gz", leave_out=OUTPUT_UPLOADED_APART)
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
        "FinalMetricDataList": [{"MetricName": k, "Value": v} for k, v in final.items() if k != "epoch"]
        + list(scraped),
        "EpochsCompleted": final.get("epoch", 0),
        "ModelArtifacts": {"S3ModelArtifacts": artifacts.get("model")},
        "OutputArtifacts": artifacts.get("output"),
        "Summary": summary,
    })
    if reason:
        record["FailureReason" if status == "Failed" else "StopReason"] = reason
    if status == "Stopped" and reason and reason.startswith(MAX_RUNTIME):
        record["SecondaryStatus"] = MAX_RUNTIME
    record.update(backend_info(job_dir))
    write_record(job_dir, record)
    return record


MAX_RUNTIME = "MaxRuntimeExceeded"


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
    known = backends.BACKENDS.get(record.get("Backend"))
    if refresh and known is not None and known.remote and record.get("TrainingJobArn"):
        record = backends.get(record["Backend"]).refresh(record)
    return record


def reconcile(job_dir: Path, record: dict, engine=None) -> dict:
    """An InProgress record whose owner (the localsage process that ran it) is gone: stop what it
    left running (the process backend's child, the docker backend's container, SDK local mode's
    containers) and record the job
    Stopped with the reason. Records of live owners, or owners on another host, are left alone."""
    if record.get("TrainingJobStatus") != "InProgress" or procs.alive(record.get("Owner")) is not False:
        return record
    owner = record["Owner"]
    if record.get("Backend") in backends.BACKENDS:
        backends.get(record["Backend"]).reap_orphan(record, backend_info(job_dir), engine)
    started = datetime.fromisoformat(record["TrainingStartTime"]) if record.get("TrainingStartTime") else None
    elapsed = (datetime.now(timezone.utc) - started).total_seconds() if started else 0.0
    reason = (f"the localsage process that ran the job (pid {owner.get('pid')}) ended without recording "
              "an outcome (killed?); what it left running was stopped")
    record = finish(Path(job_dir), record, "Stopped", reason, None, elapsed)
    from localsage.host import tracking  # its MLflow run, if it got one, ends KILLED with that reason

    tracking.close_orphan(job_dir, record)
    return record


def reap(jobs_dir=None, docker: bool = False) -> list:
    """Reconcile every InProgress record in jobs_dir; with docker=True also remove every localsage
    container (of any jobs folder) whose owner is dead. Returns the names of jobs it stopped."""
    stopped = []
    if docker:
        from localsage.host.backends import docker as docker_backend

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
