"""Backends run a prepared job folder (laid out as /opt/ml) and report its exit code.

A backend is a module with `run(job: JobSpec, log, stop) -> int` and `reap_orphan(record, info, engine)`,
registered with its traits in BACKENDS:
- `log(line)` receives every log line as it is produced (the runner parses metrics from it);
- `stop` is a threading.Event: when set, stop the job gracefully (SIGTERM, then kill after a grace period).
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

INFO_FILE = "backend.json"  # <job>/backend.json: fields a backend leaves for the job record
STOP_GRACE_SECONDS = 30


@dataclass(frozen=True)
class Traits:
    """What makes a backend different, declared once: the rest of localsage asks these, never its name.
    Adding a backend is its module (run(job, log, stop) and reap_orphan(record, info, engine)) plus one line
    in BACKENDS."""
    module: str  # its module in this package
    in_container: bool  # the job sees /opt/ml inside a container (else the job folder's own paths)
    multi_host: bool  # runs several instances (the others refuse an instance count above 1)
    local_gpus: bool  # this machine's GPUs are its to share among parallel trials
    reads_job_config: bool  # the job folder's input/config reaches the job as it is (a debughookconfig.json too)
    containers: bool  # what it runs are containers, reaped when the localsage that started them is gone
    remote: bool  # runs in the cloud: its record can be refreshed from there


BACKENDS = {
    "process": Traits("process", in_container=False, multi_host=False, local_gpus=True, reads_job_config=True,
                      containers=False, remote=False),
    "docker": Traits("docker", in_container=True, multi_host=False, local_gpus=True, reads_job_config=True,
                     containers=True, remote=False),
    "sagemaker-local": Traits("sagemaker_local", in_container=True, multi_host=True, local_gpus=False,
                              reads_job_config=False, containers=True, remote=False),
    "sagemaker": Traits("sagemaker", in_container=True, multi_host=True, local_gpus=False, reads_job_config=False,
                        containers=False, remote=True),
}


def traits(name: str) -> Traits:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def check_instance_count(backend: str, count) -> None:
    """Raise ValueError, before any job folder exists, for a count the backend cannot run (never run
    fewer hosts than the record says)."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"instance_count must be a whole number, at least 1, got {count!r}")
    if count > 1 and not traits(backend).multi_host:
        raise ValueError(f"the {backend} backend runs one instance, not {count}; use --backend sagemaker-local "
                         "(its hosts are containers on this machine) or sagemaker")


@dataclass
class JobSpec:
    name: str
    dir: Path
    channels: dict
    hyperparameters: dict
    image: str | None = None
    instance_count: int = 1
    env: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # backend-specific settings (sagemaker: cloud.training.TrainingOptions)
    # script jobs: {"entry_point", "source_dir" (the job's code/), "hyperparameters" (the script's own,
    # not encoded), "distribution", "processes_per_host"}; None for the built-in trainer
    script: dict | None = None
    # SageMaker's ContainerEntrypoint/ContainerArguments (SDK v3 script jobs): run instead of the image's `train`
    entrypoint: list | None = None
    arguments: list | None = None


def get(name: str):
    return importlib.import_module(f"{__name__}.{traits(name).module}")


def thread_share_env(cores: int, ways: int) -> dict:
    """Each of `ways` processes sharing one machine's `cores` gets an equal share of them, as OpenMP and MKL
    read it (torch's intra-op threads; the built-in trainer honours it when its `threads` is 0). Without
    it every process starts a thread per core, and oversubscribed cores train far slower (bench/local_hosts.py;
    docs/performance.md)."""
    share = str(max(1, cores // max(1, ways)))
    return {"OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share}


def record_info(job_dir, **fields) -> None:
    """Merge fields into <job>/backend.json (what a later command needs to stop what the job runs)."""
    from localsage.core.files import atomic_write_json

    path = Path(job_dir) / INFO_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        info = {}
    atomic_write_json(path, {**info, **fields}, default=str)
