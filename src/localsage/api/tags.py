"""AddTags, ListTags, DeleteTags on any resource's ARN: the tags given at creation (each resource's record keeps
its request's `Tags`) plus those added later. SDK v2's `Estimator.attach` lists a training job's tags."""
from __future__ import annotations

import hashlib

from localsage.api.errors import validation

# the ARN's resource type -> the store kind whose records hold the resource
KINDS = {"training-job": "TrainingJob", "hyper-parameter-tuning-job": "HyperParameterTuningJob", "model": "Model",
         "endpoint-config": "EndpointConfig", "endpoint": "Endpoint", "transform-job": "TransformJob"}
ADDED = "Tags"  # the store kind of tags added later, one record per ARN


def _resource(api, arn: str) -> dict:
    prefix = f"arn:aws:sagemaker:{api.region}:{api.account}:"
    kind_path, _, name = arn[len(prefix):].partition("/") if arn.startswith(prefix) else ("", "", "")
    kind = KINDS.get(kind_path)
    record = next((r for r in api.store.list(kind) if r.get(f"{kind}Name", "").lower() == name), None) if kind else None
    if record is None:
        raise validation("ResourceArn", f"resource {arn} not found")  # the service's answer for an unknown ARN
    return record


def _key(arn: str) -> str:
    return hashlib.sha256(arn.encode()).hexdigest()[:48]


def _tags(api, arn: str) -> dict:
    record = _resource(api, arn)
    given = record.get("Tags") or (record.get("Local") or {}).get("Tags") or []
    tags = {t["Key"]: t.get("Value", "") for t in given} if isinstance(given, list) else dict(given)
    added = api.store.get(ADDED, _key(arn)) or {}
    tags.update(added.get("Tags", {}))
    for key in added.get("Deleted", []):
        tags.pop(key, None)
    return tags


def add_tags(api, request: dict) -> dict:
    arn = request["ResourceArn"]
    _resource(api, arn)
    added = api.store.get(ADDED, _key(arn)) or {"ResourceArn": arn, "Tags": {}, "Deleted": []}
    for tag in request["Tags"]:
        added["Tags"][tag["Key"]] = tag.get("Value", "")
        added["Deleted"] = [k for k in added["Deleted"] if k != tag["Key"]]
    api.store.put(ADDED, _key(arn), added)
    return {"Tags": request["Tags"]}


def delete_tags(api, request: dict) -> dict:
    arn = request["ResourceArn"]
    _resource(api, arn)
    added = api.store.get(ADDED, _key(arn)) or {"ResourceArn": arn, "Tags": {}, "Deleted": []}
    for key in request["TagKeys"]:
        added["Tags"].pop(key, None)
        added["Deleted"] = sorted(set(added["Deleted"]) | {key})
    api.store.put(ADDED, _key(arn), added)
    return {}


def list_tags(api, request: dict) -> dict:
    return {"Tags": [{"Key": k, "Value": v} for k, v in sorted(_tags(api, request["ResourceArn"]).items())]}


OPERATIONS = {"AddTags": add_tags, "DeleteTags": delete_tags, "ListTags": list_tags}
