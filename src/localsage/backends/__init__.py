"""Backends run a prepared job folder (laid out as /opt/ml) and report its exit code.

A backend is a module with `run(job: JobSpec, log, stop) -> int`:
- `log(line)` receives every log line as it is produced (the runner parses metrics from it);
- `stop` is a threading.Event: when set, stop the job gracefully (SIGTERM, then kill after a grace period).
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

INFO_FILE = "backend.json"  # runner.BACKEND_INFO: fields merged into the job record

NAMES = {"process": "process", "docker": "docker", "sagemaker-local": "sagemaker_local", "sagemaker": "sagemaker"}
STOP_GRACE_SECONDS = 30
MULTI_HOST = ("sagemaker-local", "sagemaker")  # the others run one instance: this machine, or one container


def check_instance_count(backend: str, count) -> None:
    """Raise ValueError, before any job folder exists, for a count the backend cannot run (never run
    fewer hosts than the record says)."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"instance_count must be a whole number, at least 1, got {count!r}")
    if count > 1 and backend not in MULTI_HOST:
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
    options: dict = field(default_factory=dict)  # backend-specific settings (e.g. cloud.TrainingOptions for sagemaker)
    # script jobs: {"entry_point", "source_dir" (the job's code/), "hyperparameters" (the script's own,
    # not encoded), "distribution", "processes_per_host"}; None for the built-in trainer
    script: dict | None = None


def get(name: str):
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{NAMES[name]}")


def thread_share_env(cores: int, ways: int) -> dict:
    """Each of `ways` processes sharing one machine's `cores` gets an equal share of them, as OpenMP and MKL
    read it (torch's intra-op threads; the built-in trainer honours it when its `threads` is 0). Without
    it every process starts a thread per core: 2 local-mode hosts x 2 threads on 2 cores trained 2.69x
    slower than 2 x 1 (median of 5 paired runs, bench/local_hosts.py)."""
    share = str(max(1, cores // max(1, ways)))
    return {"OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share}


def record_info(job_dir, **fields) -> None:
    """Merge fields into <job>/backend.json (what a later command needs to stop what the job runs)."""
    from ..files import atomic_write_json

    path = Path(job_dir) / INFO_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        info = {}
    atomic_write_json(path, {**info, **fields}, default=str)
