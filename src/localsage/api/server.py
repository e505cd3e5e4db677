"""One WSGI app on one port: SageMaker's JSON 1.1 calls (`X-Amz-Target: SageMaker.<Op>`) and sagemaker-runtime's
`POST /endpoints/<name>/invocations` to localsage's operations, IAM `SimulatePrincipalPolicy` answered here,
everything else (S3, STS, IAM, CloudWatch Logs) to moto in this process, each S3 change mirrored to disk.

Every body is bounded before it is read, every refusal is an AWS error (JSON for SageMaker, XML for the query
and S3 protocols), and a bad request never gets a 5xx: only a fault of ours does (InternalFailure, logged)."""
from __future__ import annotations

import io
import ipaddress
import json
import logging
import re
import socket
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from localsage.api import aws, errors, operations, validate
from localsage.api.errors import ApiError
from localsage.api.s3_mirror import BUCKET_PATTERN
from localsage.api.sdk_config import write_sdk_config
from localsage.core.contract import NAME_PATTERN

LOG = logging.getLogger("localsage.api")
JSON_LIMIT = 1 << 20             # a SageMaker control-plane request (the largest real ones are tens of KB)
INVOKE_LIMIT = 6 << 20           # InvokeEndpoint's payload limit on SageMaker real-time endpoints
S3_LIMIT = 2 << 30               # one S3 PUT or part (buffered: moto holds bodies in memory; SDKs send 8 MB parts)
OTHER_LIMIT = 16 << 20           # STS, IAM, CloudWatch Logs requests (PutLogEvents' own limit is 1 MB)
JSON_TYPES = ("", "application/x-amz-json-1.1", "application/x-amz-json-1.0", "application/json")
INVOKE_PATH = re.compile(r"/endpoints/(.+)/invocations")  # any name: a bad one is refused by name
BLOCKED = ("/moto-api", "/latest/meta-data", "/latest/api")  # moto's reset/admin API, fake instance metadata
MUTATING = ("PUT", "POST", "DELETE")
HOP_HEADERS = ("content-length", "transfer-encoding", "connection", "keep-alive")  # ours to set, not a handler's
LOCAL_NAMES = ("localhost",)


