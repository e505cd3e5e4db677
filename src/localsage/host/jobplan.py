"""The job plan: what one training job is, built once — the built-in trainer with its hyperparameters, or a
user's script — whoever runs it (the CLI's train, tune's trials, the cloud backend, the local API).

A plan yields the job's hyperparameters.json, its environment, what goes into its folder (code/, the hook
config), the backend's script settings and the DescribeTrainingJob record; the runner only runs it.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from localsage.core import contract, metrics, procs
from localsage.core.hyperparameters import (
    PROCESSES_PER_HOST_KEY,
    SPEC,
    SUBMIT_DIR_KEY,
    decode_value,
    is_reserved,
    parse,
    tensors_off,
    to_strings,
    without_tensors,
)
from localsage.host.records import LOG, _now
from localsage.host.script_job import Script, copy_source, distribution_of, script_hyperparameters, write_debug_config

HOOK_WITHOUT_TENSORS = "--debugger-hook-config sets the tensors hook that debug=false turns off"


@dataclass(frozen=True)
class JobPlan:
    """hyperparameters: the built-in trainer's (names -> values) or, with `script`, the script's own.
    debug=False turns the tensors hook off (the built-in trainer's debug hyperparameter, a script's hook config);
    debugger_hook_config: SageMaker's HookParameters; max_run: SageMaker's MaxRuntimeInSeconds."""
    hyperparameters: dict = field(default_factory=dict)
    script: Script | None = None
    metric_definitions: list | None = None
    debug: bool = True
    debugger_hook_config: dict | None = None
    processes_per_host: int | None = None
    max_run: float | None = None
    env: dict = field(default_factory=dict)
    image: str | None = None
    # what the image runs instead of its own command (SageMaker's ContainerEntrypoint/ContainerArguments)
    container_entrypoint: list | None = None
    container_arguments: list | None = None
    # A SageMaker API request (localsage api): hyperparameters.json is `hyperparameters` as the request gave
    # them, only sagemaker_submit_directory pointed at the job's code/; hook_config is the request's
    # DebugHookConfig (written as debughookconfig.json, LocalPath where the backend's job sees its tensors);
    # checkpoints_from: a folder (a CheckpointConfig's S3 checkpoints, downloaded) put into checkpoints/ first
    as_given: bool = False
    hook_config: dict | None = None
    checkpoints_from: Path | None = None
    instance_type: str | None = None  # resourceconfig.json's current_instance_type (SDK v3's driver reads it)

    def __post_init__(self):
        if self.as_given:
            object.__setattr__(self, "hyperparameters", {str(k): str(v) for k, v in self.hyperparameters.items()})
        elif self.script is None:  # the built-in trainer: bad values fail here, before any folder or instance
            hps = to_strings(self.hyperparameters or {})
            if self.processes_per_host:  # the built-in trainer reads the toolkit's key too
                hps[PROCESSES_PER_HOST_KEY] = str(int(self.processes_per_host))
            if not self.debug:  # --no-debug-tensors: the built-in trainer's switch is its debug hyperparameter
                hps = without_tensors(hps)
            object.__setattr__(self, "hyperparameters", hps)
        if self.debugger_hook_config and not self.tensors_on:
            raise ValueError(HOOK_WITHOUT_TENSORS)
        metrics.Scraper(self.metric_definitions)  # bad regexes fail here too

    @classmethod
    def for_script(cls, entry_point: str, source_dir=None, hyperparameters: dict | None = None, distribution=None,
                   processes_per_host: int | None = None, inference_entry_point: str | None = None, **rest):
        script = Script(entry_point, Path(source_dir) if source_dir else None, distribution_of(distribution),
                        processes_per_host, inference_entry_point)
        return cls(hyperparameters=dict(hyperparameters or {}), script=script, processes_per_host=processes_per_host,
                   **rest)

    def check(self) -> JobPlan:
        """The built-in trainer's values parsed here (the cloud: before an instance is billed); local jobs let
        the trainer fail with the reason in its record."""
        if self.script is None:
            parse(self.hyperparameters)
        return self

    def but(self, **changes) -> JobPlan:
        return replace(self, **changes)

    @property
    def tensors_on(self) -> bool:
        return self.debug and (self.script is not None or not tensors_off(self.hyperparameters))

    @property
    def epochs(self) -> int | None:
        """The built-in trainer's epoch count (a progress bar's length); None for scripts."""
        value = str(self.hyperparameters.get("epochs", SPEC["epochs"].default)) if self.script is None else ""
        return int(value) if value.isdigit() else None

    def scraper(self, job_dir: Path) -> metrics.Scraper:
        scraper = metrics.Scraper(self.metric_definitions)
        scraper.path = contract.metric_points_file(job_dir) if scraper.patterns else None
        return scraper

    def epoch_values(self, line: str) -> dict | None:
        """The built-in trainer's metric line (epoch, losses, accuracies); None for anything else (a script,
        or what a ContainerEntrypoint runs)."""
        return metrics.parse_line(line) if self.script is None and not self.container_entrypoint else None

    def job_hyperparameters(self, name: str, job_dir: Path, in_container: bool) -> dict:
        """hyperparameters.json: the built-in trainer's strings, or a script's as the SDK's estimator writes them."""
        if self.script is None and not self.as_given:
            return dict(self.hyperparameters)
        submit = contract.container_path(contract.CODE_SUBDIR) if in_container else str(contract.code_dir(job_dir))
        if self.as_given:
            hps = dict(self.hyperparameters)
            if self.script is not None and SUBMIT_DIR_KEY in hps:  # the code is in the job's code/ already
                hps[SUBMIT_DIR_KEY] = json.dumps(submit) if hps[SUBMIT_DIR_KEY].startswith('"') else submit
            return hps
        return script_hyperparameters(self.script, self.hyperparameters, submit, name)

    def lay_out(self, job_dir: Path, traits) -> dict:
        """The folder's code/ and hook config; returns the job's environment."""
        env = dict(self.env)
        if self.as_given:  # SageMaker writes the hook config a request asks for, and none otherwise
            if self.hook_config is not None:
                env.update(write_debug_config(job_dir, traits, True, self.hook_config.get("HookParameters"),
                                              list(self.hook_config.get("CollectionConfigurations") or [])))
        elif self.script is not None or self.debugger_hook_config:  # the built-in trainer takes the hook config too
            env.update(write_debug_config(job_dir, traits, self.debug, self.debugger_hook_config))
        if self.instance_type and traits.reads_job_config:
            add_instance_type(job_dir, self.instance_type)
        if self.checkpoints_from is not None and Path(self.checkpoints_from).is_dir():
            shutil.copytree(self.checkpoints_from, job_dir / "checkpoints", dirs_exist_ok=True)
        if self.script is not None:
            copy_source(self.script, job_dir)
            if not traits.in_container:
                env[contract.PIP_TARGET_ENV] = str(contract.code_dir(job_dir) / ".deps")
        return env

    def backend_script(self, job_dir: Path) -> dict | None:
        """The backend's view of a script job (backends.JobSpec.script); None for the built-in trainer."""
        if self.script is None:
            return None
        hps = dict(self.hyperparameters)
        if self.as_given:  # the script's own values, decoded (the SDK's estimator of sagemaker-local encodes them)
            hps = {k: decode_value(v) for k, v in hps.items() if not is_reserved(k)}
        return {"entry_point": self.script.program, "source_dir": str(contract.code_dir(job_dir)),
                "hyperparameters": hps, "distribution": self.script.distribution,
                "processes_per_host": self.script.processes_per_host}

    def record(self, name: str, job_dir: Path, channels: dict, hps: dict, backend: str, instance_count: int,
               tags: dict | None) -> dict:
        """The job's first record (DescribeTrainingJob's field names)."""
        algorithm = {"TrainingImage": self.image or "process:localsage.train", "TrainingInputMode": "File",
                     "MetricDefinitions": (metrics.Scraper(self.metric_definitions).definitions
                                           if self.script is not None or self.as_given
                                           else metrics.METRIC_DEFINITIONS)}
        if self.script is not None:
            algorithm["EntryPoint"] = self.script.program
        if self.container_entrypoint:
            algorithm["ContainerEntrypoint"] = list(self.container_entrypoint)
        if self.container_arguments:
            algorithm["ContainerArguments"] = list(self.container_arguments)
        now = _now()
        return {
            "TrainingJobName": name,
            "TrainingJobStatus": "InProgress",
            "SecondaryStatus": "Training",
            "HyperParameters": hps,
            "AlgorithmSpecification": algorithm,
            "InputDataConfig": [{"ChannelName": ch, "DataSource": channel_source(src)} for ch, src in channels.items()],
            "OutputDataConfig": {"LocalPath": str(job_dir)},
            "ResourceConfig": {"InstanceType": backend, "InstanceCount": instance_count},
            "CreationTime": now,
            "TrainingStartTime": now,
            "Backend": backend,
            "JobDir": str(job_dir),
            "LogFile": str(job_dir / LOG),
            "Tags": tags or {},
            "Owner": procs.identity(),  # lets a later command tell a job whose runner was killed
        }


