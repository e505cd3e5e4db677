"""The cloud facts, in one place: instance type, role variable, job limits, SDK defaults, serving env.

Standard library only: the command-line parser reads these, and `localsage --help` stays cheap.
"""
from __future__ import annotations

from pathlib import PurePosixPath

from localsage.core.contract import DEFAULT_ROOT
from localsage.core.serve_dir import serving_defaults

DEFAULT_REPOSITORY = "localsage"          # ECR repository of the project's image
DEFAULT_INSTANCE_TYPE = "ml.g4dn.xlarge"  # training, tuning and endpoints
ROLE_ENV = "LOCALSAGE_SAGEMAKER_ROLE"     # the execution role when --role is not given
DEFAULT_MAX_RUN = 4 * 3600                # seconds of training before SageMaker stops a job (cost guard)
DEFAULT_VOLUME_SIZE = 30                  # GB of EBS per training instance
ACCOUNT_PLACEHOLDER = "ACCOUNT_ID"        # shown in dry runs made without credentials
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"

MAX_METRIC_DEFINITIONS = 40               # SageMaker's limit per training job

# SDK defaults given to every sagemaker.Session we make: no telemetry requests.
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}

# Serving defaults of the built-in model (TorchServe workers, dynamic batching, timeout): the values of
# serve/handler_defaults.py, the one place for them; and the variables the container's `serve` reads.
_SERVER = serving_defaults().SERVER
SERVING_DEFAULTS = {"workers": _SERVER["minWorkers"], "batch_size": _SERVER["batchSize"],
                    "max_batch_delay": _SERVER["maxBatchDelay"], "timeout": _SERVER["responseTimeout"]}
SERVING_ENV_VARS = {
    "workers": "SAGEMAKER_MODEL_SERVER_WORKERS",
    "batch_size": "SAGEMAKER_TS_BATCH_SIZE",
    "max_batch_delay": "SAGEMAKER_TS_MAX_BATCH_DELAY",
    "timeout": "SAGEMAKER_MODEL_SERVER_TIMEOUT",
}
# What an endpoint of the built-in model gets: values as SageMaker passes them, strings.
SERVING_ENV = {SERVING_ENV_VARS[k]: str(v) for k, v in SERVING_DEFAULTS.items()}

# Debugger tensors the training job saves (smdebug collection names) and how often.
DEBUG_COLLECTIONS = {"losses": {"save_interval": "10"}, "metrics": {"save_interval": "10"}}

# Script mode (the SDK's framework estimators and models; sagemaker-training/inference-toolkit names).
PROGRAM_HP = "sagemaker_program"
SUBMIT_DIR_HP = "sagemaker_submit_directory"
LOG_LEVEL_HP = "sagemaker_container_log_level"
JOB_NAME_HP = "sagemaker_job_name"
REGION_HP = "sagemaker_region"
TORCH_DISTRIBUTED_HP = "sagemaker_torch_distributed_enabled"  # the PyTorch estimator's torch_distributed
INSTANCE_TYPE_HP = "sagemaker_instance_type"
CONTAINER_LOG_LEVEL = 20                  # logging.INFO, the SDK's default
SOURCE_ARCHIVE = "sourcedir.tar.gz"       # the SDK's name for the packed source dir
MODEL_ARCHIVE = "model.tar.gz"
# Where a repacked model's code is inside an endpoint container (model.tar.gz's code/).
# TODO(lead): a contract fact (contract.py knows the /opt/ml layout); move it there when contract gains it.
MODEL_CODE_DIR = str(PurePosixPath(DEFAULT_ROOT) / "model" / "code")
