"""sagemaker-runtime InvokeEndpoint: `RUNTIME(api, endpoint_name, body, headers) -> (status, headers, body)`.

The body goes to the endpoint's model server (`POST /invocations`) as it came, with Content-Type, Accept and
X-Amzn-SageMaker-Custom-Attributes; the answer comes back with its Content-Type, custom attributes and
x-Amzn-Invoked-Production-Variant. Errors in the service's words (botocore's sagemaker-runtime model):
ValidationError (400) for an endpoint that does not exist or is not InService, or a variant it does not have;
ModelError (424) when the container answers 4xx/5xx ("Received client error (415) from primary with message
..."), does not answer, or times out (OriginalStatusCode, OriginalMessage and LogStreamArn as SageMaker fills
them). A bad request never gets a 5xx."""
from __future__ import annotations

import json
import uuid

from localsage.api.errors import ApiError
from localsage.api.hosting import hosting

INVOKE_TIMEOUT_S = 60  # SageMaker real-time endpoints: the container has 60 s to answer
FORWARDED = ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes")
RETURNED = ("Content-Type", "X-Amzn-SageMaker-Custom-Attributes")
MESSAGE_LIMIT = 2048


def model_error(api, log_group_stream: tuple[str, str], status: int, message: str) -> tuple:
    kind = "client" if 400 <= status < 500 else "server"
    group, stream = log_group_stream
    body = {
        "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL",
        "OriginalStatusCode": status,
        "OriginalMessage": message[:MESSAGE_LIMIT],
        "LogStreamArn": f"arn:aws:logs:{api.region}:{api.account}:log-group:{group}",
        "message": (f"Received {kind} error ({status}) from primary with message \"{message[:MESSAGE_LIMIT]}\". "
                    f"See the log group {group} (stream {stream}) in account {api.account} for more information."),
    }
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": "ModelError",
               "x-amzn-RequestId": str(uuid.uuid4())}
    return 424, headers, json.dumps(body).encode()


def post(pool, body: bytes, headers: dict):
    """POST /invocations; sent again once when the connection was dropped before any answer (a kept-alive
    connection the model server had closed), never after a timeout."""
    import urllib3

    for attempt in (1, 2):
        try:
            return pool.urlopen("POST", "/invocations", body=body, headers=headers, retries=False,
                                timeout=urllib3.Timeout(connect=5, read=INVOKE_TIMEOUT_S))
        except urllib3.exceptions.ProtocolError:
            if attempt == 2:
                raise


def invoke_endpoint(api, name: str, body: bytes, headers) -> tuple:
    import urllib3

    host = hosting(api)
    runner = host.serving(name)
    if runner is None:
        record = api.store.get("Endpoint", name)
        if record is None:
            raise ApiError("ValidationError", f"Endpoint {name} of account {api.account} not found.")
        raise ApiError("ValidationError", f"Endpoint {name} of account {api.account} is not in service: its status "
                                          f"is {record.get('EndpointStatus')}.")
    target = headers.get("X-Amzn-SageMaker-Target-Variant")
    if target and target != runner.variant_name:
        raise ApiError("ValidationError", f"The variant {target[:100]} does not exist for endpoint {name}.")
    if headers.get("X-Amzn-SageMaker-Target-Model"):
        raise ApiError("ValidationError", f"Endpoint {name} is not a multi-model endpoint (TargetModel given).")
    forward = {key: headers.get(key) for key in FORWARDED if headers.get(key)}
    try:
        with runner.request() as pool:
            answer = post(pool, body, forward)
    except urllib3.exceptions.TimeoutError:
        return model_error(api, runner.log_stream(), 0,
                           "Your invocation timed out while waiting for a response from container primary.")
    except urllib3.exceptions.HTTPError as exc:
        return model_error(api, runner.log_stream(), 0, f"the model server did not answer: {exc}")
    if answer.status >= 400:
        text = answer.data.decode("utf-8", "replace")
        return model_error(api, runner.log_stream(), answer.status, text)
    out = {key: answer.headers[key] for key in RETURNED if answer.headers.get(key)}
    out.setdefault("Content-Type", "application/octet-stream")
    out["x-Amzn-Invoked-Production-Variant"] = runner.variant_name
    out["x-amzn-RequestId"] = str(uuid.uuid4())
    return 200, out, answer.data


RUNTIME = invoke_endpoint
