"""The cloud half, offline: real boto3 / sagemaker SDK / docker SDK against moto's mocked AWS, and
dry runs answered locally. No test reaches AWS: sockets to anything but the local docker engine
are refused, and the only credentials are moto's dummies set here."""
from __future__ import annotations

import base64
import io
import json
import socket
import tarfile
import time

import boto3
import moto
import pytest
from botocore.stub import Stubber

from localsage import cli
from localsage.core.metrics import METRIC_DEFINITIONS
from localsage.host import records, runner
from localsage.host.cloud import session as cloud_session  # the modules look aws_session up here: patched here
from localsage.host.cloud.constants import (
    ROLE_ENV,
    SDK_CONFIG,
    SERVING_DEFAULTS,
    SERVING_ENV,
    SERVING_ENV_VARS,
    TRAINING_LOG_GROUP,
)
from localsage.host.cloud.ecr import push
from localsage.host.cloud.endpoints import DeployOptions, deploy_requests, predict_endpoint
from localsage.host.cloud.session import CloudError
from localsage.host.cloud.source import encode_hyperparameters, source_package
from localsage.host.cloud.training import TrainingOptions, training_request, training_requests

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/localsage:abc123"
DATA = "s3://dogs-bucket/dogImages"
OUTPUT = "s3://dogs-bucket/localsage/jobs"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network: only AF_UNIX sockets (the docker engine) may connect; no real AWS config is read."""
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family != socket.AF_UNIX:
            raise OSError(f"test tried to reach the network: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                "AWS_DEFAULT_REGION", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE", ROLE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("LOCALSAGE_JOBS_DIR", str(tmp_path / "jobs"))


@pytest.fixture
def aws(monkeypatch):
    """Dummy credentials and a region, with moto answering every AWS call."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with moto.mock_aws():
        yield boto3.Session(region_name=REGION)


@pytest.fixture
def sent(monkeypatch):
    """Every request our code sends through localsage.host.cloud.session.aws_session(): [(operation, api params)]
    (moto still answers)."""
    calls = []
    real = cloud_session.aws_session

    def spying(region=None):
        session = real(region)
        session.events.register("provide-client-params",
                                lambda params, model, **_: calls.append((model.name, dict(params))))
        return session

    monkeypatch.setattr(cloud_session, "aws_session", spying)
    return calls


def options(**kw):
    return TrainingOptions(output_path=OUTPUT, role=ROLE, image=IMAGE, region=REGION, **kw)


# ---------------------------------------------------------------------------------------------
# training requests


