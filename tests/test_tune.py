"""Tuning: the search space, Optuna studies whose trials are real training jobs, SageMaker HPO offline."""
from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from glob import glob
from pathlib import Path

import optuna
import psutil
import pytest
import yaml

import localsage.host.tune as tune_package
from conftest import FAST_HP, TINY_HP
from localsage.cli import main as cli_main
from localsage.core import contract, hyperparameters, metrics, procs
from localsage.host import records
from localsage.host.tune.sagemaker import dry_run_request, validate_request
from localsage.host.tune.settings import SAMPLERS, STORAGE_ENV, build, safe_url
from localsage.host.tune.space import DEFAULT_SPACE, TuneError
from localsage.host.tune.study import counted, make_pruner, make_sampler, make_storage
from localsage.host.tune.trial import slot_env, trial_job_name
from localsage.host.tune.workers import HEARTBEAT_ENV, Study, run as run_study

TINY_FIXED = {k: v for k, v in TINY_HP.items() if k not in ("lr", "batch-size")}


def write_config(path: Path, **config) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def load(study, jobs_dir=None, storage=None):
    t = build({}, {"study": study, "storage": storage}, jobs_dir=jobs_dir)
    return optuna.load_study(study_name=study, storage=make_storage(t))


def tune_cmd(*args):
    return [sys.executable, "-m", "localsage", "tune", "--quiet", *map(str, args)]


# ---------------------------------------------------------------- the space: one definition, validated

def test_default_space_compiles_to_optuna_and_sagemaker():
    t = build({}, {"data": "d"})
    lr, bs = t.space["lr"], t.space["batch-size"]
    assert lr.distribution() == optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)
    assert bs.distribution() == optuna.distributions.CategoricalDistribution([32, 64, 128, 256])
    assert lr.sagemaker().as_tuning_range("lr") == {"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1",
                                                   "ScalingType": "Logarithmic"}
    assert bs.sagemaker().as_tuning_range("batch-size") == {"Name": "batch-size", "Values": ["32", "64", "128", "256"]}
    t = build({"space": {"warmup-epochs": {"type": "int", "min": 0, "max": 3},
                         "weight-decay": {"type": "float", "min": 0, "max": 0.01}}}, {})
    assert t.space["warmup-epochs"].distribution() == optuna.distributions.IntDistribution(0, 3)
    assert t.space["warmup-epochs"].sagemaker().as_tuning_range("warmup-epochs")["ScalingType"] == "Linear"
    assert t.space["weight-decay"].grid() == [0.0, 0.0025, 0.005, 0.0075, 0.01]
    assert build({}, {}).space["lr"].grid() == pytest.approx([1e-3, 10 ** -2.5, 1e-2, 10 ** -1.5, 1e-1])


@pytest.mark.integration
@pytest.mark.parametrize("config, needle", [
    ({"space": {"lr": {"type": "float", "min": 0.1, "max": 0.01}}}, "min (0.1) must be less than max (0.01)"),
    ({"space": {"lr": {"type": "float", "min": 0.0, "max": 0.1, "scale": "log"}}}, "log scale needs min > 0"),
    ({"space": {"learning-rate": {"type": "float", "min": 0.01, "max": 0.1}}},
     "unknown hyperparameter 'learning-rate'"),
    ({"space": {"batch-size": {"type": "float", "min": 8, "max": 64}}}, "batch-size is a int hyperparameter"),
    ({"space": {"optimizer": {"values": ["adamw", "adam"]}}}, "optimizer value 'adam'"),
    ({"space": {"lr": {"type": "float", "min": -1, "max": 0.1}}}, "lr min -1.0 is not a valid lr"),
    ({"fixed": {"epochs": 0}}, "fixed hyperparameters: invalid hyperparameter(s): epochs='0'"),
    ({"fixed": {"lr": 0.01}}, "lr both fixed and searched"),
    ({"fixed": {"sagemaker_mpi_num_of_processes_per_host": 0}},
     "fixed hyperparameters: sagemaker_mpi_num_of_processes_per_host=0: expected a whole number, at least 1"),
    ({"sampler": "annealing"}, "sampler must be one of"),
    ({"spaces": {}}, "unknown key(s) spaces"),
])
def test_invalid_space_is_a_clear_error_before_any_trial(tmp_path, small_data, capsys, config, needle):
    with pytest.raises(TuneError) as err:
        build(config, {"data": str(small_data)})
    assert needle in str(err.value)
    jobs = tmp_path / "jobs"
    code = cli_main(["tune", "--config", str(write_config(tmp_path / "bad.yaml", **config)), "--data", str(small_data),
                     "--jobs-dir", str(jobs), "--trials", "2"])
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not jobs.exists() or not any(jobs.iterdir())  # no trial, no job, no study


