"""SageMaker's hosting calls: Create/Describe/List/Delete Model, EndpointConfig and Endpoint, and UpdateEndpoint.
Models and endpoint configs are records; an endpoint is a record plus a model server (api/hosting.py).
CreateEndpoint and UpdateEndpoint answer at once, as SageMaker's do; DescribeEndpoint says Creating, then InService
(or Failed with the reason) once the model server answers /ping. What localsage cannot serve is refused at create
time, naming the field: a model of several containers or a multi-model one, a model package, an endpoint config
with several or shadow variants, inference components or asynchronous inference. The model's image must exist on
this machine (never pulled)."""
from __future__ import annotations

from localsage.api import containers, errors
from localsage.api.errors import ApiError, validation
from localsage.api.hosting import hosting, lookup, now
from localsage.api.store import check_name
from localsage.host import backends


def describe(record: dict, operation: str) -> dict:
    """A record as `operation` answers it: only its output shape's members (Tags, LastModifiedTime and the like
    stay in the record), and no empty structure (sagemaker-core's pydantic models refuse `VpcConfig: {}`)."""
    from localsage.api.validate import service_model

    members = service_model().operation_model(operation).output_shape.members
    return {k: v for k, v in record.items() if k in members and v not in (None, {}, [])}


def _require(api, kind: str, name: str, field: str) -> dict:
    check_name(name, field)
    record = api.store.get(kind, name)
    if record is None:
        raise errors.not_found(kind, name)
    return record


def _refuse_taken(api, kind: str, name: str, arn: str) -> None:
    if api.store.get(kind, name) is not None:
        raise errors.already_exists(kind, name, arn)


# -- List* paging, shared with transform.py -------------------------------------------------------------------------
def _time(value, field: str) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise validation(field, "Member must be a timestamp") from None


def list_page(request: dict, records: list, name_key: str, fields: tuple, result_key: str,
              status_key: str | None = None) -> dict:
    """List* as SageMaker pages it: NameContains, time and status filters, SortBy Name/CreationTime/Status,
    SortOrder (default Descending by CreationTime), MaxResults (default 10) and a NextToken."""
    rows = records
    if request.get("NameContains"):
        needle = request["NameContains"].lower()
        rows = [r for r in rows if needle in r.get(name_key, "").lower()]
    for field, key, keep in (("CreationTimeBefore", "CreationTime", lambda t, v: t < v),
                             ("CreationTimeAfter", "CreationTime", lambda t, v: t > v),
                             ("LastModifiedTimeBefore", "LastModifiedTime", lambda t, v: t < v),
                             ("LastModifiedTimeAfter", "LastModifiedTime", lambda t, v: t > v)):
        if request.get(field) is not None:
            limit = _time(request[field], field)
            rows = [r for r in rows if keep(float(r.get(key) or r.get("CreationTime") or 0), limit)]
    if status_key and request.get("StatusEquals"):
        rows = [r for r in rows if r.get(status_key) == request["StatusEquals"]]
    sort_by = request.get("SortBy") or "CreationTime"
    key = {"Name": name_key, "Status": status_key or name_key}.get(sort_by, "CreationTime")
    rows = sorted(rows, key=lambda r: (r.get(key) or 0, r.get(name_key, "")),
                  reverse=(request.get("SortOrder") or "Descending") == "Descending")
    token = request.get("NextToken") or "0"
    if not (token.isascii() and token.isdigit()) or int(token) > len(rows):
        raise ApiError("ValidationException", "Invalid pagination token: NextToken")
    start, size = int(token), int(request.get("MaxResults") or 10)
    page = rows[start:start + size]
    answer = {result_key: [{k: r[k] for k in fields if r.get(k) is not None} for r in page]}
    if start + size < len(rows):
        answer["NextToken"] = str(start + size)
    return answer


