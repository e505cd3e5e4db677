"""Create a job folder laid out as /opt/ml, run it with a backend, pack artifacts, record the job.

Job records follow DescribeTrainingJob's field names and live in jobs/<name>/job.json.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from pathlib import Path

from localsage.core import contract
from localsage.host import backends, tracking
from localsage.host.joblog import JobLog, max_run, stop_on_signals
from localsage.host.jobplan import JobPlan, channels_for, is_remote
from localsage.host.records import check_name, finish, job_name, jobs_root, read_record, reap, write_record


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


def train(data, plan: JobPlan | dict | None = None, backend: str = "process", name: str | None = None,
          jobs_dir=None, instance_count: int = 1, on_metrics=None, stop: threading.Event | None = None,
          echo: bool = True, tags: dict | None = None, backend_options: dict | None = None,
          tracking_parent: str | None = None) -> dict:
    """Run one training job to the end; returns its record. plan: a JobPlan, or the built-in trainer's
    hyperparameters. on_metrics: see joblog.JobLog; a True answer stops the job (recorded as Stopped)."""
    plan = plan if isinstance(plan, JobPlan) else JobPlan(hyperparameters=plan or {})
    jobs_dir = jobs_root(jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    module, traits = backends.get(backend), backends.traits(backend)
    backends.check_instance_count(backend, instance_count)
    reap(jobs_dir, docker=traits.containers)  # containers and records a killed localsage left behind
    channels = channels_for(data)
    job_dir, name, hps = create(plan, name, jobs_dir, channels, traits, instance_count)
    env = plan.lay_out(job_dir, traits)
    scraper = plan.scraper(job_dir)
    spec = backends.JobSpec(name=name, dir=job_dir, channels=channels, hyperparameters=hps, image=plan.image,
                            instance_count=instance_count, env=env, options=dict(backend_options or {}),
                            script=plan.backend_script(job_dir), entrypoint=plan.container_entrypoint,
                            arguments=plan.container_arguments)
    record = plan.record(name, job_dir, channels, hps, backend, instance_count, tags)
    write_record(job_dir, record)
    uri = tracking.tracking_uri(jobs_dir)
    run = tracking.start_job(record, job_dir, uri, tracking_parent) if uri else None
    if run is not None and plan.script is not None:
        spec.env.update(tracking.script_env(run, uri, in_container=traits.in_container, job_env=spec.env))

    stop, reasons = stop or threading.Event(), []
    log = JobLog(plan, job_dir, name, scraper, stop, reasons, echo=echo, run=run, on_metrics=on_metrics)
    started = time.time()
    try:
        with stop_on_signals(stop, reasons, name), max_run(plan.max_run, stop, reasons, name):
            code = module.run(spec, log, stop)
    except Exception as exc:  # a backend that cannot start the job: record it as failed
        code = -1
        log(f"backend {backend} failed: {type(exc).__name__}: {exc}")
        contract.write_failure(job_dir / "output" / "failure", f"backend {backend} could not run the job: {exc}")
    finally:
        log.close()
    elapsed = time.time() - started
    status, reason = outcome(code, stop, reasons, job_dir)
    finish(job_dir, record, status, reason, code, elapsed, script=plan.script, scraped=scraper.final())
    if echo:
        print(f"[{name}] {status}" + (f": {reason}" if reason else "") + f" ({elapsed:.1f}s) -> {job_dir}", flush=True)
    if run is not None:
        tracking.finish_job(run, record, job_dir)
    return record


def create(plan: JobPlan, name, jobs_dir: Path, channels: dict, traits, instance_count: int):
    """The job's folder and hyperparameters; a generated name gets a suffix when a launch in the same
    millisecond took it."""
    def make(name):
        job_path = (Path(jobs_dir) / check_name(name)).resolve()
        restart = reuse_for_restart(job_path)
        hps = plan.job_hyperparameters(name, job_path, traits.in_container)
        return prepare(name, channels, hps, jobs_dir, instance_count, restart=restart), name, hps

    if name:
        return make(name)
    for attempt in range(8):
        try:
            return make(job_name() + (f"-{secrets.token_hex(2)}" if attempt else ""))
        except FileExistsError:
            continue
    raise FileExistsError(f"could not find a free job name in {jobs_dir}")


def outcome(code, stop: threading.Event, reasons: list, job_dir: Path):
    """Completed, Stopped or Failed, and the reason (the job's failure file when it wrote one)."""
    if code == 0:
        return "Completed", None
    if stop.is_set():
        return "Stopped", (reasons[0] if reasons else "stopped")
    failure = job_dir / "output" / "failure"
    return "Failed", (failure.read_text().strip() if failure.exists()
                      else f"the job exited with code {code} and wrote no failure reason")
