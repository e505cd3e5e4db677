"""The training toolkit's view of a job: SM_* environment variables and the script's command line.

Facts (aws/sagemaker-training-toolkit: environment.py, mapping.py, params.py):
- hyperparameters.json values are JSON-decoded one by one (raw string when that fails); reserved
  keys (`sagemaker_*`, `_tuning_objective_metric`) are taken out before the program sees them;
- command line (`to_cmd_args`): keys sorted, `--key value` (one-letter keys `-k`), hyphens kept,
  `str()` of the decoded value (booleans `True`/`False`, lists their repr, None -> "",
  dicts `k1=v1,k2=v2` sorted);
- environment (`to_env_vars`): `SM_<KEY upper-cased>`; strings raw, anything else compact JSON
  with sorted keys; one `SM_CHANNEL_<NAME>` per channel and one `SM_HP_<NAME>` per hyperparameter.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from localsage.core import contract, procs
from localsage.core.hyperparameters import (
    LOG_LEVEL_KEY,
    PROGRAM_KEY,
    SUBMIT_DIR_KEY,
    decode,
    framework_params,
    split_reserved,
)

FRAMEWORK_MODULE = "localsage.container.entry:main"
DEFAULT_INTERFACE = "eth0"


def count_gpus(env=None) -> int:
    """GPUs of this host the toolkit's way (`nvidia-smi --list-gpus`), without importing torch."""
    env = os.environ if env is None else env
    if env.get("SM_NUM_GPUS") is not None:
        return int(env["SM_NUM_GPUS"])
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "--list-gpus"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.strip().startswith("GPU "))


def arg_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    return str(value)


def to_cmd_args(hyperparameters: dict) -> list[str]:
    args = []
    for key in sorted(hyperparameters):
        name = str(key)
        args.append(("--" if len(name) > 1 else "-") + name if name else "")
        args.append(arg_value(hyperparameters[key]))
    return args


def env_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def to_env_vars(mapping: dict) -> dict:
    return {f"SM_{str(k).upper()}": env_value(v) for k, v in mapping.items() if k}


@dataclass
class TrainingEnv:
    """What the toolkit's `Environment` knows, built from the job root (/opt/ml or a job folder)."""

    root: Path
    hyperparameters: dict            # the program's own, JSON-decoded
    reserved: dict                   # every reserved key (sagemaker_*, _tuning_objective_metric), decoded
    resource_config: dict
    input_data_config: dict
    channels: dict                   # name -> folder
    hosts: list
    current_host: str
    num_gpus: int
    num_cpus: int
    program: str | None
    module_dir: str | None
    job_name: str
    log_level: int = 20
    extra: dict = field(default_factory=dict)

    @property
    def framework_params(self) -> dict:
        return framework_params(self.reserved)

    @property
    def module_name(self) -> str:
        name = self.program or ""
        return name[:-3] if name.endswith(".py") else name

    @property
    def network_interface_name(self) -> str:
        return self.resource_config.get("network_interface_name") or DEFAULT_INTERFACE

    def paths(self) -> dict:
        root = self.root
        return {
            "input_dir": str(root / "input"),
            "input_config_dir": str(contract.config_dir(root)),
            "output_dir": str(root / "output"),
            "output_data_dir": str(root / "output" / "data"),
            "output_intermediate_dir": str(root / "output" / "intermediate"),
            "model_dir": str(root / "model"),
        }

    def training_env(self) -> dict:
        """SM_TRAINING_ENV: the whole environment as one JSON object (the toolkit's dict(env))."""
        return {
            "additional_framework_parameters": self.framework_params,
            "channel_input_dirs": {k: str(v) for k, v in self.channels.items()},
            "current_host": self.current_host,
            "current_instance_type": self.resource_config.get("current_instance_type", "local"),
            "framework_module": FRAMEWORK_MODULE,
            "hosts": self.hosts,
            "hyperparameters": self.hyperparameters,
            "input_data_config": self.input_data_config,
            "is_master": self.current_host == self.hosts[0],
            "job_name": self.job_name,
            "log_level": self.log_level,
            "master_hostname": self.hosts[0],
            "module_dir": self.module_dir,
            "module_name": self.module_name,
            "network_interface_name": self.network_interface_name,
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "num_neurons": 0,
            "resource_config": self.resource_config,
            "user_entry_point": self.program,
            **self.paths(),
        }

    def user_args(self) -> list[str]:
        return to_cmd_args(self.hyperparameters)

    def env_vars(self) -> dict:
        """Every SM_* variable the toolkit sets, plus the plain ones it exports."""
        mapping = {
            "hosts": self.hosts,
            "network_interface_name": self.network_interface_name,
            "hps": self.hyperparameters,
            "user_entry_point": self.program,
            "framework_params": self.framework_params,
            "resource_config": self.resource_config,
            "input_data_config": self.input_data_config,
            "channels": sorted(self.channels),
            "current_host": self.current_host,
            "current_instance_type": self.resource_config.get("current_instance_type", "local"),
            "module_name": self.module_name,
            "log_level": self.log_level,
            "framework_module": FRAMEWORK_MODULE,
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "num_neurons": 0,
            "module_dir": self.module_dir,
            "training_env": self.training_env(),
            "user_args": self.user_args(),
            "is_master": self.current_host == self.hosts[0],
            "master_hostname": self.hosts[0],
            **self.paths(),
        }
        for name, path in self.channels.items():
            mapping[f"channel_{name}"] = str(path)
        for key, value in self.hyperparameters.items():
            mapping[f"hp_{key}"] = value
        env = to_env_vars(mapping)
        env.update({
            "SAGEMAKER_JOB_NAME": self.job_name,
            "TRAINING_JOB_NAME": os.environ.get("TRAINING_JOB_NAME") or self.job_name,
            "CURRENT_HOST": self.current_host,
            contract.CHECKPOINT_ENV: str(self.root / "checkpoints"),
        })
        region = os.environ.get("AWS_REGION") or self.reserved.get("sagemaker_region")
        if region:
            env["SAGEMAKER_REGION"] = str(region)
        return env


def load(root=None, environ=None) -> TrainingEnv:
    environ = os.environ if environ is None else environ
    # the files describe the job (SM_* of an outer job must not leak in); SM_NUM_GPUS may cap the GPUs
    files_only = {k: v for k, v in environ.items() if not k.startswith("SM_") or k == "SM_NUM_GPUS"}
    c = contract.load(root, env=files_only, gpus=lambda: count_gpus(files_only))
    decoded = decode(c.hyperparameters)
    user, reserved = split_reserved(decoded)
    program = environ.get(contract.PROGRAM_ENV) or reserved.get(PROGRAM_KEY)
    submit = reserved.get(SUBMIT_DIR_KEY)
    hosts = list(c.hosts)
    try:
        level = int(reserved.get(LOG_LEVEL_KEY, 20))
    except (TypeError, ValueError):
        level = 20
    job_name = (environ.get("TRAINING_JOB_NAME") or reserved.get("sagemaker_job_name")
                or environ.get("SAGEMAKER_JOB_NAME") or c.root.name)
    return TrainingEnv(
        root=c.root, hyperparameters=user, reserved=reserved, resource_config=c.resource_config,
        input_data_config=c.input_data_config, channels=dict(c.channels), hosts=hosts,
        current_host=c.current_host, num_gpus=c.num_gpus, num_cpus=procs.cores(),
        program=str(program) if program else None, module_dir=str(submit) if submit else None,
        job_name=str(job_name), log_level=level)
