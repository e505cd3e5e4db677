"""Host side of script jobs (a SageMaker user's own training program): what the runner adds to the job folder.

- hyperparameters.json as the SDK's PyTorch estimator writes it (values json.dumps-ed, sagemaker_* keys);
- code/ (the container's /opt/ml/code): the job's own copy of the source dir;
- input/config/debughookconfig.json in SageMaker's shape (or LOCALSAGE_DEBUG_HOOK=off);
- model/code/ when the source holds the inference program (the SDK's repack), so model.tar.gz deploys.
The container side (localsage.container.scriptmode) runs the program.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from localsage.core import contract
from localsage.core.hyperparameters import (
    PROCESSES_PER_HOST_KEY,
    PROGRAM_KEY,
    SUBMIT_DIR_KEY,
    TORCH_DISTRIBUTED_KEY,
    encode,
)

INFERENCE_PROGRAM = "inference.py"  # the SDK's repack: a source dir with this file serves from model/code


@dataclass
class Script:
    """A script job: the user's program, its source dir, and what localsage adds around it."""
    entry_point: str
    source_dir: Path | None = None
    distribution: dict | None = None       # {"torch_distributed": {"enabled": True}} (the SDK's shape)
    processes_per_host: int | None = None  # sagemaker_mpi_num_of_processes_per_host
    inference_entry_point: str | None = None

    @property
    def program(self) -> str:
        return Path(self.entry_point).name if self.source_dir is None else str(self.entry_point)


def distribution_of(distribution) -> dict | None:
    """"torch_distributed" or the SDK's {"torch_distributed": {"enabled": True}}."""
    if not distribution:
        return None
    if isinstance(distribution, str):
        if distribution != "torch_distributed":
            raise ValueError(f"distribution {distribution!r}: localsage runs torch_distributed")
        return {"torch_distributed": {"enabled": True}}
    return dict(distribution)


def script_hyperparameters(script: Script, hyperparameters: dict, submit_dir: str, name: str) -> dict:
    """hyperparameters.json of a script job, as the SDK's PyTorch estimator writes it: the script's
    own names, every value json.dumps-ed, plus the sagemaker_* keys."""
    hps = encode(hyperparameters)
    reserved = {PROGRAM_KEY: script.program, SUBMIT_DIR_KEY: submit_dir,
                "sagemaker_container_log_level": 20, "sagemaker_job_name": name}
    dist = distribution_of(script.distribution) or {}
    if (dist.get("torch_distributed") or {}).get("enabled"):
        reserved[TORCH_DISTRIBUTED_KEY] = True
    if script.processes_per_host:
        reserved[PROCESSES_PER_HOST_KEY] = int(script.processes_per_host)
    hps.update(encode(reserved))
    return hps


def copy_source(script: Script, job_dir: Path) -> Path:
    """The job's own copy of the code (code/, /opt/ml/code in containers)."""
    dest = contract.code_dir(job_dir)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".deps")
    if script.source_dir is not None:
        src = Path(script.source_dir).resolve()
        if not src.is_dir():
            raise FileNotFoundError(f"source dir not found: {src}")
        if not (src / script.entry_point).exists():
            raise FileNotFoundError(f"entry point {script.entry_point!r} not found in {src}")
        shutil.copytree(src, dest, ignore=ignore, dirs_exist_ok=True)
    else:
        src = Path(script.entry_point).resolve()
        if not src.is_file():
            raise FileNotFoundError(f"entry point not found: {src}")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / src.name)
    return dest


def write_debug_config(job_dir: Path, traits, debug: bool, hook_parameters: dict | None,
                       collections: list | None = None) -> dict:
    """input/config/debughookconfig.json (SageMaker's shape) where the backend reads the job folder's config
    (traits: its backends.Traits), and the job's env telling the container (SDK local mode writes no file).
    collections: a request's CollectionConfigurations (None: the default collections)."""
    if not debug:
        return {contract.DEBUG_HOOK_ENV: "off"}
    local_path = (contract.container_path("output", "tensors") if traits.in_container
                  else contract.tensors_dir(job_dir))
    if traits.reads_job_config:
        config = contract.default_debughookconfig(local_path, hook_parameters, collections)
        contract.debughookconfig_file(job_dir).write_text(json.dumps(config, indent=2))
    return {contract.DEBUG_HOOK_ENV: json.dumps({str(k): str(v) for k, v in (hook_parameters or {}).items()})}


def copy_inference_code(script: Script, job_dir: Path) -> Path | None:
    """model/code/ for a deployable model.tar.gz when the source holds the inference program."""
    code = contract.code_dir(job_dir)
    program = script.inference_entry_point or INFERENCE_PROGRAM
    if not (code / program).is_file():
        return None
    dest = job_dir / "model" / contract.CODE_SUBDIR
    shutil.copytree(code, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".deps"),
                    dirs_exist_ok=True)
    return dest
