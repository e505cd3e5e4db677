"""Real SageMaker for the same image: ECR push, S3 upload, training jobs, endpoints.

Everything goes through the AWS SDKs (boto3, the sagemaker SDK v2, the docker SDK). Before anything
is created the caller's region and credentials are checked, so a missing one is a clear error and
nothing half-made is left behind; `--dry-run` renders the exact requests without credentials.

    constants  the cloud facts (instance type, role variable, limits, SDK config, serving env)
    session    credentials and region, role, the SDK session (telemetry off), confirm, dry runs
    s3         URIs, default output path, data upload
    ecr        repository, login, push
    source     script mode's code: sourcedir.tar.gz for training, model.tar.gz + code/ for deploy
    training   TrainingOptions, the Estimator, CreateTrainingJob (dry run or started)
    endpoints  DeployOptions, the model, deploy / list / delete, the predict client

Importing this package is cheap: its modules load on first use of a name (PEP 562), so the
command-line parser reading `cloud.constants` loads nothing else; boto3, the SDK and docker are
imported by the functions that use them. The names below are the package's API.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "constants": ["ACCOUNT_PLACEHOLDER", "DEBUG_COLLECTIONS", "DEFAULT_INSTANCE_TYPE", "DEFAULT_MAX_RUN",
                  "DEFAULT_REPOSITORY", "DEFAULT_VOLUME_SIZE", "NAME_PATTERN", "ROLE_ENV", "SDK_CONFIG",
                  "SERVING_DEFAULTS", "SERVING_ENV", "SERVING_ENV_VARS", "TRAINING_LOG_GROUP"],
    "session": ["CloudError", "account_id", "aws_session", "check_job_name", "confirm", "dry_run", "print_requests",
                "require_role", "role_arn", "sagemaker_session"],
    "s3": ["default_output_path", "s3_join", "split_s3", "upload_data"],
    "ecr": ["docker_client", "ecr_image_uri", "ecr_login", "ensure_repository", "push"],
    "source": ["RepackPlan", "SourcePackage", "encode_hyperparameters", "repack_plan", "repacked_uri",
               "source_package", "source_prefix"],
    "training": ["TrainingOptions", "channels", "check_options", "definitions_for", "estimator", "job_paths",
                 "metric_definitions", "start_training", "training_request", "training_requests",
                 "training_summary"],
    "endpoints": ["DeployOptions", "delete_endpoint", "deploy", "deploy_requests", "endpoint_name", "list_endpoints",
                  "model", "model_data", "predict_endpoint", "predictor", "upload_model"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _EXPORTS:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE) | set(_EXPORTS))
