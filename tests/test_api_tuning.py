"""The API's hyperparameter tuning: a CreateHyperParameterTuningJob request as an Optuna study whose trials are
training jobs.

In-process (the operations on an `Api`, the training jobs simulated: each reports a loss per epoch that depends on
its lr, a large lr diverges): the request's ranges, strategies and limits as the study reads them, the round trip
from `localsage tune --backend sagemaker --dry-run`, pruning, warm starts, stopping, failures, a server's stop
and a killed server's records. Through `localsage api` (real jobs): the dry-run request posted with boto3 and run
on the process backend; SDK v3 `HyperparameterTuner.tune()` over examples/dog-breeds/train.py and SDK v2
`HyperparameterTuner(PyTorch(...)).fit()` + `best_training_job()` in containers (the programs in tests/clients/
import nothing of localsage)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY_HP
from localsage.api import tuning, tuning_study
from localsage.api.errors import ApiError

pytestmark = pytest.mark.integration

CLIENTS = ROOT / "tests" / "clients"
EXAMPLE = ROOT / "examples" / "dog-breeds"
SDK3_PYTHON = Path(os.environ.get("LOCALSAGE_SDK3_PYTHON", ROOT / ".venv-sdk3" / "bin" / "python"))
BUCKET = "sagemaker-us-east-1-123456789012"
ROLE = "arn:aws:iam::123456789012:role/localsage"
VALID_LOSS = r"Validation set: Average loss: ([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?|nan|inf)"
SCRIPT_HP = ["epochs=2", "arch=resnet18", "weights=none", "image-size=32", "batch-size=8"]
CLIENT_TIMEOUT = 900


# -- a request and a simulated training service -------------------------------------------------------------------
def request(name="tj", lr=None, strategy="Bayesian", jobs=4, parallel=2, stopping="Auto", **config):
    ranges = lr or {"ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.1",
                                                   "ScalingType": "Logarithmic"}]}
    limits = {"MaxParallelTrainingJobs": parallel, **({"MaxNumberOfTrainingJobs": jobs} if jobs else {})}
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy, "ResourceLimits": limits, "TrainingJobEarlyStoppingType": stopping,
            "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "valid_loss"},
            "ParameterRanges": ranges, **config},
        "TrainingJobDefinition": {
            "StaticHyperParameters": {"sagemaker_program": "train.py",
                                      "sagemaker_submit_directory": f"s3://{BUCKET}/src/sourcedir.tar.gz",
                                      "epochs": "3"},
            "AlgorithmSpecification": {"TrainingImage": "localsage:latest", "TrainingInputMode": "File",
                                       "MetricDefinitions": [{"Name": "valid_loss", "Regex": VALID_LOSS}]},
            "RoleArn": ROLE, "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/out"},
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
            "InputDataConfig": [{"ChannelName": "training", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data",
                "S3DataDistributionType": "FullyReplicated"}}}],
        },
    }


def loss(lr: float, epoch: int) -> float:
    """A tidy curve with its best lr at 0.003; above 1 it diverges."""
    if lr > 1:
        return 1e6 * lr * epoch
    return abs(math.log10(lr) + 2.5) + 1.0 / epoch


class FakeTraining:
    """training.py's interface over simulated jobs: a thread per job reports valid_loss each epoch through
    on_metrics and honours its stop event. fail=True: every job fails."""

    def __init__(self, epoch_s=0.05, fail=False):
        self.epoch_s, self.fail, self.jobs, self.done, self.requests = epoch_s, fail, {}, {}, {}

    def setup_of(self, api, request, tags=None):
        if request["AlgorithmSpecification"].get("TrainingImage") == "missing:latest":
            raise ApiError("ValidationException", "image 'missing:latest' is not on this machine")

    def start_training_job(self, api, request, tags=None, on_metrics=None, stop=None, tuning_job_arn=None):
        name, hps = request["TrainingJobName"], request["HyperParameters"]
        self.requests[name] = {**request, "tags": tags, "TuningJobArn": tuning_job_arn}
        record = self.jobs[name] = {"TrainingJobName": name, "TrainingJobStatus": "InProgress",
                                    "TrainingStartTime": time.time()}
        done = self.done[name] = threading.Event()

        def run():
            value, failure = None, "AlgorithmError: boom" if self.fail else None
            try:
                for epoch in range(1, int(hps.get("epochs", 3)) + 1):
                    time.sleep(self.epoch_s)
                    if stop.is_set() or failure:
                        break
                    value = loss(float(hps["lr"]), epoch)
                    if on_metrics({"name": "valid_loss", "value": value, "ordinal": epoch, "timestamp": time.time()}):
                        stop.set()
            except Exception as exc:  # as the runner: the callback's error fails the job
                failure = f"InternalServerError: {exc!r}"
            status = "Failed" if failure else "Stopped" if stop.is_set() else "Completed"
            record.update(TrainingJobStatus=status, TrainingEndTime=time.time(),
                          **({"FailureReason": failure} if failure else {}),
                          **({"FinalMetricDataList": [{"MetricName": "valid_loss", "Value": value}]} if value else {}))
            done.set()

        threading.Thread(target=run, daemon=True).start()
        return {"TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}"}

    def wait_for(self, api, name, timeout=None):
        self.done[name].wait(timeout)
        return dict(self.jobs[name])

    def describe_training_job(self, api, request):
        return dict(self.jobs[request["TrainingJobName"]])

    @staticmethod
    def timestamp(value, field):
        return float(value)


@pytest.fixture
def fake(monkeypatch):
    service = FakeTraining()
    monkeypatch.setattr(tuning, "_training", lambda: service)
    return service


@pytest.fixture
def api(tmp_path):
    from localsage.api.context import Api

    server = Api(tmp_path / "root", backend="process")
    yield server
    server.shutdown(join_timeout=10)


def wait(api, name, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = tuning.describe(api, {"HyperParameterTuningJobName": name})
        if described["HyperParameterTuningJobStatus"] not in ("InProgress", "Stopping"):
            assert described["TrainingJobStatusCounters"]["InProgress"] == 0, described  # final: its jobs too
            return described
        time.sleep(0.05)
    raise AssertionError(f"tuning job {name} still {described['HyperParameterTuningJobStatus']}")


def jobs_of(api, name, **extra) -> list:
    return tuning.list_training_jobs(api, {"HyperParameterTuningJobName": name, **extra})["TrainingJobSummaries"]


def error_of(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value


# -- the request as a study ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", [False, True])
def test_the_dry_run_request_reads_back_as_the_same_study(tmp_path, script):
    """localsage tune -> its SageMaker request (what --dry-run prints) -> the study the API runs: the same space,
    objective, direction, budget, parallelism, sampler and pruning."""
    from localsage.host.tune.sagemaker import dry_run_request
    from localsage.host.tune.settings import build

    raw = {"space": {"lr": {"type": "float", "min": 0.001, "max": 0.1, "scale": "log"},
                     "batch-size": {"values": [32, 64]}},
           "fixed": {"epochs": 2}, "trials": 6, "parallel": 3, "sampler": "random"}
    if script:
        raw.update(entry_point=str(EXAMPLE / "train.py"), objective={"metric": "valid_loss", "type": "minimize"},
                   metric_definitions=[{"Name": "valid_loss", "Regex": VALID_LOSS}])
        raw["space"]["warmup"] = {"type": "int", "min": 0, "max": 3}
    else:
        raw["space"]["warmup-epochs"] = {"type": "int", "min": 0, "max": 3}
    t = build(raw, jobs_dir=tmp_path)
    sent = dry_run_request(t, image="localsage:latest", role=ROLE, s3_data=f"s3://{BUCKET}/data")
    p = tuning_study.plan(sent["HyperParameterTuningJobName"], sent)
    back = {r.name: r.dim for r in p.ranges}
    assert set(back) == set(t.space)
    for name, dim in t.space.items():
        expected = dim if dim.kind != "categorical" else type(dim)(name, "categorical", values=tuple(
            str(v) for v in dim.values))
        assert back[name] == expected
    assert (p.objective, p.direction, p.budget, p.parallel, p.strategy, p.pruning, p.script) == (
        "valid_loss", "minimize", 6, 3, "Random", "median", script)
    static = tuning_study.static_hyperparameters(sent["TrainingJobDefinition"], p.objective)
    assert static["_tuning_objective_metric"] == "valid_loss"
    assert json.loads(static["epochs"]) == 2


def test_scalings_as_sagemaker_describes_them():
    ranges = tuning_study.parse_ranges({
        "ContinuousParameterRanges": [
            {"Name": "auto-wide", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Auto"},
            {"Name": "auto-narrow", "MinValue": "0.1", "MaxValue": "0.5"},
            {"Name": "momentum", "MinValue": "0.9", "MaxValue": "0.999", "ScalingType": "ReverseLogarithmic"}],
        "IntegerParameterRanges": [{"Name": "batch", "MinValue": "8", "MaxValue": "512",
                                    "ScalingType": "Logarithmic"}],
        "CategoricalParameterRanges": [{"Name": "arch", "Values": ["resnet18", "resnet34"]}]}, {})
    by = {r.name: r for r in ranges}
    assert by["auto-wide"].dim.log and not by["auto-narrow"].dim.log and by["batch"].dim.log
    momentum = by["momentum"]
    assert momentum.reverse and momentum.dim.log
    for internal in momentum.grid():
        assert 0.9 <= float(momentum.text(internal)) <= 0.999
        assert momentum.internal(momentum.text(internal)) == pytest.approx(internal)
    assert momentum.internal("0.5") is None and by["batch"].internal("8") == 8 and by["arch"].internal("vgg") is None


@pytest.mark.parametrize("change, field", [
    (lambda r: r["HyperParameterTuningJobConfig"]["ParameterRanges"]["ContinuousParameterRanges"][0].update(
        MinValue="0.5", MaxValue="0.1"), "ContinuousParameterRanges.1.MinValue"),
    (lambda r: r["HyperParameterTuningJobConfig"]["ParameterRanges"]["ContinuousParameterRanges"][0].update(
        MinValue="0"), "ContinuousParameterRanges.1.ScalingType"),
    (lambda r: r["HyperParameterTuningJobConfig"]["ParameterRanges"]["ContinuousParameterRanges"][0].update(
        MinValue="x"), "ContinuousParameterRanges.1.MinValue"),
    (lambda r: r["HyperParameterTuningJobConfig"]["ParameterRanges"]["ContinuousParameterRanges"][0].update(
        ScalingType="ReverseLogarithmic", MaxValue="2"), "ContinuousParameterRanges.1.ScalingType"),
    (lambda r: r["TrainingJobDefinition"]["StaticHyperParameters"].update(lr="0.1"),
     "ContinuousParameterRanges.1.Name"),
    (lambda r: r["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"].update(MetricName="acc"),
     "MetricDefinitions"),
    (lambda r: r["HyperParameterTuningJobConfig"].update(Strategy="Hyperband"), "TrainingJobEarlyStoppingType"),
    (lambda r: r["HyperParameterTuningJobConfig"]["ResourceLimits"].pop("MaxNumberOfTrainingJobs"),
     "MaxNumberOfTrainingJobs"),
    (lambda r: r.update(TrainingJobDefinitions=[r["TrainingJobDefinition"]]), "TrainingJobDefinitions"),
    (lambda r: r.update(WarmStartConfig={"ParentHyperParameterTuningJobs": [{}],
                                         "WarmStartType": "IdenticalDataAndAlgorithm"}),
     "ParentHyperParameterTuningJobs"),
    (lambda r: r.update(WarmStartConfig={"ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": "nope"}],
                                         "WarmStartType": "IdenticalDataAndAlgorithm"}), "nope"),
    (lambda r: r["TrainingJobDefinition"]["AlgorithmSpecification"].update(TrainingImage="missing:latest"),
     "missing:latest"),
])
def test_bad_requests_answer_as_the_service_does(api, fake, change, field):
    bad = request()
    change(bad)
    err = error_of(tuning.create, api, bad)
    assert err.code in ("ValidationException", "ResourceNotFound") and err.status == 400 and field in err.message
    assert api.store.get("HyperParameterTuningJob", "tj") is None


# -- studies over simulated jobs ----------------------------------------------------------------------------------
def test_a_study_runs_its_budget_in_parallel_and_names_the_best(api, fake):
    arn = tuning.create(api, request("study-a", jobs=5, parallel=2, RandomSeed=3))["HyperParameterTuningJobArn"]
    assert arn == "arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/study-a"
    described = wait(api, "study-a")
    assert described["HyperParameterTuningJobStatus"] == "Completed"
    assert sum(described["TrainingJobStatusCounters"].values()) == 5
    jobs = jobs_of(api, "study-a", SortBy="FinalObjectiveMetricValue")
    best = described["BestTrainingJob"]
    assert best["TrainingJobName"] == jobs[0]["TrainingJobName"] and best["TrainingJobStatus"] == "Completed"
    assert best["FinalHyperParameterTuningJobObjectiveMetric"]["MetricName"] == "valid_loss"
    assert set(best["TunedHyperParameters"]) == {"lr"}
    for job in jobs:
        sent = fake.requests[job["TrainingJobName"]]
        assert job["TrainingJobName"].startswith("study-a-0") and job["TuningJobName"] == "study-a"
        assert sent["TuningJobArn"] == arn and sent["tags"]["tune-study"] == "study-a"
        assert sent["HyperParameters"]["_tuning_objective_metric"] == "valid_loss"
        assert sent["HyperParameters"]["lr"] == job["TunedHyperParameters"]["lr"]
        assert 0.0001 <= float(job["TunedHyperParameters"]["lr"]) <= 0.1
        assert sent["Environment"]["OMP_NUM_THREADS"]  # a share of the cores each: two trials at once
    listed = tuning.list_jobs(api, {"NameContains": "STUDY"})["HyperParameterTuningJobSummaries"]
    assert [s["HyperParameterTuningJobName"] for s in listed] == ["study-a"] and listed[0]["Strategy"] == "Bayesian"
    assert tuning.describe(api, {"HyperParameterTuningJobName": "study-a"}) == described  # persisted as it was


def test_warm_start_continues_the_parent_and_prunes_the_diverging_trial(api, fake):
    """The parent's completed trials are in the child's study, so the median rule stops the child's lr=100 job
    at its first step; the grid runs every value once; OverallBestTrainingJob spans both."""
    tuning.create(api, request("parent", jobs=2, RandomSeed=7))
    wait(api, "parent")
    child = request("child", strategy="Grid", jobs=None, lr={"CategoricalParameterRanges": [
        {"Name": "lr", "Values": ["0.001", "0.003", "0.01", "100"]}]})
    child["WarmStartConfig"] = {"ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": "parent"}],
                                "WarmStartType": "IdenticalDataAndAlgorithm"}
    tuning.create(api, child)
    described = wait(api, "child")
    jobs = {j["TunedHyperParameters"]["lr"]: j for j in jobs_of(api, "child")}
    assert sorted(jobs) == ["0.001", "0.003", "0.01", "100"]
    assert jobs["100"]["TrainingJobStatus"] == "Stopped"
    assert fake.jobs[jobs["100"]["TrainingJobName"]]["TrainingJobStatus"] == "Stopped"
    assert described["TrainingJobStatusCounters"]["Stopped"] >= 1
    assert described["BestTrainingJob"]["TunedHyperParameters"]["lr"] != "100"
    parent_best = wait(api, "parent")["BestTrainingJob"]
    overall = described["OverallBestTrainingJob"]
    assert overall["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] <= min(
        parent_best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"],
        described["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"])
    import optuna

    study = optuna.load_study(study_name="child", storage=tuning_study.storage(tuning.study_path(api, "child")))
    inherited = [t for t in study.trials if t.user_attrs.get("warm_start_parent") == "parent"]
    assert len(inherited) == 2 and all(t.intermediate_values for t in inherited)
    states = [t.state.name for t in study.trials if "warm_start_parent" not in t.user_attrs]
    assert len(states) == 4 and set(states) <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states


def test_transfer_learning_informs_the_sampler_only(api, fake):
    tuning.create(api, request("tl-parent", jobs=2, RandomSeed=2))
    wait(api, "tl-parent")
    child = request("tl-child", jobs=1, parallel=1)
    child["WarmStartConfig"] = {"ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": "tl-parent"}],
                                "WarmStartType": "TransferLearning"}
    tuning.create(api, child)
    described = wait(api, "tl-child")
    assert described["HyperParameterTuningJobStatus"] == "Completed" and "OverallBestTrainingJob" not in described
    import optuna

    study = optuna.load_study(study_name="tl-child", storage=tuning_study.storage(tuning.study_path(api, "tl-child")))
    inherited = [t for t in study.trials if t.user_attrs.get("warm_start_parent") == "tl-parent"]
    assert len(inherited) == 2 and not any(t.intermediate_values for t in inherited)  # other data: no steps


@pytest.mark.parametrize("strategy", ["Random", "Hyperband"])
def test_other_strategies(api, fake, strategy):
    tuning.create(api, request(f"s-{strategy.lower()}", strategy=strategy, jobs=6, parallel=2,
                               stopping="Off" if strategy == "Hyperband" else "Auto", RandomSeed=1))
    described = wait(api, f"s-{strategy.lower()}")
    assert described["HyperParameterTuningJobStatus"] == "Completed" and described["BestTrainingJob"]
    assert sum(described["TrainingJobStatusCounters"].values()) == 6


def test_stop_stops_the_running_jobs(api, fake):
    fake.epoch_s = 0.5
    tuning.create(api, request("stopme", jobs=4, parallel=2, stopping="Off"))
    deadline = time.monotonic() + 10
    while len(fake.jobs) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    tuning.stop(api, {"HyperParameterTuningJobName": "stopme"})
    assert tuning.describe(api, {"HyperParameterTuningJobName": "stopme"})["HyperParameterTuningJobStatus"] in (
        "Stopping", "Stopped")
    described = wait(api, "stopme")
    assert described["HyperParameterTuningJobStatus"] == "Stopped"
    assert described["TrainingJobStatusCounters"]["Stopped"] == 2 and len(fake.jobs) == 2
    err = error_of(tuning.stop, api, {"HyperParameterTuningJobName": "stopme"})
    assert err.code == "ValidationException" and "Stopped" in err.message
    tuning.delete(api, {"HyperParameterTuningJobName": "stopme"})
    assert error_of(tuning.describe, api, {"HyperParameterTuningJobName": "stopme"}).code == "ResourceNotFound"
    assert not tuning.study_path(api, "stopme").exists()


def test_failing_jobs_fail_the_tuning_job(api, fake):
    fake.fail = True
    tuning.create(api, request("failing", jobs=6, parallel=1))
    described = wait(api, "failing")
    assert described["HyperParameterTuningJobStatus"] == "Failed"
    assert "first 3 training jobs failed" in described["FailureReason"] and "boom" in described["FailureReason"]
    assert described["TrainingJobStatusCounters"]["NonRetryableError"] == 3
    assert "BestTrainingJob" not in described


def test_completion_criteria_end_the_study_early(api, fake):
    tuning.create(api, request("target", jobs=20, parallel=1, TuningJobCompletionCriteria={
        "TargetObjectiveMetricValue": 100.0}))  # the first completed job reaches it
    described = wait(api, "target")
    assert described["HyperParameterTuningJobStatus"] == "Completed"
    assert described["TrainingJobStatusCounters"]["Completed"] == 1


def test_a_server_stop_ends_the_study_and_a_killed_one_is_settled_on_restart(tmp_path, fake):
    from localsage.api.context import Api

    fake.epoch_s = 0.5
    first = Api(tmp_path / "root", backend="process")
    tuning.create(first, request("cut", jobs=4, parallel=1))
    time.sleep(0.3)
    second = Api(tmp_path / "root", backend="process")  # a server started on the folder after a kill
    described = tuning.describe(second, {"HyperParameterTuningJobName": "cut"})
    assert described["HyperParameterTuningJobStatus"] == "Failed"
    assert described["FailureReason"].startswith(tuning.SERVER_STOPPED[:30])
    assert described["TrainingJobStatusCounters"]["InProgress"] == 0

    third = Api(tmp_path / "other", backend="process")
    tuning.create(third, request("graceful", jobs=4, parallel=1))
    time.sleep(0.3)
    third.shutdown(join_timeout=10)  # SIGTERM / Ctrl-C to localsage api
    described = tuning.describe(third, {"HyperParameterTuningJobName": "graceful"})
    assert described["HyperParameterTuningJobStatus"] == "Stopped" and "warm start" in described["FailureReason"]
    first.shutdown(join_timeout=10)


# -- through `localsage api`: real jobs -------------------------------------------------------------------------
def upload(client, folder: Path, prefix: str) -> str:
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def finished(sm, name: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        if described["HyperParameterTuningJobStatus"] not in ("InProgress", "Stopping"):
            return described
        time.sleep(1)
    raise AssertionError(f"{name} still {described['HyperParameterTuningJobStatus']} after {timeout}s")


def test_what_the_dry_run_prints_runs_here_and_survives_a_restart(tmp_path, small_data):
    """`localsage tune --backend sagemaker --dry-run` (built-in trainer) posted with boto3 as printed: the trials
    are training jobs of the API and of `localsage jobs list`; after a restart the tuning job answers the same,
    and a warm start continues its study."""
    from test_api_server import ApiServer

    config = tmp_path / "tune.yaml"
    fixed = {k: v for k, v in TINY_HP.items() if k not in ("lr", "epochs")}
    config.write_text(json.dumps({"fixed": {**fixed, "epochs": 2}, "trials": 3, "parallel": 2,
                                  "space": {"lr": {"type": "float", "min": 0.001, "max": 0.1, "scale": "log"}}}))
    data = f"s3://{BUCKET}/round-trip/data"
    printed = subprocess.run([sys.executable, "-m", "localsage", "tune", "--backend", "sagemaker", "--dry-run",
                              "--config", str(config), "--role", ROLE, "--image", "localsage:latest",
                              "--s3-data", data], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    sent = json.loads(printed.stdout)
    name = sent["HyperParameterTuningJobName"]
    server = ApiServer(tmp_path / "root")
    try:
        upload(server.client("s3"), small_data, "round-trip/data")
        sm = server.client("sagemaker")
        arn = sm.create_hyper_parameter_tuning_job(**sent)["HyperParameterTuningJobArn"]
        described = finished(sm, name)
        assert described["HyperParameterTuningJobStatus"] == "Completed", described.get("FailureReason")
        assert sum(described["TrainingJobStatusCounters"].values()) == 3
        summaries = sm.list_training_jobs_for_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=name)["TrainingJobSummaries"]
        assert described["BestTrainingJob"]["TrainingJobName"] in [s["TrainingJobName"] for s in summaries]
        for summary in summaries:
            job = sm.describe_training_job(TrainingJobName=summary["TrainingJobName"])
            assert job["TuningJobArn"] == arn and job["TrainingJobStatus"] == summary["TrainingJobStatus"]
            assert job["HyperParameters"]["lr"] == summary["TunedHyperParameters"]["lr"]
            assert job["HyperParameters"]["_tuning_objective_metric"] == "valid_loss"
        listed = {s["TrainingJobName"] for s in sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]}
        assert {s["TrainingJobName"] for s in summaries} <= listed
        jobs = subprocess.run([sys.executable, "-m", "localsage", "jobs", "--jobs-dir", str(tmp_path / "root" / "jobs"),
                               "list"], capture_output=True, text=True, timeout=120)
        assert all(s["TrainingJobName"] in jobs.stdout for s in summaries), jobs.stdout + jobs.stderr
        assert (tmp_path / "root" / "tuning" / name / "journal.log").is_file()
    finally:
        assert server.stop() == 0, server.log()

    server = ApiServer(tmp_path / "root")
    try:
        sm = server.client("sagemaker")
        again = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        assert again["BestTrainingJob"] == described["BestTrainingJob"]
        child = {**sent, "HyperParameterTuningJobName": "child-of-dry-run",
                 "WarmStartConfig": {"ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": name}],
                                     "WarmStartType": "IdenticalDataAndAlgorithm"}}
        child["HyperParameterTuningJobConfig"] = {**sent["HyperParameterTuningJobConfig"], "ResourceLimits": {
            "MaxNumberOfTrainingJobs": 1, "MaxParallelTrainingJobs": 1}}
        sm.create_hyper_parameter_tuning_job(**child)
        grown = finished(sm, "child-of-dry-run")
        assert sum(grown["TrainingJobStatusCounters"].values()) == 1
        overall = grown["OverallBestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
        assert overall <= described["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
        names = [s["HyperParameterTuningJobName"] for s in sm.list_hyper_parameter_tuning_jobs()[
            "HyperParameterTuningJobSummaries"]]
        assert sorted(names) == sorted([name, "child-of-dry-run"])
    finally:
        assert server.stop() == 0, server.log()


# -- SDK clients, jobs in containers --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def docker_api(image, tmp_path_factory):
    from test_api_server import ApiServer

    server = ApiServer(tmp_path_factory.mktemp("api-tuning") / "root", "--backend", "docker")
    yield server
    assert server.stop() == 0, server.log()


def run_client(server, python, script, *args) -> list:
    env = {k: v for k, v in server.env.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([str(python), str(CLIENTS / script), *map(str, args)], env=env, timeout=CLIENT_TIMEOUT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, lines, proc.stdout[-6000:] + "\n--- server ---\n" + server.log()[-4000:]


def v3_tuner(server, data, *args):
    assert SDK3_PYTHON.exists(), f"no SDK v3 client venv at {SDK3_PYTHON} (make install creates it)"
    return run_client(server, SDK3_PYTHON, "api_v3_tuner.py", "--image", "localsage:latest", "--data", data,
                      "--source-dir", EXAMPLE, "--entry", "train.py", *[a for kv in SCRIPT_HP for a in ("--hp", kv)],
                      *args)


@pytest.fixture(scope="module")
def v3_smoke(docker_api, small_data):
    return v3_tuner(docker_api, small_data, "--jobs", 2, "--parallel", 2, "--seed", 1)


@pytest.mark.docker
def test_v3_tuner_runs_its_jobs_in_parallel(docker_api, v3_smoke):
    """SDK v3 HyperparameterTuner(model_trainer=ModelTrainer(source_code=...)).tune(): 2 jobs, 2 at once."""
    rc, lines, log = v3_smoke
    assert rc == 0 and lines, log
    out = lines[-1]
    assert out["status"] == "Completed" and out["counters"]["Completed"] == 2, log
    assert out["best"] in [j["name"] for j in out["jobs"]]
    sm = docker_api.client("sagemaker")
    starts = []
    for job in out["jobs"]:
        described = sm.describe_training_job(TrainingJobName=job["name"])
        assert described["TuningJobArn"].endswith(f"/{out['tuning_job']}")
        starts.append((described["TrainingStartTime"], described["TrainingEndTime"]))
    assert max(s for s, _ in starts) < min(e for _, e in starts)  # they ran at the same time


@pytest.mark.docker
@pytest.mark.api_full
def test_v3_tuner_warm_start_prunes_the_diverging_job(docker_api, v3_smoke, small_data):
    """Warm-started from the smoke tuning job (its completed trials are in the study), a grid of 4 lr values, 2 at
    once: lr=1000 diverges and is stopped at its first validation; the best job is another."""
    parent = v3_smoke[1][-1]["tuning_job"]
    rc, lines, log = v3_tuner(docker_api, small_data, "--jobs", 4, "--parallel", 2, "--strategy", "Grid",
                              "--lr-values", "0.001,0.002,0.003,1000", "--warm-start-from", parent,
                              "--name", "v3-warm-child")
    assert rc == 0 and lines, log
    out = lines[-1]
    jobs = {j["lr"]: j for j in out["jobs"]}
    assert out["status"] == "Completed" and sorted(jobs) == ["0.001", "0.002", "0.003", "1000"], log
    assert jobs["1000"]["status"] == "Stopped" and out["counters"]["Stopped"] >= 1, log
    assert out["best"] != jobs["1000"]["name"] and sum(out["counters"].values()) == 4
    described = docker_api.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="v3-warm-child")
    assert described["OverallBestTrainingJob"]["TrainingJobName"] in (
        out["best"], *[j["name"] for j in v3_smoke[1][-1]["jobs"]])


@pytest.fixture(scope="module")
def v2_run(docker_api, small_data):
    image = next((small_data / "test").rglob("*.jpg"))
    return run_client(docker_api, sys.executable, "api_v2_tuner.py", "--image", "localsage:latest", "--data",
                      small_data, "--source-dir", EXAMPLE, "--entry", "train.py",
                      *[a for kv in SCRIPT_HP for a in ("--hp", kv)], "--jobs", 2, "--parallel", 2, "--deploy", image)


@pytest.mark.docker
@pytest.mark.api_full
def test_v2_tuner_fit_and_best_training_job(v2_run):
    rc, lines, log = v2_run
    assert lines, log
    out = lines[0]
    assert out["status"] == "Completed" and out["best"] in out["jobs"] and len(out["jobs"]) == 2, log
    assert 0.001 <= float(out["best_lr"]) <= 0.01


@pytest.mark.docker
@pytest.mark.api_full
def test_v2_tuner_deploys_the_best_job(v2_run):
    rc, lines, log = v2_run
    assert rc == 0 and len(lines) == 2, log
    assert lines[1]["prediction"], log