# -- Model ------------------------------------------------------------------------------------------------------
def _container(api, request: dict) -> dict:
    listed = request.get("Containers") or []
    if request.get("PrimaryContainer") and listed:
        raise validation("Containers", "PrimaryContainer and Containers cannot both be given")
    if len(listed) > 1:
        raise validation("Containers", f"localsage serves a model of one container, not {len(listed)}")
    container = request.get("PrimaryContainer") or (listed[0] if listed else None)
    if not container:
        raise validation("PrimaryContainer", "Member must not be null (give PrimaryContainer or Containers)")
    field = "PrimaryContainer" if request.get("PrimaryContainer") else "Containers.1"
    if container.get("ModelPackageName"):
        raise validation(f"{field}.ModelPackageName", "model packages are not served by localsage; give Image "
                                                      "and ModelDataUrl")
    if container.get("Mode") == "MultiModel":
        raise validation(f"{field}.Mode", "multi-model endpoints are not served by localsage (SingleModel only)")
    if not container.get("Image"):
        raise validation(f"{field}.Image", "Member must not be null")
    uri, _ = containers.model_source(container)
    if uri:
        api.s3.parse(uri)
    if backends.traits(api.backend).in_container:
        from localsage.host.backends.docker import local_image

        try:
            local_image(container["Image"])
        except LookupError as exc:
            raise validation(f"{field}.Image", str(exc)) from None
    return container


def create_model(api, request: dict) -> dict:
    name = check_name(request["ModelName"], "ModelName")
    arn = api.arn("model", name)
    _refuse_taken(api, "Model", name, arn)
    container = _container(api, request)
    record = {"ModelName": name, "ModelArn": arn, "PrimaryContainer": container,
              "ExecutionRoleArn": request.get("ExecutionRoleArn") or api.role_arn, "CreationTime": now(),
              "EnableNetworkIsolation": bool(request.get("EnableNetworkIsolation")),
              "InferenceExecutionConfig": request.get("InferenceExecutionConfig"),
              "VpcConfig": request.get("VpcConfig") or None, "Tags": request.get("Tags")}
    api.store.put("Model", name, {k: v for k, v in record.items() if v is not None})
    return {"ModelArn": arn}


def describe_model(api, request: dict) -> dict:
    return describe(_require(api, "Model", request["ModelName"], "ModelName"), "DescribeModel")


def list_models(api, request: dict) -> dict:
    return list_page(request, api.store.list("Model"), "ModelName", ("ModelName", "ModelArn", "CreationTime"),
                     "Models")


def delete_model(api, request: dict) -> dict:
    name = request["ModelName"]
    _require(api, "Model", name, "ModelName")
    api.store.delete("Model", name)
    return {}


# -- EndpointConfig ---------------------------------------------------------------------------------------------
UNSUPPORTED_CONFIG = {
    "AsyncInferenceConfig": "asynchronous inference is not served by localsage",
    "ShadowProductionVariants": "shadow variants are not served by localsage",
    "ExplainerConfig": "SageMaker Clarify explainers are not served by localsage",
}


def create_endpoint_config(api, request: dict) -> dict:
    name = check_name(request["EndpointConfigName"], "EndpointConfigName")
    arn = api.arn("endpoint-config", name)
    _refuse_taken(api, "EndpointConfig", name, arn)
    for field, why in UNSUPPORTED_CONFIG.items():
        if request.get(field):
            raise validation(field, why)
    variants = request["ProductionVariants"]
    if len(variants) != 1:
        raise validation("ProductionVariants", f"localsage serves one production variant, not {len(variants)}")
    model_name = variants[0].get("ModelName")
    if not model_name:
        raise validation("ProductionVariants.1.ModelName", "inference components are not served by localsage: "
                                                           "name the variant's model")
    check_name(model_name, "ProductionVariants.1.ModelName")
    if api.store.get("Model", model_name) is None:
        raise ApiError("ValidationException", f'Could not find model "{api.arn("model", model_name)}".')
    record = {k: v for k, v in request.items() if v not in (None, {}, [])}
    record.update(EndpointConfigArn=arn, CreationTime=now())
    api.store.put("EndpointConfig", name, record)
    return {"EndpointConfigArn": arn}


def describe_endpoint_config(api, request: dict) -> dict:
    return describe(_require(api, "EndpointConfig", request["EndpointConfigName"], "EndpointConfigName"),
                    "DescribeEndpointConfig")


def list_endpoint_configs(api, request: dict) -> dict:
    return list_page(request, api.store.list("EndpointConfig"), "EndpointConfigName",
                     ("EndpointConfigName", "EndpointConfigArn", "CreationTime"), "EndpointConfigs")


