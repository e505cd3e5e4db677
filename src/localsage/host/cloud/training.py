"""SageMaker training jobs for the project's image: the Estimator, the exact CreateTrainingJob
request (dry run), starting a job, and script mode (a user's entry point and metric definitions)."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from localsage.host.cloud import ecr, session
from localsage.host.cloud.constants import (
    ACCOUNT_PLACEHOLDER,
    DEBUG_COLLECTIONS,
    DEFAULT_INSTANCE_TYPE,
    DEFAULT_MAX_RUN,
    DEFAULT_VOLUME_SIZE,
    INSTANCE_TYPE_HP,
    MAX_METRIC_DEFINITIONS,
    TORCH_DISTRIBUTED_HP,
)
from localsage.host.cloud.s3 import split_s3
from localsage.host.cloud.session import CloudError
from localsage.host.cloud.source import encode_hyperparameters, source_package, source_prefix


@dataclass
class TrainingOptions:
    """What a SageMaker training job needs beyond the job spec (JobSpec.options of the sagemaker backend)."""
    output_path: str                      # s3://bucket/prefix: model.tar.gz, checkpoints, tensors under <job>/
    role: str | None = None
    image: str | None = None              # default: <account>.dkr.ecr.<region>.amazonaws.com/localsage:latest
    instance_type: str = DEFAULT_INSTANCE_TYPE
    region: str | None = None
    spot: bool = False
    max_run: int = DEFAULT_MAX_RUN        # seconds; the job is stopped after this (cost guard)
    max_wait: int | None = None           # spot only: default 2 x max_run
    volume_size: int = DEFAULT_VOLUME_SIZE
    debug_tensors: bool = True
    poll_seconds: float = 15.0
    entry_point: str | None = None        # script mode: the user's program (relative to source_dir)
    source_dir: str | None = None         # packed into sourcedir.tar.gz and uploaded before the job
    metric_definitions: list | None = None  # [{"Name", "Regex"}]: instead of the built-in ones
    distribution: str | None = None       # script mode: "torch_distributed" (torchrun on every instance)
    hook_parameters: dict | None = None   # DebuggerHookConfig(hook_parameters=...), e.g. train.save_interval

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingOptions":
        known = {k: v for k, v in (values or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_dict(self) -> dict:
        return asdict(self)


def job_paths(output_path: str, job_name: str) -> dict:
    base = f"{output_path.rstrip('/')}/{job_name}"
    return {"checkpoints": f"{base}/checkpoints", "tensors": f"{base}/debug-output",
            "model": f"{base}/output/model.tar.gz", "output": f"{base}/output/output.tar.gz"}


def metric_definitions(values) -> list:
    """SageMaker MetricDefinitions from `NAME=REGEX` strings (or {"Name", "Regex"} dicts), checked:
    each regex compiles and captures the value in a group, names are unique, at most 40."""
    out = []
    for value in values or []:
        if isinstance(value, dict):
            name, regex = value.get("Name"), value.get("Regex")
        else:
            name, sep, regex = str(value).partition("=")
            if not sep:
                raise CloudError(f"--metric-definition expects NAME=REGEX, got {value!r}")
        name, regex = (name or "").strip(), regex or ""
        if not name or not regex:
            raise CloudError(f"metric definition {value!r}: both a name and a regex are needed")
        try:
            groups = re.compile(regex).groups
        except re.error as exc:
            raise CloudError(f"metric definition {name!r}: bad regex {regex!r}: {exc}") from None
        if groups < 1:
            raise CloudError(f"metric definition {name!r}: the regex must capture the value in a group, "
                             f"e.g. 'loss: ([0-9.]+)'")
        if len(name) > 255 or len(regex) > 500:
            raise CloudError(f"metric definition {name!r}: "
                             "SageMaker allows names up to 255 and regexes up to 500 characters")
        if any(d["Name"] == name for d in out):
            raise CloudError(f"metric definition {name!r} given twice")
        out.append({"Name": name, "Regex": regex})
    if len(out) > MAX_METRIC_DEFINITIONS:
        raise CloudError(f"{len(out)} metric definitions: SageMaker allows at most {MAX_METRIC_DEFINITIONS}")
    return out


def definitions_for(opts: TrainingOptions) -> list:
    """The MetricDefinitions sent: the user's; else the built-in trainer's (a user's script prints
    its own lines: none unless asked for)."""
    from localsage.core.metrics import METRIC_DEFINITIONS

    if opts.metric_definitions:
        return metric_definitions(opts.metric_definitions)
    return [] if opts.entry_point else list(METRIC_DEFINITIONS)


def script_mode(opts: TrainingOptions, job_name: str, hyperparameters: dict, region: str) -> tuple:
    """(hyperparameters to send, SourcePackage or None). Script mode: the user's values JSON-encoded
    under the SDK's script-mode ones; the built-in trainer: the values as given."""
    from localsage.core.hyperparameters import to_strings

    if not opts.entry_point:
        if opts.source_dir:
            raise CloudError("--source-dir needs --entry-point (the program to run from it)")
        distribution_hyperparameters(opts)  # refused without an entry point
        return to_strings(hyperparameters), None
    hps, package = source_package(opts.source_dir, opts.entry_point, source_prefix(opts.output_path, job_name),
                                  job_name=job_name, region=region)
    return {**encode_hyperparameters(hyperparameters), **hps, **distribution_hyperparameters(opts)}, package