def add_instance_type(job_dir: Path, instance_type: str, group: str = "homogeneousCluster") -> None:
    """resourceconfig.json as SageMaker writes it for an instance type: current_instance_type,
    current_group_name and instance_groups beside current_host and hosts."""
    path = contract.config_dir(job_dir) / "resourceconfig.json"
    config = json.loads(path.read_text()) if path.exists() else {"current_host": "algo-1", "hosts": ["algo-1"]}
    config.update(current_instance_type=instance_type, current_group_name=group,
                  instance_groups=[{"instance_group_name": group, "instance_type": instance_type,
                                    "hosts": list(config.get("hosts") or ["algo-1"])}])
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def is_remote(source) -> bool:
    """An S3 URI (channels of the sagemaker backend) rather than a local folder."""
    return str(source).startswith("s3://")


def channel_source(src) -> dict:
    return {"S3DataSource": {"S3Uri": src}} if is_remote(src) else {"FileDataSource": {"FileUri": f"file://{src}"}}


def channels_for(data) -> dict:
    """A data folder with train/ valid/ [test/] is one `training` channel (the dogImages layout);
    a dict maps channel names to folders."""
    if isinstance(data, dict):
        return {name: str(p) if is_remote(p) else Path(p).resolve() for name, p in data.items()}
    if is_remote(data):
        return {contract.COMBINED_CHANNEL: str(data)}
    data = Path(data).resolve()
    if not data.is_dir():
        raise FileNotFoundError(f"data folder not found: {data}")
    return {contract.COMBINED_CHANNEL: data}
