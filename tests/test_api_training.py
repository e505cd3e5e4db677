"""Training jobs through `localsage api`: real clients, unchanged except for the lines the server prints.

Docker backend: SDK v3 `ModelTrainer.train()` (its default mode: a SageMaker training job) with the built-in
trainer and with examples/dog-breeds/train.py as source code (v3's ContainerEntrypoint, `code` and `sm_drivers`
channels), and SDK v2 `PyTorch(entry_point=...).fit(logs=True)` on data from `Session.upload_data` with
`rules=[Rule.sagemaker(rule_configs.loss_not_decreasing())]`. Process backend (no containers, fast): boto3's
Create/Describe/List/Stop, the request checks, MaxRuntimeInSeconds, checkpoints both ways, a failing script's
FailureReason, a source tarball with a link refused, v3's script job, and a server SIGKILLed mid-job.

The fast lane has the pieces' unit tests (no server, no job). The client programs are in tests/clients/
(api_v3_*.py run by the SDK v3 venv's python, api_v2_*.py by this one); they import nothing of localsage.
Data: conftest's small set (2 classes, 40 px), 1 epoch, 32 px."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import IMAGE, ROOT, TINY_HP
from test_api_server import BUCKET, ROLE, ApiServer

CLIENTS = ROOT / "tests" / "clients"
EXAMPLE = ROOT / "examples" / "dog-breeds"
SDK3_PYTHON = Path(os.environ.get("LOCALSAGE_SDK3_PYTHON", ROOT / ".venv-sdk3" / "bin" / "python"))
SCRIPT_HP = {"epochs": "1", "arch": "resnet18", "weights": "none", "image-size": "32", "batch-size": "8"}
CLIENT_TIMEOUT = 400
FINAL = ("Completed", "Failed", "Stopped")


# -- helpers -----------------------------------------------------------------------------------------------------
def hp_args(hps: dict) -> list:
    return [a for k, v in hps.items() for a in ("--hp", f"{k}={v}")]


def run_client(server, python, script, *args, timeout=CLIENT_TIMEOUT) -> tuple[dict, str]:
    proc = subprocess.run([str(python), str(CLIENTS / script), *map(str, args)], env=server.env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + "\n--- server log:\n" + server.log()[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


def upload_folder(s3, folder: Path, prefix: str) -> str:
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def request(name: str, data_uri: str, hps: dict, **extra) -> dict:
    body = {"TrainingJobName": name, "RoleArn": ROLE, "HyperParameters": dict(hps),
            "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File"},
            "InputDataConfig": [{"ChannelName": "training", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": data_uri, "S3DataDistributionType": "FullyReplicated"}}}],
            "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/api-tests/out"},
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600}}
    body.update(extra)
    return body


def wait(sm, name: str, until=FINAL, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = sm.describe_training_job(TrainingJobName=name)
        if job["TrainingJobStatus"] in until or job["SecondaryStatus"] in until:
            return job
        assert time.monotonic() < deadline, f"{name} still {job['TrainingJobStatus']}/{job['SecondaryStatus']}"
        time.sleep(0.5)


def error_of(call, **kwargs) -> tuple[str, str]:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        call(**kwargs)
    return info.value.response["Error"]["Code"], info.value.response["Error"]["Message"]


def source_tarball(files: dict, link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return buf.getvalue()


def jobs_list(root: Path) -> str:
    env = {**os.environ, "LOCALSAGE_JOBS_DIR": str(root / "jobs")}
    proc = subprocess.run([sys.executable, "-m", "localsage", "jobs", "list"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# -- pieces (no server, no job) -------------------------------------------------------------------------------
def test_source_tarballs_hold_plain_files_only(tmp_path):
    from localsage.api.channels import safe_extract

    ok = tmp_path / "ok.tar.gz"
    ok.write_bytes(source_tarball({"train.py": "print(1)", "pkg/util.py": "x = 1"}))
    safe_extract(ok, tmp_path / "ok")
    assert (tmp_path / "ok" / "pkg" / "util.py").read_text() == "x = 1"
    for i, (files, link) in enumerate([({"train.py": ""}, "secret"), ({"../escape.py": ""}, None),
                                       ({"/abs.py": ""}, None), ({"a/../../b.py": ""}, None)]):
        bad = tmp_path / f"bad{i}.tar.gz"
        bad.write_bytes(source_tarball(files, link=link))
        with pytest.raises(ValueError):
            safe_extract(bad, tmp_path / f"bad{i}")
        assert not any((tmp_path / f"bad{i}").rglob("*")), "nothing is written from a refused archive"
    assert not (tmp_path / "escape.py").exists()


def test_channels_and_instance_types_are_checked_as_sagemaker_does():
    from localsage.api.channels import channels_of
    from localsage.api.errors import ApiError
    from localsage.api.instances import check_training_instance_type, is_gpu_type

    body = request("x", f"s3://{BUCKET}/data", {})
    assert channels_of(body) == [{"name": "training", "uri": f"s3://{BUCKET}/data", "distribution": "FullyReplicated"}]
    body["InputDataConfig"][0]["InputMode"] = "FastFile"
    assert channels_of(body)[0]["name"] == "training"
    for change in ({"InputMode": "Pipe"}, {"CompressionType": "Gzip"},
                   {"DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": "s3://b/m"}}},
                   {"DataSource": {"FileSystemDataSource": {}}}):
        bad = request("x", f"s3://{BUCKET}/data", {})
        bad["InputDataConfig"][0].update(change)
        with pytest.raises(ApiError):
            channels_of(bad)
    twice = request("x", f"s3://{BUCKET}/data", {})
    twice["InputDataConfig"] *= 2
    with pytest.raises(ApiError, match="given twice"):
        channels_of(twice)
    assert check_training_instance_type("ml.m5.large") == "ml.m5.large"
    with pytest.raises(ApiError, match="resourceConfig.instanceType"):
        check_training_instance_type("local_cpu")
    assert is_gpu_type("ml.g4dn.xlarge") and is_gpu_type("ml.p3.2xlarge") and not is_gpu_type("ml.m5.large")


def test_rule_configurations_become_localsage_rules():
    from localsage.api.rules import specs_of

    body = {"DebugRuleConfigurations": [
        {"RuleConfigurationName": "LossNotDecreasing", "RuleEvaluatorImage": "x",
         "RuleParameters": {"rule_to_invoke": "LossNotDecreasing", "num_steps": "3", "tensor_regex": ".*"}},
        {"RuleConfigurationName": "Mine", "RuleEvaluatorImage": "x", "RuleParameters": {"rule_to_invoke": "MyRule"}},
        {"RuleConfigurationName": "Bad", "RuleEvaluatorImage": "x",
         "RuleParameters": {"rule_to_invoke": "Overfit", "ratio_threshold": "high"}}],
        "ProfilerRuleConfigurations": [
        {"RuleConfigurationName": "ProfilerReport", "RuleEvaluatorImage": "x",
         "RuleParameters": {"rule_to_invoke": "ProfilerReport", "CPUBottleneck_threshold": "20"}}]}
    loss, custom, bad, report = specs_of(body)
    assert (loss.rules, loss.params, loss.ignored, loss.error) == (
        ["LossNotDecreasing"], {"LossNotDecreasing": {"num_steps": 3}}, ["tensor_regex"], None)
    assert custom.error and "MyRule" in custom.error and bad.error and "ratio_threshold" in bad.error
    assert report.statuses_key == "ProfilerRuleEvaluationStatuses" and "CPUBottleneck" in report.rules
    assert report.params == {"CPUBottleneck": {"threshold": 20.0}}


def test_a_plan_from_a_request_keeps_its_hyperparameters(tmp_path):
    from localsage.host.backends import JobSpec, docker
    from localsage.host.jobplan import JobPlan
    from localsage.host.script_job import Script

    (tmp_path / "train.py").write_text("")
    hps = {"sagemaker_program": '"train.py"', "sagemaker_submit_directory": '"s3://b/src.tar.gz"', "lr": "0.1",
           "arch": '"resnet18"'}
    plan = JobPlan(script=Script("train.py", tmp_path), hyperparameters=hps, as_given=True)
    sent = plan.job_hyperparameters("job", tmp_path / "job", in_container=True)
    assert sent == {**hps, "sagemaker_submit_directory": '"/opt/ml/code"'}
    assert plan.backend_script(tmp_path / "job")["hyperparameters"] == {"lr": 0.1, "arch": "resnet18"}
    builtin = JobPlan(hyperparameters={"epochs": "1", "debug": "false"}, as_given=True)
    assert builtin.job_hyperparameters("job", tmp_path, in_container=True) == {"epochs": "1", "debug": "false"}
    spec = JobSpec("job", tmp_path, {}, {}, entrypoint=["/bin/bash"], arguments=["-c", "echo hi"])
    assert docker.command(spec) == {"entrypoint": ["/bin/bash"], "command": ["-c", "echo hi"],
                                    "tmpfs": {"/opt/ml/input": "mode=1777"}}
    assert docker.command(JobSpec("job", tmp_path, {}, {})) == {"command": ["train"]}


def test_describe_leaves_out_empty_structures():
    from localsage.api.training import public

    record = {"TrainingJobName": "j", "VpcConfig": {}, "Environment": {}, "HyperParameters": {"a": "1"},
              "DebugHookConfig": {"S3OutputPath": "s3://b/", "CollectionConfigurations": []}, "Local": {"x": 1},
              "FailureReason": None}
    assert public(record) == {"TrainingJobName": "j", "HyperParameters": {"a": "1"},
                              "DebugHookConfig": {"S3OutputPath": "s3://b/"}}


# -- docker backend: the SDKs' own code ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api_image(image):
    return image


@pytest.fixture(scope="module")
def docker_api(api_image, tmp_path_factory):
    srv = ApiServer(tmp_path_factory.mktemp("api-docker") / "root", "--backend", "docker", "--image", api_image)
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def sdk3_python():
    assert SDK3_PYTHON.exists(), f"no SDK v3 client venv at {SDK3_PYTHON} (make install creates it)"
    return SDK3_PYTHON


@pytest.mark.integration
@pytest.mark.docker
@pytest.mark.api_full
def test_v3_model_trainer_runs_the_builtin_trainer(docker_api, sdk3_python, small_data):
    got, _ = run_client(docker_api, sdk3_python, "api_v3_model_trainer.py", "--image", IMAGE, "--data", small_data,
                        *hp_args(TINY_HP))
    assert got["status"] == "Completed", got
    assert got["model_data"] == f"s3://{BUCKET}/v3-api/{got['job']}/output/model.tar.gz"
    assert "valid_acc" in got["metrics"], got  # the built-in trainer's metrics: FinalMetricDataList
    s3 = docker_api.client("s3")
    s3.head_object(Bucket=BUCKET, Key=f"v3-api/{got['job']}/output/model.tar.gz")
    s3.head_object(Bucket=BUCKET, Key=f"v3-api/{got['job']}/output/output.tar.gz")
    listed = [line.split()[:2] for line in jobs_list(docker_api.root).splitlines()]
    assert [got["job"], "Completed"] in listed  # a localsage job too


@pytest.mark.integration
@pytest.mark.docker
def test_v3_model_trainer_runs_a_script_with_its_container_entrypoint(docker_api, sdk3_python, small_data):
    got, _ = run_client(docker_api, sdk3_python, "api_v3_model_trainer.py", "--image", IMAGE, "--data", small_data,
                        "--source-dir", EXAMPLE, "--entry", "train.py", *hp_args(SCRIPT_HP))
    assert got["status"] == "Completed", got
    sm, s3, logs = (docker_api.client(s) for s in ("sagemaker", "s3", "logs"))
    job = sm.describe_training_job(TrainingJobName=got["job"])
    assert job["AlgorithmSpecification"]["ContainerEntrypoint"] == ["/bin/bash"]
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"]
    body = s3.get_object(Bucket=BUCKET, Key=f"v3-api/{got['job']}/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert "model.pth" in {n.lstrip("./") for n in tar.getnames()}
    streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs",
                                        logStreamNamePrefix=f"{got['job']}/")["logStreams"]
    assert [s["logStreamName"].rpartition("-")[0] for s in streams] == [f"{got['job']}/algo-1"]
    events = logs.get_log_events(logGroupName="/aws/sagemaker/TrainingJobs", startFromHead=True,
                                 logStreamName=streams[0]["logStreamName"])["events"]
    assert any("Test set: Average loss" in e["message"] for e in events)


@pytest.mark.integration
@pytest.mark.docker
def test_v2_pytorch_fit_tails_the_log_and_its_rule_finds_the_planted_divergence(docker_api, small_data):
    """The planted fault: lr=1000 makes the loss blow up; the losses are saved every step (the rule's default is
    every 500, nothing to judge in a tiny job), over 3 short epochs, and LossNotDecreasing compares every 2 steps."""
    got, out = run_client(docker_api, sys.executable, "api_v2_pytorch_fit.py", "--image", IMAGE, "--data",
                          small_data, "--source-dir", EXAMPLE, "--entry", "train.py",
                          *hp_args({**SCRIPT_HP, "lr": "1000", "epochs": "3", "batch-size": "4"}),
                          "--loss-save-interval", "1",
                          "--rule-param", "num_steps=2")
    assert got["status"] == "Completed", got
    assert "Test set: Average loss" in out  # fit(logs=True) tailed CloudWatch Logs
    assert got["rules"] == [["LossNotDecreasing", "IssuesFound"]], got
    assert "LossNotDecreasing: IssuesFound" in out  # the SDK printed the verdict while waiting
    job = docker_api.client("sagemaker").describe_training_job(TrainingJobName=got["job"])
    status = job["DebugRuleEvaluationStatuses"][0]
    assert status["RuleEvaluationStatus"] == got["rules"][0][1] and status["StatusDetails"]
    hps = job["HyperParameters"]
    assert hps["sagemaker_program"] == '"train.py"' and hps["sagemaker_submit_directory"].startswith('"s3://')
    assert got["model_data"] == f"s3://{BUCKET}/{got['job']}/output/model.tar.gz"
    keys = [o["Key"] for o in docker_api.client("s3").list_objects_v2(
        Bucket=BUCKET, Prefix=f"{got['job']}/debug-output/").get("Contents", [])]
    assert keys, "the debugger's tensors go to DebugHookConfig.S3OutputPath/<job>/debug-output"


@pytest.mark.integration
@pytest.mark.docker
@pytest.mark.api_full
def test_two_instances_run_as_sdk_local_mode_hosts(docker_api, small_data):
    sm = docker_api.client("sagemaker")
    uri = upload_folder(docker_api.client("s3"), small_data, "api-tests/hosts-data")
    sm.create_training_job(**request("api-two-hosts", uri, TINY_HP, ResourceConfig={
        "InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 5}))
    job = wait(sm, "api-two-hosts", timeout=CLIENT_TIMEOUT)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert json.loads((docker_api.root / "jobs" / "api-two-hosts" / "job.json").read_text())["Backend"] == \
        "sagemaker-local"
    assert job["ModelArtifacts"]["S3ModelArtifacts"].endswith("/api-two-hosts/output/model.tar.gz")


# -- process backend: boto3 ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(tmp_path_factory):
    srv = ApiServer(tmp_path_factory.mktemp("api-process") / "root")
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def data_uri(api, small_data):
    return upload_folder(api.client("s3"), small_data, "api-tests/data")


# A user's program that runs until stopped (fast to start: no torch): a step a tenth of a second, its state in
# SM_CHECKPOINT_DIR (resumed from there), a loss line that MetricDefinitions scrape.
SLEEPER = """
import argparse, os, time
p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=600)
steps = p.parse_args().steps
state = os.path.join(os.environ["SM_CHECKPOINT_DIR"], "state.txt")
os.makedirs(os.path.dirname(state), exist_ok=True)
step = int(open(state).read()) if os.path.exists(state) else 0
if step:
    print(f"resuming from checkpoint at step {step}", flush=True)
