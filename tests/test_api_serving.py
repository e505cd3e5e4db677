"""`localsage api` serving: endpoints (each its own `serve` container on a free loopback port, or the local
TorchServe with --backend process), sagemaker-runtime InvokeEndpoint and batch transform, driven by real clients
with only the lines the server prints: SDK v3 ModelBuilder (SAGEMAKER_ENDPOINT) deploy + invoke, SDK v2
PyTorchModel.deploy + predict on two endpoints at once, v2 Transformer.transform over a folder of JPEGs; boto3 for
the errors (in the service's words), updates, failures with their reason, and the server's lifetimes: SIGKILL
leaves no container or TorchServe behind, and a restarted server brings its endpoints back.

The model is one tiny job (32 px, 1 epoch, 2 steps, weights=none) trained once through the runner."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY_HP
from test_api_server import ApiServer

CLIENTS = ROOT / "tests" / "clients"
EXAMPLE = ROOT / "examples" / "dog-breeds"
SDK3_PYTHON = Path(os.environ.get("LOCALSAGE_SDK3_PYTHON", ROOT / ".venv-sdk3" / "bin" / "python"))
BUCKET = "sagemaker-us-east-1-123456789012"
ROLE = "arn:aws:iam::123456789012:role/localsage"
CLIENT_TIMEOUT = 420
HEAVY = [pytest.mark.integration, pytest.mark.docker]


# ------------------------------------------------------------------ fixtures and helpers

@pytest.fixture(scope="module")
def tiny_model(small_data, tmp_path_factory):
    """(model.tar.gz, classes, a test JPEG) of one tiny built-in job."""
    from localsage.host import runner

    jobs = tmp_path_factory.mktemp("serving-jobs")
    record = runner.train(small_data, TINY_HP, name="api-serving-tiny", jobs_dir=jobs, echo=False)
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    classes = {p.name.split(".", 1)[-1] for p in (small_data / "train").iterdir()}
    jpeg = sorted((small_data / "test").glob("*/*.jpg"))[0]
    return jobs / "api-serving-tiny" / "model.tar.gz", classes, jpeg


def containers_of(engine, root: Path) -> list:
    return engine.containers.list(all=True, filters={"label": f"localsage.api.root={Path(root).resolve()}"})


@pytest.fixture(scope="module")
def server(engine, image, tmp_path_factory, tiny_model):
    srv = ApiServer(tmp_path_factory.mktemp("api-serving") / "root", "--backend", "docker", "--image", image)
    srv.image = image
    srv.client("s3").upload_file(str(tiny_model[0]), BUCKET, "models/tiny/model.tar.gz")
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]
    assert not containers_of(engine, srv.root), "SIGTERM left serving containers"


def run_client(server, python, script, *args, timeout=CLIENT_TIMEOUT) -> dict:
    proc = subprocess.run([str(python), str(CLIENTS / script), *map(str, args)], env=server.env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=server.root.parent)
    assert proc.returncode == 0, proc.stdout[-6000:] + "\n--- server ---\n" + server.log()[-3000:]
    last = [line for line in proc.stdout.splitlines() if line.lstrip("!.-").startswith("{")][-1]
    return json.loads(last.lstrip("!.-"))  # v2's waits print progress marks with no newline


def deploy(server, name: str, model_url: str = f"s3://{BUCKET}/models/tiny/model.tar.gz", image=None, env=None,
           wait=True) -> dict:
    sm = server.client("sagemaker")
    container = {"Image": image or server.image, "ModelDataUrl": model_url, "Environment": env or {}}
    sm.create_model(ModelName=name, PrimaryContainer=container, ExecutionRoleArn=ROLE)
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": name, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    return wait_endpoint(server, name) if wait else {}


def wait_endpoint(server, name: str, timeout: float = 180) -> dict:
    sm, deadline = server.client("sagemaker"), time.monotonic() + timeout
    while time.monotonic() < deadline:
        desc = sm.describe_endpoint(EndpointName=name)
        if desc["EndpointStatus"] not in ("Creating", "Updating"):
            return desc
        time.sleep(0.5)
    raise AssertionError(f"endpoint {name} still {desc['EndpointStatus']} after {timeout} s:\n{server.log()[-3000:]}")


def invoke(server, name: str, body: bytes, content_type="image/jpeg", **kwargs) -> dict:
    answer = server.client("sagemaker-runtime").invoke_endpoint(EndpointName=name, Body=body,
                                                                ContentType=content_type, **kwargs)
    return {**answer, "Body": json.loads(answer["Body"].read())}


def error_of(call, *args, **kwargs):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    return caught.value.response


def tar_of(files: dict) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# ------------------------------------------------------------------ real SDK clients

@pytest.mark.integration
@pytest.mark.docker
@pytest.mark.api_full
def test_sdk_v3_model_builder_deploys_an_s3_model_and_invokes_it(server, engine, tiny_model):
    assert SDK3_PYTHON.exists(), f"no SDK v3 client venv at {SDK3_PYTHON} (make install creates it)"
    tar, classes, jpeg = tiny_model
    out = run_client(server, SDK3_PYTHON, "api_v3_model_builder.py", "--image", server.image, "--model-tar",
                     tar, "--jpeg", jpeg, "--name", "v3-builder")  # no role: the caller's identity is the local one
    predictions = out["body"]["predictions"]
    assert predictions[0]["label"] in classes and abs(sum(p["probability"] for p in predictions) - 1) < 0.02
    assert error_of(server.client("sagemaker").describe_endpoint, EndpointName="v3-builder")["Error"]["Code"] == \
        "ValidationException"  # endpoint.delete() removed it, and its container
    assert not [c for c in containers_of(engine, server.root) if "v3-builder" in c.name]


@pytest.mark.integration
@pytest.mark.docker
def test_sdk_v2_deploys_two_endpoints_that_answer_at_once(server, tiny_model):
    """PyTorchModel.deploy twice (the built-in model as it is, and with examples/dog-breeds/inference.py, which
    the SDK repacks into the model), then predict on both from 6 threads at once."""
    tar, classes, jpeg = tiny_model
    out = run_client(server, sys.executable, "api_v2_deploy.py", "--image", server.image, "--model-tar", tar,
                     "--jpeg", jpeg, "--name", "v2-two", "--endpoint", "-", "--endpoint", EXAMPLE / "inference.py")
    assert sorted(out["endpoints"]) == ["v2-two-0", "v2-two-1"]
    for answers in out["endpoints"].values():
        assert len(answers) == 3 and all(a["predictions"][0]["label"] in classes for a in answers)
    sm = server.client("sagemaker")
    assert sm.list_endpoints(NameContains="v2-two")["Endpoints"] == []
    assert sm.list_models(NameContains="v2-two")["Models"] == []


@pytest.mark.integration
@pytest.mark.docker
@pytest.mark.api_full
def test_sdk_v2_transformer_writes_an_out_object_per_jpeg(server, tiny_model, small_data, tmp_path):
    tar, classes, _ = tiny_model
    images = tmp_path / "images"
    shutil.copytree(small_data / "test", images)
    out = run_client(server, sys.executable, "api_v2_transform.py", "--image", server.image, "--model-tar",
                     tar, "--images", images, "--name", "v2-transform")
    assert out["status"] == "Completed"
    expected = {k.replace("/input/", "/output/", 1) + ".out" for k in out["inputs"]}
    assert len(expected) >= 2 and set(out["outputs"]) == expected
    assert all(answer["predictions"][0]["label"] in classes for answer in out["outputs"].values())


# ------------------------------------------------------------------ boto3: the service's answers

@pytest.mark.integration
@pytest.mark.docker
def test_invoke_passes_headers_and_answers_errors_as_sagemaker_runtime(server, tiny_model):
    _, classes, jpeg = tiny_model
    desc = deploy(server, "errors-ep")
    assert desc["EndpointStatus"] == "InService", desc.get("FailureReason")
    assert desc["ProductionVariants"][0]["VariantName"] == "AllTraffic"
    answer = invoke(server, "errors-ep", jpeg.read_bytes(), Accept="application/json", CustomAttributes="topk=1")
    assert answer["ContentType"] == "application/json" and answer["InvokedProductionVariant"] == "AllTraffic"
    assert answer["Body"]["predictions"][0]["label"] in classes
    runtime = server.client("sagemaker-runtime")
    missing = error_of(runtime.invoke_endpoint, EndpointName="no-such-endpoint", Body=b"x", ContentType="image/jpeg")
    assert missing["Error"]["Code"] == "ValidationError" and missing["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "Endpoint no-such-endpoint of account 123456789012 not found." == missing["Error"]["Message"]
    refused = error_of(runtime.invoke_endpoint, EndpointName="errors-ep", Body=b"hello", ContentType="text/plain")
    assert refused["Error"]["Code"] == "ModelError" and refused["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert refused["OriginalStatusCode"] == 415 and "Received client error (415) from primary" in \
        refused["Error"]["Message"]
    wrong_variant = error_of(runtime.invoke_endpoint, EndpointName="errors-ep", Body=b"x", TargetVariant="Other")
    assert wrong_variant["Error"]["Code"] == "ValidationError"
    logs = server.client("logs").filter_log_events(logGroupName="/aws/sagemaker/Endpoints/errors-ep",
                                                   logStreamNamePrefix="AllTraffic/")
    assert any("serve: model /opt/ml/model" in e["message"] for e in logs["events"])


@pytest.mark.integration
@pytest.mark.docker
def test_bad_models_and_configs_are_refused_or_fail_with_the_reason(server):
    sm, s3 = server.client("sagemaker"), server.client("s3")
    url = f"s3://{BUCKET}/models/tiny/model.tar.gz"
    no_image = error_of(sm.create_model, ModelName="no-image", ExecutionRoleArn=ROLE,
                        PrimaryContainer={"Image": "no-such-image:never", "ModelDataUrl": url})
    assert no_image["Error"]["Code"] == "ValidationException"
    assert "PrimaryContainer.Image" in no_image["Error"]["Message"] and "never pulls" in no_image["Error"]["Message"]
    ecr = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{server.image}"  # as `make push` names the image
    sm.create_model(ModelName="from-ecr", PrimaryContainer={"Image": ecr, "ModelDataUrl": url})  # the local tag
    sm.create_model(ModelName="twice", PrimaryContainer={"Image": server.image, "ModelDataUrl": url})
    again = error_of(sm.create_model, ModelName="twice", PrimaryContainer={"Image": server.image})
    assert "Cannot create already existing model" in again["Error"]["Message"]
    variants = [{"VariantName": v, "ModelName": "twice", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
                for v in ("a", "b")]
    two = error_of(sm.create_endpoint_config, EndpointConfigName="two-variants", ProductionVariants=variants)
    assert "one production variant" in two["Error"]["Message"]
    assert "Could not find endpoint" in error_of(sm.describe_endpoint, EndpointName="nope")["Error"]["Message"]
    assert "Could not find model" in error_of(sm.describe_model, ModelName="nope")["Error"]["Message"]

    missing = deploy(server, "missing-data", model_url=f"s3://{BUCKET}/models/none/model.tar.gz")
    assert missing["EndpointStatus"] == "Failed" and "no model data at" in missing["FailureReason"]
    s3.put_object(Bucket=BUCKET, Key="models/empty/model.tar.gz", Body=tar_of({"README": b"not a model"}))
    empty = deploy(server, "not-a-model", model_url=f"s3://{BUCKET}/models/empty/model.tar.gz")
    assert empty["EndpointStatus"] == "Failed" and "is not a TorchServe model directory" in empty["FailureReason"]
    s3.put_object(Bucket=BUCKET, Key="models/evil/model.tar.gz", Body=tar_of({"../../escape.txt": b"x"}))
    evil = deploy(server, "evil-tar", model_url=f"s3://{BUCKET}/models/evil/model.tar.gz")
    assert evil["EndpointStatus"] == "Failed" and "not a readable tar.gz" in evil["FailureReason"]
    assert not list(server.root.parent.rglob("escape.txt"))
    assert [e["EndpointName"] for e in sm.list_endpoints(StatusEquals="Failed", SortBy="Name",
                                                         SortOrder="Ascending")["Endpoints"]] == \
        ["evil-tar", "missing-data", "not-a-model"]
    for name in ("missing-data", "not-a-model", "evil-tar"):
        sm.delete_endpoint(EndpointName=name)


@pytest.mark.integration
@pytest.mark.docker
def test_update_endpoint_switches_config_without_a_gap(server, engine, tiny_model):
    _, classes, jpeg = tiny_model
    sm = server.client("sagemaker")
    deploy(server, "blue-green")
    [before] = [c.name for c in containers_of(engine, server.root) if "blue-green" in c.name]
    sm.create_endpoint_config(EndpointConfigName="blue-green-2", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "blue-green", "InstanceType": "ml.c5.xlarge",
         "InitialInstanceCount": 1}])
    sm.update_endpoint(EndpointName="blue-green", EndpointConfigName="blue-green-2")
    assert sm.describe_endpoint(EndpointName="blue-green")["EndpointStatus"] == "Updating"
    assert invoke(server, "blue-green", jpeg.read_bytes())["Body"]["predictions"]  # the old one still serves
    desc = wait_endpoint(server, "blue-green")
    assert desc["EndpointStatus"] == "InService" and desc["EndpointConfigName"] == "blue-green-2"
    assert invoke(server, "blue-green", jpeg.read_bytes())["Body"]["predictions"][0]["label"] in classes
    time.sleep(1)
    after = [c.name for c in containers_of(engine, server.root) if "blue-green" in c.name]
    assert len(after) == 1 and after != [before]
    sm.delete_endpoint(EndpointName="blue-green")
    assert not [c for c in containers_of(engine, server.root) if "blue-green" in c.name]


@pytest.mark.integration
@pytest.mark.docker
def test_transform_splits_lines_and_fails_with_the_models_message(server, tiny_model):
    import base64

    _, classes, jpeg = tiny_model
    sm, s3 = server.client("sagemaker"), server.client("s3")
    line = json.dumps({"image": base64.b64encode(jpeg.read_bytes()).decode()}).encode() + b"\n"
    s3.put_object(Bucket=BUCKET, Key="lines/in/batch.jsonl", Body=line * 3)
    s3.put_object(Bucket=BUCKET, Key="lines/bad/x.txt", Body=b"not an image")
    sm.create_model(ModelName="lines-model", ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": server.image, "ModelDataUrl": f"s3://{BUCKET}/models/tiny/model.tar.gz"})
    common = {"ModelName": "lines-model", "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1}}
    sm.create_transform_job(TransformJobName="lines", BatchStrategy="SingleRecord", **common, TransformInput={
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/lines/in/"}},
        "ContentType": "application/json", "SplitType": "Line"},
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/lines/out", "AssembleWith": "Line"})
    sm.create_transform_job(TransformJobName="bad-input", **common, TransformInput={
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/lines/bad"}},
        "ContentType": "text/plain"}, TransformOutput={"S3OutputPath": f"s3://{BUCKET}/lines/bad-out"})
    refused = error_of(sm.create_transform_job, TransformJobName="recordio", **common, TransformInput={
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/lines/in/"}},
        "SplitType": "RecordIO"}, TransformOutput={"S3OutputPath": f"s3://{BUCKET}/x"})
    assert "TransformInput.SplitType" in refused["Error"]["Message"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        jobs = {n: sm.describe_transform_job(TransformJobName=n) for n in ("lines", "bad-input")}
        if all(j["TransformJobStatus"] not in ("InProgress", "Stopping") for j in jobs.values()):
            break
        time.sleep(1)
    assert jobs["lines"]["TransformJobStatus"] == "Completed", jobs["lines"].get("FailureReason")
    assert jobs["lines"]["BatchStrategy"] == "SingleRecord" and jobs["lines"]["MaxPayloadInMB"] == 6
    text, answers = s3.get_object(Bucket=BUCKET, Key="lines/out/batch.jsonl.out")["Body"].read().decode(), []
    while text.strip():  # the model answers indented JSON: three documents, each followed by a newline
        doc, end = json.JSONDecoder().raw_decode(text.lstrip())
        answers.append(doc)
        text = text.lstrip()[end:]
        assert text.startswith("\n")
    assert len(answers) == 3 and all(a["predictions"][0]["label"] in classes for a in answers)
    bad = jobs["bad-input"]
    assert bad["TransformJobStatus"] == "Failed" and "answered 415" in bad["FailureReason"], bad
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="lines/bad-out")
    listed = sm.list_transform_jobs(StatusEquals="Failed")["TransformJobSummaries"]
    assert [j["TransformJobName"] for j in listed] == ["bad-input"]


# ------------------------------------------------------------------ lifetimes

@pytest.mark.integration
@pytest.mark.docker
def test_sigkill_leaves_no_container_and_a_restart_brings_endpoints_back(engine, image, tiny_model, tmp_path):
    _, classes, jpeg = tiny_model
    root = tmp_path / "root"
    srv = ApiServer(root, "--backend", "docker", "--image", image)
    srv.image = image
    try:
        srv.client("s3").upload_file(str(tiny_model[0]), BUCKET, "models/tiny/model.tar.gz")
        assert deploy(srv, "survivor")["EndpointStatus"] == "InService"
        assert len(containers_of(engine, root)) == 1
    finally:
        srv.stop(signal.SIGKILL)
    deadline = time.monotonic() + 20
    while containers_of(engine, root) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not containers_of(engine, root), "a SIGKILLed server left its serving container"

    again = ApiServer(root, "--backend", "docker", "--image", image)
    again.image = image
    try:
        assert wait_endpoint(again, "survivor")["EndpointStatus"] == "InService", again.log()[-3000:]
        assert invoke(again, "survivor", jpeg.read_bytes())["Body"]["predictions"][0]["label"] in classes
    finally:
        assert again.stop() == 0, again.log()[-3000:]
    assert not containers_of(engine, root), "SIGTERM left the serving container"


@pytest.mark.integration
def test_process_backend_serves_with_the_local_torchserve_and_dies_with_the_server(tiny_model, tmp_path):
    import psutil

    _, classes, jpeg = tiny_model
    root = tmp_path / "root"
    srv = ApiServer(root, "--backend", "process")
    srv.image = "not-needed-by-the-process-backend:1"
    try:
        srv.client("s3").upload_file(str(tiny_model[0]), BUCKET, "models/tiny/model.tar.gz")
        desc = deploy(srv, "on-host")
        assert desc["EndpointStatus"] == "InService", desc.get("FailureReason")
        assert invoke(srv, "on-host", jpeg.read_bytes())["Body"]["predictions"][0]["label"] in classes
        folder = str((root / "endpoints" / "on-host").resolve())
        assert any(folder in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
    finally:
        srv.stop(signal.SIGKILL)

    def leftovers():
        return [p.pid for p in psutil.process_iter(["cmdline"]) if folder in " ".join(p.info["cmdline"] or [])]

    deadline = time.monotonic() + 30
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not leftovers(), "TorchServe outlived a SIGKILLed server"


# ------------------------------------------------------------------ pieces (no server)

def test_batches_pack_records_up_to_the_payload_limit():
    from localsage.api.transform import JobError, batches

    records = [b"a" * 400_000 + b"\n"] * 5
    assert [len(b) for b in batches(records, "MultiRecord", 1, "s3://b/k")] == [800_002, 800_002, 400_001]
    assert len(list(batches(records, "SingleRecord", 1, "s3://b/k"))) == 5
    assert len(list(batches(records, "MultiRecord", 0, "s3://b/k"))) == 1
    with pytest.raises(JobError, match="MaxPayloadInMB=1"):
        list(batches([b"x" * (2 << 20)], "MultiRecord", 1, "s3://b/k"))


def test_outputs_keep_the_inputs_path_under_the_prefix():
    from localsage.api.transform import relative

    assert relative("in/a/b.jpg", "in") == relative("in/a/b.jpg", "in/") == "a/b.jpg"
    assert relative("in/b.jpg", "in/b.jpg") == "b.jpg"
    assert relative("data/img1.jpg", "data/img") == "img1.jpg"


def test_a_models_environment_never_points_a_host_process_outside_its_folder(tmp_path):
    from localsage.api.containers import host_env

    model = tmp_path / "model"
    env = host_env({"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                    "LD_PRELOAD": "/tmp/x.so", "PYTHONPATH": "/etc", "LOCALSAGE_MODEL_DIR": "/"}, model, None)
    assert env == {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": f"{model}/code"}
    assert "SAGEMAKER_SUBMIT_DIRECTORY" not in host_env({"SAGEMAKER_SUBMIT_DIRECTORY": "/home"}, model, None)
    assert "SAGEMAKER_SUBMIT_DIRECTORY" not in host_env({"SAGEMAKER_SUBMIT_DIRECTORY": "file:///x"}, model, None)


def test_list_pages_filter_sort_and_page():
    from localsage.api.endpoints import list_page

    rows = [{"EndpointName": f"ep-{i}", "CreationTime": 100.0 + i, "EndpointStatus": "InService" if i % 2 else
             "Failed"} for i in range(5)]
    fields = ("EndpointName", "EndpointStatus")
    first = list_page({"MaxResults": 2}, rows, "EndpointName", fields, "Endpoints", "EndpointStatus")
    assert [r["EndpointName"] for r in first["Endpoints"]] == ["ep-4", "ep-3"] and first["NextToken"] == "2"
    rest = list_page({"MaxResults": 2, "NextToken": "4"}, rows, "EndpointName", fields, "Endpoints")
    assert [r["EndpointName"] for r in rest["Endpoints"]] == ["ep-0"] and "NextToken" not in rest
    failed = list_page({"StatusEquals": "Failed", "SortBy": "Name", "SortOrder": "Ascending",
                        "CreationTimeAfter": 100.5}, rows, "EndpointName", fields, "Endpoints", "EndpointStatus")
    assert [r["EndpointName"] for r in failed["Endpoints"]] == ["ep-2", "ep-4"]