def distribution_hyperparameters(opts: TrainingOptions) -> dict:
    """The PyTorch estimator's `distribution={"torch_distributed": {"enabled": True}}` as hyperparameters."""
    if not opts.distribution:
        return {}
    if opts.distribution != "torch_distributed":
        raise CloudError(f"distribution {opts.distribution!r}: SageMaker script mode here supports torch_distributed")
    if not opts.entry_point:
        raise CloudError("--distribution torch_distributed needs --entry-point "
                         "(the built-in trainer distributes itself)")
    return {TORCH_DISTRIBUTED_HP: json.dumps(True), INSTANCE_TYPE_HP: json.dumps(opts.instance_type)}


def estimator(opts: TrainingOptions, job_name: str, hyperparameters: dict, instance_count: int,
              sm_session, image: str, role: str, environment: dict | None = None):
    """The sagemaker SDK Estimator for the project's image (hyperparameters as they are sent)."""
    from sagemaker.debugger import CollectionConfig, DebuggerHookConfig
    from sagemaker.estimator import Estimator

    paths = job_paths(opts.output_path, job_name)
    debug = None
    if opts.debug_tensors:
        debug = DebuggerHookConfig(
            s3_output_path=paths["tensors"], hook_parameters=opts.hook_parameters, collection_configs=[
                CollectionConfig(name, parameters=dict(params)) for name, params in DEBUG_COLLECTIONS.items()])
    max_wait = None
    if opts.spot:
        max_wait = opts.max_wait or 2 * opts.max_run
        if max_wait < opts.max_run:
            raise CloudError(f"--max-wait ({max_wait}s) must be at least --max-run ({opts.max_run}s)")
    return Estimator(
        image_uri=image,
        role=role,
        instance_count=instance_count,
        instance_type=opts.instance_type,
        volume_size=opts.volume_size,
        max_run=opts.max_run,
        use_spot_instances=opts.spot,
        max_wait=max_wait,
        output_path=opts.output_path,
        checkpoint_s3_uri=paths["checkpoints"],
        hyperparameters=dict(hyperparameters),
        metric_definitions=definitions_for(opts) or None,
        environment=dict(environment or {}),
        debugger_hook_config=debug if debug else False,
        disable_profiler=True,
        sagemaker_session=sm_session,
        base_job_name="localsage",
    )


def channels(data) -> dict:
    """S3 channels: one URI is the combined `training` channel (train/ valid/ test/ under it)."""
    from localsage.core.contract import COMBINED_CHANNEL

    chans = dict(data) if isinstance(data, dict) else {COMBINED_CHANNEL: data}
    for uri in chans.values():
        split_s3(str(uri))
    return {k: str(v) for k, v in chans.items()}


