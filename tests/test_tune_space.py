"""A tuning study's search space from the command line: the seed's default space for a script that gives
none, `--space NAME={...}` entries, and a script that rejects the searched names stopping the study."""
from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml

from localsage.cli import build_parser, main as cli_main, tune as cli_tune
from localsage.host import records
from localsage.host.tune.settings import build
from localsage.host.tune.space import DEFAULT_SPACE, TuneError, parse_space_entries
from localsage.host.tune.study import make_storage

TEST_LOSS = "test_loss=Test set: Average loss: ([0-9.]+)"
# the script of the command: it defines --learning-rate only, so the seed space's --lr is unrecognized
HPO = """import argparse
parser = argparse.ArgumentParser()
parser.add_argument("--learning-rate", type=float, default=0.01)
args = parser.parse_args()
print(f"Test set: Average loss: {args.learning_rate:.6f}", flush=True)
"""


@pytest.fixture
def script(tmp_path):
    """(source dir, data dir, jobs dir) of a script tune that trains nothing."""
    src, data = tmp_path / "src", tmp_path / "data"
    src.mkdir()
    data.mkdir()
    (src / "hpo.py").write_text(HPO)
    return src, data, tmp_path / "jobs"


def script_tune(src, data, jobs, *extra):
    return ["tune", "--entry-point", "hpo.py", "--source-dir", str(src), "--data", str(data), "--jobs-dir", str(jobs),
            "--objective", "test_loss", "--objective-type", "minimize", "--metric-definition", TEST_LOSS,
            *map(str, extra)]


def study_trials(study: str, jobs: Path):
    t = build({}, {"study": study}, jobs_dir=jobs)
    return optuna.load_study(study_name=study, storage=make_storage(t)).get_trials()


# ---------------------------------------------------------------- no space given: the seed's space

def test_a_script_tune_without_a_space_searches_the_seed_space(script, capsys):
    src, data, jobs = script
    argv = script_tune(src, data, jobs, "--trials", 20, "--parallel", 2)
    # the plan of the command as SageMaker HPO: the seed's ranges; the note on stderr (stdout: the request)
    code = cli_main([*argv, "--backend", "sagemaker", "--dry-run", "--s3-data", "s3://bucket/d"])
    out, err = capsys.readouterr()
    assert code == 0, err
    ranges = json.loads(out)["HyperParameterTuningJobConfig"]["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"] == [
        {"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}]
    assert ranges["CategoricalParameterRanges"] == [{"Name": "batch-size", "Values": ["32", "64", "128", "256"]}]
    assert ranges["IntegerParameterRanges"] == []
    t = cli_tune.tuning(build_parser().parse_args(argv))
    assert t.script and t.default_space
    assert list(t.space) == ["lr", "batch-size"]  # the names SageMaker users' scripts take, as spelled
    lr, bs = t.space["lr"], t.space["batch-size"]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 0.001, 0.1, True)
    assert (bs.kind, bs.values) == ("categorical", (32, 64, 128, 256))
    assert {n: d.to_yaml() for n, d in t.space.items()} == DEFAULT_SPACE  # the one definition
    assert t.stored()["space"] == DEFAULT_SPACE  # --resume rebuilds it without the default
    note = t.space_note
    assert note in err.splitlines()  # one line of the command's log
    assert note.startswith("search space: none given, so the default")
    assert "lr float 0.001..0.1 log" in note and "batch-size one of 32, 64, 128, 256" in note
    assert "--lr VALUE --batch-size VALUE" in note and "--space NAME=" in note
    # a space given (config or command line): no note
    given = build_parser().parse_args([*argv, "--space", "learning-rate={values: [0.1]}"])
    assert cli_tune.tuning(given).space_note is None


def test_fixed_names_of_the_default_space_say_how_to_give_a_space(script):
    src, data, jobs = script
    with pytest.raises(TuneError, match=r"lr both fixed and searched \(no space was given.*--space"):
        build({"fixed": {"lr": 0.01}}, {"entry_point": str(src / "hpo.py"), "objective": "test_loss",
                                        "objective_type": "minimize", "metric_definitions": [TEST_LOSS]})


# ---------------------------------------------------------------- --space NAME={...}

def test_space_entries_replace_or_extend_the_configs_space(script, tmp_path):
    src, data, jobs = script
    args = build_parser().parse_args(script_tune(
        src, data, jobs, "--space", "learning-rate={type: float, min: 0.001, max: 0.1, scale: log}",
        "--space", "batch-size={values: [16, 32]}", "--space", "layers={type: int, min: 1, max: 4}"))
    t = cli_tune.tuning(args)
    assert not t.default_space and list(t.space) == ["learning-rate", "batch-size", "layers"]
    lr = t.space["learning-rate"]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 0.001, 0.1, True)
    assert t.space["batch-size"].values == (16, 32) and (t.space["layers"].low, t.space["layers"].high) == (1, 4)
    assert lr.entry() == "learning-rate={type: float, min: 0.001, max: 0.1, scale: log}"  # the syntax round-trips
    assert parse_space_entries([lr.entry()], script=True) == {"learning-rate": lr.to_yaml()}
    # with a config: an entry replaces that name's range, the others stay
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump({"space": {"learning-rate": {"values": [0.5]}, "momentum": {"values": [0.9]}}}))
    t = cli_tune.tuning(build_parser().parse_args(script_tune(src, data, jobs, "--config", config,
                                                     "--space", "learning-rate={type: float, min: 0.01, max: 0.1}")))
    assert list(t.space) == ["learning-rate", "momentum"] and t.space["momentum"].values == (0.9,)
    assert (t.space["learning-rate"].kind, t.space["learning-rate"].low) == ("float", 0.01)
    # the built-in trainer's space too, checked against its hyperparameters
    t = build({}, {"space": ["lr={type: float, min: 0.01, max: 0.1}"]})
    assert list(t.space) == ["lr"] and not t.default_space


