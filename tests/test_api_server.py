"""`localsage api`, the server itself (routing, moto, persistence, bounds), started as a user starts it: a
subprocess on a free loopback port with its own folder. Real clients talk to it: boto3 (S3 across a restart,
STS, IAM's SimulatePrincipalPolicy), the AWS CLI, SDK v2 and v3 sessions reading the defaults file it writes;
and a fuzz of bad requests (malformed JSON, unknown targets, oversized bodies, bad names, wrong types, random
bytes), every one answered with an AWS error and no 5xx."""
from __future__ import annotations

import http.client
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration

CLIENTS = ROOT / "tests" / "clients"
SDK3_BIN = Path(os.environ.get("LOCALSAGE_SDK3_PYTHON", ROOT / ".venv-sdk3" / "bin" / "python")).parent
BUCKET = "sagemaker-us-east-1-123456789012"
ROLE = "arn:aws:iam::123456789012:role/localsage"
SM_JSON = "application/x-amz-json-1.1"


class ApiServer:
    """`localsage api --port 0` in a subprocess; `url` and `env` (the exported lines) once it prints them."""

    def __init__(self, root: Path, *extra: str, port: int = 0):
        self.root = Path(root)
        self.stderr_path = self.root.parent / f"{self.root.name}-stderr.log"
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "localsage", "api", "--port", str(port), "--root",
                                      str(root), "--backend", "process", *extra],
                                     stdout=subprocess.PIPE, stderr=self.stderr)
        self.lines = self._read_lines(2, timeout=60)
        self.exports = dict(pair.split("=", 1) for line in self.lines for pair in line.split()[1:])
        self.url = self.exports.get("AWS_ENDPOINT_URL", "")

    def _read_lines(self, n: int, timeout: float) -> list[str]:
        lines, buf, deadline = [], b"", time.monotonic() + timeout
        while len(lines) < n and time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                *done, buf = buf.split(b"\n")
                lines += [d.decode() for d in done]
        assert len(lines) >= n, f"the server printed {lines!r}; stderr:\n{self.log()}"
        return lines[:n]

    def log(self) -> str:
        if not self.stderr.closed:
            self.stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
        env.update(self.exports, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                   HOME=str(self.root.parent), SAGEMAKER_SUPPRESS_V2_WARNING="1")
        return env

    def client(self, service: str):
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(aws_access_key_id="local", aws_secret_access_key="local",
                                        region_name="us-east-1")
        return session.client(service, endpoint_url=self.url, config=Config(retries={"max_attempts": 1}))

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc.stdout.close()
            self.stderr.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ApiServer(tmp_path_factory.mktemp("api") / "root")
    yield srv
    assert srv.stop() == 0, srv.log()


def raw(url: str, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """One HTTP request as given (no client-side checks): (status, headers, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def sagemaker(url: str, op: str, body, content_type: str = SM_JSON):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw(url, "POST", "/", data, {"X-Amz-Target": f"SageMaker.{op}", "Content-Type": content_type})


def assert_aws_error(status: int, body: bytes, where: str) -> str:
    """A 4xx in AWS's shape: JSON {"__type", "message"} or XML <Error><Code>; returns the code."""
    assert 400 <= status < 500, f"{where}: status {status}: {body[:300]!r}"
    text = body.decode("utf-8", "replace")
    if text.lstrip().startswith("{"):
        doc = json.loads(text)
        assert doc.get("__type") and ("message" in doc or "Message" in doc), f"{where}: {text[:300]}"
        return doc["__type"]
    assert "<Code>" in text and "<Message>" in text, f"{where}: {text[:300]}"
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0]


# -- start, exports, the SDKs' defaults file -----------------------------------------------------------------------
def test_exports_are_the_lines_to_paste(server):
    url_line, config_line = server.lines
    assert url_line == (f"export AWS_ENDPOINT_URL={server.url} AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local "
                        "AWS_DEFAULT_REGION=us-east-1")
    assert server.url.startswith("http://127.0.0.1:")
    config = server.root.resolve() / "sagemaker-config.yaml"
    assert config_line == f"export SAGEMAKER_USER_CONFIG_OVERRIDE={config}"
    assert config.is_file()