def training_requests(data, hyperparameters: dict, opts: TrainingOptions, job_name: str,
                      instance_count: int = 1, environment: dict | None = None) -> list:
    """What starting the job sends, rendered without credentials and without sending it: the
    source upload of script mode (its S3 key and files; nothing is uploaded), then CreateTrainingJob."""
    with session.dry_run(opts.region) as (sm_session, calls):
        region = sm_session.boto_region_name
        hps, package = script_mode(opts, job_name, hyperparameters, region)
        image = opts.image or ecr.ecr_image_uri(ACCOUNT_PLACEHOLDER, region)
        est = estimator(opts, job_name, hps, instance_count, sm_session, image, session.role_arn(opts.role),
                        environment)
        est.fit(channels(data), wait=False, logs=False, job_name=job_name)
    return ([package.to_dict()] if package else []) + [calls[-1]]


def training_request(data, hyperparameters: dict, opts: TrainingOptions, job_name: str,
                     instance_count: int = 1, environment: dict | None = None) -> dict:
    """The CreateTrainingJob request, rendered without credentials and without sending it."""
    return training_requests(data, hyperparameters, opts, job_name, instance_count, environment)[-1]


def start_training(data, hyperparameters: dict, opts: TrainingOptions, job_name: str,
                   instance_count: int = 1, environment: dict | None = None, boto_session=None) -> dict:
    """Upload the code (script mode), create the training job; returns what the job record keeps about it."""
    boto_session = boto_session or session.aws_session(opts.region)
    sm_session = session.sagemaker_session(boto_session)
    hps, package = script_mode(opts, job_name, hyperparameters, boto_session.region_name)
    image = opts.image or ecr.ecr_image_uri(session.account_id(boto_session), boto_session.region_name)
    role = session.role_arn(opts.role, boto_session)
    est = estimator(opts, job_name, hps, instance_count, sm_session, image, role, environment)
    if package:
        package.upload(boto_session.client("s3"))
    est.fit(channels(data), wait=False, logs=False, job_name=job_name)
    described = sm_session.sagemaker_client.describe_training_job(TrainingJobName=job_name)
    paths = job_paths(opts.output_path, job_name)
    return {
        "TrainingJobArn": described["TrainingJobArn"],
        "Region": boto_session.region_name,
        "TrainingImage": image,
        "InstanceType": opts.instance_type,
        "InstanceCount": instance_count,
        "Spot": opts.spot,
        "S3OutputPath": opts.output_path,
        "S3ModelArtifacts": paths["model"],
        "CheckpointS3Uri": paths["checkpoints"],
        "TensorsS3Uri": paths["tensors"] if opts.debug_tensors else None,
        "HyperParameters": hps,
        "MetricDefinitions": definitions_for(opts),
        "SourceS3Uri": package.s3_uri if package else None,
    }


def training_summary(data, opts: TrainingOptions, instance_count: int) -> list:
    lines = [f"This creates a SageMaker training job: {instance_count} x {opts.instance_type}"
             + (" (managed spot)" if opts.spot else " (on-demand)"),
             f"  data: {json.dumps(channels(data))}",
             f"  output: {opts.output_path}"]
    if opts.entry_point:
        lines.append(f"  program: {opts.entry_point}" + (f" from {opts.source_dir}" if opts.source_dir else "")
                     + " (uploaded as sourcedir.tar.gz)")
    lines += [f"  stops after at most {opts.max_run}s of training"
              + (f", {opts.max_wait or 2 * opts.max_run}s including spot waits" if opts.spot else ""),
              "  billed per instance-second while it runs (see the README's 'Run in the cloud' section for costs)"]
    return lines


def check_options(opts: TrainingOptions) -> None:
    """What can fail without AWS, checked before anything is billed: the script's files and the
    metric definitions (CloudError)."""
    metric_definitions(opts.metric_definitions)
    split_s3(opts.output_path)
    if opts.hook_parameters and not opts.debug_tensors:
        raise CloudError("--debugger-hook-config sets the tensors hook that --no-debug-tensors turns off")
    script_mode(opts, "check", {}, None)