def test_samplers_pruners_and_worker_resources():
    for name in SAMPLERS:
        t = build({"sampler": name}, {})
        study = optuna.create_study(sampler=make_sampler(t))
        trial = study.ask()
        params = {n: d.suggest(trial) for n, d in t.space.items()}
        assert 1e-3 <= params["lr"] <= 1e-1 and params["batch-size"] in (32, 64, 128, 256)
    assert isinstance(make_pruner(build({}, {})), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner(build({"pruner": "median"}, {})), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner(build({"pruner": "hyperband"}, {})), optuna.pruners.HyperbandPruner)
    sha = make_pruner(build({"pruner": "successive-halving", "prune_warmup_steps": 2}, {}))
    assert isinstance(sha, optuna.pruners.SuccessiveHalvingPruner) and sha._min_resource == 2
    assert isinstance(make_pruner(build({}, {"pruner": "none"})), optuna.pruners.NopPruner)
    # a GPU per parallel trial, round robin; without GPUs an equal share of the CPU threads
    assert slot_env(1, 2, ["0", "1"], {}, 8) == ({"CUDA_VISIBLE_DEVICES": "1"}, {})
    assert slot_env(2, 3, ["0", "1"], {}, 8) == ({"CUDA_VISIBLE_DEVICES": "0"}, {})
    assert slot_env(0, 2, [], {}, 8) == ({}, {"threads": 4})
    assert slot_env(0, 4, [], {}, 2) == ({}, {"threads": 1})
    assert slot_env(0, 2, [], {"threads": 3}, 8) == ({}, {})
    # a trial of several processes per host: each of its processes gets its part of the trial's share
    per_host = {"sagemaker_mpi_num_of_processes_per_host": "2"}
    assert slot_env(0, 2, [], per_host, 8) == ({}, {"threads": 2})
    assert slot_env(0, 2, [], per_host, 8, script=True) == ({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}, {})
    assert slot_env(0, 4, [], per_host, 2) == ({}, {"threads": 1})
    # the built-in trainer's names take - for _, the toolkit's reserved key keeps SageMaker's spelling
    t = build({"fixed": {"warmup_epochs": 1, "sagemaker_mpi_num_of_processes_per_host": 2}}, {})
    assert t.fixed == {"warmup-epochs": 1, "sagemaker_mpi_num_of_processes_per_host": 2}
    assert t.trial_hyperparameters({})["sagemaker_mpi_num_of_processes_per_host"] == 2


# ---------------------------------------------------------------- SageMaker HPO, offline

