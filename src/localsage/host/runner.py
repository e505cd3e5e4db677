"""Create a job folder laid out as /opt/ml, run it with a backend, pack artifacts, record the job.

Job records follow DescribeTrainingJob's field names and live in jobs/<name>/job.json.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from localsage.core import contract, metrics, procs
from localsage.core.hyperparameters import PROCESSES_PER_HOST_KEY, tensors_off, to_strings, without_tensors
from localsage.host import backends, tracking
from localsage.host.records import (
    LOG,
    MAX_RUNTIME,
    _now,
    check_name,
    finish,
    job_name,
    jobs_root,
    read_record,
    reap,
    write_record,
)
from localsage.host.script_job import Script, copy_source, distribution_of, script_hyperparameters, write_debug_config


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


def prepare(name, channels: dict, hyperparameters: dict, jobs_dir, instance_count=1, restart=False) -> Path:
    """restart: the folder holds only the checkpoints/ of a Stopped/Failed run of this name (reuse_for_restart).
    Otherwise the folder is created exclusively: of two launches with one name, exactly one gets it."""
    job_dir = (Path(jobs_dir) / check_name(name)).resolve()
    if not restart:
        try:
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
          max_run: float | None = None, tracking_parent: str | None = None) -> dict:
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
    module, traits = backends.get(backend), backends.traits(backend)
    backends.check_instance_count(backend, instance_count)
    # containers and records a killed localsage left behind
    reap(jobs_dir, docker=traits.containers)
    script = None
    if entry_point:
        script = Script(entry_point, Path(source_dir) if source_dir else None, distribution_of(distribution),
                        processes_per_host, inference_entry_point)
    if script is None and not debug:  # --no-debug-tensors: the built-in trainer's switch is its debug hyperparameter
        hyperparameters = without_tensors(hyperparameters)
    if debugger_hook_config and (not debug or (script is None and tensors_off(hyperparameters))):
        raise ValueError("--debugger-hook-config sets the tensors hook that debug=false turns off")
    scraper = metrics.Scraper(metric_definitions)  # bad regexes fail here, before any job folder exists
    channels = channels_for(data)

    def make(name):
        job_path = (Path(jobs_dir) / check_name(name)).resolve()
        restart = reuse_for_restart(job_path)
        if script is not None:
            submit = (str(contract.code_dir(job_path)) if not traits.in_container
                      else contract.container_path(contract.CODE_SUBDIR))
            hps = script_hyperparameters(script, hyperparameters or {}, submit, name)
        else:
            hps = to_strings(hyperparameters or {})
            if processes_per_host:  # the built-in trainer reads the toolkit's key too
                hps[PROCESSES_PER_HOST_KEY] = str(int(processes_per_host))
        return prepare(name, channels, hps, jobs_dir, instance_count, restart=restart), hps

    if name:
        job_dir, hps = make(name)
    else:  # a generated name: a launch in the same millisecond gets a suffix instead of the same folder
        for attempt in range(8):
            name = job_name() + (f"-{secrets.token_hex(2)}" if attempt else "")
            try:
                job_dir, hps = make(name)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"could not find a free job name in {jobs_dir}")
    env = dict(env or {})
    if script is not None or debugger_hook_config:  # the built-in trainer takes SageMaker's hook config too
        env.update(write_debug_config(job_dir, traits, debug, debugger_hook_config))
    if script is not None:
        copy_source(script, job_dir)
        if not traits.in_container:
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
            "TrainingImage": image or "process:localsage.container.train",
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
        "Owner": procs.identity(),  # lets a later command tell a job whose runner was killed
    }
    write_record(job_dir, record)
    uri = tracking.tracking_uri(jobs_dir)
    run = tracking.start_job(record, job_dir, uri, tracking_parent) if uri else None
    if run is not None and script is not None:
        spec.env.update(tracking.script_env(run, uri, in_container=traits.in_container, job_env=spec.env))

    stop = stop or threading.Event()
    stop_reason = []
    log_file = open(job_dir / LOG, "a", buffering=1)

    bar = None
    if echo and sys.stdout.isatty() and script is None:
        from tqdm import tqdm

        from localsage.core.hyperparameters import SPEC

        epochs = str(hps.get("epochs", SPEC["epochs"].default))
        bar = tqdm(total=int(epochs) if epochs.isdigit() else None, desc=name, unit="epoch")

    def on_line(line: str):
        log_file.write(line + "\n")
        if bar is not None:
            bar.write(line)
        elif echo:
            print(f"[{name}] {line}", flush=True)
        values = metrics.parse_line(line) if script is None else None
        if bar is not None and values and "epoch" in values:
            bar.update(1)
        if run is not None and values:
            step = int(values.get("epoch", last_epoch[0]))
            last_epoch[0] = step
            run.log_metrics({k: v for k, v in values.items() if k != "epoch"}, step)
        if script is None and values and "epoch" in values and on_metrics is not None and not stop.is_set():
            if on_metrics(values):
                stop_reason.append("stopped by the caller after epoch %d" % values["epoch"])
                stop.set()
        for point in scraper.scan(line) if scraper.patterns else ():
            if run is not None:
                run.log_metrics({point["name"]: point["value"]}, point["ordinal"], point.get("timestamp"))
            if script is not None and on_metrics is not None and not stop.is_set() and on_metrics(point):
                stop_reason.append(f"stopped by the caller after {point['name']} #{point['ordinal']}")
                stop.set()

    last_epoch = [0]  # the step of the built-in trainer's closing test metrics
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def interrupt(signum, frame):  # Ctrl-C and SIGTERM (docker, systemd, supervisors) alike
            if not stop.is_set():
                stop_reason.append("interrupted (Ctrl-C)" if signum == signal.SIGINT
                                   else f"interrupted ({signal.Signals(signum).name})")
                print(f"[{name}] stopping: SIGTERM sent to the job", file=sys.stderr, flush=True)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, interrupt)
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
        reason = (failure.read_text().strip() if failure.exists()
                  else f"the job exited with code {code} and wrote no failure reason")
    finish(job_dir, record, status, reason, code, elapsed, script=script, scraped=scraper.final())
    if echo:
        print(f"[{name}] {status}" + (f": {reason}" if reason else "") + f" ({elapsed:.1f}s) -> {job_dir}", flush=True)
    if run is not None:
        tracking.finish_job(run, record, job_dir)
    return record


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
