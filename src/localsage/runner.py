"""Create a job folder laid out as /opt/ml, run it with a backend, pack artifacts, record the job.

Job records follow DescribeTrainingJob's field names and live in jobs/<name>/job.json.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tarfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from . import backends, contract, metrics
from .hyperparameters import to_strings
from .scriptjob import Script, copy_inference_code, copy_source, distribution_of, script_hyperparameters, write_debug_config

RECORD = "job.json"
LOG = "train.log"
BACKEND_INFO = "backend.json"


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
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d-%H-%M-%S-%f")[:-3]
    return f"{prefix}-{stamp}"


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
    tmp = job_dir / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, job_dir / RECORD)


def read_record(job_dir) -> dict:
    return json.loads((Path(job_dir) / RECORD).read_text())


def pack(src: Path, dest: Path) -> Path | None:
    """Tar+gzip the contents of src (SageMaker's model.tar.gz / output.tar.gz have no top folder)."""
    if not src.is_dir():
        return None
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        for child in sorted(src.iterdir()):
            tar.add(child, arcname=child.name)
    os.replace(tmp, dest)
    return dest


def final_metrics(job_dir: Path) -> dict:
    rows = metrics.read_jsonl(job_dir / "output" / "data" / "metrics.jsonl")
    final = {}
    for row in rows:
        final.update(row)
    return final


def prepare(name, channels: dict, hyperparameters: dict, jobs_dir, instance_count=1, restart=False) -> Path:
    """restart: the folder holds only the checkpoints/ of a Stopped/Failed run of this name (reuse_for_restart)."""
    job_dir = (Path(jobs_dir) / name).resolve()
    if job_dir.exists() and not restart:
        raise FileExistsError(f"job {name!r} already exists at {job_dir}")
    contract.make_dirs(job_dir)
    contract.write_config(job_dir, hyperparameters, list(channels))
    for ch, src in channels.items():
        if is_remote(src):
            continue
        os.symlink(src, contract.data_dir(job_dir) / ch, target_is_directory=True)
    return job_dir


def reuse_for_restart(job_dir: Path) -> bool:
    """A job re-run under the name of a Stopped or Failed one keeps its checkpoints/ (SageMaker's
    checkpoint_local_path survives a restart); everything else of the old run goes."""
    if not job_dir.exists():
        return False
    try:
        status = read_record(job_dir).get("TrainingJobStatus")
    except (OSError, json.JSONDecodeError):
        return False
    if status not in ("Stopped", "Failed"):
        return False
    for child in job_dir.iterdir():
        if child.name == "checkpoints":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return True


def train(data, hyperparameters: dict | None = None, backend: str = "process", name: str | None = None,
          jobs_dir=None, image: str | None = None, instance_count: int = 1, on_metrics=None,
          env: dict | None = None, stop: threading.Event | None = None, echo: bool = True, tags: dict | None = None,
          backend_options: dict | None = None, entry_point: str | None = None, source_dir=None,
          metric_definitions: list | None = None, distribution=None, processes_per_host: int | None = None,
          debug: bool = True, debugger_hook_config: dict | None = None, inference_entry_point: str | None = None,
          max_run: float | None = None) -> dict:
    """Run one training job to the end; returns its record.

    Built-in jobs: on_metrics(values) is called for every epoch metrics line in the job's log (every
    backend). Script jobs (entry_point set): the hyperparameters are the script's own; every match of
    metric_definitions ({"Name", "Regex"}) is a point {"name", "value", "timestamp", "ordinal"} in
    output/data/metric_points.jsonl and one on_metrics(point) call. When on_metrics returns True the
    job is stopped (SIGTERM) and recorded as Stopped. max_run: seconds before the job is stopped
    (SageMaker's MaxRuntimeInSeconds).
    """
    jobs_dir = jobs_root(jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    module = backends.get(backend)
    name = name or job_name()
    script = None
    if entry_point:
        script = Script(entry_point, Path(source_dir) if source_dir else None, distribution_of(distribution),
                        processes_per_host, inference_entry_point)
    scraper = metrics.Scraper(metric_definitions)  # bad regexes fail here, before any job folder exists
    channels = channels_for(data)
    job_path = (Path(jobs_dir) / name).resolve()
    restart = reuse_for_restart(job_path)
    if script is not None:
        submit = str(contract.code_dir(job_path)) if backend == "process" else contract.container_path(contract.CODE_SUBDIR)
        hps = script_hyperparameters(script, hyperparameters or {}, submit, name)
    else:
        hps = to_strings(hyperparameters or {})
    job_dir = prepare(name, channels, hps, jobs_dir, instance_count, restart=restart)
    env = dict(env or {})
    if script is not None:
        copy_source(script, job_dir)
        env.update(write_debug_config(job_dir, backend, debug, debugger_hook_config))
        if backend == "process":
            env[contract.PIP_TARGET_ENV] = str(contract.code_dir(job_dir) / ".deps")
    scraper.path = contract.metric_points_file(job_dir) if scraper.patterns else None
    spec = backends.JobSpec(name=name, dir=job_dir, channels=channels, hyperparameters=hps, image=image,
                            instance_count=instance_count, env=env, options=dict(backend_options or {}))
    if script is not None:
        spec.script = {"entry_point": script.program, "source_dir": str(contract.code_dir(job_dir)),
                       "hyperparameters": dict(hyperparameters or {}), "distribution": script.distribution,
                       "processes_per_host": script.processes_per_host}
    record = {
        "TrainingJobName": name,
        "TrainingJobStatus": "InProgress",
        "SecondaryStatus": "Training",
        "HyperParameters": hps,
        "AlgorithmSpecification": {
            "TrainingImage": image or "process:localsage.train",
            "TrainingInputMode": "File",
            "MetricDefinitions": scraper.definitions if script is not None else metrics.METRIC_DEFINITIONS,
            **({"EntryPoint": script.program} if script is not None else {}),
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
    }
    write_record(job_dir, record)

    stop = stop or threading.Event()
    stop_reason = []
    log_file = open(job_dir / LOG, "a", buffering=1)

    bar = None
    if echo and sys.stdout.isatty() and script is None:
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
        if script is None and values and "epoch" in values and on_metrics is not None and not stop.is_set():
            if on_metrics(values):
                stop_reason.append("stopped by the caller after epoch %d" % values["epoch"])
                stop.set()
        for point in scraper.scan(line) if scraper.patterns else ():
            if script is not None and on_metrics is not None and not stop.is_set() and on_metrics(point):
                stop_reason.append(f"stopped by the caller after {point['name']} #{point['ordinal']}")
                stop.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        def interrupt(signum, frame):
            if not stop.is_set():
                stop_reason.append("interrupted (Ctrl-C)")
                print(f"[{name}] stopping: SIGTERM sent to the job", file=sys.stderr, flush=True)
            stop.set()

        previous = signal.signal(signal.SIGINT, interrupt)
    started = time.time()
    timer = max_run_timer(max_run, stop, stop_reason, name)
    try:
        code = module.run(spec, on_line, stop)
    except Exception as exc:  # a backend that cannot start the job: record it as failed
        code = -1
        on_line(f"backend {backend} failed: {type(exc).__name__}: {exc}")
        contract.write_failure(job_dir / "output" / "failure", f"backend {backend} could not run the job: {exc}")
    finally:
        if timer is not None:
            timer.cancel()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
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
    final = final_metrics(job_dir)
    artifacts = {}
    if status == "Completed" and script is not None:
        copy_inference_code(script, job_dir)
    if status == "Completed":
        artifacts["model"] = str(pack(job_dir / "model", job_dir / "model.tar.gz"))
    out = pack(job_dir / "output", job_dir / "output.tar.gz")
    if out:
        artifacts["output"] = str(out)
    summary_file = job_dir / "output" / "data" / "summary.json"
    record.update({
        "TrainingJobStatus": status,
        "SecondaryStatus": status,
        "TrainingEndTime": _now(),
        "TrainingTimeInSeconds": round(elapsed, 2),
        "ExitCode": code,
        "FinalMetricDataList": [{"MetricName": k, "Value": v} for k, v in final.items() if k != "epoch"]
        + scraper.final(),
        "EpochsCompleted": final.get("epoch", 0),
        "ModelArtifacts": {"S3ModelArtifacts": artifacts.get("model")},
        "OutputArtifacts": artifacts.get("output"),
        "Summary": json.loads(summary_file.read_text()) if summary_file.exists() else None,
    })
    if reason:
        record["FailureReason" if status == "Failed" else "StopReason"] = reason
    if status == "Stopped" and reason and reason.startswith(MAX_RUNTIME):
        record["SecondaryStatus"] = MAX_RUNTIME
    record.update(backend_info(job_dir))
    write_record(job_dir, record)
    if echo:
        print(f"[{name}] {status}" + (f": {reason}" if reason else "") + f" ({elapsed:.1f}s) -> {job_dir}", flush=True)
    return record


MAX_RUNTIME = "MaxRuntimeExceeded"


def max_run_timer(max_run, stop, stop_reason, name):
    """Stop the job after max_run seconds, as SageMaker does at MaxRuntimeInSeconds."""
    if not max_run:
        return None

    def expire():
        if not stop.is_set():
            stop_reason.append(f"{MAX_RUNTIME}: the job ran longer than max_run={max_run:g}s")
            print(f"[{name}] {stop_reason[-1]}: SIGTERM sent to the job", file=sys.stderr, flush=True)
            stop.set()

    timer = threading.Timer(float(max_run), expire)
    timer.daemon = True
    timer.start()
    return timer


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
            records.append(read_record(path.parent))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(records, key=lambda r: r.get("CreationTime", ""))


def describe(name, jobs_dir=None, refresh=False) -> dict:
    job_dir = jobs_root(jobs_dir) / name
    if not (job_dir / RECORD).exists():
        raise FileNotFoundError(f"no job named {name!r} in {job_dir.parent}")
    record = {**read_record(job_dir), **backend_info(job_dir)}
    if refresh and record.get("Backend") == "sagemaker" and record.get("TrainingJobArn"):
        from .backends.sagemaker import refresh as refresh_remote

        record = refresh_remote(record)
    return record