def test_training_request_is_exact_and_needs_no_credentials():
    call = training_request(DATA, {"lr": 0.01, "batch-size": 64, "augment": False, "arch": "resnet50"},
                                  options(instance_type="ml.p3.8xlarge", spot=True, max_run=3600),
                                  "dogs-1", instance_count=2)
    assert call["operation"] == "CreateTrainingJob"
    req = call["request"]
    assert req["TrainingJobName"] == "dogs-1"
    assert req["AlgorithmSpecification"] == {"TrainingImage": IMAGE, "TrainingInputMode": "File",
                                             "MetricDefinitions": METRIC_DEFINITIONS}
    assert req["HyperParameters"] == {"lr": "0.01", "batch-size": "64", "augment": "false", "arch": "resnet50"}
    assert req["ResourceConfig"] == {"InstanceType": "ml.p3.8xlarge", "InstanceCount": 2, "VolumeSizeInGB": 30}
    assert req["InputDataConfig"] == [{"ChannelName": "training", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": DATA, "S3DataDistributionType": "FullyReplicated"}}}]
    assert req["OutputDataConfig"] == {"S3OutputPath": OUTPUT}
    assert req["CheckpointConfig"] == {"S3Uri": f"{OUTPUT}/dogs-1/checkpoints"}
    assert req["EnableManagedSpotTraining"] is True
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert req["RoleArn"] == ROLE
    assert req["DebugHookConfig"]["S3OutputPath"] == f"{OUTPUT}/dogs-1/debug-output"
    assert {c["CollectionName"] for c in req["DebugHookConfig"]["CollectionConfigurations"]} == {"losses", "metrics"}


def test_metric_regexes_match_the_training_log_format():
    import re

    from localsage.core.metrics import format_line

    line = format_line({"epoch": 2, "train_loss": 0.5, "train_acc": 0.8, "valid_loss": 0.25, "valid_acc": 0.9,
                        "epoch_time": 3.0, "images_per_sec": 100.0})
    req = training_request(DATA, {}, options(), "dogs-2")["request"]
    found = {d["Name"]: float(re.search(d["Regex"], line).group(1))
             for d in req["AlgorithmSpecification"]["MetricDefinitions"] if re.search(d["Regex"], line)}
    assert found["valid_loss"] == 0.25 and found["valid_acc"] == 0.9 and found["train_loss"] == 0.5


def test_spot_wait_shorter_than_run_is_refused():
    with pytest.raises(CloudError, match="max-wait"):
        training_request(DATA, {}, options(spot=True, max_run=7200, max_wait=3600), "dogs-3")


def test_cli_train_dry_run_prints_the_request_without_credentials(capsys, tmp_path):
    code = cli.main(["train", "--backend", "sagemaker", "--data", DATA, "--hp", "epochs=3", "--hp", "lr=0.003",
                     "--instance-type", "ml.g4dn.xlarge", "--spot", "--name", "dogs-cli", "--dry-run",
                     "--jobs-dir", str(tmp_path / "jobs")])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    req = doc["request"]
    assert doc["operation"] == "CreateTrainingJob"
    assert req["HyperParameters"] == {"epochs": "3", "lr": "0.003"}
    assert req["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    # no credentials: the account is a visible placeholder; output goes next to the data
    assert (req["AlgorithmSpecification"]["TrainingImage"]
            == "ACCOUNT_ID.dkr.ecr.us-east-1.amazonaws.com/localsage:latest")
    assert req["CheckpointConfig"]["S3Uri"] == "s3://dogs-bucket/localsage/jobs/dogs-cli/checkpoints"
    assert not (tmp_path / "jobs").exists()


def test_cli_train_rejects_bad_hyperparameters_before_anything(capsys):
    assert cli.main(["train", "--backend", "sagemaker", "--data", DATA, "--hp", "lr=-1", "--dry-run"]) == 2
    assert "lr" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["credentials", "region"])
def test_missing_credentials_or_region_is_a_clear_error(monkeypatch, capsys, tmp_path, missing):
    if missing == "credentials":
        monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    jobs = tmp_path / "jobs"
    commands = [
        ["train", "--backend", "sagemaker", "--data", DATA, "--role", ROLE, "--yes", "--jobs-dir", str(jobs)],
        ["deploy", "s3://dogs-bucket/model.tar.gz", "--role", ROLE, "--yes"],
        ["push", "--image", "localsage:latest"],
        ["upload-data", str(tmp_path), "s3://dogs-bucket/x"],
        ["endpoint", "list"],
        ["endpoint", "delete", "some-endpoint"],
    ]
    for argv in commands:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"no AWS {missing}" in err and "nothing was created" in err, (argv, err)
    assert not jobs.exists()


# ---------------------------------------------------------------------------------------------
# the sagemaker backend through the runner (moto)


def _tar_gz(files: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_sagemaker_backend_runs_a_job_and_records_it(aws, sent, tmp_path):
    name = "dogs-moto"
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="dogs-bucket")
    # what SageMaker leaves behind for a completed job
    s3.put_object(Bucket="dogs-bucket", Key=f"localsage/jobs/{name}/output/model.tar.gz",
                  Body=_tar_gz({"model_config.json": b'{"arch": "resnet18"}', "index_to_name.json": b'{"0": "a"}'}))
    s3.put_object(Bucket="dogs-bucket", Key=f"localsage/jobs/{name}/output/output.tar.gz",
                  Body=_tar_gz({"metrics.jsonl": b'{"epoch": 1, "valid_acc": 0.95, "valid_loss": 0.2}\n'}))
    logs = aws.client("logs")
    logs.create_log_group(logGroupName=TRAINING_LOG_GROUP)
    logs.create_log_stream(logGroupName=TRAINING_LOG_GROUP, logStreamName=f"{name}/algo-1-1700000000")
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=TRAINING_LOG_GROUP, logStreamName=f"{name}/algo-1-1700000000",
                        logEvents=[{"timestamp": now, "message": "starting"},
                                   {"timestamp": now + 1,
                                    "message": "epoch=1; train_loss=0.5; valid_loss=0.2; valid_acc=0.95;"}])
    seen = []
    opts = options(poll_seconds=0.01)
    record = runner.train(DATA, {"epochs": 1, "lr": 0.01}, backend="sagemaker", name=name, jobs_dir=tmp_path,
                          instance_count=1, on_metrics=lambda m: seen.append(m) and False,
                          backend_options=opts.to_dict(), echo=False)

    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    arn = aws.client("sagemaker").describe_training_job(TrainingJobName=name)["TrainingJobArn"]
    assert record["TrainingJobArn"] == arn
    assert record["SageMaker"]["S3ModelArtifacts"] == f"{OUTPUT}/{name}/output/model.tar.gz"
    assert record["InputDataConfig"][0]["DataSource"] == {"S3DataSource": {"S3Uri": DATA}}
    assert record["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert record["ResourceConfig"] == {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1}
    assert seen and seen[0]["epoch"] == 1 and seen[0]["valid_acc"] == 0.95
    assert {m["MetricName"]: m["Value"] for m in record["FinalMetricDataList"]}["valid_acc"] == 0.95
    job_dir = tmp_path / name
    assert json.loads((job_dir / "model" / "model_config.json").read_text()) == {"arch": "resnet18"}
    with tarfile.open(job_dir / "model.tar.gz") as tar:
        assert "index_to_name.json" in tar.getnames()
    assert "starting" in (job_dir / "train.log").read_text()

    # the request actually sent is the one a dry run prints
    created = [params for op, params in sent if op == "CreateTrainingJob"]
    assert len(created) == 1
    dry = training_request(DATA, {"epochs": "1", "lr": "0.01"}, opts, name)["request"]
    assert created[0] == dry
    assert records.describe(name, tmp_path)["TrainingJobArn"] == arn


def test_train_without_yes_creates_nothing(aws, tmp_path, capsys):
    jobs = tmp_path / "jobs"
    code = cli.main(["train", "--backend", "sagemaker", "--data", DATA, "--role", ROLE, "--image", IMAGE,
                     "--jobs-dir", str(jobs)])
    assert code == 2
    captured = capsys.readouterr()
    assert "1 x ml.g4dn.xlarge" in captured.out and "--yes" in captured.err
    assert aws.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []
    assert not jobs.exists()


def test_log_tail_reads_each_line_once_and_names_hosts(aws):
    logs = aws.client("logs")
    logs.create_log_group(logGroupName=TRAINING_LOG_GROUP)
    for host in ("algo-1", "algo-2"):
        logs.create_log_stream(logGroupName=TRAINING_LOG_GROUP, logStreamName=f"job-a/{host}-1700000000")
    logs.create_log_stream(logGroupName=TRAINING_LOG_GROUP, logStreamName="job-ab/algo-1-1700000000")
    put = lambda stream, ts, msg: logs.put_log_events(  # noqa: E731 - a one-line helper
        logGroupName=TRAINING_LOG_GROUP, logStreamName=stream, logEvents=[{"timestamp": ts, "message": msg}])
    now = int(time.time() * 1000)
    put("job-a/algo-1-1700000000", now, "rank 0")
    put("job-a/algo-2-1700000000", now + 1, "rank 1")
    put("job-ab/algo-1-1700000000", now + 2, "another job")
    from localsage.host.backends.sagemaker import LogTail

    tail = LogTail(logs, "job-a", hosts=2)
    assert tail.poll() == ["[algo-1] rank 0", "[algo-2] rank 1"]
    assert tail.poll() == []
    put("job-a/algo-1-1700000000", now + 3, "epoch=1;")
    assert tail.poll() == ["[algo-1] epoch=1;"]


def test_log_tail_before_the_log_group_exists(aws):
    from localsage.host.backends.sagemaker import LogTail

    assert LogTail(aws.client("logs"), "job-x").poll() == []


# ---------------------------------------------------------------------------------------------
# ECR push


class RecordingDocker:
    """Stands in for docker.DockerClient where no registry can be reached (ECR): records the calls."""

    def __init__(self, push_events=None):
        self.calls = []
        outer = self

        class Image:
            def tag(self, repository, tag):
                outer.calls.append(("tag", repository, tag))
                return True

        class Images:
            def get(self, name):
                outer.calls.append(("get", name))
                return Image()

        class Api:
            def push(self, repository, tag, stream, decode, auth_config):
                outer.calls.append(("push", repository, tag, auth_config))
                return iter(push_events or [{"status": "Pushing", "id": "abc"}, {"status": "Pushed", "id": "abc"}])

        self.images, self.api = Images(), Api()

    def login(self, username, password, registry):
        self.calls.append(("login", username, password, registry))


def test_push_creates_the_repository_logs_in_tags_and_pushes(aws):
    ecr = aws.client("ecr")
    docker = RecordingDocker()
    refs = push("localsage:latest", "localsage", ["abc123", "latest"], client=docker, boto_session=aws,
                      out=lambda *_: None)
    uri = ecr.describe_repositories(repositoryNames=["localsage"])["repositories"][0]["repositoryUri"]
    assert refs == [f"{uri}:abc123", f"{uri}:latest"]
    token = ecr.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    auth = {"username": user, "password": password}
    assert docker.calls == [
        ("get", "localsage:latest"),
        ("login", user, password, token["proxyEndpoint"]),
        ("tag", uri, "abc123"), ("push", uri, "abc123", auth),
        ("tag", uri, "latest"), ("push", uri, "latest", auth),
    ]
    # a second push reuses the repository
    push("localsage:latest", "localsage", ["latest"], client=RecordingDocker(), boto_session=aws,
               out=lambda *_: None)
    assert len(ecr.describe_repositories()["repositories"]) == 1


def test_push_error_in_the_stream_is_raised(aws):
    docker = RecordingDocker(push_events=[{"error": "denied: not authorized"}])
    with pytest.raises(CloudError, match="denied"):
        push("localsage:latest", client=docker, boto_session=aws, out=lambda *_: None)


def test_push_without_docker_engine_creates_nothing(aws, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(CloudError, match="docker engine"):
        push("localsage:latest", region=REGION)
    assert aws.client("ecr").describe_repositories()["repositories"] == []


def test_push_of_a_missing_image_creates_nothing(aws):
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env()
        client.ping()
    except Exception:
        pytest.skip("no docker engine")
    with pytest.raises(CloudError, match="make image"):
        push("localsage-no-such-image:never", client=client, region=REGION)
    assert aws.client("ecr").describe_repositories()["repositories"] == []


# ---------------------------------------------------------------------------------------------
# S3 data


def test_upload_data_copies_the_tree(aws, tmp_path, capsys):
    for rel in ("train/001.Cat/a.jpg", "valid/001.Cat/b.jpg", "test/002.Dog/c.jpg", ".DS_Store"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    aws.client("s3").create_bucket(Bucket="dogs-bucket")
    assert cli.main(["upload-data", str(tmp_path), "s3://dogs-bucket/dogImages/"]) == 0
    keys = sorted(o["Key"] for o in aws.client("s3").list_objects_v2(Bucket="dogs-bucket")["Contents"])
    assert keys == ["dogImages/test/002.Dog/c.jpg", "dogImages/train/001.Cat/a.jpg", "dogImages/valid/001.Cat/b.jpg"]
    assert "3 files" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# endpoints


def test_deploy_requests_are_exact():
    opts = DeployOptions(model_data="s3://dogs-bucket/jobs/j/output/model.tar.gz", endpoint_name="dogs-ep",
                               role=ROLE, image=IMAGE, region=REGION, env={"SAGEMAKER_TS_BATCH_SIZE": 16})
    calls = deploy_requests(opts)
    assert [c["operation"] for c in calls] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
    model, config, endpoint = (c["request"] for c in calls)
    assert model == {"ModelName": "dogs-ep", "ExecutionRoleArn": ROLE, "PrimaryContainer": {
        "Image": IMAGE, "ModelDataUrl": "s3://dogs-bucket/jobs/j/output/model.tar.gz",
        "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SAGEMAKER_TS_BATCH_SIZE": "16",
                        "SAGEMAKER_TS_MAX_BATCH_DELAY": "5", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "60"}}}
    assert config["EndpointConfigName"] == "dogs-ep"
    assert config["ProductionVariants"] == [{"VariantName": "AllTraffic", "ModelName": "dogs-ep",
                                             "InitialInstanceCount": 1, "InstanceType": "ml.g4dn.xlarge",
                                             "InitialVariantWeight": 1}]
    assert endpoint["EndpointName"] == "dogs-ep" and endpoint["EndpointConfigName"] == "dogs-ep"


def test_cli_deploy_dry_run_of_a_local_job_uploads_nothing(capsys, tmp_path, trained_job_like):
    code = cli.main(["deploy", trained_job_like, "--jobs-dir", str(tmp_path / "jobs"), "--dry-run",
                     "--output-path", "s3://dogs-bucket/models", "--batch-size", "4"])
    assert code == 0
    calls = json.loads(capsys.readouterr().out)
    model = calls[0]["request"]
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://dogs-bucket/models/{trained_job_like}/model.tar.gz"
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_TS_BATCH_SIZE"] == "4"
    assert calls[1]["request"]["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.xlarge"


@pytest.fixture
def trained_job_like(tmp_path):
    """A completed local job record with a model.tar.gz (what the runner leaves), without training."""
    job_dir = tmp_path / "jobs" / "local-job"
    job_dir.mkdir(parents=True)
    (job_dir / "model.tar.gz").write_bytes(_tar_gz({"model.pth": b"weights"}))
    records.write_record(job_dir, {"TrainingJobName": "local-job", "TrainingJobStatus": "Completed",
                                  "ModelArtifacts": {"S3ModelArtifacts": str(job_dir / "model.tar.gz")}})
    return "local-job"


def test_deploy_needs_yes(aws, capsys):
    assert cli.main(["deploy", "s3://dogs-bucket/model.tar.gz", "--role", ROLE, "--image", IMAGE]) == 2
    captured = capsys.readouterr()
    assert "billed per instance-hour" in captured.out and "--yes" in captured.err
    assert aws.client("sagemaker").list_endpoints()["Endpoints"] == []
    assert aws.client("sagemaker").list_models()["Models"] == []


def test_deploy_list_delete_with_moto(aws, tmp_path, capsys, trained_job_like):
    aws.client("s3").create_bucket(Bucket="dogs-bucket")
    code = cli.main(["deploy", trained_job_like, "--jobs-dir", str(tmp_path / "jobs"), "--endpoint-name", "dogs-ep",
                     "--output-path", "s3://dogs-bucket/models", "--role", ROLE, "--image", IMAGE, "--yes",
                     "--no-wait"])
    assert code == 0, capsys.readouterr()
    sm = aws.client("sagemaker")
    config = sm.describe_endpoint_config(
        EndpointConfigName=sm.describe_endpoint(EndpointName="dogs-ep")["EndpointConfigName"])
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.xlarge"
    model = sm.describe_model(ModelName="dogs-ep")["PrimaryContainer"]
    assert model["ModelDataUrl"] == f"s3://dogs-bucket/models/{trained_job_like}/model.tar.gz"
    assert aws.client("s3").get_object(Bucket="dogs-bucket",
                                       Key=f"models/{trained_job_like}/model.tar.gz")["Body"].read()
    capsys.readouterr()

    assert cli.main(["endpoint", "list"]) == 0
    out = capsys.readouterr().out
    assert "dogs-ep" in out and "ml.g4dn.xlarge" in out

    assert cli.main(["endpoint", "delete", "dogs-ep"]) == 0
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []


def test_predict_endpoint_sends_image_bytes_and_reads_json(tmp_path):
    import sagemaker

    image = tmp_path / "dog.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0 fake jpeg")
    session = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    runtime = session.client("sagemaker-runtime")
    answer = {"predictions": [{"label": "Labrador_retriever", "index": 95, "probability": 0.93}]}
    with Stubber(runtime) as stub:
        stub.add_response("invoke_endpoint",
                          {"Body": io.BytesIO(json.dumps(answer).encode()), "ContentType": "application/json"},
                          {"EndpointName": "dogs-ep", "Body": image.read_bytes(), "ContentType": "image/jpeg",
                           "Accept": "application/json"})
        stub.add_client_error("invoke_endpoint", service_error_code="ModelError", http_status_code=424,
                              service_message="Received client error (400) from primary",
                              response_meta={},
                              modeled_fields={"OriginalStatusCode": 400, "OriginalMessage": "not an image"})
        sm_session = sagemaker.Session(boto_session=session, sagemaker_runtime_client=runtime,
                                       sagemaker_config=SDK_CONFIG)
        results = predict_endpoint("dogs-ep", [image, image], sm_session=sm_session)
    assert results[0] == (str(image), 200, answer)
    assert results[1] == (str(image), 400, {"message": "not an image"})


def test_jobs_describe_refreshes_a_sagemaker_job(aws, tmp_path, capsys):
    """A job whose local runner went away (record still InProgress) shows SageMaker's status."""
    name = "dogs-refresh"
    call = training_request(DATA, {"epochs": "1"}, options(), name)["request"]
    aws.client("sagemaker").create_training_job(**call)  # moto: the job is Completed at once
    job_dir = tmp_path / name
    job_dir.mkdir()
    records.write_record(job_dir, {"TrainingJobName": name, "TrainingJobStatus": "InProgress", "Backend": "sagemaker"})
    (job_dir / "backend.json").write_text(json.dumps({"TrainingJobArn": "arn:x", "SageMaker": {"Region": REGION}}))
    assert records.describe(name, tmp_path)["TrainingJobArn"] == "arn:x"
    assert cli.main(["jobs", "describe", name, "--jobs-dir", str(tmp_path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["SageMaker"]["TrainingJobStatus"] == shown["TrainingJobStatus"] == "Completed"


def test_on_metrics_stop_sends_stop_training_job(aws, monkeypatch, tmp_path):
    """moto has no StopTrainingJob and completes jobs at once: DescribeTrainingJob and StopTrainingJob
    are answered by the test (after botocore's validation); creation, logs and S3 stay moto's."""
    from botocore.awsrequest import AWSResponse

    name = "dogs-stop"
    after_stop = iter(["Stopping", "Stopped"])
    stops, described = [], []
    real = cloud_session.aws_session

    def describe(params, model, **_):
        described.append(1)
        if stops:
            status = next(after_stop, "Stopped")
        else:  # running until stopped (a job nobody stops fails the test instead of hanging it)
            status = "InProgress" if len(described) < 200 else "Failed"
        return AWSResponse(None, 200, {}, None), {
            "TrainingJobName": name, "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{name}",
            "TrainingJobStatus": status, "SecondaryStatus": status}

    def stop(params, model, **_):
        stops.append(json.loads(params["body"]))
        return AWSResponse(None, 200, {}, None), {}

    def session(region=None):
        s = real(region)
        s.events.register("before-call.sagemaker.DescribeTrainingJob", describe)
        s.events.register("before-call.sagemaker.StopTrainingJob", stop)
        return s

    monkeypatch.setattr(cloud_session, "aws_session", session)
    logs = aws.client("logs")
    logs.create_log_group(logGroupName=TRAINING_LOG_GROUP)
    logs.create_log_stream(logGroupName=TRAINING_LOG_GROUP, logStreamName=f"{name}/algo-1-1700000000")
    logs.put_log_events(logGroupName=TRAINING_LOG_GROUP, logStreamName=f"{name}/algo-1-1700000000",
                        logEvents=[{"timestamp": int(time.time() * 1000), "message": "epoch=1; valid_loss=9.0;"}])
    record = runner.train(DATA, {"epochs": 5}, backend="sagemaker", name=name, jobs_dir=tmp_path,
                          on_metrics=lambda m: m["valid_loss"] > 5, echo=False,
                          backend_options=options(poll_seconds=0.01).to_dict())
    assert stops == [{"TrainingJobName": name}]
    assert record["TrainingJobStatus"] == "Stopped"
    assert "epoch 1" in record["StopReason"]
    assert record["SageMaker"]["TrainingJobStatus"] == "Stopped"


def test_missing_role_is_a_clear_error_before_anything(aws, tmp_path, capsys):
    jobs = tmp_path / "jobs"
    assert cli.main(["train", "--backend", "sagemaker", "--data", DATA, "--yes", "--jobs-dir", str(jobs)]) == 2
    assert cli.main(["deploy", "s3://dogs-bucket/model.tar.gz", "--yes"]) == 2
    err = capsys.readouterr().err
    assert err.count("no SageMaker execution role") == 2
    assert not jobs.exists()
    sm = aws.client("sagemaker")
    assert sm.list_training_jobs()["TrainingJobSummaries"] == [] and sm.list_models()["Models"] == []


def test_local_data_or_a_bad_name_is_refused_for_the_cloud(capsys):
    assert cli.main(["train", "--backend", "sagemaker", "--data", "data/demo", "--dry-run"]) == 2
    assert "s3://" in capsys.readouterr().err
    assert cli.main(["train", "--backend", "sagemaker", "--data", DATA, "--name", "my_job", "--dry-run"]) == 2
    assert "job name 'my_job'" in capsys.readouterr().err


def test_cli_train_with_yes_runs_the_job(aws, tmp_path, capsys):
    name = "dogs-cli-run"
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="dogs-bucket")
    s3.put_object(Bucket="dogs-bucket", Key=f"localsage/jobs/{name}/output/model.tar.gz",
                  Body=_tar_gz({"model.pth": b"weights"}))
    code = cli.main(["train", "--backend", "sagemaker", "--data", DATA, "--role", ROLE, "--image", IMAGE, "--yes",
                     "--spot", "--instance-count", "2", "--hp", "epochs=2", "--name", name,
                     "--jobs-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr()
    record = records.describe(name, tmp_path)
    assert record["TrainingJobStatus"] == "Completed" and record["TrainingJobArn"].endswith(f"training-job/{name}")
    assert record["SageMaker"]["Spot"] is True and record["ResourceConfig"]["InstanceCount"] == 2
    assert (tmp_path / name / "model" / "model.pth").read_bytes() == b"weights"


# ---------------------------------------------------------------------------------------------
# script mode: a user's entry point and source dir (training), inference.py repacked (deploy)


def test_importing_the_cloud_modules_is_cheap():
    import subprocess
    import sys

    code = ("import importlib, pkgutil, sys, localsage.host.cloud as c; "
            "names = sorted(m.name for m in pkgutil.iter_modules(c.__path__)); "
            "[importlib.import_module(f'{c.__name__}.{name}') for name in names]; "
            "print(*names); "
            "print(sorted(m for m in ('boto3', 'botocore', 'sagemaker', 'docker', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, sdks = out.splitlines()
    assert {"constants", "session", "s3", "ecr", "source", "training", "endpoints"} <= set(names.split())
    assert sdks == "[]"  # every module of the package imports, none of them imports an SDK


def test_serving_env_is_the_serving_defaults_as_strings():
    assert SERVING_ENV == {SERVING_ENV_VARS[k]: str(v) for k, v in SERVING_DEFAULTS.items()}
    assert SERVING_ENV["SAGEMAKER_TS_BATCH_SIZE"] == "8"


@pytest.fixture
def project(tmp_path):
    """A user's script-mode source dir: entry point, a helper package, requirements, inference.py."""
    src = tmp_path / "my-project"
    (src / "utils").mkdir(parents=True)
    (src / "train_model.py").write_text("import utils.helper\nprint('Test set: Average loss: 0.25')\n")
    (src / "utils" / "helper.py").write_text("X = 1\n")
    (src / "requirements.txt").write_text("tqdm\n")
    (src / "inference.py").write_text("def model_fn(model_dir):\n    return None\n")
    return src


TEST_LOSS = "test_loss=Test set: Average loss: ([0-9.]+)"


def _members(data: bytes) -> dict:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.lstrip("./"): tar.extractfile(m).read() if m.isfile() else None
                for m in tar.getmembers() if m.name.strip("./")}


def test_source_package_hyperparameters_and_archive(project, tmp_path):
    hps, package = source_package(project, "train_model.py", "s3://dogs-bucket/job-1/source",
                                        job_name="job-1", region=REGION)
    assert hps == {"sagemaker_submit_directory": '"s3://dogs-bucket/job-1/source/sourcedir.tar.gz"',
                   "sagemaker_program": '"train_model.py"', "sagemaker_container_log_level": "20",
                   "sagemaker_job_name": '"job-1"', "sagemaker_region": f'"{REGION}"'}
    assert package.s3_uri == "s3://dogs-bucket/job-1/source/sourcedir.tar.gz"
    assert package.files == ["inference.py", "requirements.txt", "train_model.py", "utils/helper.py"]
    members = _members(package.build(tmp_path / "sourcedir.tar.gz").read_bytes())
    assert members["train_model.py"] == (project / "train_model.py").read_bytes()
    assert members["utils/helper.py"] == b"X = 1\n" and "requirements.txt" in members
    # no source dir: the entry point file alone, at the archive's root
    hps, alone = source_package(None, str(project / "train_model.py"), "s3://b/j/source")
    assert json.loads(hps["sagemaker_program"]) == "train_model.py" and alone.files == ["train_model.py"]
    assert set(_members(alone.build(tmp_path / "alone.tar.gz").read_bytes())) == {"train_model.py"}
    with pytest.raises(CloudError, match="no file named 'missing.py'"):
        source_package(project, "missing.py", "s3://b/j/source")
    with pytest.raises(CloudError, match="not found"):
        source_package(tmp_path / "nowhere", "train_model.py", "s3://b/j/source")


def test_user_hyperparameters_are_json_encoded_like_the_sdk():
    assert encode_hyperparameters({"epochs": "5", "arch": "resnet50", "lr": "0.0015", "augment": "true",
                                         "batch-size": 64, "name": '"quoted"'}) == {
        "epochs": "5", "arch": '"resnet50"', "lr": "0.0015", "augment": "true", "batch-size": "64",
        "name": '"quoted"'}


@pytest.mark.parametrize("distribution", [None, "torch_distributed"])
def test_script_mode_matches_the_sdk_pytorch_estimator(aws, project, distribution):
    """The real SDK's PyTorch(entry_point, source_dir[, distribution]) against moto, and ours, for
    the same job: the same hyperparameters, the same S3 key, the same archive members."""
    from sagemaker.pytorch import PyTorch

    aws.client("s3").create_bucket(Bucket="dogs-bucket")
    sdk_calls = []
    boto_session = cloud_session.aws_session(REGION)
    boto_session.events.register("provide-client-params.sagemaker.CreateTrainingJob",
                                 lambda params, **_: sdk_calls.append(dict(params)))
    count = 2 if distribution else 1
    estimator = PyTorch(entry_point="train_model.py", source_dir=str(project), image_uri=IMAGE, role=ROLE,
                        instance_count=count, instance_type="ml.g4dn.xlarge", output_path=OUTPUT,
                        hyperparameters={"epochs": 5, "arch": "resnet50", "lr": 0.0015},
                        distribution={distribution: {"enabled": True}} if distribution else None,
                        sagemaker_session=cloud_session.sagemaker_session(boto_session))
    estimator.fit({"training": DATA}, wait=False, logs=False, job_name="sdk-job")
    sdk_hps = sdk_calls[0]["HyperParameters"]
    sdk_archive = aws.client("s3").get_object(Bucket="dogs-bucket",
                                              Key="sdk-job/source/sourcedir.tar.gz")["Body"].read()

    opts = options(entry_point="train_model.py", source_dir=str(project), distribution=distribution)
    upload, create = training_requests(DATA, {"epochs": "5", "arch": "resnet50", "lr": "0.0015"}, opts, "sdk-job",
                                             instance_count=count)
    assert create["request"]["HyperParameters"] == sdk_hps
    assert ("sagemaker_torch_distributed_enabled" in sdk_hps) == bool(distribution)
    assert upload["S3Uri"] == json.loads(sdk_hps["sagemaker_submit_directory"])
    assert sorted(f for f, data in _members(sdk_archive).items() if data is not None) == upload["Files"]


def _train_args(argv, entry_point=None, source_dir=None, metric_definitions=()):
    """`localsage train` arguments with script mode's flags: given as flags where cli/jobs.py defines
    them, else set on the parsed namespace (what cli/cloud reads with getattr)."""
    extra = (["--entry-point", entry_point] if entry_point else []) + (
        ["--source-dir", str(source_dir)] if source_dir else []) + [
        x for d in metric_definitions for x in ("--metric-definition", d)]
    parser = cli.build_parser()
    args, unknown = parser.parse_known_args(argv + extra)
    if unknown:
        args = parser.parse_args(argv)
        args.entry_point, args.source_dir = entry_point, str(source_dir) if source_dir else None
        args.metric_definition = list(metric_definitions) or None
    return args


def test_cli_train_script_dry_run_shows_the_upload_and_uploads_nothing(capsys, project):
    before = sorted(p.name for p in project.rglob("*"))
    args = _train_args(["train", "--backend", "sagemaker", "--data", DATA, "--name", "dogs-script", "--dry-run",
                        "--hp", "epochs=5", "--hp", "arch=resnet50"],
                       entry_point="train_model.py", source_dir=project, metric_definitions=[TEST_LOSS])
    assert args.func(args) == 0
    upload, create = json.loads(capsys.readouterr().out)
    assert upload["S3Uri"] == "s3://dogs-bucket/dogs-script/source/sourcedir.tar.gz"
    assert upload["Program"] == "train_model.py" and "utils/helper.py" in upload["Files"]
    req = create["request"]
    assert create["operation"] == "CreateTrainingJob"
    assert req["HyperParameters"] == {"epochs": "5", "arch": '"resnet50"', "sagemaker_program": '"train_model.py"',
                                      "sagemaker_submit_directory": f'"{upload["S3Uri"]}"',
                                      "sagemaker_container_log_level": "20", "sagemaker_job_name": '"dogs-script"',
                                      "sagemaker_region": '"us-east-1"'}
    assert req["AlgorithmSpecification"]["MetricDefinitions"] == [
        {"Name": "test_loss", "Regex": "Test set: Average loss: ([0-9.]+)"}]
    assert req["AlgorithmSpecification"]["TrainingImage"].endswith("/localsage:latest")  # the same image
    assert sorted(p.name for p in project.rglob("*")) == before  # no archive written


def test_cli_train_sends_env_processes_per_host_and_hook_parameters(capsys, project):
    """--env, --processes-per-host and --debugger-hook-config reach the CreateTrainingJob request, for the
    built-in trainer and a script alike (as Estimator(environment=...), the toolkit's hyperparameter and
    DebuggerHookConfig(hook_parameters=...))."""
    builtin = _train_args(["train", "--backend", "sagemaker", "--data", DATA, "--name", "dogs-env", "--dry-run",
                           "--hp", "epochs=2", "--processes-per-host", "2", "--env", "NCCL_DEBUG=INFO"])
    assert builtin.func(builtin) == 0
    req = json.loads(capsys.readouterr().out)["request"]
    assert req["HyperParameters"] == {"epochs": "2", "sagemaker_mpi_num_of_processes_per_host": "2"}
    assert req["Environment"] == {"NCCL_DEBUG": "INFO"}
    script = _train_args(["train", "--backend", "sagemaker", "--data", DATA, "--name", "dogs-hook", "--dry-run",
                          "--processes-per-host", "4", "--debugger-hook-config", "train.save_interval=5"],
                         entry_point="train_model.py", source_dir=project)
    assert script.func(script) == 0
    req = json.loads(capsys.readouterr().out)[-1]["request"]
    assert req["HyperParameters"]["sagemaker_mpi_num_of_processes_per_host"] == "4"
    assert req["DebugHookConfig"]["HookParameters"] == {"train.save_interval": "5"}
    builtin = _train_args(["train", "--backend", "sagemaker", "--data", DATA, "--name", "dogs-hook", "--dry-run",
                           "--debugger-hook-config", "save_all=true"])
    assert builtin.func(builtin) == 0  # the built-in trainer reads SageMaker's debughookconfig.json too
    assert json.loads(capsys.readouterr().out)["request"]["DebugHookConfig"]["HookParameters"] == {"save_all": "true"}
    off = _train_args(["train", "--backend", "sagemaker", "--data", DATA, "--dry-run", "--hp", "debug=false",
                       "--debugger-hook-config", "save_all=true"])
    assert off.func(off) == 2 and "debug=false" in capsys.readouterr().err


def test_the_built_in_trainers_tensors_switch_and_sagemakers_agree(capsys):
    """--no-debug-tensors sends debug=false to the built-in trainer (its hook's switch), and debug=false
    sends no DebuggerHookConfig (no S3 tensors path for a hook that is never set up)."""
    def request(*extra):
        args = _train_args(["train", "--backend", "sagemaker", "--data", DATA, "--name", "dogs-quiet", "--dry-run",
                            *extra])
        assert args.func(args) == 0
        return json.loads(capsys.readouterr().out)["request"]

    on = request()
    assert "debug" not in on.get("HyperParameters", {}) and on["DebugHookConfig"]["S3OutputPath"].startswith("s3://")
    for extra in (["--no-debug-tensors"], ["--hp", "debug=false"], ["--hp", "debug=false", "--no-debug-tensors"]):
        req = request(*extra)
        assert req["HyperParameters"]["debug"] == "false" and "DebugHookConfig" not in req, extra
    both = _train_args(["train", "--backend", "sagemaker", "--data", DATA, "--dry-run", "--no-debug-tensors",
                        "--hp", "debug=true"])
    assert both.func(both) == 2 and "debug=true" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--inference-entry-point", "inference.py"], "localsage deploy --entry-point"),
    (["--debugger-hook-config", "train.save_interval=5", "--no-debug-tensors"], "--no-debug-tensors")])
def test_cloud_train_refuses_what_it_cannot_carry(capsys, project, extra, message):
    args = _train_args(["train", "--backend", "sagemaker", "--data", DATA, "--dry-run", *extra],
                       entry_point="train_model.py", source_dir=project)
    assert args.func(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("definition, message", [
    ("test_loss", "NAME=REGEX"), ("test_loss=loss: [0-9.]+", "capture the value"),
    ("test_loss=loss: ([0-9.+)", "bad regex")])
def test_bad_metric_definitions_are_refused_before_anything(capsys, project, definition, message):
    args = _train_args(["train", "--backend", "sagemaker", "--data", DATA, "--dry-run"],
                       entry_point="train_model.py", source_dir=project, metric_definitions=[definition])
    assert args.func(args) == 2
    assert message in capsys.readouterr().err


def test_script_mode_errors_are_clear_and_create_nothing(aws, capsys, project, tmp_path):
    jobs = tmp_path / "jobs"
    base = ["train", "--backend", "sagemaker", "--data", DATA, "--role", ROLE, "--image", IMAGE, "--yes",
            "--jobs-dir", str(jobs)]
    args = _train_args(base, entry_point="missing.py", source_dir=project)
    assert args.func(args) == 2
    assert "no file named 'missing.py'" in capsys.readouterr().err
    args = _train_args(base, source_dir=project)
    assert args.func(args) == 2
    assert "--source-dir needs --entry-point" in capsys.readouterr().err
    args = _train_args(base)
    args.distribution = "torch_distributed"
    assert args.func(args) == 2
    assert "needs --entry-point" in capsys.readouterr().err
    assert not jobs.exists()
    assert aws.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []


def test_script_mode_run_uploads_the_source_then_creates_the_job(aws, sent, capsys, project, tmp_path):
    name = "dogs-script-run"
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="dogs-bucket")
    s3.put_object(Bucket="dogs-bucket", Key=f"localsage/jobs/{name}/output/model.tar.gz",
                  Body=_tar_gz({"model.pth": b"weights"}))
    args = _train_args(["train", "--backend", "sagemaker", "--data", DATA, "--role", ROLE, "--image", IMAGE, "--yes",
                        "--hp", "epochs=2", "--name", name, "--jobs-dir", str(tmp_path)],
                       entry_point="train_model.py", source_dir=project, metric_definitions=[TEST_LOSS])
    assert args.func(args) == 0, capsys.readouterr()
    archive = s3.get_object(Bucket="dogs-bucket", Key=f"{name}/source/sourcedir.tar.gz")
    assert archive["ServerSideEncryption"] == "aws:kms"
    assert _members(archive["Body"].read())["train_model.py"] == (project / "train_model.py").read_bytes()
    job = aws.client("sagemaker").describe_training_job(TrainingJobName=name)
    assert json.loads(job["HyperParameters"]["sagemaker_submit_directory"]) == \
        f"s3://dogs-bucket/{name}/source/sourcedir.tar.gz"
    assert job["HyperParameters"]["epochs"] == "2"
    # the upload came before the job that needs it, and the job sent is the dry run's
    ops = [op for op, _ in sent]
    assert ops.index("PutObject") < ops.index("CreateTrainingJob")
    created = next(params for op, params in sent if op == "CreateTrainingJob")
    opts = options(entry_point="train_model.py", source_dir=str(project), metric_definitions=[TEST_LOSS])
    assert created == training_request(DATA, {"epochs": "2"}, opts, name)["request"]
    record = records.describe(name, tmp_path)
    assert record["TrainingJobStatus"] == "Completed"
    assert record["HyperParameters"]["sagemaker_program"] == '"train_model.py"'
    assert record["AlgorithmSpecification"]["MetricDefinitions"] == [
        {"Name": "test_loss", "Regex": "Test set: Average loss: ([0-9.]+)"}]


SCRIPT_ENV = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
              "SAGEMAKER_CONTAINER_LOG_LEVEL": "20", "SAGEMAKER_REGION": REGION}


def test_cli_deploy_entry_point_dry_run_shows_the_repacked_model(capsys, tmp_path, trained_job_like, project):
    code = cli.main(["deploy", trained_job_like, "--jobs-dir", str(tmp_path / "jobs"), "--dry-run",
                     "--output-path", "s3://dogs-bucket/models", "--entry-point", "inference.py",
                     "--source-dir", str(project)])
    assert code == 0
    repack, model, config, _ = json.loads(capsys.readouterr().out)
    destination = "s3://dogs-bucket/models/localsage-local-job/model.tar.gz"
    assert repack["RepackedModelData"] == destination and repack["Program"] == "inference.py"
    assert repack["ModelData"].endswith("local-job/model.tar.gz")
    assert {"code/inference.py", "code/requirements.txt", "code/utils/helper.py"} <= set(repack["Adds"])
    container = model["request"]["PrimaryContainer"]
    assert container["ModelDataUrl"] == destination
    assert container["Environment"] == SCRIPT_ENV  # the inference toolkit's batching, not the built-in model's
    assert config["request"]["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.xlarge"
    # the entry point alone (no source dir), with an explicit batch size
    assert cli.main(["deploy", "s3://dogs-bucket/m/model.tar.gz", "--dry-run", "--endpoint-name", "ep-1",
                     "--entry-point", str(project / "inference.py"), "--batch-size", "4"]) == 0
    repack, model, *_ = json.loads(capsys.readouterr().out)
    assert repack["Adds"] == ["code/inference.py"] and repack["RepackedModelData"] == "s3://dogs-bucket/ep-1/model.tar.gz"
    assert model["request"]["PrimaryContainer"]["Environment"] == {**SCRIPT_ENV, "SAGEMAKER_TS_BATCH_SIZE": "4"}


def test_deploy_entry_point_errors(capsys, project):
    assert cli.main(["deploy", "s3://b/model.tar.gz", "--dry-run", "--source-dir", str(project)]) == 2
    assert "--source-dir needs --entry-point" in capsys.readouterr().err
    assert cli.main(["deploy", "s3://b/model.tar.gz", "--dry-run", "--entry-point", "utils/helper.py",
                     "--source-dir", str(project)]) == 2
    assert "at the top of the source dir" in capsys.readouterr().err
    assert cli.main(["deploy", "s3://b/model.tar.gz", "--dry-run", "--entry-point", "nope.py"]) == 2
    assert "not found" in capsys.readouterr().err


def test_deploy_entry_point_repacks_like_the_sdk_pytorch_model(aws, capsys, project):
    """`deploy --entry-point --yes` against moto, beside the real SDK's PyTorchModel(entry_point,
    source_dir).deploy for the same model: the same repacked archive, environment and URI layout."""
    from sagemaker.pytorch import PyTorchModel

    s3 = aws.client("s3")
    s3.create_bucket(Bucket="dogs-bucket")
    original = _tar_gz({"model.pth": b"weights", "code/old.py": b"stale"})
    s3.put_object(Bucket="dogs-bucket", Key="jobs/j/output/model.tar.gz", Body=original)
    source = "s3://dogs-bucket/jobs/j/output/model.tar.gz"

    sdk_model = PyTorchModel(model_data=source, entry_point="inference.py", source_dir=str(project), image_uri=IMAGE,
                             role=ROLE, framework_version="2.1", py_version="py310", name="sdk-ep",
                             code_location="s3://dogs-bucket/models",
                             sagemaker_session=cloud_session.sagemaker_session(cloud_session.aws_session(REGION)))
    sdk_model.deploy(initial_instance_count=1, instance_type="ml.g4dn.xlarge", endpoint_name="sdk-ep", wait=False)
    sm = aws.client("sagemaker")
    sdk_container = sm.describe_model(ModelName="sdk-ep")["PrimaryContainer"]
    assert sdk_container["ModelDataUrl"] == "s3://dogs-bucket/models/sdk-ep/model.tar.gz"

    assert cli.main(["deploy", source, "--endpoint-name", "dogs-ep", "--output-path", "s3://dogs-bucket/models",
                     "--entry-point", "inference.py", "--source-dir", str(project), "--role", ROLE, "--image", IMAGE,
                     "--yes", "--no-wait"]) == 0, capsys.readouterr()
    container = sm.describe_model(ModelName="dogs-ep")["PrimaryContainer"]
    assert container["ModelDataUrl"] == "s3://dogs-bucket/models/dogs-ep/model.tar.gz"
    assert container["Environment"] == sdk_container["Environment"] == SCRIPT_ENV

    def repacked(key):
        return _members(s3.get_object(Bucket="dogs-bucket", Key=key)["Body"].read())

    ours, sdk = repacked("models/dogs-ep/model.tar.gz"), repacked("models/sdk-ep/model.tar.gz")
    assert ours == sdk
    assert ours["model.pth"] == b"weights" and ours["code/inference.py"] == (project / "inference.py").read_bytes()
    assert "code/old.py" not in ours  # code/ is the source dir, replaced whole
    assert s3.get_object(Bucket="dogs-bucket", Key="jobs/j/output/model.tar.gz")["Body"].read() == original
