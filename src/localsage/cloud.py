"""Real SageMaker for the same image: ECR push, S3 upload, training jobs, endpoints.

Everything goes through the AWS SDKs (boto3, the sagemaker SDK v2, the docker SDK). Before anything
is created the caller's region and credentials are checked, so a missing one is a clear error and
nothing half-made is left behind. `--dry-run` renders the exact request the SDK would send: the SDK
runs against a botocore client whose calls are answered locally (after botocore's own parameter
validation), so no credentials are needed and nothing leaves the machine.
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import mimetypes
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .export import serving_env

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

DEFAULT_REPOSITORY = "localsage"
DEFAULT_INSTANCE_TYPE = "ml.g4dn.xlarge"
ROLE_ENV = "LOCALSAGE_SAGEMAKER_ROLE"
ACCOUNT_PLACEHOLDER = "ACCOUNT_ID"  # shown in dry runs made without credentials
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
NAME_PATTERN = r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"  # training job, model and endpoint names
# SDK defaults given to every sagemaker.Session we make: no telemetry requests.
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
# The container's `serve` reads these (serve/serve); values as SageMaker passes them: strings.
SERVING_ENV = serving_env()  # defaults from serve/handler_defaults.py
# Debugger tensors the training job saves (smdebug collection names) and how often.
DEBUG_COLLECTIONS = {"losses": {"save_interval": "10"}, "metrics": {"save_interval": "10"}}

logging.getLogger("sagemaker.config").setLevel(logging.WARNING)


class CloudError(RuntimeError):
    """A problem the user can fix (missing credentials, region, docker, role...)."""


# ---------------------------------------------------------------------------------------------
# sessions and checks


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
def _env_defaults(**values):
    """Set environment variables that are not set, for the duration of the block."""
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _import_sdk(region: str):
    """Import the sagemaker SDK once, cheaply and offline-safe.

    - Its import builds a default (JumpStart) session and client that we never use; without a region
      or credentials in the environment botocore would ask the EC2 instance metadata service for them
      (slow retries off EC2), so the import runs with our region and the metadata service off.
    - It validates the SDK-defaults dict against its JSON schema on every config lookup (~0.4 s each,
      ~20 per fit); the dict we pass (SDK_CONFIG, telemetry off) is validated once, others as before.
    """
    if "sagemaker" not in sys.modules:
        with _env_defaults(AWS_DEFAULT_REGION=os.environ.get("AWS_REGION") or region, AWS_EC2_METADATA_DISABLED="true"):
            import sagemaker  # noqa: F401
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
    sagemaker = _import_sdk(boto_session.region_name)
    return sagemaker.Session(boto_session=boto_session, sagemaker_client=sagemaker_client,
                             sagemaker_config=SDK_CONFIG)


def account_id(boto_session) -> str:
    return boto_session.client("sts").get_caller_identity()["Account"]


def ecr_image_uri(account: str, region: str, repository: str = DEFAULT_REPOSITORY, tag: str = "latest") -> str:
    return f"{account}.dkr.ecr.{region}.amazonaws.com/{repository}:{tag}"


def require_role(role: str | None) -> str:
    role = role or os.environ.get(ROLE_ENV)
    if not role:
        raise CloudError(f"no SageMaker execution role: pass --role ARN or set {ROLE_ENV} "
                         "(see the README's 'Run in the cloud' section for the permissions it needs); nothing was created")
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


def split_s3(uri: str) -> tuple:
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise CloudError(f"expected an s3://bucket/prefix URI, got {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key.strip("/")


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


_CANNED = {
    "CreateTrainingJob": lambda b, r: {"TrainingJobArn": f"arn:aws:sagemaker:{r}:{ACCOUNT_PLACEHOLDER}:training-job/{b['TrainingJobName']}"},
    "CreateHyperParameterTuningJob": lambda b, r: {"HyperParameterTuningJobArn": f"arn:aws:sagemaker:{r}:{ACCOUNT_PLACEHOLDER}:hyper-parameter-tuning-job/{b['HyperParameterTuningJobName']}"},
    "CreateModel": lambda b, r: {"ModelArn": f"arn:aws:sagemaker:{r}:{ACCOUNT_PLACEHOLDER}:model/{b['ModelName']}"},
    "CreateEndpointConfig": lambda b, r: {"EndpointConfigArn": f"arn:aws:sagemaker:{r}:{ACCOUNT_PLACEHOLDER}:endpoint-config/{b['EndpointConfigName']}"},
    "CreateEndpoint": lambda b, r: {"EndpointArn": f"arn:aws:sagemaker:{r}:{ACCOUNT_PLACEHOLDER}:endpoint/{b['EndpointName']}"},
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
        with _env_defaults(AWS_EC2_METADATA_DISABLED="true"):
            yield sagemaker_session(boto_session, client), calls
    finally:
        sdk_logger.setLevel(level)


def print_requests(calls, stream=None) -> None:
    stream = stream or sys.stdout
    doc = calls[0] if len(calls) == 1 else calls
    print(json.dumps(doc, indent=2, sort_keys=True), file=stream, flush=True)


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class TrainingOptions:
    """What a SageMaker training job needs beyond the job spec (JobSpec.options of the sagemaker backend)."""
    output_path: str                      # s3://bucket/prefix: model.tar.gz, checkpoints, tensors under <job>/
    role: str | None = None
    image: str | None = None              # default: <account>.dkr.ecr.<region>.amazonaws.com/localsage:latest
    instance_type: str = DEFAULT_INSTANCE_TYPE
    region: str | None = None
    spot: bool = False
    max_run: int = 4 * 3600               # seconds; the job is stopped after this (cost guard)
    max_wait: int | None = None           # spot only: default 2 x max_run
    volume_size: int = 30
    debug_tensors: bool = True
    poll_seconds: float = 15.0

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


def estimator(opts: TrainingOptions, job_name: str, hyperparameters: dict, instance_count: int,
              sm_session, image: str, role: str, environment: dict | None = None):
    """The sagemaker SDK Estimator for the project's image (also what the tuner wraps)."""
    from sagemaker.debugger import CollectionConfig, DebuggerHookConfig
    from sagemaker.estimator import Estimator

    from .hyperparameters import to_strings
    from .metrics import METRIC_DEFINITIONS

    paths = job_paths(opts.output_path, job_name)
    debug = None
    if opts.debug_tensors:
        debug = DebuggerHookConfig(s3_output_path=paths["tensors"], collection_configs=[
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
        hyperparameters=to_strings(hyperparameters),
        metric_definitions=METRIC_DEFINITIONS,
        environment=dict(environment or {}),
        debugger_hook_config=debug if debug else False,
        disable_profiler=True,
        sagemaker_session=sm_session,
        base_job_name="localsage",
    )


def channels(data) -> dict:
    """S3 channels: one URI is the combined `training` channel (train/ valid/ test/ under it)."""
    from .contract import COMBINED_CHANNEL

    chans = dict(data) if isinstance(data, dict) else {COMBINED_CHANNEL: data}
    for uri in chans.values():
        split_s3(str(uri))
    return {k: str(v) for k, v in chans.items()}


def training_request(data, hyperparameters: dict, opts: TrainingOptions, job_name: str,
                     instance_count: int = 1, environment: dict | None = None) -> dict:
    """The CreateTrainingJob request, rendered without credentials and without sending it."""
    with dry_run(opts.region) as (sm_session, calls):
        region = sm_session.boto_region_name
        image = opts.image or ecr_image_uri(ACCOUNT_PLACEHOLDER, region)
        est = estimator(opts, job_name, hyperparameters, instance_count, sm_session, image,
                        role_arn(opts.role), environment)
        est.fit(channels(data), wait=False, logs=False, job_name=job_name)
    return calls[-1]


def start_training(data, hyperparameters: dict, opts: TrainingOptions, job_name: str,
                   instance_count: int = 1, environment: dict | None = None, boto_session=None) -> dict:
    """Create the training job; returns what the job record keeps about it."""
    boto_session = boto_session or aws_session(opts.region)
    sm_session = sagemaker_session(boto_session)
    image = opts.image or ecr_image_uri(account_id(boto_session), boto_session.region_name)
    est = estimator(opts, job_name, hyperparameters, instance_count, sm_session, image,
                    role_arn(opts.role, boto_session), environment)
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
    }


def training_summary(data, opts: TrainingOptions, instance_count: int) -> list:
    lines = [f"This creates a SageMaker training job: {instance_count} x {opts.instance_type}"
             + (" (managed spot)" if opts.spot else " (on-demand)"),
             f"  data: {json.dumps(channels(data))}",
             f"  output: {opts.output_path}",
             f"  stops after at most {opts.max_run}s of training"
             + (f", {opts.max_wait or 2 * opts.max_run}s including spot waits" if opts.spot else ""),
             "  billed per instance-second while it runs (see the README's 'Run in the cloud' section for costs)"]
    return lines


# ---------------------------------------------------------------------------------------------
# ECR push


def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # docker.errors.DockerException and connection errors
        raise CloudError(f"cannot reach the docker engine ({exc}); start docker or set DOCKER_HOST; "
                         "nothing was created") from exc
    return client


def ensure_repository(ecr, repository: str, out=print) -> str:
    """The repository URI; the repository is created (scan on push) when it does not exist."""
    try:
        repo = ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]
    except ecr.exceptions.RepositoryNotFoundException:
        out(f"creating ECR repository {repository}")
        repo = ecr.create_repository(repositoryName=repository,
                                     imageScanningConfiguration={"scanOnPush": True})["repository"]
    return repo["repositoryUri"]


def ecr_login(ecr) -> tuple:
    """(username, password, registry) from ECR's authorization token."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    return user, password, data["proxyEndpoint"]


def push(local_image: str, repository: str = DEFAULT_REPOSITORY, tags=("latest",), region: str | None = None,
         client=None, boto_session=None, out=print) -> list:
    """Tag local_image as <repo uri>:<tag> for each tag and push it to ECR; returns the pushed references."""
    boto_session = boto_session or aws_session(region)
    client = client or docker_client()
    import docker.errors

    try:
        image = client.images.get(local_image)
    except docker.errors.ImageNotFound as exc:
        raise CloudError(f"no local image {local_image!r}: build it first (make image); nothing was created") from exc
    ecr = boto_session.client("ecr")
    uri = ensure_repository(ecr, repository, out)
    user, password, registry = ecr_login(ecr)
    client.login(username=user, password=password, registry=registry)
    pushed = []
    for tag in tags:
        image.tag(uri, tag=tag)
        out(f"pushing {uri}:{tag}")
        last = {}
        for event in client.api.push(uri, tag=tag, stream=True, decode=True,
                                     auth_config={"username": user, "password": password}):
            if "error" in event:
                raise CloudError(f"push of {uri}:{tag} failed: {event['error']}")
            status = event.get("status")
            if status and event.get("id") and last.get(event["id"]) != status:
                last[event["id"]] = status
                out(f"  {event['id']}: {status}")
        pushed.append(f"{uri}:{tag}")
    return pushed


# ---------------------------------------------------------------------------------------------
# S3 data


def upload_data(local_dir, s3_uri: str, region: str | None = None, boto_session=None, out=print) -> int:
    """Copy a folder (e.g. dogImages with train/ valid/ test/) to s3://bucket/prefix; returns the file count."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {local_dir}")
    bucket, prefix = split_s3(s3_uri)
    boto_session = boto_session or aws_session(region)
    s3 = boto_session.client("s3")
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    for i, path in enumerate(files, 1):
        key = "/".join(filter(None, [prefix, path.relative_to(local_dir).as_posix()]))
        s3.upload_file(str(path), bucket, key)
        if i % 500 == 0 or i == len(files):
            out(f"uploaded {i}/{len(files)} files to s3://{bucket}/{prefix}")
    return len(files)


# ---------------------------------------------------------------------------------------------
# endpoints


@dataclass
class DeployOptions:
    model_data: str                       # s3://.../model.tar.gz
    endpoint_name: str
    role: str | None = None
    image: str | None = None
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    region: str | None = None
    env: dict = field(default_factory=dict)

    def environment(self) -> dict:
        return {**SERVING_ENV, **{k: str(v) for k, v in self.env.items()}}


def model(opts: DeployOptions, sm_session, image: str, role: str):
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor

    return Model(image_uri=image, model_data=opts.model_data, role=role, env=opts.environment(),
                 name=opts.endpoint_name, predictor_cls=Predictor, sagemaker_session=sm_session)


def _serializers():
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import DataSerializer

    return DataSerializer(content_type="image/jpeg"), JSONDeserializer()


def _deploy(opts: DeployOptions, sm_session, image, role, wait):
    serializer, deserializer = _serializers()
    return model(opts, sm_session, image, role).deploy(
        initial_instance_count=opts.instance_count, instance_type=opts.instance_type,
        endpoint_name=opts.endpoint_name, serializer=serializer, deserializer=deserializer, wait=wait)


def deploy_requests(opts: DeployOptions) -> list:
    """CreateModel, CreateEndpointConfig and CreateEndpoint, rendered without sending them."""
    split_s3(opts.model_data)
    with dry_run(opts.region) as (sm_session, calls):
        image = opts.image or ecr_image_uri(ACCOUNT_PLACEHOLDER, sm_session.boto_region_name)
        _deploy(opts, sm_session, image, role_arn(opts.role), wait=False)
    return calls


def deploy(opts: DeployOptions, boto_session=None, wait=True):
    """Create the model, endpoint config and endpoint; returns the Predictor."""
    split_s3(opts.model_data)
    boto_session = boto_session or aws_session(opts.region)
    sm_session = sagemaker_session(boto_session)
    image = opts.image or ecr_image_uri(account_id(boto_session), boto_session.region_name)
    return _deploy(opts, sm_session, image, role_arn(opts.role, boto_session), wait=wait)


def predictor(endpoint_name: str, region: str | None = None, sm_session=None):
    """A Predictor that sends image bytes (image/jpeg by default) and reads JSON."""
    from sagemaker.predictor import Predictor

    sm_session = sm_session or sagemaker_session(aws_session(region))
    serializer, deserializer = _serializers()
    return Predictor(endpoint_name, sagemaker_session=sm_session, serializer=serializer, deserializer=deserializer)


def predict_endpoint(endpoint_name: str, paths, topk: int | None = None, region: str | None = None,
                     sm_session=None) -> list:
    """Send image files to a SageMaker endpoint: [(path, status, json)] like serving.predict."""
    import botocore.exceptions

    pred = predictor(endpoint_name, region, sm_session)
    results = []
    for path in paths:
        body = Path(path).read_bytes()
        ctype = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
        if topk is not None:  # the handler's JSON form carries topk
            body = json.dumps({"image": base64.b64encode(body).decode(), "topk": topk}).encode()
            ctype = "application/json"
        try:
            doc = pred.predict(body, initial_args={"ContentType": ctype, "Accept": "application/json"})
            results.append((str(path), 200, doc))
        except botocore.exceptions.ClientError as exc:
            err = exc.response.get("Error", {})
            status = exc.response.get("OriginalStatusCode") or exc.response["ResponseMetadata"].get("HTTPStatusCode", 0)
            message = exc.response.get("OriginalMessage") or err.get("Message", str(exc))
            results.append((str(path), int(status), {"message": message}))
    return results


def list_endpoints(region: str | None = None, boto_session=None) -> list:
    """[{name, status, instance_type, instance_count, created}] for every endpoint in the region."""
    boto_session = boto_session or aws_session(region)
    sm = boto_session.client("sagemaker")
    rows = []
    for page in sm.get_paginator("list_endpoints").paginate():
        for ep in page["Endpoints"]:
            row = {"name": ep["EndpointName"], "status": ep["EndpointStatus"],
                   "created": str(ep["CreationTime"]), "instance_type": "?", "instance_count": "?"}
            try:
                config = sm.describe_endpoint_config(
                    EndpointConfigName=sm.describe_endpoint(EndpointName=ep["EndpointName"])["EndpointConfigName"])
                variant = config["ProductionVariants"][0]
                row["instance_type"] = variant.get("InstanceType", "serverless")
                row["instance_count"] = variant.get("InitialInstanceCount", "")
            except Exception:  # a config deleted by hand: still list the endpoint
                pass
            rows.append(row)
    return rows


def delete_endpoint(name: str, region: str | None = None, boto_session=None, keep_model=False, out=print) -> None:
    """Delete the endpoint, its endpoint config and (unless keep_model) its models."""
    boto_session = boto_session or aws_session(region)
    sm = boto_session.client("sagemaker")
    config_name = sm.describe_endpoint(EndpointName=name)["EndpointConfigName"]
    models = []
    try:
        models = [v["ModelName"] for v in sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]]
    except sm.exceptions.ClientError:
        pass
    sm.delete_endpoint(EndpointName=name)
    out(f"deleted endpoint {name}")
    with contextlib.suppress(sm.exceptions.ClientError):
        sm.delete_endpoint_config(EndpointConfigName=config_name)
        out(f"deleted endpoint config {config_name}")
    for model_name in ([] if keep_model else models):
        with contextlib.suppress(sm.exceptions.ClientError):
            sm.delete_model(ModelName=model_name)
            out(f"deleted model {model_name}")


# ---------------------------------------------------------------------------------------------
# cli (cli.py calls add_parser(sub); `train` gets add_train_arguments(p) and, for --backend
# sagemaker, cmd_train(args); serving's `predict` gets add_predict_arguments(p) / predict_endpoint)


def _print_table(rows, header) -> None:
    rows = [tuple(str(x) for x in r) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip())


def _default_output_path(data) -> str:
    first = next(iter(data.values())) if isinstance(data, dict) else data
    bucket, _ = split_s3(str(first))
    return f"s3://{bucket}/localsage/jobs"


def add_train_arguments(p) -> None:
    g = p.add_argument_group("SageMaker (--backend sagemaker; --data is then an s3:// URI)")
    g.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE)
    g.add_argument("--spot", action="store_true", help="managed spot training (checkpoints to S3, resumes)")
    g.add_argument("--max-run", type=int, default=4 * 3600, help="seconds of training before SageMaker stops the job")
    g.add_argument("--max-wait", type=int, help="spot: seconds including waits for capacity (default 2 x max-run)")
    g.add_argument("--volume-size", type=int, default=30, help="GB of EBS per instance")
    g.add_argument("--no-debug-tensors", dest="debug_tensors", action="store_false",
                   help="do not save Debugger tensors to S3")
    g.add_argument("--role", help=f"SageMaker execution role ARN or name (default ${ROLE_ENV})")
    g.add_argument("--output-path", help="s3://bucket/prefix for artifacts (default s3://<data bucket>/localsage/jobs)")
    g.add_argument("--region", help="AWS region (default: the AWS configuration)")
    g.add_argument("--dry-run", action="store_true", help="print the CreateTrainingJob request and exit")
    g.add_argument("--yes", action="store_true", help="start the billable job without asking")


def training_options(args) -> TrainingOptions:
    return TrainingOptions(output_path=args.output_path or _default_output_path(args.data), role=args.role,
                           image=args.image, instance_type=args.instance_type, region=args.region, spot=args.spot,
                           max_run=args.max_run, max_wait=args.max_wait, volume_size=args.volume_size,
                           debug_tensors=args.debug_tensors)


def cmd_train(args) -> int:
    """`localsage train --backend sagemaker ...`: validate, dry-run or confirm, then run through the runner."""
    from . import hyperparameters, runner
    from .cli import parse_hp

    hps = hyperparameters.to_strings(parse_hp(args.hp, args.hp_file))
    hyperparameters.parse(hps)  # bad values fail here, not after an instance was billed
    opts = training_options(args)
    name = args.name or runner.job_name()
    if not re.fullmatch(NAME_PATTERN, name):
        raise CloudError(f"job name {name!r}: SageMaker allows letters, digits and single hyphens, at most 63")
    if args.dry_run:
        print_requests([training_request(args.data, hps, opts, name, args.instance_count)])
        return 0
    aws_session(opts.region)
    require_role(opts.role)
    confirm(training_summary(args.data, opts, args.instance_count), args.yes)
    record = runner.train(args.data, hps, backend="sagemaker", name=name, jobs_dir=args.jobs_dir,
                          image=opts.image, instance_count=args.instance_count, backend_options=opts.to_dict())
    return 0 if record["TrainingJobStatus"] == "Completed" else 1


def _model_data(args, out=print) -> str:
    """s3:// model.tar.gz for deploy: given directly, from a SageMaker job's record, or a local job's
    model.tar.gz uploaded to --output-path (not uploaded in a dry run)."""
    if args.model.startswith("s3://"):
        return args.model
    from . import runner

    record = runner.describe(args.model, args.jobs_dir)
    remote = (record.get("SageMaker") or {}).get("S3ModelArtifacts")
    if remote:
        return remote
    local = (record.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if record.get("TrainingJobStatus") != "Completed" or not local or not Path(local).is_file():
        raise CloudError(f"job {args.model!r} has no model.tar.gz (status {record.get('TrainingJobStatus')})")
    if not args.output_path:
        raise CloudError(f"job {args.model!r} was trained locally: pass --output-path s3://bucket/prefix to upload its model.tar.gz")
    uri = f"{args.output_path.rstrip('/')}/{record['TrainingJobName']}/model.tar.gz"
    if not args.dry_run:
        bucket, key = split_s3(uri)
        aws_session(args.region).client("s3").upload_file(local, bucket, key)
        out(f"uploaded {local} to {uri}")
    return uri


def _endpoint_name(args) -> str:
    from datetime import datetime, timezone

    if args.endpoint_name:
        return args.endpoint_name
    base = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") if args.model.startswith("s3://") else args.model
    return ("localsage-" + re.sub(r"[^a-zA-Z0-9-]", "-", base))[:63].rstrip("-")


def cmd_deploy(args) -> int:
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": args.workers, "SAGEMAKER_TS_BATCH_SIZE": args.batch_size,
           "SAGEMAKER_TS_MAX_BATCH_DELAY": args.max_batch_delay, "SAGEMAKER_MODEL_SERVER_TIMEOUT": args.timeout}
    name = _endpoint_name(args)

    def options(model_data):
        return DeployOptions(model_data=model_data, endpoint_name=name, role=args.role, image=args.image,
                             instance_type=args.instance_type, instance_count=args.instance_count, region=args.region,
                             env={k: v for k, v in env.items() if v is not None})

    if args.dry_run:
        print_requests(deploy_requests(options(_model_data(args))))
        return 0
    aws_session(args.region)
    require_role(args.role)
    confirm([f"This creates a SageMaker real-time endpoint {name}: {args.instance_count} x {args.instance_type}, "
             f"model {args.model}",
             f"  billed per instance-hour until you run: localsage endpoint delete {name}"], args.yes)
    opts = options(_model_data(args))
    print(f"creating endpoint {name} from {opts.model_data} (this takes several minutes)...", flush=True)
    deploy(opts, wait=not args.no_wait)
    print(f"endpoint {name} {'is being created' if args.no_wait else 'is InService'}\n"
          f"  predict: localsage predict --endpoint-name {name} dog.jpg\n"
          f"  delete:  localsage endpoint delete {name}")
    return 0


def cmd_push(args) -> int:
    tags = args.tag or ["latest"]
    refs = push(args.image, args.repository, tags, args.region)
    for ref in refs:
        print(f"pushed {ref}")
    return 0


def cmd_upload_data(args) -> int:
    count = upload_data(args.dir, args.s3_uri, args.region)
    print(f"{count} files in {args.s3_uri.rstrip('/')}/ ; train with: localsage train --backend sagemaker --data {args.s3_uri}")
    return 0


def cmd_endpoint(args) -> int:
    if args.action == "list":
        rows = list_endpoints(args.region)
        if not rows:
            print("no endpoints")
            return 0
        _print_table([(r["name"], r["status"], r["instance_type"], r["instance_count"], r["created"]) for r in rows],
                     ("NAME", "STATUS", "INSTANCE TYPE", "COUNT", "CREATED"))
        print("endpoints are billed per instance-hour while they exist: localsage endpoint delete NAME")
        return 0
    if not args.name:
        raise CloudError("endpoint delete needs an endpoint name (localsage endpoint list shows them)")
    delete_endpoint(args.name, args.region, keep_model=args.keep_model)
    return 0


def add_predict_arguments(p) -> None:
    p.add_argument("--endpoint-name", help="a SageMaker endpoint (instead of --endpoint URL)")
    p.add_argument("--region", help="AWS region of --endpoint-name")


def guard(func):
    """CloudError -> a one-line message and exit code 2."""
    def run(args):
        try:
            return func(args)
        except CloudError as exc:
            print(f"localsage: {exc}", file=sys.stderr)
            return 2
    return run


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("push", help="push the image to ECR (creates the repository when missing)")
    p.add_argument("--image", default=os.environ.get("IMAGE", "localsage:latest"), help="local image")
    p.add_argument("--repository", default=DEFAULT_REPOSITORY, help="ECR repository name")
    p.add_argument("--tag", action="append", help="tag to push (repeatable; default latest)")
    p.add_argument("--region")
    p.set_defaults(func=guard(cmd_push))

    p = subparsers.add_parser("upload-data", help="copy a data folder to s3://bucket/prefix")
    p.add_argument("dir")
    p.add_argument("s3_uri")
    p.add_argument("--region")
    p.set_defaults(func=guard(cmd_upload_data))

    p = subparsers.add_parser("deploy", help="deploy a job's model to a SageMaker real-time endpoint")
    p.add_argument("model", help="job name, or s3://.../model.tar.gz")
    p.add_argument("--backend", default="sagemaker", choices=("sagemaker",))
    p.add_argument("--endpoint-name")
    p.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE)
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--image", help="ECR image URI (default <account>.dkr.ecr.<region>.amazonaws.com/localsage:latest)")
    p.add_argument("--role", help=f"SageMaker execution role ARN or name (default ${ROLE_ENV})")
    p.add_argument("--output-path", help="s3://bucket/prefix to upload a locally trained job's model.tar.gz to")
    p.add_argument("--workers", help="SAGEMAKER_MODEL_SERVER_WORKERS (default %s)" % SERVING_ENV["SAGEMAKER_MODEL_SERVER_WORKERS"])
    p.add_argument("--batch-size", help="SAGEMAKER_TS_BATCH_SIZE (default %s)" % SERVING_ENV["SAGEMAKER_TS_BATCH_SIZE"])
    p.add_argument("--max-batch-delay", help="SAGEMAKER_TS_MAX_BATCH_DELAY in ms (default %s)" % SERVING_ENV["SAGEMAKER_TS_MAX_BATCH_DELAY"])
    p.add_argument("--timeout", help="SAGEMAKER_MODEL_SERVER_TIMEOUT in s (default %s)" % SERVING_ENV["SAGEMAKER_MODEL_SERVER_TIMEOUT"])
    p.add_argument("--jobs-dir")
    p.add_argument("--region")
    p.add_argument("--no-wait", action="store_true", help="return once creation started")
    p.add_argument("--dry-run", action="store_true", help="print the CreateModel/EndpointConfig/Endpoint requests and exit")
    p.add_argument("--yes", action="store_true", help="create the billable endpoint without asking")
    p.set_defaults(func=guard(cmd_deploy))

    p = subparsers.add_parser("endpoint", help="list or delete SageMaker endpoints")
    p.add_argument("action", choices=("list", "delete"))
    p.add_argument("name", nargs="?")
    p.add_argument("--keep-model", action="store_true", help="delete: keep the SageMaker model")
    p.add_argument("--region")
    p.set_defaults(func=guard(cmd_endpoint))
