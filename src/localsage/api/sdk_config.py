"""`<root>/sagemaker-config.yaml`: the SageMaker SDKs' defaults file (`SAGEMAKER_USER_CONFIG_OVERRIDE`), the
part of the redirection AWS_ENDPOINT_URL cannot do: both SDKs build their STS client with an explicit regional
endpoint, so without a default bucket and role in this file `default_bucket()` and the role look-ups would call
the real AWS. Keys as the installed SDKs' schemas name them (v2 sagemaker/config/config_schema.py, v3
sagemaker/core/config/config_schema.py): every RoleArn a training, tuning (the trainer's role), model or
serving call reads, the default bucket, and telemetry off (no request leaves the machine)."""
from __future__ import annotations

from pathlib import Path

from localsage.core.files import atomic_write

FILE_NAME = "sagemaker-config.yaml"


def sdk_config(role_arn: str, bucket: str) -> dict:
    return {
        "SchemaVersion": "1.0",
        "SageMaker": {
            "PythonSDK": {"Modules": {
                "Session": {"DefaultS3Bucket": bucket},
                "TelemetryOptOut": True,
                "Serve": {"RoleArn": role_arn},  # v3 ModelBuilder / v2 serve settings
            }},
            "TrainingJob": {"RoleArn": role_arn},  # v2 estimators and tuners, v3 ModelTrainer and its tuner
            "Model": {"ExecutionRoleArn": role_arn},  # CreateModel: v2 deploy/transformer, v3 ModelBuilder
            "ProcessingJob": {"RoleArn": role_arn},  # the debugger/profiler rule jobs' role, when SDKs ask
        },
    }


def write_sdk_config(root: Path, role_arn: str, bucket: str) -> Path:
    import yaml

    path = Path(root) / FILE_NAME
    atomic_write(path, yaml.safe_dump(sdk_config(role_arn, bucket), sort_keys=False))
    return path