def test_sagemaker_tuner_request_matches_the_space(tmp_path, capsys):
    config = {"space": {**DEFAULT_SPACE, "warmup-epochs": {"type": "int", "min": 0, "max": 2}},
              "fixed": {"epochs": 8, "arch": "resnet50"}, "trials": 20, "parallel": 3, "objective": "valid_acc"}
    t = build(config, {})
    request = dry_run_request(t, image="123.dkr.ecr.eu-west-1.amazonaws.com/localsage:1", s3_data="s3://b/dogs")
    validate_request(request)  # botocore's validation against the SageMaker service model
    cfg = request["HyperParameterTuningJobConfig"]
    assert cfg["Strategy"] == "Bayesian" and cfg["TrainingJobEarlyStoppingType"] == "Auto"
    assert cfg["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 20, "MaxParallelTrainingJobs": 3}
    assert cfg["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "valid_acc"}
    ranges = cfg["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"] == [{"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1",
                                                    "ScalingType": "Logarithmic"}]
    assert ranges["CategoricalParameterRanges"] == [{"Name": "batch-size", "Values": ["32", "64", "128", "256"]}]
    assert ranges["IntegerParameterRanges"] == [{"Name": "warmup-epochs", "MinValue": "0", "MaxValue": "2",
                                                 "ScalingType": "Linear"}]
    job = request["TrainingJobDefinition"]
    assert job["StaticHyperParameters"] == {"epochs": "8", "arch": "resnet50"}
    assert job["AlgorithmSpecification"]["TrainingImage"] == "123.dkr.ecr.eu-west-1.amazonaws.com/localsage:1"
    assert job["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://b/dogs"
    # the metric regexes SageMaker gets read the lines the training job prints
    line = metrics.format_line({"epoch": 2, "train_loss": 0.5, "train_acc": 0.8, "valid_loss": 0.25,
                                "valid_acc": 0.9375, "epoch_time": 3.5, "images_per_sec": 120.0})
    found = {d["Name"]: re.search(d["Regex"], line) for d in job["AlgorithmSpecification"]["MetricDefinitions"]}
    assert float(found["valid_acc"].group(1)) == 0.9375 and float(found["valid_loss"].group(1)) == 0.25
    # the validation is real: a range without its minimum, a budget given as text are rejected
    broken = json.loads(json.dumps(request))
    del broken["HyperParameterTuningJobConfig"]["ParameterRanges"]["ContinuousParameterRanges"][0]["MinValue"]
    broken["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"] = "20"
    with pytest.raises(Exception, match=r"(?s)MaxNumberOfTrainingJobs.*type.*Missing required.*MinValue"):
        validate_request(broken)
    # the command line prints the same request; --no-prune turns SageMaker's early stopping off
    config_file = write_config(tmp_path / "tune.yaml", **config)
    assert cli_main(["tune", "--backend", "sagemaker", "--dry-run", "--config", str(config_file), "--no-prune"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["HyperParameterTuningJobConfig"]["ParameterRanges"] == ranges
    assert printed["HyperParameterTuningJobConfig"]["TrainingJobEarlyStoppingType"] == "Off"


def test_sagemaker_tuner_without_aws_credentials_is_a_clear_error(tmp_path, monkeypatch, capsys):
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code = cli_main(["tune", "--backend", "sagemaker", "--image", "123.dkr.ecr.eu-west-1.amazonaws.com/localsage:1",
                     "--s3-data", "s3://b/dogs", "--region", "eu-west-1", "--role", "arn:aws:iam::1:role/r"])
    assert code != 0
    assert "no AWS credentials" in capsys.readouterr().err


# ---------------------------------------------------------------- local studies of real jobs

@pytest.mark.integration
@pytest.mark.slow
def test_six_trials_two_workers_and_best_hyperparameters_train(tmp_path, demo_data, capsys):
    jobs = tmp_path / "jobs"
    fixed = {k: v for k, v in FAST_HP.items() if k not in ("lr", "batch-size")}
    config = write_config(tmp_path / "tune.yaml", fixed=fixed, space={
        "lr": {"type": "float", "min": 0.002, "max": 0.006, "scale": "log"},
        "batch-size": {"type": "categorical", "values": [16, 32]}})
    code = cli_main(["tune", "--config", str(config), "--data", str(demo_data), "--trials", "6", "--parallel", "2",
                     "--study", "six", "--jobs-dir", str(jobs), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    study = load("six", jobs)
    trials = study.get_trials()
    assert sorted(tr.number for tr in trials) == list(range(6))
    assert {tr.state.name for tr in trials} <= {"COMPLETE", "PRUNED"}
    # every trial is a job in the registry, tagged with its trial number, with its CPU-thread share
    by_name = {r["TrainingJobName"]: r for r in records.list_jobs(jobs)}
    threads = str(max(1, procs.cores() // 2))
    for tr in trials:
        record = by_name[tr.user_attrs["job_name"]]
        assert record["Tags"] == {"tune-study": "six", "tune-trial": str(tr.number)}
        assert (record["HyperParameters"]["lr"] == str(tr.params["lr"])
                and record["HyperParameters"]["threads"] == threads)
        assert record["TrainingJobStatus"] == ("Completed" if tr.state.name == "COMPLETE" else "Stopped")
        # no debugger tensors in trials (GBs per study); best_hyperparameters.json below does not carry that
        assert record["HyperParameters"]["debug"] == "false"
        assert not (Path(record["JobDir"]) / "output/tensors").exists()
    # two workers: some jobs ran at the same time
    spans = sorted((r["TrainingStartTime"], r["TrainingEndTime"]) for r in by_name.values())
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans
    # results
    folder = jobs / "tune-six"
    best = json.loads((folder / "best_hyperparameters.json").read_text())
    assert best == hyperparameters.to_strings({**fixed, **study.best_trial.params})
    assert f"best trial {study.best_trial.number}: valid_loss=" in out
    table = (folder / "trials.csv").read_text().splitlines()
    header = table[0].split(",")
    assert header[:3] == ["number", "state", "value"] and len(table) == 7
    assert {"param:lr", "param:batch-size", "epochs_run", "duration_s", "job", "failure_reason"} <= set(header)
    page = (folder / "plots.html").read_text()
    for title in ("Optimization history", "Intermediate values", "Parallel coordinates", "Parameter importances"):
        assert title in page
    assert not re.search(r"<script[^>]+src=", page)  # plotly.js inline: opens offline
    # the best hyperparameters file is directly usable by training
    assert cli_main(["train", "--data", str(demo_data), "--hp-file", str(folder / "best_hyperparameters.json"),
                     "--jobs-dir", str(jobs), "--name", "best"]) == 0
    final = {m["MetricName"]: m["Value"] for m in records.describe("best", jobs)["FinalMetricDataList"]}
    assert final["valid_acc"] >= 0.9, final


@pytest.mark.integration
def test_pruning_stops_bad_learning_rates_early(tmp_path, small_data):
    jobs = tmp_path / "jobs"
    epochs = 4
    config = {"fixed": {**TINY_FIXED, "epochs": epochs, "max-steps": 0, "batch-size": 8},
              "space": {"lr": {"type": "float", "min": 1e-3, "max": 10.0, "scale": "log"}},
              "enqueue": [{"lr": 0.003}, {"lr": 5.0}, {"lr": 8.0}],
              "trials": 3, "prune_startup_trials": 1, "prune_warmup_steps": 0}
    t = build(config, {"data": str(small_data), "study": "prune"}, jobs_dir=jobs)
    result = run_study(t, echo=False)
    assert result["best_params"] == {"lr": 0.003}
    pruned = [tr for tr in load("prune", jobs).get_trials() if tr.state.name == "PRUNED"]
    assert pruned, "no trial pruned"
    for tr in pruned:
        assert tr.params["lr"] >= 5.0
        record = records.describe(tr.user_attrs["job_name"], jobs)
        assert record["TrainingJobStatus"] == "Stopped" and "stopped by the caller" in record["StopReason"]
        assert record["EpochsCompleted"] < epochs and tr.user_attrs["epochs_run"] == record["EpochsCompleted"]
        assert max(tr.intermediate_values) <= record["EpochsCompleted"] + 1


@pytest.mark.integration
def test_crashed_trial_is_failed_with_its_reason_and_the_study_goes_on(tmp_path, small_data):
    jobs = tmp_path / "jobs"
    config = {"fixed": TINY_FIXED, "space": {"lr": {"type": "float", "min": 1e-3, "max": 1e-2, "scale": "log"},
                                             "freeze": {"values": ["none", "until:nolayer"]}},
              "enqueue": [{"lr": 0.003, "freeze": "until:nolayer"}, {"lr": 0.003, "freeze": "none"}], "trials": 2}
    result = run_study(build(config, {"data": str(small_data), "study": "crash"}, jobs_dir=jobs), echo=False)
    failed, done = load("crash", jobs).get_trials()
    assert failed.state.name == "FAIL" and done.state.name == "COMPLETE"
    record = records.describe(failed.user_attrs["job_name"], jobs)
    assert record["TrainingJobStatus"] == "Failed"
    assert "no top-level layer 'nolayer'" in failed.user_attrs["failure_reason"]
    assert failed.user_attrs["failure_reason"] == record["FailureReason"]
    assert result["best_trial"] == 1 and result["trials"] == {"COMPLETE": 1, "FAIL": 1}
    assert json.loads((jobs / "tune-crash" / "best_hyperparameters.json").read_text())["freeze"] == "none"


@pytest.mark.integration
def test_a_trial_past_max_run_is_stopped_failed_and_counted(tmp_path, small_data):
    """max_run is SageMaker's MaxRuntimeInSeconds for every trial: a script that hangs (e.g. smdebug's writer
    thread dead on a full disk) is stopped, its trial fails with the reason and counts against the budget."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "hang.py").write_text("import time\nprint('valid_loss=0.5', flush=True)\ntime.sleep(600)\n")
    jobs = tmp_path / "jobs"
    config = {"space": {"lr": {"values": [0.1, 0.2]}}, "trials": 2, "pruner": "none", "max_run": 3,
              "entry_point": "hang.py", "source_dir": str(src),
              "metric_definitions": {"valid_loss": "valid_loss=([0-9.]+)"},
              "objective": {"metric": "valid_loss", "type": "minimize"}}
    started = time.time()
    result = run_study(build(config, {"data": str(small_data), "study": "hang"}, jobs_dir=jobs), echo=False)
    assert time.time() - started < 120
    trials = load("hang", jobs).get_trials()
    assert [tr.state.name for tr in trials] == ["FAIL", "FAIL"] and result["trials"] == {"FAIL": 2}
    for tr in trials:
        assert tr.user_attrs["failure_reason"].startswith(records.MAX_RUNTIME), tr.user_attrs
        assert not tr.user_attrs.get("interrupted")  # counted: --resume does not run it again
        record = records.describe(tr.user_attrs["job_name"], jobs)
        assert record["TrainingJobStatus"] == "Stopped" and record["SecondaryStatus"] == records.MAX_RUNTIME
    assert not [c for c in psutil.Process().children(recursive=True) if "hang.py" in " ".join(c.cmdline())]
    with pytest.raises(TuneError, match="max_run"):
        build({**config, "max_run": 0}, {"data": str(small_data), "study": "hang"}, jobs_dir=jobs)


@pytest.mark.integration
def test_sigkill_then_resume_completes_the_budget_without_rerunning(tmp_path, small_data):
    jobs = tmp_path / "jobs"
    config = write_config(tmp_path / "tune.yaml", fixed={**TINY_FIXED, "epochs": 3}, trials=3, pruner="none",
                          space={"lr": {"type": "float", "min": 1e-3, "max": 1e-2, "scale": "log"}})
    proc = subprocess.Popen(tune_cmd("--config", config, "--data", small_data, "--study", "kill", "--jobs-dir", jobs),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, HEARTBEAT_ENV: "0.5"})
    journal = jobs / "tune-kill" / "journal.log"
    deadline = time.time() + 400
    beats = {}
    while time.time() < deadline:
        time.sleep(1)
        trials = load("kill", jobs).get_trials() if journal.exists() else []
        started = [tr for tr in trials if tr.state.name == "RUNNING" and "job_dir" in tr.user_attrs
                   and (Path(tr.user_attrs["job_dir"]) / records.RECORD).exists()]
        for tr in started:  # the tuner refreshes the heartbeat of the trial it runs
            beats.setdefault(tr.number, set()).add(tr.user_attrs["heartbeat"])
        if any(len(b) > 1 for b in beats.values()) and any(tr.state.name == "COMPLETE" for tr in trials):
            # freeze the tuner, so the trials cannot change between this check and the kill: a trial that
            # ends right here and its successor, asked for but without a job yet, must not be the one killed
            proc.send_signal(signal.SIGSTOP)
            now = [tr for tr in load("kill", jobs).get_trials() if tr.state.name == "RUNNING"]
            if len(now) == 1 and "job_name" in now[0].user_attrs:
                break
            proc.send_signal(signal.SIGCONT)
    else:
        proc.kill()
        pytest.fail("the tuner never had a completed and a running trial")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {tr.number: tr.user_attrs["job_name"] for tr in load("kill", jobs).get_trials()
              if tr.state.name == "COMPLETE"}
    running = [tr.number for tr in load("kill", jobs).get_trials() if tr.state.name == "RUNNING"]
    assert len(running) == 1

    resumed = subprocess.run(tune_cmd("--resume", "--study", "kill", "--jobs-dir", jobs), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"trial {running[0]}: stale" in resumed.stdout
    trials = load("kill", jobs).get_trials()
    stale = trials[running[0]]
    assert stale.state.name == "FAIL" and stale.user_attrs["interrupted"] is True
    assert records.describe(stale.user_attrs["job_name"], jobs)["TrainingJobStatus"] == "Failed"
    complete = {tr.number: tr.user_attrs["job_name"] for tr in trials if tr.state.name == "COMPLETE"}
    assert len(complete) == 3  # the budget, the stale trial not counted
    assert all(complete[n] == job for n, job in before.items())  # completed trials kept, not rerun
    params = [tr.params["lr"] for tr in trials]
    assert len(set(params)) == len(params)  # the resumed tuner did not replay the first one's random draws
    trial_jobs = [r for r in records.list_jobs(jobs) if r["Tags"].get("tune-study") == "kill"]
    assert len(trial_jobs) == len(trials) == 4  # one job per trial: nothing ran twice


# ---------------------------------------------------------------- many workers on one PostgreSQL database

def _postgres_bin():
    found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else (
        Path(shutil.which("initdb")).parent if shutil.which("initdb") else None)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a loopback port, run by a non-root user when the tests run as root."""
    bindir = _postgres_bin()
    if bindir is None:
        if os.environ.get("LOCALSAGE_CI"):
            pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="localsage-pg-"))
    os.chmod(base, 0o755)
    user = {}
    if os.geteuid() == 0:
        account = next(pwd.getpwnam(n) for n in ("postgres", "nobody") if n in {p.pw_name for p in pwd.getpwall()})
        os.chown(base, account.pw_uid, account.pw_gid)
        user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([bindir / "initdb", "-D", base / "data", "-U", "tune", "--auth=trust"], check=True,
                   capture_output=True, cwd=base, **user)
    subprocess.run([bindir / "pg_ctl", "-D", base / "data", "-l", base / "log", "-w", "start", "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1"], check=True, capture_output=True, cwd=base,
                   **user)
    try:
        yield f"postgresql://tune@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([bindir / "pg_ctl", "-D", base / "data", "-m", "immediate", "stop"], capture_output=True,
                       cwd=base, **user)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.integration
def test_two_tuners_share_one_study_on_postgresql(tmp_path, small_data, postgres):
    config = write_config(tmp_path / "tune.yaml", fixed=TINY_FIXED, trials=4, pruner="none",
                          space={"lr": {"type": "float", "min": 1e-3, "max": 1e-2, "scale": "log"}})
    # the second machine takes the URL (with a password: the test server trusts any) from the environment
    secret = postgres.replace("tune@", "tune:pgSecret42@")
    storage = [["--storage", postgres], []]
    env = [os.environ, {**os.environ, STORAGE_ENV: secret}]
    procs = [subprocess.Popen(tune_cmd("--config", config, "--data", small_data, *storage[i], "--study", "pg",
                                       "--jobs-dir", tmp_path / f"machine{i}"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env[i])
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "pgSecret42" not in outs[1]
    trials = optuna.load_study(study_name="pg", storage=postgres).get_trials()
    assert sorted(tr.number for tr in trials) == list(range(4))  # no collision, total = the budget
    assert all(tr.state.name == "COMPLETE" for tr in trials)
    assert len({tr.params["lr"] for tr in trials}) == 4  # the second tuner drew its own params
    per_machine = [len([r for r in records.list_jobs(tmp_path / f"machine{i}")]) for i in range(2)]
    assert sum(per_machine) == 4 and min(per_machine) >= 1, per_machine  # both tuners ran trials of the one study
    jobs_of = {tr.user_attrs["job_name"] for tr in trials}
    assert jobs_of == {r["TrainingJobName"] for i in range(2) for r in records.list_jobs(tmp_path / f"machine{i}")}


# ---------------------------------------------------------------- the package: layers, sizes, a light CLI

def test_package_modules_are_small_and_the_cli_imports_no_optuna_or_torch():
    folder = Path(tune_package.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in folder.glob("*.py")}
    assert {"space.py", "settings.py", "study.py", "workers.py", "results.py", "sagemaker.py"} <= set(sizes)
    assert max(sizes.values()) <= 400, sizes
    for path in folder.glob("*.py"):
        text = path.read_text()
        assert "._storage" not in text and "._trial_id" not in text, f"{path.name} uses Optuna's private API"
        assert "localsage.cli" not in text and "from ..cli" not in text and "argparse" not in text, path.name
    assert "Estimator(" not in (folder / "sagemaker.py").read_text()  # cloud.training.estimator builds it
    probe = ("import sys, localsage.cli.tune, localsage.cli; localsage.cli.build_parser(); "
             "print(sorted(m for m in ('optuna', 'torch', 'sagemaker', 'sqlalchemy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_trial_job_names_fit_sagemaker():
    pattern = re.compile(contract.NAME_PATTERN)
    long = "my_very_long_study_name_for_the_dog_breeds_with_resnet50_and_more"
    names = [trial_job_name(s, n) for s in ("tune", "a_b", "__x__", long, long + "2") for n in (0, 7, 1234)]
    for name in names:
        assert pattern.fullmatch(name) and len(name) <= 63, name
    assert trial_job_name("tune", 7).startswith("tune-t007-")
    assert trial_job_name("a_b", 1).startswith("a-b-")
    # two long study names that share their first characters still give different trial names
    assert trial_job_name(long, 1)[:-24] != trial_job_name(long + "2", 1)[:-24]


# ---------------------------------------------------------------- liveness that survives containers

@pytest.mark.integration
def test_resume_fails_trials_by_heartbeat_not_by_hostname_or_pid(tmp_path, small_data):
    t = build({"fixed": TINY_FIXED}, {"data": str(small_data), "study": "beats", "trials": 5}, jobs_dir=tmp_path)
    study = Study(t, echo=False, log=lambda line: None).study
    now = time.time()
    workers = {
        # the tuner ran in a container: another hostname, and its PID now belongs to a live process
        "old-container": ({"host": "3f2a9c1d7e4b", "pid": os.getpid()}, now - 3600),
        # this host, a PID that was reused by a live process: only the heartbeat tells
        "reused-pid": ({"host": socket.gethostname(), "pid": os.getpid()}, now - 3600),
        # a live tuner on another machine: fresh heartbeat, left alone
        "live-elsewhere": ({"host": "other-machine", "pid": 1}, now),
    }
    numbers = {}
    for label, (worker, beat) in workers.items():
        trial = study.ask()
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("heartbeat", beat)
        numbers[label] = trial.number
    lines = []
    Study(t, resume=True, echo=False, log=lines.append)
    trials = load("beats", tmp_path).get_trials()
    for label in ("old-container", "reused-pid"):
        trial = trials[numbers[label]]
        assert trial.state.name == "FAIL" and trial.user_attrs["interrupted"] is True, label
        assert "no heartbeat for" in trial.user_attrs["failure_reason"]
        assert not counted(trial)
    assert trials[numbers["live-elsewhere"]].state.name == "RUNNING"
    assert any("left alone" in line for line in lines)


# ---------------------------------------------------------------- storage URLs keep their secrets

@pytest.mark.integration
def test_storage_password_is_never_printed_and_the_url_can_come_from_the_environment(tmp_path, small_data, capsys,
                                                                                     monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    url = f"postgresql+psycopg://tune:Zq9s3cretpw@127.0.0.1:{port}/db"
    assert safe_url(url) == f"postgresql+psycopg://tune:***@127.0.0.1:{port}/db"
    config = write_config(tmp_path / "tune.yaml", fixed=TINY_FIXED)
    runs = [["--storage", url], ["--storage", url.replace("+psycopg", "+nodriver")], ["--storage", "postgresql://tune:Zq9s3cretpw@host:notaport/db"]]
    for extra in runs:
        code = cli_main(["tune", "--config", str(config), "--data", str(small_data), "--jobs-dir", str(tmp_path / "j"),
                         "--study", "pw", *extra])
        captured = capsys.readouterr()
        assert code == 2, captured
        assert "Zq9s3cretpw" not in captured.out + captured.err
        assert "storage" in captured.err
    monkeypatch.setenv(STORAGE_ENV, url)
    assert build({}, {}).storage == url  # --storage absent: the environment's URL
    assert build({}, {"storage": "x.log"}).storage == "x.log"  # the command line wins
    for argv in (["--config", str(config), "--data", str(small_data)], ["--resume"]):
        code = cli_main(["tune", *argv, "--jobs-dir", str(tmp_path / "j"), "--study", "pw"])
        captured = capsys.readouterr()
        assert code == 2 and "Zq9s3cretpw" not in captured.out + captured.err
        assert f"127.0.0.1:{port}" in captured.err and "***" in captured.err


# ---------------------------------------------------------------- what every trial shares, checked once

@pytest.mark.integration
def test_missing_weights_or_bad_data_stop_the_study_before_any_trial(tmp_path, small_data, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # a fresh machine: no cached weights

    def offline(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "create_connection", offline)
    jobs = tmp_path / "jobs"
    # the README's `make tune DATA=data/demo`: the default arch resnet50 with its DEFAULT weights
    code = cli_main(["tune", "--data", str(small_data), "--jobs-dir", str(jobs), "--trials", "3", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "every trial would fail the same way" in err and "resnet50" in err and "weights=none" in err
    assert not jobs.exists() or not any(jobs.glob("*/job.json"))  # no trial ran
    broken = tmp_path / "broken"
    shutil.copytree(small_data, broken)
    shutil.rmtree(broken / "valid")
    config = write_config(tmp_path / "tune.yaml", fixed=TINY_FIXED)
    code = cli_main(["tune", "--config", str(config), "--data", str(broken), "--jobs-dir", str(jobs), "--trials", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "every trial would fail on the data" in err and "valid split not found" in err
    assert not any(jobs.glob("*/job.json"))


# ---------------------------------------------------------------- SIGTERM: trials stopped, nothing left behind

def _processes_of(job_dir: Path) -> list:
    """PIDs of live processes whose environment points into the job folder."""
    mark = f"{contract.ROOT_ENV}={Path(job_dir).resolve()}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.integration
def test_sigterm_stops_the_running_trials_and_leaves_no_process(tmp_path, small_data):
    jobs = tmp_path / "jobs"
    config = write_config(tmp_path / "tune.yaml", fixed={**TINY_FIXED, "epochs": 200, "max-steps": 0}, trials=2,
                          pruner="none", space={"lr": {"type": "float", "min": 1e-3, "max": 1e-2, "scale": "log"}})
    proc = subprocess.Popen(tune_cmd("--config", config, "--data", small_data, "--study", "sig_term",
                                     "--jobs-dir", jobs),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    job_dir = None
    while time.time() < deadline and job_dir is None:
        time.sleep(0.5)
        for log in jobs.glob("sig-term-t000-*/train.log"):
            if "epoch=1;" in log.read_text() and _processes_of(log.parent):
                job_dir = log.parent
    assert job_dir is not None, "the first trial never ran an epoch"
    assert re.fullmatch(contract.NAME_PATTERN, job_dir.name) and len(job_dir.name) <= 63
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
    assert _processes_of(job_dir) == []  # the job's process is gone too
    record = records.describe(job_dir.name, jobs)
    assert record["TrainingJobStatus"] == "Stopped" and "SIGTERM" in record["StopReason"]
    (trial,) = load("sig_term", jobs).get_trials()  # no second trial started
    assert trial.state.name == "FAIL" and trial.user_attrs["interrupted"] is True and not counted(trial)
    assert "SIGTERM" in trial.user_attrs["failure_reason"]


# ---------------------------------------------------------------- script mode: a user's own training script

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "dog-breeds"
# "nan"/"inf" too: a hopeless learning rate's loss must reach the pruner, whatever it is
VALID_LOSS = r"Validation set: Average loss: ([0-9.]+|nan|inf)"
SCRIPT_FIXED = {"arch": "resnet18", "weights": "none", "image-size": 32, "epochs": 2, "batch-size": 8}


def script_args(*extra):
    return ["--entry-point", "train.py", "--source-dir", str(EXAMPLE),
            "--metric-definition", f"valid_loss={VALID_LOSS}",
            "--metric-definition", "test_loss=Test set: Average loss: ([0-9.]+)", "--objective", "valid_loss",
            "--objective-type", "minimize", *map(str, extra)]


def test_script_mode_settings_keep_the_scripts_names_and_old_studies_resume(tmp_path):
    t = build({"space": {"batch_size": {"values": [8, 16]},
                         "learning-rate": {"type": "float", "min": 1e-4, "max": 1e-2}},
                    "fixed": {"my_flag": "x"}, "objective": {"metric": "valid_loss", "type": "minimize"},
                    "metric_definitions": [{"Name": "valid_loss", "Regex": VALID_LOSS}]},
                   {"entry_point": str(EXAMPLE / "train.py")})
    assert t.script and t.entry_point == "train.py" and t.source_dir == str(EXAMPLE)
    assert set(t.space) == {"batch_size", "learning-rate"} and t.fixed == {"my_flag": "x"}  # as spelled
    assert t.trial_hyperparameters({"batch_size": 8}) == {"my_flag": "x", "batch_size": 8}  # no built-in defaults
    assert t.direction == "minimize" and t.stored()["objective"] == {"metric": "valid_loss", "type": "minimize"}
    assert slot_env(0, 2, [], {}, 8, script=True) == ({"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}, {})
    assert build(t.stored(), {}).stored() == t.stored()  # --resume rebuilds the same study settings
    # the built-in trainer's studies keep the string form: a study made before script mode resumes unchanged
    old = build({"objective": "valid_acc"}, {})
    assert (old.stored()["objective"] == "valid_acc" and "entry_point" not in old.stored()
            and old.direction == "maximize")
    assert build({"objective": {"metric": "valid_acc"}}, {}).stored() == old.stored()
    for config, needle in [({}, "needs metric definitions"),
                           ({"metric_definitions": {"acc": "acc=([0-9.]+)"}}, "not one of the metric definitions"),
                           ({"metric_definitions": {"valid_loss": VALID_LOSS}}, "say whether to minimize or maximize"),
                           ({"metric_definitions": {"valid_loss": "no group"}}, "needs a group"),
                           ({"metric_definitions": {"valid_loss": VALID_LOSS}, "objective_type": "up"},
                            "minimize or maximize")]:
        with pytest.raises(TuneError, match=needle):
            build({"space": {"lr": {"values": [1]}}, **config}, {"entry_point": str(EXAMPLE / "train.py")})
    with pytest.raises(TuneError, match="entry point nothere.py not found"):
        build({}, {"entry_point": "nothere.py", "source_dir": str(EXAMPLE)})


def test_sagemaker_dry_run_of_a_script_study(tmp_path, capsys):
    config = write_config(tmp_path / "tune.yaml", fixed=SCRIPT_FIXED, trials=6,
                          space={"lr": {"type": "float", "min": 1e-4, "max": 1e-2, "scale": "log"}})
    assert cli_main(["tune", "--backend", "sagemaker", "--dry-run", "--config", str(config), *script_args(),
                     "--s3-data", "s3://bucket/dogs", "--study", "dogs_script", "--max-run", "5400"]) == 0
    captured = capsys.readouterr()
    request = json.loads(captured.out)
    assert request["TrainingJobDefinition"]["StoppingCondition"]["MaxRuntimeInSeconds"] == 5400
    validate_request(request)
    job = request["TrainingJobDefinition"]
    static = job["StaticHyperParameters"]
    assert json.loads(static["sagemaker_program"]) == "train.py"
    submit = json.loads(static["sagemaker_submit_directory"])
    assert submit.startswith("s3://bucket/") and submit.endswith("/sourcedir.tar.gz")
    assert {k: json.loads(v) for k, v in static.items() if not k.startswith("sagemaker_")} == SCRIPT_FIXED  # as spelled
    assert job["AlgorithmSpecification"]["MetricDefinitions"] == [
        {"Name": "valid_loss", "Regex": VALID_LOSS},
        {"Name": "test_loss", "Regex": "Test set: Average loss: ([0-9.]+)"}]
    assert request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"] == {
        "Type": "Minimize", "MetricName": "valid_loss"}
    assert re.fullmatch(contract.NAME_PATTERN, request["HyperParameterTuningJobName"])
    assert "sourcedir.tar.gz" in captured.err and "train.py" in captured.err  # the upload a real start makes first


@pytest.mark.integration
def test_tune_a_script_prunes_a_hopeless_lr_and_values_are_the_last_matches(tmp_path, small_data, capsys):
    jobs = tmp_path / "jobs"
    config = write_config(tmp_path / "tune.yaml", fixed=SCRIPT_FIXED, pruner="median", prune_startup_trials=1,
                          space={"lr": {"type": "float", "min": 1e-4, "max": 1e-2, "scale": "log"}},
                          enqueue=[{"lr": 0.003}, {"lr": 100.0}, {"lr": 0.001}])
    code = cli_main(["tune", "--config", str(config), "--data", str(small_data), "--trials", "4", "--study", "script",
                     "--jobs-dir", str(jobs), "--quiet", *script_args()])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    trials = load("script", jobs).get_trials()
    assert len(trials) == 4 and {tr.state.name for tr in trials} <= {"COMPLETE", "PRUNED"}
    hopeless = trials[1]
    assert hopeless.params["lr"] == 100.0 and hopeless.state.name == "PRUNED"
    for tr in trials:
        record = records.describe(tr.user_attrs["job_name"], jobs)
        matches = [float(m) for m in re.findall(VALID_LOSS, Path(record["LogFile"]).read_text())]
        assert matches, tr.number
        assert list(tr.intermediate_values.values()) == pytest.approx(matches, nan_ok=True)  # every match, in order
        assert sorted(tr.intermediate_values) == list(range(1, len(matches) + 1))
        hps = record["HyperParameters"]
        assert "batch-size" in hps and "threads" not in hps and "debug" not in hps  # the script's names only
        if tr.state.name == "COMPLETE":
            assert record["TrainingJobStatus"] == "Completed"
            assert tr.value == matches[-1] and len(matches) == SCRIPT_FIXED["epochs"]
        else:
            assert record["TrainingJobStatus"] == "Stopped" and "valid_loss #" in record["StopReason"]
    assert "metric_points" in out and "best trial" in out