print("GREETING=" + os.environ.get("GREETING", ""), flush=True)
for i in range(step, steps):
    with open(state + ".tmp", "w") as f:
        f.write(str(i + 1))
    os.replace(state + ".tmp", state)
    print(f"step {i + 1}: loss={1.0 / (i + 1):.4f}", flush=True)
    time.sleep(0.1)
os.makedirs(os.environ["SM_MODEL_DIR"], exist_ok=True)
open(os.path.join(os.environ["SM_MODEL_DIR"], "model.txt"), "w").write("trained")
"""
LOSS = [{"Name": "loss", "Regex": "loss=([0-9.]+)"}]


@pytest.fixture(scope="module")
def sleeper(api):
    api.client("s3").put_object(Bucket=BUCKET, Key="api-tests/src/sleeper.tar.gz",
                                Body=source_tarball({"train.py": SLEEPER}))
    return f"s3://{BUCKET}/api-tests/src/sleeper.tar.gz"


def sleeper_hp(uri: str, steps: int = 600) -> dict:
    return {"sagemaker_program": '"train.py"', "sagemaker_submit_directory": json.dumps(uri), "steps": str(steps)}


@pytest.mark.integration
def test_boto3_create_describe_list_stop(api, data_uri, sleeper):
    sm = api.client("sagemaker")
    arn = sm.create_training_job(**request("api-stop", data_uri, sleeper_hp(sleeper)))["TrainingJobArn"]
    assert arn == "arn:aws:sagemaker:us-east-1:123456789012:training-job/api-stop"
    wait(sm, "api-stop", until=("Training",))
    listed = sm.list_training_jobs(NameContains="api-stop", StatusEquals="InProgress")["TrainingJobSummaries"]
    assert [j["TrainingJobName"] for j in listed] == ["api-stop"]
    sm.stop_training_job(TrainingJobName="api-stop")
    assert sm.describe_training_job(TrainingJobName="api-stop")["TrainingJobStatus"] in ("Stopping", "Stopped")
    job = wait(sm, "api-stop")
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "Stopped"), job.get("FailureReason")
    steps = [t["Status"] for t in job["SecondaryStatusTransitions"]]
    assert steps[:3] == ["Starting", "Downloading", "Training"] and steps[-1] == "Stopped" and "Stopping" in steps
    assert all("EndTime" in t for t in job["SecondaryStatusTransitions"])
    code, message = error_of(sm.stop_training_job, TrainingJobName="api-stop")
    assert code == "ValidationException" and "status Stopped" in message
    assert error_of(sm.describe_training_job, TrainingJobName="no-such-job") == (
        "ValidationException", "Requested resource not found.")
    assert sm.list_training_jobs(StatusEquals="Stopped", NameContains="api-stop")["TrainingJobSummaries"]
    page = sm.list_training_jobs(MaxResults=1, SortBy="Name", SortOrder="Ascending")
    assert len(page["TrainingJobSummaries"]) == 1


@pytest.mark.integration
def test_create_answers_bad_requests_as_sagemaker_does(api, data_uri, sleeper):
    sm = api.client("sagemaker")
    bad = {
        "instance type": dict(ResourceConfig={"InstanceType": "ml.nope.large", "InstanceCount": 1,
                                              "VolumeSizeInGB": 5}),
        "two instances on process": dict(ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 2,
                                                         "VolumeSizeInGB": 5}),
        "pipe mode": dict(AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "Pipe"}),
        "algorithm name": dict(AlgorithmSpecification={"AlgorithmName": "xgboost", "TrainingInputMode": "File"}),
        "manifest": dict(InputDataConfig=[{"ChannelName": "training", "DataSource": {"S3DataSource": {
            "S3DataType": "ManifestFile", "S3Uri": data_uri}}}]),
        "metric regex": dict(AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File",
                                                     "MetricDefinitions": [{"Name": "x", "Regex": "no group"}]}),
        "program without code": dict(HyperParameters={"sagemaker_program": '"train.py"'}),
        "code from a path": dict(HyperParameters={"sagemaker_program": '"train.py"',
                                                  "sagemaker_submit_directory": '"/etc"'}),
    }
    for what, change in bad.items():
        code, message = error_of(sm.create_training_job, **request(f"api-bad-{len(what)}", data_uri, TINY_HP,
                                                                   **change))
        assert code == "ValidationException", (what, code, message)
    assert "resourceConfig.instanceType" in error_of(sm.create_training_job, **request(
        "api-bad", data_uri, TINY_HP, **bad["instance type"]))[1]
    assert not sm.list_training_jobs(NameContains="api-bad")["TrainingJobSummaries"]
    sm.create_training_job(**request("api-twice", data_uri, sleeper_hp(sleeper, steps=1)))
    assert error_of(sm.create_training_job, **request("api-twice", data_uri, TINY_HP))[0] == "ResourceInUse"
    job = wait(sm, "api-twice")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    missing = request("api-no-data", f"s3://{BUCKET}/api-tests/nothing-here", TINY_HP)
    sm.create_training_job(**missing)
    job = wait(sm, "api-no-data")
    assert job["TrainingJobStatus"] == "Failed" and job["FailureReason"].startswith("ClientError: Data download")


@pytest.mark.integration
def test_max_runtime_metrics_and_checkpoints_both_ways(api, data_uri, sleeper):
    sm, s3 = api.client("sagemaker"), api.client("s3")
    checkpoints = {"S3Uri": f"s3://{BUCKET}/api-tests/checkpoints/run"}
    algorithm = {"TrainingImage": IMAGE, "TrainingInputMode": "File", "MetricDefinitions": LOSS}
    sm.create_training_job(**request("api-maxrun", data_uri, sleeper_hp(sleeper), CheckpointConfig=checkpoints,
                                     AlgorithmSpecification=algorithm, StoppingCondition={"MaxRuntimeInSeconds": 4}))
    job = wait(sm, "api-maxrun")
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")
    state = s3.get_object(Bucket=BUCKET, Key="api-tests/checkpoints/run/state.txt")["Body"].read()
    assert int(state) > 5
    (loss,) = job["FinalMetricDataList"]
    assert loss["MetricName"] == "loss" and 0 < loss["Value"] < 0.2
    sm.create_training_job(**request("api-resume", data_uri, sleeper_hp(sleeper, steps=int(state) + 3),
                                     CheckpointConfig=checkpoints, Environment={"GREETING": "hello"}))
    job = wait(sm, "api-resume")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    log = (api.root / "jobs" / "api-resume" / "train.log").read_text()
    assert f"resuming from checkpoint at step {int(state)}" in log and "GREETING=hello" in log
    assert s3.get_object(Bucket=BUCKET, Key="api-tests/checkpoints/run/state.txt")["Body"].read() == \
        str(int(state) + 3).encode()
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{BUCKET}/api-tests/out/api-resume/output/model.tar.gz"


@pytest.mark.integration
def test_a_failing_script_and_a_tarball_with_a_link(api, data_uri):
    sm, s3 = api.client("sagemaker"), api.client("s3")
    program = "import sys\nprint('about to fail', flush=True)\nsys.exit('boom: the data is bad')\n"
    s3.put_object(Bucket=BUCKET, Key="api-tests/src/fail.tar.gz", Body=source_tarball({"train.py": program}))
    s3.put_object(Bucket=BUCKET, Key="api-tests/src/link.tar.gz",
                  Body=source_tarball({"train.py": program}, link="secret"))
    for name, key in (("api-fails", "fail"), ("api-link", "link")):
        hps = {"sagemaker_program": '"train.py"',
               "sagemaker_submit_directory": f'"s3://{BUCKET}/api-tests/src/{key}.tar.gz"'}
        sm.create_training_job(**request(name, data_uri, hps))
    failed, linked = wait(sm, "api-fails"), wait(sm, "api-link")
    assert failed["TrainingJobStatus"] == "Failed" and failed["FailureReason"].startswith("AlgorithmError")
    assert "boom: the data is bad" in failed["FailureReason"]
    assert linked["TrainingJobStatus"] == "Failed" and linked["FailureReason"].startswith("ClientError")
    assert "secret" in linked["FailureReason"] and not (api.root / "staging" / "api-link" / "code" / "secret").exists()
    logs = api.client("logs")
    stream = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs",
                                       logStreamNamePrefix="api-fails/")["logStreams"][0]["logStreamName"]
    events = logs.get_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream)["events"]
    assert any("about to fail" in e["message"] for e in events)


@pytest.mark.integration
@pytest.mark.api_full
def test_v3_script_job_on_the_process_backend(api, sdk3_python, small_data):
    got, _ = run_client(api, sdk3_python, "api_v3_model_trainer.py", "--image", IMAGE, "--data", small_data,
                        "--source-dir", EXAMPLE, "--entry", "train.py", *hp_args(SCRIPT_HP))
    assert got["status"] == "Completed", got
    assert (api.root / "jobs" / got["job"] / "model" / "model.pth").is_file()


@pytest.mark.integration
def test_a_killed_server_restarts_with_its_jobs_reconciled(tmp_path, small_data):
    root = tmp_path / "root"
    first = ApiServer(root)
    try:
        sm, s3 = first.client("sagemaker"), first.client("s3")
        uri = upload_folder(s3, small_data, "data")
        s3.put_object(Bucket=BUCKET, Key="src/sleeper.tar.gz", Body=source_tarball({"train.py": SLEEPER}))
        sm.create_training_job(**request("api-killed", uri, sleeper_hp(f"s3://{BUCKET}/src/sleeper.tar.gz")))
        wait(sm, "api-killed", until=("Training",))
        time.sleep(1)
        owner = json.loads((root / "jobs" / "api-killed" / "backend.json").read_text())["Process"]
    finally:
        first.stop(signal.SIGKILL)
    from localsage.core import procs

    deadline = time.monotonic() + 30
    while procs.alive(owner) and time.monotonic() < deadline:  # the job's process dies with the server
        time.sleep(0.2)
    assert procs.alive(owner) is False
    second = ApiServer(root)
    try:
        sm = second.client("sagemaker")
        job = sm.describe_training_job(TrainingJobName="api-killed")
        assert job["TrainingJobStatus"] in ("Stopped", "Failed") and job["SecondaryStatusTransitions"][-1]["EndTime"]
        listed = sm.list_training_jobs()["TrainingJobSummaries"]
        assert [(j["TrainingJobName"], j["TrainingJobStatus"]) for j in listed] == [("api-killed",
                                                                                     job["TrainingJobStatus"])]
    finally:
        assert second.stop() == 0, second.log()


@pytest.mark.integration
def test_a_stopped_server_stops_its_jobs_first(tmp_path, small_data):
    root = tmp_path / "root"
    srv = ApiServer(root)
    try:
        sm, s3 = srv.client("sagemaker"), srv.client("s3")
        uri = upload_folder(s3, small_data, "data")
        s3.put_object(Bucket=BUCKET, Key="src/sleeper.tar.gz", Body=source_tarball({"train.py": SLEEPER}))
        sm.create_training_job(**request("api-sigterm", uri, sleeper_hp(f"s3://{BUCKET}/src/sleeper.tar.gz")))
        wait(sm, "api-sigterm", until=("Training",))
        time.sleep(1)
        owner = json.loads((root / "jobs" / "api-sigterm" / "backend.json").read_text())["Process"]
    finally:
        assert srv.stop(signal.SIGTERM) == 0, srv.log()
    from localsage.core import procs

    assert procs.alive(owner) is False
    record = json.loads((root / "resources" / "TrainingJob" / "api-sigterm.json").read_text())
    assert (record["TrainingJobStatus"], record["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert json.loads((root / "jobs" / "api-sigterm" / "job.json").read_text())["TrainingJobStatus"] == "Stopped"