def delete_endpoint_config(api, request: dict) -> dict:
    name = request["EndpointConfigName"]
    _require(api, "EndpointConfig", name, "EndpointConfigName")
    api.store.delete("EndpointConfig", name)
    return {}


# -- Endpoint ---------------------------------------------------------------------------------------------------
def _config_and_model(api, config_name: str) -> tuple[dict, dict]:
    check_name(config_name, "EndpointConfigName")
    config = api.store.get("EndpointConfig", config_name)
    if config is None:
        raise ApiError("ValidationException",
                       f'Could not find endpoint configuration "{api.arn("endpoint-config", config_name)}".')
    model_name = config["ProductionVariants"][0].get("ModelName")
    model = lookup(api, "Model", model_name)
    if model is None:
        raise ApiError("ValidationException", f'Could not find model "{api.arn("model", str(model_name))}".')
    return config, model


def create_endpoint(api, request: dict) -> dict:
    name = check_name(request["EndpointName"], "EndpointName")
    arn = api.arn("endpoint", name)
    host = hosting(api)
    with host.lock:
        _refuse_taken(api, "Endpoint", name, arn)
        config, model = _config_and_model(api, request["EndpointConfigName"])
        stamp = now()
        api.store.put("Endpoint", name, {
            "EndpointName": name, "EndpointArn": arn, "EndpointConfigName": config["EndpointConfigName"],
            "EndpointStatus": "Creating", "CreationTime": stamp, "LastModifiedTime": stamp,
            **({"Tags": request["Tags"]} if request.get("Tags") else {})})
        host.launch(name, config, model)
    return {"EndpointArn": arn}


def describe_endpoint(api, request: dict) -> dict:
    hosting(api)  # after a restart, the first call brings the endpoints back
    record = _require(api, "Endpoint", request["EndpointName"], "EndpointName")
    if record.get("EndpointStatus") != "InService":
        record.pop("ProductionVariants", None)
    return describe(record, "DescribeEndpoint")


def list_endpoints(api, request: dict) -> dict:
    hosting(api)
    return list_page(request, api.store.list("Endpoint"), "EndpointName",
                     ("EndpointName", "EndpointArn", "CreationTime", "LastModifiedTime", "EndpointStatus"),
                     "Endpoints", status_key="EndpointStatus")


def delete_endpoint(api, request: dict) -> dict:
    name = request["EndpointName"]
    host = hosting(api)
    with host.lock:
        _require(api, "Endpoint", name, "EndpointName")
        api.store.update("Endpoint", name, EndpointStatus="Deleting", LastModifiedTime=now())
    host.remove(name)
    api.store.delete("Endpoint", name)
    return {}


def update_endpoint(api, request: dict) -> dict:
    name = request["EndpointName"]
    host = hosting(api)
    with host.lock:
        record = _require(api, "Endpoint", name, "EndpointName")
        if record.get("EndpointStatus") not in ("InService", "Failed"):
            raise ApiError("ValidationException", f"Cannot update in-progress endpoint \"{record['EndpointArn']}\".")
        config, model = _config_and_model(api, request["EndpointConfigName"])
        status = "Updating" if host.serving(name) else "Creating"
        record.pop("FailureReason", None)
        record.update(EndpointStatus=status, LastModifiedTime=now())
        api.store.put("Endpoint", name, record)
        host.launch(name, config, model)
    return {"EndpointArn": record["EndpointArn"]}


OPERATIONS = {
    "CreateModel": create_model, "DescribeModel": describe_model, "ListModels": list_models,
    "DeleteModel": delete_model,
    "CreateEndpointConfig": create_endpoint_config, "DescribeEndpointConfig": describe_endpoint_config,
    "ListEndpointConfigs": list_endpoint_configs, "DeleteEndpointConfig": delete_endpoint_config,
    "CreateEndpoint": create_endpoint, "DescribeEndpoint": describe_endpoint, "ListEndpoints": list_endpoints,
    "DeleteEndpoint": delete_endpoint, "UpdateEndpoint": update_endpoint,
}


def on_start(api) -> None:
    """Containers a killed server left are removed; endpoints that were up come back."""
    hosting(api)