@pytest.mark.parametrize("sdk", ["v2", "v3"])
def test_both_sdks_read_the_defaults_file(server, sdk):
    python = sys.executable if sdk == "v2" else str(SDK3_BIN / "python")
    assert Path(python).exists(), f"no SDK v3 client venv at {SDK3_BIN} (make install creates it)"
    proc = subprocess.run([python, str(CLIENTS / "api_sdk_defaults.py")], env=server.env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["sdk"].startswith("2." if sdk == "v2" else "3."), got
    assert got["bucket"] == BUCKET and got["training_role"] == ROLE and got["model_role"] == ROLE, got


# -- moto behind the one port ---------------------------------------------------------------------------------------
def test_sts_and_iam(server):
    identity = server.client("sts").get_caller_identity()
    assert identity["Account"] == "123456789012"
    assert identity["Arn"] == "arn:aws:sts::123456789012:assumed-role/localsage/local"  # the jobs' role, as a session
    iam = server.client("iam")
    trust = iam.get_role(RoleName="localsage")["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    results = iam.simulate_principal_policy(PolicySourceArn=ROLE, ActionNames=["s3:PutObject", "s3:GetObject"],
                                            ResourceArns=[f"arn:aws:s3:::{BUCKET}/*"])["EvaluationResults"]
    assert [(r["EvalActionName"], r["EvalDecision"]) for r in results] == [("s3:PutObject", "allowed"),
                                                                            ("s3:GetObject", "allowed")]
    pages = iam.get_paginator("simulate_principal_policy").paginate(PolicySourceArn=ROLE, ActionNames=["s3:*"])
    assert [r["EvalDecision"] for page in pages for r in page["EvaluationResults"]] == ["allowed"]  # v3's path
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.simulate_principal_policy(PolicySourceArn="arn:aws:iam::123456789012:role/nobody", ActionNames=["s3:*"])
    logs = server.client("logs")  # CloudWatch Logs answers (v2's logs=True polls it)
    assert "logGroups" in logs.describe_log_groups()


def test_s3_objects_survive_a_restart(tmp_path):
    root = tmp_path / "root"
    first = ApiServer(root)
    try:
        s3 = first.client("s3")
        s3.put_object(Bucket=BUCKET, Key="data/train/cat/1.jpg", Body=b"\xff\xd8jpeg", ContentType="image/jpeg")
        s3.put_object(Bucket=BUCKET, Key="gone.txt", Body=b"x")
        s3.delete_object(Bucket=BUCKET, Key="gone.txt")
        s3.create_bucket(Bucket="my-data")
        big = random.Random(0).randbytes(9 << 20)  # over the transfer threshold: a multipart upload
        (tmp_path / "big.bin").write_bytes(big)
        s3.upload_file(str(tmp_path / "big.bin"), "my-data", "nested/key with spaces/ü.bin")
        before = {k: s3.head_object(Bucket=b, Key=k)["ETag"] for b, k in
                  [(BUCKET, "data/train/cat/1.jpg"), ("my-data", "nested/key with spaces/ü.bin")]}
    finally:
        assert first.stop() == 0, first.log()
    second = ApiServer(root)
    try:
        s3 = second.client("s3")
        obj = s3.get_object(Bucket=BUCKET, Key="data/train/cat/1.jpg")
        assert obj["Body"].read() == b"\xff\xd8jpeg" and obj["ContentType"] == "image/jpeg"
        assert s3.get_object(Bucket="my-data", Key="nested/key with spaces/ü.bin")["Body"].read() == big
        after = {k: s3.head_object(Bucket=b, Key=k)["ETag"] for b, k in
                 [(BUCKET, "data/train/cat/1.jpg"), ("my-data", "nested/key with spaces/ü.bin")]}
        assert after == before  # the multipart ETag ("...-2") too
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        assert "gone.txt" not in keys and "data/train/cat/1.jpg" in keys
        s3.delete_object(Bucket="my-data", Key="nested/key with spaces/ü.bin")
        s3.delete_bucket(Bucket="my-data")
    finally:
        assert second.stop(signal.SIGINT) == 0, second.log()
    assert not (root / "s3" / "my-data").exists()  # a deleted bucket leaves nothing to restore
    assert "2 S3 objects restored" in second.log() and second.log().rstrip().endswith("localsage api: stopped")


def test_a_taken_port_is_a_clear_error(server, tmp_path):
    port = urlsplit(server.url).port
    proc = subprocess.run([sys.executable, "-m", "localsage", "api", "--port", str(port), "--root",
                           str(tmp_path / "other")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and proc.stdout == ""


def test_the_aws_cli(server, tmp_path):
    aws = SDK3_BIN / "aws"
    assert aws.exists(), f"no AWS CLI at {aws} (make install puts it in the SDK v3 client venv)"
    (tmp_path / "hello.txt").write_text("hello")

    def cli(*args):
        proc = subprocess.run([str(aws), *args, "--output", "json"], env=server.env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    assert json.loads(cli("sts", "get-caller-identity"))["Account"] == "123456789012"
    cli("s3", "cp", str(tmp_path / "hello.txt"), f"s3://{BUCKET}/cli/hello.txt")
    assert "hello.txt" in cli("s3", "ls", f"s3://{BUCKET}/cli/")
    assert "TrainingJobSummaries" in json.loads(cli("sagemaker", "list-training-jobs"))


# -- bad requests: always an AWS error, never a 5xx -----------------------------------------------------------------
NAME_VALUES = ["../x", "../../etc/passwd", "a" * 1000, "", "bad name", "\x00", "ü" * 10, "a/b", "-x"]
WRONG_TYPES = [123, [], {"a": {}}, True, None, 1.5]


def test_fuzz_the_control_plane(server):
    url, seen = server.url, {}
    cases = [
        ("malformed json", "ListTrainingJobs", b"{"), ("a list", "ListTrainingJobs", b"[]"),
        ("a string", "DescribeTrainingJob", b'"x"'), ("null", "DescribeTrainingJob", b"null"),
        ("invalid utf-8", "DescribeTrainingJob", b'{"TrainingJobName": "\xff\xfe"}'),
        ("deep nesting", "CreateTrainingJob", b"[" * 100_000 + b"]" * 100_000),
        ("unknown target", "NoSuchOperation", b"{}"), ("empty target", "", b"{}"),
        ("long target", "X" * 1000, b"{}"), ("dotted target", "Describe.TrainingJob", b"{}"),
        ("oversized", "CreateTrainingJob", b'{"TrainingJobName": "' + b"a" * (2 << 20) + b'"}'),
    ] + [(f"random bytes {i}", "CreateTrainingJob", random.Random(i).randbytes(512)) for i in range(5)]
    for where, op, body in cases:
        status, _, out = sagemaker(url, op, body)
        seen[where] = assert_aws_error(status, out, where)
    assert seen["malformed json"] == "SerializationException" and seen["unknown target"] == \
        "UnknownOperationException"
    assert seen["oversized"] and sagemaker(url, "CreateTrainingJob", b"{" + b" " * (2 << 20) + b"}")[0] == 413
    for content_type in ("text/plain", "multipart/form-data; boundary=x", "application/xml"):
        status, _, out = sagemaker(url, "ListTrainingJobs", b"{}", content_type)
        assert assert_aws_error(status, out, content_type) == "SerializationException"
    status, _, out = raw(url, "GET", "/", headers={"X-Amz-Target": "SageMaker.ListTrainingJobs"})
    assert_aws_error(status, out, "GET with a SageMaker target")
    status, _, out = raw(url, "POST", "/", b"{}", {"X-Amz-Target": "SageMaker.ListTrainingJobs",
                                                   "Content-Type": SM_JSON, "Content-Length": "abc"})
    assert status < 500


def test_fuzz_every_served_operation(server):
    """Each SageMaker operation of the service model: unserved ones say UnknownOperationException; served ones
    get bad names, wrong types and random bytes in every top-level member, and answer 4xx (or 200 for a filter
    that matches nothing), never 5xx. Values that break the model never reach the operation."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    served = []
    for op in model.operation_names:
        status, _, out = sagemaker(server.url, op, b"{}")
        assert status < 500, f"{op} {{}}: {status} {out[:300]!r}"
        if status >= 400 and assert_aws_error(status, out, op) == "UnknownOperationException":
            continue
        served.append(op)
    for op in served:
        shape = model.operation_model(op).input_shape
        for member in (shape.members if shape else {}):
            for value in NAME_VALUES + WRONG_TYPES:
                status, _, out = sagemaker(server.url, op, {member: value})
                assert status < 500, f"{op} {member}={value!r:.40}: {status} {out[:300]!r}"
                if status >= 400:
                    assert_aws_error(status, out, f"{op} {member}")
        status, _, out = sagemaker(server.url, op, random.Random(op).randbytes(256))
        assert_aws_error(status, out, f"{op} random bytes")


def test_fuzz_invocations_and_the_aws_services(server):
    url = server.url
    for name in ["..%2Fx", "..%2F..%2Fetc", "a" * 1000, "bad%20name", "%00", "no-such-endpoint"]:
        status, _, out = raw(url, "POST", f"/endpoints/{name}/invocations", b"\xff\xd8",
                             {"Content-Type": "image/jpeg"})
        assert_aws_error(status, out, f"invoke {name[:20]}")
    status, _, out = raw(url, "POST", "/endpoints/x/invocations", b"0" * (7 << 20), {"Content-Type": "image/jpeg"})
    assert status == 413 and assert_aws_error(status, out, "oversized invoke")
    status, _, out = raw(url, "GET", "/endpoints/x/invocations")
    assert_aws_error(status, out, "GET invoke")
    for path in ("/moto-api/reset", "/moto-api/", "/latest/meta-data/iam/security-credentials/"):
        status, _, out = raw(url, "POST", path)
        assert status == 403 and assert_aws_error(status, out, path) == "AccessDenied"
    assert server.client("s3").head_bucket(Bucket=BUCKET)  # nothing was reset
    for i in range(5):  # random bytes, unsigned, to moto's default service (S3)
        status, _, out = raw(url, "POST", "/", random.Random(i).randbytes(300))
        assert status < 500, out[:300]
    form = "application/x-www-form-urlencoded"
    for service, body, extra in [("iam", b"Action=SimulateCustomPolicy&Version=2010-05-08", {}),
                                 ("iam", b"garbage%%%", {}), ("sts", b"Action=Nope", {}), ("sts", b"", {}),
                                 ("logs", b"{", {"X-Amz-Target": "Logs_20140328.Nope"}),
                                 ("logs", b'{"logGroupName": 5}', {"X-Amz-Target": "Logs_20140328.PutLogEvents"})]:
        auth = f"AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, " \
               "Signature=x"
        headers = {"Authorization": auth, "Content-Type": SM_JSON if extra else form, **extra}
        status, _, out = raw(url, "POST", "/", body, headers)
        assert_aws_error(status, out, f"{service} {body[:20]!r}")
    status, _, out = raw(url, "PUT", f"/{BUCKET}/huge", b"", {"Content-Length": str(3 << 30)})  # claimed only
    assert status == 413 and assert_aws_error(status, out, "oversized S3 PUT") == "EntityTooLarge"
    for method, path, body in [("PUT", "/Not_A_Bucket", b""), ("PUT", f"/{BUCKET}?versioning", b"garbage"),
                               ("POST", f"/{BUCKET}?delete", b"<x"), ("POST", f"/{BUCKET}/key", b"x")]:
        status, _, out = raw(url, method, path, body)
        assert_aws_error(status, out, f"{method} {path}")


def test_s3_keys_never_become_paths(server):
    """Keys with '..' parts are stored in moto as given; on disk only their hash names a file."""
    s3 = server.client("s3")
    status, _, _ = raw(server.url, "PUT", f"/{BUCKET}/..%2F..%2F..%2Fescape-raw.txt", b"raw")
    assert status == 200
    s3.put_object(Bucket=BUCKET, Key="../../../escape-boto.txt", Body=b"boto")
    s3.put_object(Bucket=BUCKET, Key="/abs/escape-abs.txt", Body=b"abs")
    files = [p.name for p in server.root.parent.rglob("*escape*")]
    assert files == [], files  # no file is named after a key, inside the folder or outside it
    for path in (server.root / "s3").rglob("*"):
        assert path.resolve().is_relative_to((server.root / "s3").resolve())
    assert s3.get_object(Bucket=BUCKET, Key="/abs/escape-abs.txt")["Body"].read() == b"abs"


def test_in_process_pieces(tmp_path):
    """Api's own helpers in a fresh interpreter (moto's state is per process): S3 downloads refuse keys that
    would leave the folder, the store refuses bad names, the validator names the field, CloudWatch Logs lines
    read back as v2's logs=True reads them, shutdown runs the callbacks last-registered first (past a failing
    one) and ends the background threads."""
    probe = r"""
import sys, json
from pathlib import Path
from localsage.api.context import Api
from localsage.api.errors import ApiError
from localsage.api import validate
api = Api(sys.argv[1], backend="process", image="x")
api.s3.put("b-1", "data/train/a/1.jpg", b"1"); api.s3.put("b-1", "data/train/b/2.jpg", b"2")
out = {"tree": sorted(str(p.relative_to(api.root / "dl")) for p in api.s3.download("s3://b-1/data/train",
                                                                                  api.root / "dl").rglob("*.jpg"))}
out["one"] = api.s3.download("s3://b-1/data/train/a/1.jpg", api.root / "one").name
api.s3.put("b-1", "evil/../../x.jpg", b"x")
try:
    api.s3.download("s3://b-1/evil/", api.root / "evil"); out["evil"] = "downloaded"
except ValueError as exc:
    out["evil"] = str(exc)
out["evil_files"] = [str(p) for p in api.root.rglob("x.jpg")]
for name in ("../x", "a" * 64, "a_b", ""):
    try:
        api.store.put("Model", name, {}); out[name[:5]] = "stored"
    except ApiError as exc:
        out[name[:5]] = exc.code
api.store.put("Model", "m-1", {"ModelName": "m-1"}); api.store.update("Model", "m-1", Status="x")
out["record"] = api.store.get("Model", "m-1"); out["models"] = len(api.store.list("Model"))
try:
    validate.check_request("CreateTrainingJob", {"TrainingJobName": "../x", "RoleArn": 5})
except ApiError as exc:
    out["validation"] = exc.message
out["arn"] = api.arn("training-job", "My-Job")
import threading, boto3
from localsage.api import server
httpd = server.make_server(api, "127.0.0.1", 0); server.prepare(api)
threading.Thread(target=httpd.serve_forever, daemon=True).start()
api.logs.put("/aws/sagemaker/TrainingJobs", "job-1/algo-1-1700000000", ["epoch 1", "", "epoch 2"])
logs = boto3.client("logs", endpoint_url=f"http://127.0.0.1:{httpd.server_address[1]}", region_name="us-east-1",
                    aws_access_key_id="local", aws_secret_access_key="local")
streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix="job-1")
out["streams"] = [s["logStreamName"] for s in streams["logStreams"]]
out["events"] = [e["message"] for e in logs.get_log_events(logGroupName="/aws/sagemaker/TrainingJobs",
                 logStreamName=out["streams"][0], startFromHead=True)["events"]]
httpd.shutdown()
order = []
api.on_shutdown(lambda: order.append("first registered")); api.on_shutdown(lambda: order.append("last registered"))
api.on_shutdown(lambda: 1 / 0)  # a failing callback is logged; the others still run
worker = api.spawn("waits", lambda: api.stopping.wait(30))
api.shutdown(); api.shutdown()
out["order"], out["worker_alive"] = order, worker.is_alive()
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "root")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tree"] == ["a/1.jpg", "b/2.jpg"] and out["one"] == "1.jpg"
    assert "refused" in out["evil"] and out["evil_files"] == []
    assert out["../x"] == out["aaaaa"] == out["a_b"] == out[""] == "ValidationException"
    assert out["record"] == {"ModelName": "m-1", "Status": "x"} and out["models"] == 1
    assert "'TrainingJobName'" in out["validation"] and "'RoleArn'" in out["validation"]
    assert "'OutputDataConfig'" in out["validation"]  # required, missing
    assert out["arn"] == "arn:aws:sagemaker:us-east-1:123456789012:training-job/my-job"
    assert out["streams"] == ["job-1/algo-1-1700000000"] and out["events"] == ["epoch 1", " ", "epoch 2"]
    assert out["order"] == ["last registered", "first registered"] and out["worker_alive"] is False


def test_loopback_and_exports_helpers():
    from localsage.cli.api import endpoint_url, export_lines, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert endpoint_url("0.0.0.0", 80) == "http://127.0.0.1:80" and endpoint_url("::1", 80) == "http://[::1]:80"
    assert export_lines("http://h:1", "/r/sagemaker-config.yaml")[1] == \
        "export SAGEMAKER_USER_CONFIG_OVERRIDE=/r/sagemaker-config.yaml"