@pytest.mark.parametrize("entry, needle", [
    ("lr", "expected NAME={type: float|int"),
    ("={values: [1]}", "expected NAME={type: float|int"),
    ("lr=0.01", "expected NAME={type: float|int"),
    ("lr={type: float, min: 0.001, max: 0.1", "not valid YAML"),
    ("lr={type: float, min: 0.001}", "search space: lr: float needs min and max"),
    ("lr={type: float, min: 0.1, max: 0.01}", "min (0.1) must be less than max (0.01)"),
    ("lr={type: float, min: 0, max: 0.1, scale: log}", "log scale needs min > 0"),
    ("lr={type: float, min: 0.001, max: 0.1, step: 2}", "unknown key(s) step"),
    ("sagemaker_program={values: [a]}", "reserved SageMaker hyperparameter name"),
])
def test_a_bad_space_entry_exits_2_naming_it(script, capsys, entry, needle):
    src, data, jobs = script
    code = cli_main(script_tune(src, data, jobs, "--space", "batch-size={values: [8]}", "--space", entry))
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--space {entry!r}" in err and needle in err, err
    assert not jobs.exists()  # refused before any study or job


def test_a_space_entry_given_twice_or_unknown_to_the_built_in_trainer_exits_2(script, capsys):
    src, data, jobs = script
    assert cli_main(script_tune(src, data, jobs, "--space", "lr={values: [1]}", "--space", "lr={values: [2]}")) == 2
    assert "--space 'lr={values: [2]}': lr is given twice" in capsys.readouterr().err
    assert cli_main(["tune", "--data", str(data), "--jobs-dir", str(jobs),
                     "--space", "learning-rate={type: float, min: 0.01, max: 0.1}"]) == 2
    assert "unknown hyperparameter 'learning-rate'" in capsys.readouterr().err
    assert not jobs.exists()


