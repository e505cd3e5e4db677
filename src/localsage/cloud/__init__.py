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

Importing this package is cheap (standard library only); boto3, the SDK and docker are imported
by the functions that use them. The names below are the package's API.
"""
from __future__ import annotations

from .constants import (ACCOUNT_PLACEHOLDER, DEBUG_COLLECTIONS, DEFAULT_INSTANCE_TYPE, DEFAULT_MAX_RUN,  # noqa: F401
                        DEFAULT_REPOSITORY, DEFAULT_VOLUME_SIZE, NAME_PATTERN, ROLE_ENV, SDK_CONFIG,
                        SERVING_DEFAULTS, SERVING_ENV, SERVING_ENV_VARS, TRAINING_LOG_GROUP)
from .ecr import docker_client, ecr_image_uri, ecr_login, ensure_repository, push  # noqa: F401
from .endpoints import (DeployOptions, delete_endpoint, deploy, deploy_requests, endpoint_name,  # noqa: F401
                        list_endpoints, model, model_data, predict_endpoint, predictor, upload_model)
from .s3 import default_output_path, s3_join, split_s3, upload_data  # noqa: F401
from .session import (CloudError, account_id, aws_session, check_job_name, confirm, dry_run,  # noqa: F401
                      print_requests, require_role, role_arn, sagemaker_session)
from .source import (RepackPlan, SourcePackage, encode_hyperparameters, repack_plan, repacked_uri,  # noqa: F401
                     source_package, source_prefix)
from .training import (TrainingOptions, channels, estimator, job_paths, metric_definitions,  # noqa: F401
                       check_options, start_training, training_request, training_requests, training_summary)
