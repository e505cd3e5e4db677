"""A SageMaker SDK session pointed at `localsage api` by the environment alone (AWS_ENDPOINT_URL, dummy
credentials, SAGEMAKER_USER_CONFIG_OVERRIDE): prints, as JSON, the SDK's version, the default bucket and the
training and model roles it resolves. Runs under SDK v2 or v3 (plain SDK code; nothing of localsage)."""
import json
from importlib.metadata import version

try:  # v3
    from sagemaker.core.common_utils import resolve_value_from_config
    from sagemaker.core.config.config_schema import MODEL_EXECUTION_ROLE_ARN_PATH, TRAINING_JOB_ROLE_ARN_PATH
    from sagemaker.core.helper.session_helper import Session
except ImportError:  # v2
    from sagemaker.config import MODEL_EXECUTION_ROLE_ARN_PATH, TRAINING_JOB_ROLE_ARN_PATH
    from sagemaker.session import Session
    from sagemaker.utils import resolve_value_from_config

session = Session()
print(json.dumps({
    "sdk": version("sagemaker"),
    "bucket": session.default_bucket(),  # head/create bucket through the API; no STS call with the defaults file
    "training_role": resolve_value_from_config(None, TRAINING_JOB_ROLE_ARN_PATH, sagemaker_session=session),
    "model_role": resolve_value_from_config(None, MODEL_EXECUTION_ROLE_ARN_PATH, sagemaker_session=session),
}))