class App:
    """The WSGI callable. `operations` and `runtime` default to what api/operations.py finds."""

    def __init__(self, api, ops: dict | None = None, runtime=None, moto=None):
        self.api = api
        self.ops = operations.operations() if ops is None else ops
        self.runtime = operations.runtime() if runtime is None else runtime
        self.moto = moto or aws.moto_app()

    def __call__(self, environ, start_response):
        try:
            result = self._dispatch(environ)
        except ApiError as err:
            result = _json_error(err)
        except Exception:
            LOG.error("internal error on %s %s:\n%s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                      traceback.format_exc())
            result = _json_error(errors.internal())
        if callable(result):  # moto's answer, passed through
            return result(start_response)
        status, headers, body = result
        headers = [(k, str(v)) for k, v in headers.items() if k.lower() not in HOP_HEADERS]
        start_response(_status_line(status), headers + [("Content-Length", str(len(body)))])
        return [body]

    # -- routing ----------------------------------------------------------------------------------------------
    def _dispatch(self, environ):
        path = _path(environ)
        method = environ.get("REQUEST_METHOD", "GET")
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        service = signing_service(environ)
        if path.startswith(BLOCKED):
            return _aws_error(environ, "AccessDenied", "This path is not served by localsage's API.", 403)
        if target.startswith("SageMaker."):
            return self._sagemaker(environ, method, target.partition(".")[2])
        invoke = INVOKE_PATH.fullmatch(path)
        if invoke and service in (None, "sagemaker"):
            return self._invoke(environ, method, invoke.group(1))
        if service == "sagemaker":
            raise errors.unknown_operation(f"{method} {path[:100]}")
        return self._aws(environ, method, service, path)

    def _sagemaker(self, environ, method: str, op: str):
        if method != "POST":
            raise ApiError("UnknownOperationException", f"SageMaker's API takes POST requests, not {method[:10]}")
        content_type = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        if content_type not in JSON_TYPES:
            raise errors.serialization(f"Content-Type {content_type[:80]!r}: send application/x-amz-json-1.1")
        request = _parse_json(read_body(environ, JSON_LIMIT))  # the body first: a bad one is refused as such
        fn = self.ops.get(op)
        if fn is None:
            raise errors.unknown_operation(op[:100])
        validate.check_request(op, request)
        result = fn(self.api, request)
        body = json.dumps({} if result is None else result, default=_json_default).encode()
        return 200, {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": str(uuid.uuid4())}, body

    def _invoke(self, environ, method: str, name: str):
        if method != "POST":
            raise ApiError("ValidationError", f"InvokeEndpoint takes POST requests, not {method[:10]}")
        if not NAME_PATTERN.fullmatch(name):
            raise ApiError("ValidationError", f"1 validation error detected: Value {name[:80]!r} at 'endpointName' "
                                              f"failed to satisfy constraint: Member must satisfy regular "
                                              f"expression pattern: {NAME_PATTERN.pattern}")
        body = read_body(environ, INVOKE_LIMIT, code="ValidationError")
        if self.runtime is None:
            raise ApiError("ValidationError", f"Endpoint {name} of account {self.api.account} not found.")
        from werkzeug.datastructures import EnvironHeaders

        status, headers, out = self.runtime(self.api, name, body, EnvironHeaders(environ))
        return int(status), dict(headers or {}), bytes(out or b"")

    def _aws(self, environ, method: str, service: str | None, path: str):
        is_s3 = service in (None, "s3")
        try:
            body = read_body(environ, S3_LIMIT if is_s3 else OTHER_LIMIT)
        except ApiError as err:
            return _aws_error(environ, "EntityTooLarge" if err.status == 413 else err.code, err.message, err.status)
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
        if service in (None, "iam") and environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            if form.get("Action") == "SimulatePrincipalPolicy":
                return aws.simulate_principal_policy(form, self.api.account)
        if service in (None, "sts") and environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            if dict(parse_qsl(body.decode("utf-8", "replace"))).get("Action") == "GetCallerIdentity":
                return aws.caller_identity(self.api.account)
        if is_s3 and method == "PUT":
            bucket, key = s3_target(environ, path)
            if bucket and not key and not BUCKET_PATTERN.fullmatch(bucket):  # moto would make it (and not S3)
                return _aws_error(environ, "InvalidBucketName", "The specified bucket is not valid.", 400)
        captured = {}

        def record_status(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None  # moto never writes through write(); its body is the iterable

        try:
            chunks = self.moto(environ, record_status)
        except Exception as exc:  # moto failing on what it cannot parse: the request's fault, not a server fault
            LOG.warning("moto could not handle %s %s:\n%s", method, path[:200], traceback.format_exc())
            return _aws_error(environ, "InvalidRequest", "The local AWS emulation (moto) cannot handle this "
                                                         f"request ({type(exc).__name__}).", 400)
        status = int(str(captured.get("status", "500")).split()[0])
        if is_s3 and method in MUTATING:
            self._mirror(environ, path, method, status)
        if status >= 400 and method != "HEAD":  # a HEAD answer has no body to be in any shape
            return self._moto_error(environ, method, path, status, captured["headers"], chunks)

        def respond(start_response):
            start_response(captured["status"], captured["headers"])
            return chunks

        return respond

    def _moto_error(self, environ, method: str, path: str, status: int, headers, chunks):
        """moto's error as it is when it is an AWS error; its bare 404s and 5xx as AWS 4xx errors."""
        body = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        content_type = dict((k.lower(), v) for k, v in headers).get("content-type", "")
        if status >= 500 or not body.strip() or content_type.startswith("text/html"):
            LOG.warning("moto answered %s to %s %s: %s", status, method, path[:200], body[:300])
            code = "NotFound" if status == 404 else "InvalidRequest"
            return _aws_error(environ, code, f"The local AWS emulation (moto) does not serve {method} "
                                             f"{path[:100]} this way (it answered {status}).",
                              status if status < 500 else 400)
        return status, dict(headers), body

    def _mirror(self, environ, path: str, method: str, status: int) -> None:
        """After an S3 change: mirror the key named by a path-style URL, else the whole bucket (or all)."""
        query = {k for k, _ in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)}
        if "uploads" in query or ("uploadId" in query and method != "POST"):
            return  # a multipart upload begun, a part, an abort: no object changes until CompleteMultipartUpload
        bucket, key = s3_target(environ, path)
        mirror = self.api.s3.mirror
        try:
            if bucket is None:
                mirror.sync_all()
            elif not key:
                mirror.sync_bucket(bucket)
            else:
                mirror.sync_key(bucket, key)
                if status < 300 and method != "DELETE" and not self.api.s3.exists(bucket, key):
                    mirror.sync_bucket(bucket)  # moto named the key differently: compare the whole bucket
        except Exception:  # the request itself succeeded: report, and the next sync catches up
            LOG.error("S3 mirror failed for %s %s:\n%s", method, path[:200], traceback.format_exc())


# -- request helpers --------------------------------------------------------------------------------------------
def signing_service(environ) -> str | None:
    """The service a SigV4 request was signed for (header or presigned query), lower-cased; None unsigned."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    match = re.search(r"Credential=([^,\s]+)", auth)
    credential = match.group(1) if match else dict(parse_qsl(environ.get("QUERY_STRING", ""))).get("X-Amz-Credential")
    parts = (credential or "").split("/")
    return parts[3].lower() if len(parts) >= 5 else None


def read_body(environ, limit: int, code: str = "ValidationException") -> bytes:
    """The request body, at most `limit` bytes (413 beyond), read whole (Content-Length or chunked)."""
    length = environ.get("CONTENT_LENGTH") or ""
    stream = environ.get("wsgi.input")
    if length:
        try:
            n = int(length)
        except ValueError:
            raise ApiError(code, "Content-Length is not a number.") from None
        if n < 0:
            raise ApiError(code, "Content-Length is negative.")
        if n > limit:
            raise errors.too_large(limit, code)
        return stream.read(n) if stream and n else b""
    if stream is None or not environ.get("wsgi.input_terminated"):
        return b""  # no length and not chunked: no body
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise errors.too_large(limit, code)
    return data


def s3_target(environ, path: str) -> tuple[str | None, str]:
    """(bucket, key) of a path-style S3 URL; (None, '') when the bucket is in the Host name (virtual host)."""
    host = (environ.get("HTTP_HOST") or "").rsplit(":", 1)[0].strip("[]").lower()
    if host and host not in LOCAL_NAMES and not _is_ip(host):
        return None, ""
    bucket, _, key = path.lstrip("/").partition("/")
    return (bucket or None), key


def _path(environ) -> str:
    raw = environ.get("PATH_INFO") or "/"
    try:  # WSGI hands the path as latin-1 text of the URL's UTF-8 bytes
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return raw


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _parse_json(body: bytes) -> dict:
    try:
        value = json.loads(body.decode("utf-8")) if body.strip() else {}
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise errors.serialization(f"The request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise errors.serialization("The request body must be a JSON object.")
    return value


def _json_default(value):
    if isinstance(value, datetime):  # JSON 1.1 timestamps are epoch seconds; a naive datetime is UTC
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _json_error(err: ApiError):
    return err.status, {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": err.code,
                        "x-amzn-RequestId": str(uuid.uuid4())}, err.json()


def _aws_error(environ, code: str, message: str, status: int):
    """An error in the protocol the request spoke: JSON for X-Amz-Target calls (Logs), XML for the rest."""
    if environ.get("HTTP_X_AMZ_TARGET"):
        return _json_error(ApiError(code, message, status))
    return _xml_error(code, message, status)


def _xml_error(code: str, message: str, status: int):
    """The query and S3 protocols' error; botocore's parsers of both read <ErrorResponse><Error>."""
    body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{escape(code)}</Code><Message>{escape(message)}"
            f"</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")
    return status, {"Content-Type": "text/xml"}, body.encode()


def _status_line(status: int) -> str:
    from werkzeug.http import HTTP_STATUS_CODES

    return f"{status} {HTTP_STATUS_CODES.get(status, 'Unknown')}"


# -- start ------------------------------------------------------------------------------------------------------
def prepare(api) -> dict:
    """What a start needs before the first request: S3 restored from disk, the role, the default bucket,
    the SDK defaults file. Returns a few facts for the start-up lines."""
    restored = api.s3.restore()
    validate.service_model()  # loaded now (0.2 s), not on the first request
    aws.ensure_role(api.account)
    api.s3.create_bucket(api.default_bucket)
    config = write_sdk_config(api.root, api.role_arn, api.default_bucket)
    operations.on_start(api)
    return {"objects_restored": restored, "sdk_config": config, "operations": sorted(operations.operations()),
            "modules": operations.loaded()}


def make_server(api, host: str = "127.0.0.1", port: int = 0, app=None):
    """A threaded werkzeug server bound to host:port (0: a free port), not yet serving. OSError if the port is
    taken (bound here, so werkzeug's own bind, which exits the process, never runs)."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server as werkzeug_server

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart right after a stop reuses the port
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    server = werkzeug_server(host, sock.getsockname()[1], app or App(api), threaded=True,
                             request_handler=MotoRequestHandler, fd=sock.fileno())
    sock.close()  # werkzeug made its own socket object from the descriptor (a dup)
    return server