# ---------------------------------------------------------------- a script that rejects the searched names

@pytest.mark.integration
def test_a_script_rejecting_the_default_names_stops_the_study_at_its_first_trial(script, capsys):
    src, data, jobs = script
    started = time.time()
    code = cli_main(script_tune(src, data, jobs, "--trials", 3, "--parallel", 1, "--study", "rejected", "--quiet"))
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "search space: none given, so the default" in err
    error = [line for line in err.splitlines() if line.startswith("localsage: ")]
    assert len(error) == 1, err
    assert "trial 0: the script hpo.py does not accept --lr, --batch-size (unrecognized arguments)" in error[0]
    assert "it takes: hpo.py [-h] [--learning-rate LEARNING_RATE]" in error[0]
    assert "--space 'NAME={type: float, min: 0.001, max: 0.1, scale: log}'" in error[0]
    trials = study_trials("rejected", jobs)
    assert [tr.state.name for tr in trials] == ["FAIL"]  # no further trial started; none left running
    record = records.describe(trials[0].user_attrs["job_name"], jobs)
    assert record["TrainingJobStatus"] == "Failed" and "unrecognized arguments: " in record["FailureReason"]
    assert (jobs / "tune-rejected" / "trials.csv").exists() and time.time() - started < 60
    # the fix the message names: the script's own option name
    code = cli_main(script_tune(src, data, jobs, "--trials", 2, "--study", "renamed", "--quiet", "--pruner", "none",
                                "--space", "learning-rate={type: float, min: 0.001, max: 0.1, scale: log}"))
    out, err = capsys.readouterr()
    assert code == 0, out + err
    trials = study_trials("renamed", jobs)
    assert [tr.state.name for tr in trials] == ["COMPLETE", "COMPLETE"]
    for tr in trials:
        assert tr.value == pytest.approx(tr.params["learning-rate"], abs=1e-6)


@pytest.mark.integration
def test_a_rejecting_trial_stops_the_running_ones(script, capsys):
    """Two parallel trials: the first runs on (its script accepts lr=1), the second is rejected; the study
    stops the first at once and starts no other, and no trial is left running."""
    src, data, jobs = script
    (src / "hpo.py").write_text(
        "import argparse, sys, time\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--learning-rate', type=float)\n"
        "if '--lr' in sys.argv and sys.argv[sys.argv.index('--lr') + 1] == '1':\n"
        "    print('Test set: Average loss: 1.0', flush=True)\n"
        "    time.sleep(30)\n"  # far longer than the study takes when it stops this trial
        "time.sleep(1)\n"  # the other trial runs by now
        "parser.parse_args()\n")
    config = src.parent / "tune.yaml"
    config.write_text(yaml.safe_dump({"space": {"lr": {"values": [1, 2]}}, "enqueue": [{"lr": 1}, {"lr": 2}]}))
    started = time.time()
    code = cli_main(script_tune(src, data, jobs, "--config", config, "--trials", 4, "--parallel", 2,
                                "--study", "stopped", "--quiet", "--pruner", "none"))
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert time.time() - started < 20  # the running trial was stopped, not waited for
    assert "trial 1: the script hpo.py does not accept --lr" in err and "lr comes from the search space" in err
    trials = study_trials("stopped", jobs)
    assert [tr.state.name for tr in trials] == ["FAIL", "FAIL"], [tr.user_attrs for tr in trials]
    running = trials[0]
    assert running.user_attrs["failure_reason"].startswith("stopped: the study stopped (trial 1: ")
    assert running.user_attrs.get("interrupted")  # not its own fault: not counted against the budget
    record = records.describe(running.user_attrs["job_name"], jobs)
    assert record["TrainingJobStatus"] == "Stopped" and record["StopReason"] == running.user_attrs["failure_reason"]
    assert not [p for p in psutil.Process().children(recursive=True) if "hpo.py" in " ".join(p.cmdline())]
