"""Every job an MLflow run: tested against a real MLflow tracking server (a process on loopback, started here)
and read back with MLflow's own client; the embedded default (SQLite in the jobs folder) under `localsage ui`
in headless Chromium."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from conftest import TINY_HP
from localsage.cli import main as cli_main
from localsage.core import procs
from localsage.host import records, runner, tracking
from localsage.host.jobplan import JobPlan
from localsage.host.tune.settings import build
from localsage.host.tune.workers import run as run_study

pytestmark = pytest.mark.integration
JOB_HP = {**TINY_HP, "epochs": "2"}
FIXED = {k: v for k, v in TINY_HP.items() if k != "lr"}  # a study searches lr


def wait_http(url: str, timeout: float = 90, proc=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free loopback port, SQLite store and its own artifact folder."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = procs.free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{folder / 'db.sqlite'}", "--artifacts-destination", str(folder / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=open(folder / "server.log", "wb"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", proc=proc)
        yield uri
    finally:
        stop(proc)


@pytest.fixture
def tracked(mlflow_server, monkeypatch):
    monkeypatch.setenv(tracking.URI_ENV, mlflow_server)
    monkeypatch.delenv(tracking.OFF_ENV, raising=False)
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow_server)


def run_of(job_dir) -> str:
    return json.loads((Path(job_dir) / tracking.RUN_FILE).read_text())["run_id"]


@pytest.fixture(scope="module")
def tracked_job(mlflow_server, small_data, tmp_path_factory):
    jobs = tmp_path_factory.mktemp("tracked-jobs")
    saved = os.environ.pop(tracking.OFF_ENV, None)  # the suite turns tracking off (conftest)
    os.environ[tracking.URI_ENV] = mlflow_server
    try:
        record = runner.train(small_data, JOB_HP, name="tracked", jobs_dir=jobs, echo=False)
    finally:
        os.environ.pop(tracking.URI_ENV, None)
        if saved is not None:
            os.environ[tracking.OFF_ENV] = saved
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    return record


def test_a_built_in_job_is_a_run_with_its_hyperparameters_metrics_tags_and_model(tracked, tracked_job):
    run = tracked.get_run(run_of(tracked_job["JobDir"]))
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params == tracked_job["HyperParameters"]
    history = tracked.get_metric_history(run.info.run_id, "valid_acc")
    assert [m.step for m in history] == [1, 2]
    assert "test_acc" in run.data.metrics
    tags = run.data.tags
    assert tags["localsage.backend"] == "process" and tags["localsage.status"] == "Completed"
    assert tags["localsage.job"] == "tracked" and tags["localsage.entry_point"] == "built-in"
    data = {f.path for f in tracked.list_artifacts(run.info.run_id, "data")}
    assert {"data/metrics.jsonl", "data/summary.json"} <= data
    model = {f.path for f in tracked.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.pth", "model/model_config.json", "model/MAR-INF"} <= model


def test_verdicts_and_the_report_made_later_join_the_jobs_run(tracked, tracked_job, capsys):
    jobs = str(Path(tracked_job["JobDir"]).parent)
    assert cli_main(["debug", "tracked", "--jobs-dir", jobs, "--only", "LossNotDecreasing,Dataloader"]) == 0
    assert cli_main(["report", "tracked", "--jobs-dir", jobs]) == 0
    run_id = run_of(tracked_job["JobDir"])
    assert {"rules/LossNotDecreasing.json", "rules/Dataloader.json"} <= {
        f.path for f in tracked.list_artifacts(run_id, "rules")}
    assert [f.path for f in tracked.list_artifacts(run_id, "report")] == ["report/report.html"]


SCRIPT = '''
import argparse, mlflow
p = argparse.ArgumentParser(); p.add_argument("--epochs", type=int, default=2); args = p.parse_args()
for epoch in range(1, args.epochs + 1):
    print(f"epoch {epoch}: val_loss={1.0 / epoch:.4f}", flush=True)
    mlflow.log_metric("script_own", 10.0 * epoch, step=epoch)   # lands in the job's run (MLFLOW_RUN_ID)
'''


def test_a_script_jobs_own_mlflow_log_metric_lands_in_the_jobs_run(tracked, small_data, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(SCRIPT)
    record = runner.train(small_data,
                          JobPlan.for_script("train.py", source_dir=tmp_path / "src", hyperparameters={"epochs": 2},
                                             metric_definitions=[{"Name": "val_loss", "Regex": "val_loss=([0-9.]+)"}]),
                          name="script-tracked", jobs_dir=tmp_path / "jobs", echo=False)
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    run_id = run_of(record["JobDir"])
    assert [m.value for m in tracked.get_metric_history(run_id, "script_own")] == [10.0, 20.0]
    assert [(m.step, m.value) for m in tracked.get_metric_history(run_id, "val_loss")] == [(1, 1.0), (2, 0.5)]
    run = tracked.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["localsage.entry_point"] == "train.py"


def test_a_study_is_a_parent_run_its_pruned_trial_marked_and_its_best_tagged(tracked, small_data, tmp_path):
    jobs = tmp_path / "jobs"
    config = {"fixed": {**FIXED, "epochs": 3, "max-steps": 0, "batch-size": 8, "debug": "false"},
              "space": {"lr": {"type": "float", "min": 1e-3, "max": 10.0, "scale": "log"}},
              "enqueue": [{"lr": 0.003}, {"lr": 0.002}, {"lr": 0.004}, {"lr": 8.0}],  # the last one diverges
              "trials": 4, "prune_startup_trials": 1, "prune_warmup_steps": 0, "pruner": "median"}
    t = build(config, {"data": str(small_data), "study": "tracked-study"}, jobs_dir=jobs)
    run_study(t, echo=False)
    parents = tracked.search_runs(tracked.get_experiment_by_name("localsage").experiment_id,
                                  "tags.`localsage.kind` = 'study' and tags.`localsage.study` = 'tracked-study'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = tracked.search_runs(parent.info.experiment_id, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4
    by_lr = {float(c.data.params["lr"]): c for c in children}
    diverged = by_lr[8.0]
    assert diverged.data.tags["localsage.trial_state"] == "PRUNED" and diverged.info.status == "KILLED"
    best = [c for c in children if c.data.tags.get("localsage.best_trial") == "true"]
    assert len(best) == 1 and best[0].data.tags["localsage.trial_state"] == "COMPLETE"
    assert parent.data.tags["localsage.best_trial"] == best[0].data.tags["localsage.trial"]
    assert f"best_{t.objective}" in parent.data.metrics


def test_a_registered_model_is_served_from_models_uri(tracked, tracked_job, small_data, tmp_path, capsys):
    jobs = Path(tracked_job["JobDir"]).parent
    assert cli_main(["register", "tracked", "--jobs-dir", str(jobs), "--name", "tracked-model"]) == 0
    assert "version 1" in capsys.readouterr().out
    version = tracked.get_model_version("tracked-model", "1")
    assert version.run_id == run_of(tracked_job["JobDir"])
    port = procs.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "localsage", "serve", "models:/tracked-model/1", "--port", str(port),
                             "--jobs-dir", str(jobs)], env=os.environ.copy(), start_new_session=True,
                            stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=180, proc=proc)
        image = sorted((small_data / "test").glob("*/*.jpg"))[0]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predictions/tracked-model",
                                         data=image.read_bytes(), headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            predictions = json.loads(answer.read())["predictions"]
        classes = {p.name.split(".", 1)[-1] for p in (small_data / "train").iterdir()}
        assert predictions[0]["label"] in classes
    finally:
        stop(proc)


def test_a_tracking_server_that_is_down_never_fails_or_slows_a_job(small_data, tmp_path, monkeypatch, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv(tracking.URI_ENV, down)
    monkeypatch.delenv(tracking.OFF_ENV, raising=False)
    started = time.time()
    record = runner.train(small_data, JOB_HP, name="down", jobs_dir=tmp_path / "jobs", echo=False)
    assert record["TrainingJobStatus"] == "Completed"
    assert time.time() - started < 60
    warnings = [line for line in capsys.readouterr().err.splitlines() if "MLflow tracking" in line]
    assert len(warnings) == 1 and "goes on without it" in warnings[0]
    assert not (Path(record["JobDir"]) / tracking.RUN_FILE).exists()


def test_a_killed_localsage_leaves_its_run_killed_not_running(tracked, small_data, tmp_path):
    jobs = tmp_path / "jobs"
    hp = [a for kv in {**TINY_HP, "epochs": "200", "max-steps": "0"}.items() for a in ("--hp", "=".join(kv))]
    proc = subprocess.Popen([sys.executable, "-m", "localsage", "train", "--data", str(small_data), "--jobs-dir",
                             str(jobs), "--name", "killed", *hp], env=os.environ.copy(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_file = jobs / "killed" / tracking.RUN_FILE
    deadline = time.time() + 60
    while not run_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert run_file.exists()
    time.sleep(1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert tracked.get_run(run_of(jobs / "killed")).info.status == "RUNNING"
    record = records.describe("killed", jobs)  # reconciles the orphan
    assert record["TrainingJobStatus"] == "Stopped"
    run = tracked.get_run(run_of(jobs / "killed"))
    assert run.info.status == "KILLED" and "killed?" in run.data.tags["localsage.stop_reason"]


def test_tracking_off_and_the_default_store(tmp_path, monkeypatch):
    monkeypatch.delenv(tracking.URI_ENV, raising=False)
    monkeypatch.delenv(tracking.OFF_ENV, raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert tracking.tracking_uri(tmp_path, enabled=False) is None
    monkeypatch.setenv(tracking.OFF_ENV, "off")
    assert tracking.tracking_uri(tmp_path) is None
    assert tracking.redact("https://user:secret@host:5000/x") == "https://***@host:5000/x"


def test_localsage_ui_shows_the_studys_runs_and_a_metric_chart(small_data, tmp_path, monkeypatch, artifacts_dir):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        if os.environ.get("LOCALSAGE_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is required (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    monkeypatch.delenv(tracking.URI_ENV, raising=False)  # the embedded default: <jobs>/mlflow.db
    monkeypatch.delenv(tracking.OFF_ENV, raising=False)
    jobs = tmp_path / "jobs"
    config = {"fixed": {**FIXED, "epochs": 2}, "trials": 2,
              "space": {"lr": {"type": "float", "min": 1e-3, "max": 1e-2, "scale": "log"}}}
    run_study(build(config, {"data": str(small_data), "study": "ui-study"}, jobs_dir=jobs), echo=False)
    port = procs.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "localsage", "ui", "--jobs-dir", str(jobs), "--port", str(port)],
                            start_new_session=True, stdout=open(tmp_path / "ui.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        from mlflow.tracking import MlflowClient

        runs = MlflowClient(tracking.store_uri(jobs)).search_runs(["1"])
        trials = sorted(r.info.run_name for r in runs if r.info.run_name.startswith("ui-study-t"))
        assert len(trials) == 2 and len(runs) == 3
        listing = text_of(browse(chromium, tmp_path, f"http://127.0.0.1:{port}/#/experiments/1/runs"))
        assert "ui-study" in listing and "3 matching runs" in listing, listing[-2000:]
        ids = quote(json.dumps([r.info.run_id for r in runs if r.info.run_name in trials]))
        chart_url = (f"http://127.0.0.1:{port}/#/metric?runs={ids}&metric=%22valid_loss%22&experiments=%5B%221%22%5D"
                     "&plot_metric_keys=%5B%22valid_loss%22%5D")
        dom = browse(chromium, tmp_path, chart_url)
        assert "js-plotly-plot" in dom and dom.count('class="trace') >= 2, "no valid_loss chart with a line per trial"
        legend = text_of(dom)
        for name in trials:
            assert f"{name} (valid_loss)" in legend, name
        shot = artifacts_dir / "mlflow-ui-metric.png"
        shot.unlink(missing_ok=True)
        browse(chromium, tmp_path, chart_url, f"--screenshot={shot}", "--window-size=1600,1200")
        assert shot.exists() and shot.stat().st_size > 10_000
    finally:
        stop(proc)


def text_of(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def browse(chromium, tmp_path, url: str, *extra) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=20000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    action = list(extra) or ["--dump-dom"]
    dom = subprocess.run([chromium, *flags, *action, url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout
