"""SageMaker real-time endpoints for the same image: the model (the built-in one, or a user's
inference script repacked into model.tar.gz), deploy, list, delete, and a predict client."""
from __future__ import annotations

import base64
import contextlib
import json
import mimetypes
import re
from dataclasses import dataclass, field
from pathlib import Path

from localsage.host.cloud import ecr, session
from localsage.host.cloud.constants import ACCOUNT_PLACEHOLDER, DEFAULT_INSTANCE_TYPE, SERVING_ENV
from localsage.host.cloud.s3 import s3_join, split_s3, upload_file
from localsage.host.cloud.session import CloudError
from localsage.host.cloud.source import RepackPlan


@dataclass
class DeployOptions:
    model_data: str                       # s3://.../model.tar.gz (the repacked one when repack is set)
    endpoint_name: str
    role: str | None = None
    image: str | None = None
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    region: str | None = None
    env: dict = field(default_factory=dict)
    repack: RepackPlan | None = None      # a user's inference script: model.tar.gz + code/

    def environment(self, region: str) -> dict:
        """The container's environment. The built-in model gets the project's serving defaults; a
        script model the SDK's script-mode variables and only what was asked for (the container's
        `serve` applies the inference toolkit's defaults to it)."""
        base = self.repack.environment(region) if self.repack else SERVING_ENV
        return {**base, **{k: str(v) for k, v in self.env.items()}}


def model(opts: DeployOptions, sm_session, image: str, role: str):
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor

    return Model(image_uri=image, model_data=opts.model_data, role=role,
                 env=opts.environment(sm_session.boto_region_name),
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
    """CreateModel, CreateEndpointConfig and CreateEndpoint, rendered without sending them (after
    the repack of a script model, shown but not done)."""
    split_s3(opts.model_data)
    with session.dry_run(opts.region) as (sm_session, calls):
        image = opts.image or ecr.ecr_image_uri(ACCOUNT_PLACEHOLDER, sm_session.boto_region_name)
        _deploy(opts, sm_session, image, session.role_arn(opts.role), wait=False)
    return ([opts.repack.to_dict()] if opts.repack else []) + calls


def deploy(opts: DeployOptions, boto_session=None, wait=True, out=print):
    """Repack a script model (uploading the result), create the model, endpoint config and
    endpoint; returns the Predictor."""
    split_s3(opts.model_data)
    boto_session = boto_session or session.aws_session(opts.region)
    sm_session = session.sagemaker_session(boto_session)
    image = opts.image or ecr.ecr_image_uri(session.account_id(boto_session), boto_session.region_name)
    role = session.role_arn(opts.role, boto_session)
    if opts.repack:
        opts.repack.run(boto_session.client("s3"))
        out(f"repacked {opts.repack.model_data} with code/{opts.repack.program} -> {opts.repack.destination}")
    return _deploy(opts, sm_session, image, role, wait=wait)


def predictor(endpoint_name: str, region: str | None = None, sm_session=None):
    """A Predictor that sends image bytes (image/jpeg by default) and reads JSON."""
    from sagemaker.predictor import Predictor

    sm_session = sm_session or session.sagemaker_session(session.aws_session(region))
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
    boto_session = boto_session or session.aws_session(region)
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
    boto_session = boto_session or session.aws_session(region)
    sm = boto_session.client("sagemaker")
    config_name = sm.describe_endpoint(EndpointName=name)["EndpointConfigName"]
    models = []
    try:
        models = [v["ModelName"]
                  for v in sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]]
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
# which model.tar.gz an endpoint serves


def model_data(model: str, record: dict | None = None, output_path: str | None = None) -> tuple:
    """(s3 URI of the model.tar.gz, local file to upload there or None) for deploy: an s3:// URI as
    given; from a job record (records.describe): a SageMaker job's artifacts, or a local job's
    model.tar.gz, which goes to <output_path>/<job>/model.tar.gz (upload_model sends it)."""
    if model.startswith("s3://"):
        split_s3(model)
        return model, None
    record = record or {}
    remote = (record.get("SageMaker") or {}).get("S3ModelArtifacts")
    if remote:
        return remote, None
    local = (record.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if record.get("TrainingJobStatus") != "Completed" or not local or not Path(local).is_file():
        raise CloudError(f"job {model!r} has no model.tar.gz (status {record.get('TrainingJobStatus')})")
    if not output_path:
        raise CloudError(f"job {model!r} was trained locally: "
                         "pass --output-path s3://bucket/prefix to upload its model.tar.gz")
    return s3_join(output_path, record["TrainingJobName"], "model.tar.gz"), local


def upload_model(local, uri: str, region: str | None = None, boto_session=None, out=print) -> str:
    boto_session = boto_session or session.aws_session(region)
    upload_file(boto_session.client("s3"), local, uri, encrypted=False)
    out(f"uploaded {local} to {uri}")
    return uri


def endpoint_name(model: str, name: str | None = None) -> str:
    """The given name, else localsage-<job name> (or a timestamp for an s3:// model), SageMaker-safe."""
    from datetime import datetime, timezone

    if name:
        return name
    base = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") if model.startswith("s3://") else model
    return ("localsage-" + re.sub(r"[^a-zA-Z0-9-]", "-", base))[:63].rstrip("-")
