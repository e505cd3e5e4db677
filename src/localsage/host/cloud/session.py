"""AWS sessions and checks: credentials and region, the execution role, the sagemaker SDK (imported
once, telemetry off), confirmation of billable work, and dry runs answered locally.

`--dry-run` renders the exact request the SDK would send: the SDK runs against a botocore client whose
calls are answered here (after botocore's own parameter validation), so no credentials are needed and
nothing leaves the machine.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys

from localsage.core.contract import NAME_PATTERN
from localsage.host.cloud.constants import ACCOUNT_PLACEHOLDER, ROLE_ENV, SDK_CONFIG

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
logging.getLogger("sagemaker.config").setLevel(logging.WARNING)


class CloudError(RuntimeError):
    """A problem the user can fix (missing credentials, region, docker, role...)."""


def aws_session(region: str | None = None):
    """A boto3 session with a region and credentials, or CloudError saying which is missing."""
    import boto3
    import botocore.exceptions

    try:
        session = boto3.Session(region_name=region) if region else boto3.Session()
        credentials = session.get_credentials()
    except botocore.exceptions.BotoCoreError as exc:  # unknown profile, broken config file...
        raise CloudError(f"AWS configuration problem: {exc}") from exc
    if not session.region_name:
        raise CloudError("no AWS region: pass --region, or set AWS_REGION / AWS_DEFAULT_REGION "
                         "(or `region` in ~/.aws/config); nothing was created")
    if credentials is None:
        raise CloudError("no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                         "or run `aws configure` / `aws sso login`; nothing was created")
    return session


@contextlib.contextmanager
def env_defaults(**values):
    """Set environment variables that are not set, for the duration of the block."""
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def import_sdk(region: str):
    """Import the sagemaker SDK once, cheaply and offline-safe.

    - Its import builds a default (JumpStart) session and client that we never use; without a region
      or credentials in the environment botocore would ask the EC2 instance metadata service for them
      (slow retries off EC2), so the import runs with our region and the metadata service off.
    - It validates the SDK-defaults dict against its JSON schema on every config lookup, many times a
      fit (docs/performance.md); the dict we pass (SDK_CONFIG, telemetry off) is validated once, others as
      before.
    """
    if "sagemaker" not in sys.modules:
        with env_defaults(AWS_DEFAULT_REGION=os.environ.get("AWS_REGION") or region, AWS_EC2_METADATA_DISABLED="true"):
            import sagemaker  # noqa: F401 - imported here for its side effects, under these defaults
    import sagemaker.utils

    validate = sagemaker.utils.validate_sagemaker_config
    if not getattr(validate, "_localsage", False):
        validate(SDK_CONFIG)

        def validate_once(config=None):
            if config is not SDK_CONFIG:
                validate(config)

        validate_once._localsage = True
        sagemaker.utils.validate_sagemaker_config = validate_once
    return sagemaker


def sagemaker_session(boto_session, sagemaker_client=None):
    sagemaker = import_sdk(boto_session.region_name)
    return sagemaker.Session(boto_session=boto_session, sagemaker_client=sagemaker_client,
                             sagemaker_config=SDK_CONFIG)


def account_id(boto_session) -> str:
    return boto_session.client("sts").get_caller_identity()["Account"]


def require_role(role: str | None) -> str:
    role = role or os.environ.get(ROLE_ENV)
    if not role:
        raise CloudError(f"no SageMaker execution role: pass --role ARN or set {ROLE_ENV} "
                         "(see the README's 'Run in the cloud' section for the permissions it needs); "
                         "nothing was created")
    return role


def role_arn(role: str | None, boto_session=None, account: str | None = None) -> str:
    """The execution role as an ARN. A bare role name is looked up in IAM; in a dry run (no
    boto_session) it is spelled out with the account placeholder, and a missing role is a placeholder."""
    role = role or os.environ.get(ROLE_ENV) or (None if boto_session else "SageMakerExecutionRole")
    role = require_role(role)
    if role.startswith("arn:"):
        return role
    if boto_session is None:
        return f"arn:aws:iam::{account or ACCOUNT_PLACEHOLDER}:role/{role}"
    return boto_session.client("iam").get_role(RoleName=role)["Role"]["Arn"]


def check_job_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise CloudError(f"job name {name!r}: SageMaker allows letters, digits and single hyphens, at most 63")
    return name


def confirm(lines, yes: bool, stdin=None) -> None:
    """Print what will be created; go on with --yes or an interactive 'y', else CloudError."""
    stdin = stdin or sys.stdin
    for line in lines:
        print(line, flush=True)
    if yes:
        return
    if not stdin.isatty():
        raise CloudError("this creates billable AWS resources: pass --yes to proceed (nothing was created)")
    print("Proceed? [y/N] ", end="", flush=True)
    if stdin.readline().strip().lower() not in ("y", "yes"):
        raise CloudError("cancelled; nothing was created")


# ---------------------------------------------------------------------------------------------
# dry runs: the SDK's requests, answered locally


def _arn(region, kind, name):
    return f"arn:aws:sagemaker:{region}:{ACCOUNT_PLACEHOLDER}:{kind}/{name}"


_CANNED = {
    "CreateTrainingJob": lambda b, r: {"TrainingJobArn": _arn(r, "training-job", b["TrainingJobName"])},
    "CreateHyperParameterTuningJob": lambda b, r: {"HyperParameterTuningJobArn": _arn(
        r, "hyper-parameter-tuning-job", b["HyperParameterTuningJobName"])},
    "CreateModel": lambda b, r: {"ModelArn": _arn(r, "model", b["ModelName"])},
    "CreateEndpointConfig": lambda b, r: {"EndpointConfigArn": _arn(r, "endpoint-config", b["EndpointConfigName"])},
    "CreateEndpoint": lambda b, r: {"EndpointArn": _arn(r, "endpoint", b["EndpointName"])},
}


@contextlib.contextmanager
def dry_run(region: str | None = None):
    """Yield (sagemaker_session, calls). Every AWS call made through the session is recorded as
    {"operation": name, "request": <the JSON body botocore built>} and answered locally; an
    operation that has no local answer raises CloudError. No credentials are read or needed."""
    import boto3
    import botocore.awsrequest

    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # Placeholder keys so nothing looks for real ones; no request is ever signed or sent.
    boto_session = boto3.Session(region_name=region, aws_access_key_id="DRYRUN", aws_secret_access_key="DRYRUN")
    calls = []

    def answer(model, params, **_):
        body = json.loads(params["body"] or b"{}")
        calls.append({"operation": model.name, "request": body})
        if model.name not in _CANNED:
            raise CloudError(f"dry run: the SDK wanted to call {model.name}, which a dry run does not send")
        return botocore.awsrequest.AWSResponse(None, 200, {}, None), _CANNED[model.name](body, region)

    boto_session.events.register("before-call", answer)
    client = boto_session.client("sagemaker")
    sdk_logger = logging.getLogger("sagemaker")
    level = sdk_logger.level
    sdk_logger.setLevel(logging.WARNING)  # no "Creating training-job ..." for what is not created
    try:
        # The SDK also makes clients of its own from boto3's default session (e.g. Estimator's
        # TensorBoardApp); without credentials in the environment botocore would ask the EC2
        # metadata service for some. A dry run contacts nothing.
        with env_defaults(AWS_EC2_METADATA_DISABLED="true"):
            yield sagemaker_session(boto_session, client), calls
    finally:
        sdk_logger.setLevel(level)


def print_requests(calls, stream=None) -> None:
    stream = stream or sys.stdout
    doc = calls[0] if len(calls) == 1 else calls
    print(json.dumps(doc, indent=2, sort_keys=True), file=stream, flush=True)
