"""Debugger and profiler: planted faults must make the matching rule fire, healthy runs must not.

Real training jobs (runner, process backend) where train.py can plant the fault through
hyperparameters or data; a small loop over the same debugger API where the fault needs code
(gradients scaled to ~0, a sleeping __getitem__, a broken tensor folder).
"""
from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from localsage.container import debug_hook as hook_mod, debug_session
from localsage.container.demo_images import make_demo_data
from localsage.core import debug_names, files, hyperparameters, procs
from localsage.core.contract import Contract
from localsage.debugger import report
from localsage.debugger.rules.base import LocalRule
from localsage.debugger.rules.reading import reading
from localsage.debugger.rules.registry import ACTIVATION_RULES, ALL_RULES, DEBUGGER_RULES, RULES, enabled_rules
from localsage.debugger.rules.verdicts import parse_overrides, run_rules
from localsage.host import runner

SMALL_JOB_HP = {"arch": "resnet18", "weights": "none", "image-size": "32", "batch-size": "4", "workers": "0",
                "seed": "0", "debug-train-interval": "1", "debug-tensor-interval": "2"}


def verdicts_by_rule(verdicts):
    return {v["rule"]: v for v in verdicts}


def job(data, jobs_dir, name, **hp):
    record = runner.train(data, {**SMALL_JOB_HP, **hp}, name=name, jobs_dir=jobs_dir, echo=False)
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    return Path(record["JobDir"])


def contract_for(root: Path, debughookconfig=None) -> Contract:
    return Contract(root=root, output_dir=root / "output", output_data_dir=root / "output" / "data",
                    debughookconfig=debughookconfig)


class TinyNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


def tiny_loop(root, loader, epochs=2, grad_scale=None, hp=None, workers=0, eval_batches=1):
    """A training loop using the debugger API the way train.py does."""
    torch.manual_seed(0)
    net = TinyNet()
    if grad_scale is not None:  # planted before the hook, so smdebug saves the scaled gradients
        for p in net.parameters():
            p.register_hook(lambda g, s=grad_scale: g * s)
    crit, ecrit = nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
    hp = {"debug-train-interval": 1, "debug-tensor-interval": 1, **(hp or {})}
    dbg = debug_session.attach(contract_for(root), hp, net, [crit, ecrit], workers=workers)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(epochs):
        dbg.mode("train")
        for x, y in dbg.timer.wrap(loader, "train"):
            loss = crit(net(x), y)
            dbg.timer.mark("forward")
            opt.zero_grad()
            loss.backward()
            dbg.timer.mark("backward")
            opt.step()
            dbg.timer.mark("optimizer")
        dbg.mode("eval")
        with torch.no_grad():
            for i, (x, y) in enumerate(dbg.timer.wrap(loader, "eval")):
                if i >= eval_batches:
                    break
                ecrit(net(x), y)
    dbg.close()
    return root / "output"


def random_batches(n=6, batch=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 16, 16, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


@pytest.fixture
def smdebug_agent_reset():
    """smdebug's error agent is process-global: a test that makes it disable saving must re-enable it."""
    from smdebug.core.utils import error_handling_agent

    yield error_handling_agent
    error_handling_agent.disable_smdebug = False


# ---------------------------------------------------------------- real jobs

@pytest.mark.integration
def test_healthy_run_raises_no_false_alarms_and_keeps_tensors(trained_job):
    job_dir = Path(trained_job["JobDir"])
    tensors = job_dir / "output" / "tensors"
    assert hook_mod.written_steps(tensors), "debug is on by default: tensors must exist"
    verdicts = verdicts_by_rule(run_rules(job_dir))
    for name in ("LossNotDecreasing", "LossDiverging", "ExplodingTensor", "VanishingGradient", "Overfit"):
        v = verdicts[name]
        assert v["datapoints"] > 0, f"{name} saw no data: {v}"
    fired = {n: verdicts[n]["evidence"] for n in DEBUGGER_RULES if verdicts[n]["triggered"]}
    assert not fired, f"debugger rules fired on a healthy run: {fired}"
    assert reading(list(verdicts.values())).startswith("No training issue found")
    for name in ALL_RULES:  # every verdict is on disk with the documented fields
        saved = json.loads((job_dir / "output" / "rules" / f"{name}.json").read_text())
        assert {"rule", "triggered", "datapoints", "violations", "parameters", "recommendation"} <= set(saved)
    with tarfile.open(job_dir / "output.tar.gz") as tar:  # as on SageMaker: tensors are uploaded apart
        names = tar.getnames()
    assert "data/metrics.jsonl" in names and not any(n.split("/")[0] in ("tensors", "profiler") for n in names), names
    assert any((tensors / "index").iterdir())


@pytest.mark.integration
def test_far_too_high_learning_rate_is_called_a_divergence(demo_data, jobs_dir):
    """The new user's job of issue 16: lr=50 AdamW, 2 epochs on the demo set, debugger defaults. The
    losses stay finite (10^3-10^17), so ExplodingTensor has nothing to say: LossDiverging must."""
    record = runner.train(demo_data, {"arch": "resnet18", "weights": "none", "image-size": "32", "lr": "50",
                                      "epochs": "2", "workers": "0", "seed": "0"},
                          name="dbg-diverge", jobs_dir=jobs_dir, echo=False)
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    job_dir = Path(record["JobDir"])
    metrics = [json.loads(l) for l in (job_dir / "output" / "data" / "metrics.jsonl").read_text().splitlines()
               if l.strip()]
    assert all(math.isfinite(r["train_loss"]) for r in metrics if "train_loss" in r), metrics
    verdicts = run_rules(job_dir)
    v = verdicts_by_rule(verdicts)
    assert v["LossDiverging"]["triggered"], v["LossDiverging"]
    assert v["LossNotDecreasing"]["triggered"] and v["LossNotDecreasing"]["datapoints"] >= 3, v["LossNotDecreasing"]
    line = reading(verdicts)
    assert line.startswith("Diverged (LossDiverging) at step "), line
    assert "lower the learning rate" in line


@pytest.mark.integration
def test_tiny_data_many_epochs_overfits(tmp_path, jobs_dir):
    data = make_demo_data(tmp_path / "tiny", classes=2, per_class=8, size=40, seed=3)
    job_dir = job(data, jobs_dir, "dbg-overfit", augment="false", epochs="20", lr="0.01", **{"batch-size": "16"})
    v = verdicts_by_rule(run_rules(job_dir, only=["Overfit", "ClassImbalance"]))
    assert v["Overfit"]["triggered"], v["Overfit"]
    assert v["Overfit"]["datapoints"] == 20  # one per evaluation pass
    # the same data with a threshold no loss gap reaches: the override is honoured, nothing fires
    loose = run_rules(job_dir, overrides=["Overfit:ratio_threshold=1e12"], only=["Overfit"], write=False)[0]
    assert not loose["triggered"] and loose["parameters"]["ratio_threshold"] == 1e12
    # balanced data: ClassImbalance must not report a count imbalance
    assert not any("samples, class" in d for d in v["ClassImbalance"]["details"]), v["ClassImbalance"]


@pytest.mark.integration
def test_imbalanced_data_fires_class_imbalance(tmp_path, jobs_dir):
    data = make_demo_data(tmp_path / "imb", classes=2, per_class=6, size=40, seed=4, imbalance=20)
    job_dir = job(data, jobs_dir, "dbg-imbalance", epochs="1", rules="ClassImbalance,Dataloader",
                  **{"batch-size": "8", "debug-tensor-interval": "1000", "rules-at-end": "true"})
    # rules-at-end: the job itself wrote the verdicts of its enabled rules, and packed them
    in_job = json.loads((job_dir / "output" / "rules" / "ClassImbalance.json").read_text())
    assert in_job["triggered"], in_job
    assert sorted(p.name for p in (job_dir / "output" / "rules").glob("*.json")) == [
        "ClassImbalance.json", "Dataloader.json"]
    with tarfile.open(job_dir / "output.tar.gz") as tar:
        assert "rules/ClassImbalance.json" in tar.getnames()
    v = verdicts_by_rule(run_rules(job_dir, only=["ClassImbalance"]))["ClassImbalance"]
    assert v["triggered"], v
    counts = v["counts"]
    assert counts[0] > 10 * counts[1], counts


@pytest.mark.integration
def test_report_renders_in_headless_chromium(trained_job, artifacts_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        if os.environ.get("LOCALSAGE_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is required (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    job_dir = Path(trained_job["JobDir"])
    path = report.build(job_dir)
    text = path.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text, "the report must open offline"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = path.resolve().as_uri()
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [l for l in dom.stderr.splitlines() if ":CONSOLE" in l]
    assert not console, console
    assert re.search(r'<img id="plot-loss"[^>]*src="data:image/png;base64,', dom.stdout), "loss plot missing"
    table = re.search(r'<table id="rules-table">(.*?)</table>', dom.stdout, re.S)
    assert table, "rules table missing"
    for name in ALL_RULES:
        assert f"<td>{name}</td>" in table.group(1)
    for m in re.finditer(r'src="data:image/png;base64,([^"]+)"', dom.stdout):  # every image decodes
        from PIL import Image

        Image.open(io.BytesIO(base64.b64decode(m.group(1)))).verify()
    shot = artifacts_dir / "debugger-report.png"
    shot.unlink(missing_ok=True)
    run = subprocess.run([chromium, *flags, "--window-size=1200,4000", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.exists() and shot.stat().st_size > 10_000, run.stderr[-2000:]


# ---------------------------------------------------------------- planted faults in a small loop

def test_vanishing_gradients_fire_and_normal_gradients_do_not(tmp_path):
    data = random_batches()
    fine = tiny_loop(tmp_path / "fine", data)
    vanished = tiny_loop(tmp_path / "vanished", data, grad_scale=1e-12)
    ok = run_rules(fine, only=["VanishingGradient"])[0]
    bad = run_rules(vanished, only=["VanishingGradient"])[0]
    assert ok["datapoints"] > 0 and not ok["triggered"], ok
    assert bad["triggered"] and bad["violations"] >= 10, bad


class SlowDataset(torch.utils.data.Dataset):
    def __init__(self, n=24, delay=0.4):
        self.n, self.delay = n, delay

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        time.sleep(self.delay)
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, 16, 16, generator=g), i % 3


def test_sleeping_dataloader_dominates_the_step_breakdown(tmp_path):
    workers = procs.cores()  # a sane worker count: only the waiting can make Dataloader fire
    loader = torch.utils.data.DataLoader(SlowDataset(), batch_size=4, num_workers=workers)
    out = tiny_loop(tmp_path / "slow", loader, epochs=1, workers=workers, hp={"debug-tensor-interval": 1000})
    v = run_rules(out, only=["Dataloader", "StepOutlier", "OverallSystemUsage"])
    dl = verdicts_by_rule(v)["Dataloader"]
    assert dl["triggered"] and any("waits for data" in d for d in dl["details"]), dl
    assert dl["wait_share"] > 50
    steps = [s for s in files.read_jsonl(out / "profiler" / debug_names.PROFILE_STEPS) if s["mode"] == "train"]
    assert len(steps) == 6
    assert sum(s["dataloader"] for s in steps) > 0.5 * sum(s["total"] for s in steps)
    # the report shows it: the dataloader row of the breakdown holds the largest share
    html = report.build(out).read_text()
    rows = re.findall(r"<tr><td>(\w+)</td><td>[\d.]+</td><td>([\d.]+) %</td>",
                      html.split('id="step-breakdown"')[1].split("</table>")[0])
    shares = {k: float(s) for k, s in rows}
    assert max(shares, key=shares.get) == "dataloader", shares
    # the sampler ran alongside: per-core CPU rows and its own CPU time
    system = files.read_jsonl(out / "profiler" / debug_names.PROFILE_SYSTEM)
    assert system and len(system[0]["cpu"]) == os.cpu_count()
    info = json.loads((out / "profiler" / debug_names.PROFILE_JOB).read_text())
    assert info["workers"] == workers and info["sampler_cpu_s"] >= 0 and info["first_step"] >= info["start"]


def test_a_healthy_loop_does_not_fire_dataloader(tmp_path):
    out = tiny_loop(tmp_path / "fast", random_batches(), epochs=1, workers=procs.cores())
    v = run_rules(out, only=["Dataloader"])[0]
    assert not v["triggered"], v


def test_debughookconfig_wins(tmp_path):
    root = tmp_path / "sm"
    cfg = {"LocalPath": "/opt/ml/output/tensors", "HookParameters": {"save_interval": "3"},
           "CollectionConfigurations": [{"CollectionName": "losses"}]}
    net, crit = TinyNet(), nn.CrossEntropyLoss()
    hook = hook_mod.create(net, crit, contract_for(root, cfg), {"debug": True, "debug-train-interval": 1})
    hook_mod.set_mode(hook, "train")
    for x, y in random_batches(n=7):
        crit(net(x), y).backward()
    hook_mod.close(hook)
    assert hook_mod.written_steps(root / "output" / "tensors") == [0, 3, 6]


@pytest.mark.integration
def test_built_in_trainer_takes_sagemakers_hook_config_from_the_cli(small_data, tmp_path):
    """`train --debugger-hook-config` on a local built-in job: SageMaker's debughookconfig.json with those
    HookParameters, and it wins over the debug-* hyperparameters as in the cloud (debug-train-interval=1
    would save the loss at every step; the file's train.save_interval=3 saves it at 0, 3, ...)."""
    from smdebug import modes
    from smdebug.trials import create_trial

    from localsage.cli import main

    jobs = tmp_path / "jobs"
    hp = [a for k, v in {**SMALL_JOB_HP, "batch-size": "2", "epochs": "1"}.items() for a in ("--hp", f"{k}={v}")]
    base = ["train", "--data", str(small_data), "--jobs-dir", str(jobs), *hp]
    hook_args = ["--debugger-hook-config", "train.save_interval=3", "--debugger-hook-config", "save_all=true"]
    assert main(base + ["--name", "hooked", *hook_args]) == 0
    job_dir = jobs / "hooked"
    cfg = json.loads((job_dir / "input" / "config" / "debughookconfig.json").read_text())
    assert cfg["HookParameters"] == {"train.save_interval": "3", "save_all": "true"}
    assert cfg["LocalPath"] == str(job_dir / "output" / "tensors")
    trial = create_trial(str(job_dir / "output" / "tensors"))
    steps = trial.tensor(debug_names.LOSS_NAME).steps(mode=modes.TRAIN)
    assert len(steps) >= 2 and all(s % 3 == 0 for s in steps), steps
    assert "conv1_output_0" in trial.tensor_names()  # save_all: every module's output, which ours never saves
    # the hook the config sets up cannot be turned off by the hyperparameter at the same time
    assert main(base + ["--name", "off", "--hp", "debug=false", *hook_args]) == 2
    assert not (jobs / "off").exists()


@pytest.mark.integration
def test_no_debug_tensors_turns_the_built_in_trainers_hook_off(small_data, tmp_path):
    """`train --no-debug-tensors` (SageMaker's switch) reaches the built-in trainer as debug=false, its own:
    no tensors are saved; asking for both debug=true and --no-debug-tensors is refused before any job."""
    from localsage.cli import main

    jobs = tmp_path / "jobs"
    hp = [a for k, v in {**SMALL_JOB_HP, "batch-size": "2", "epochs": "1"}.items() for a in ("--hp", f"{k}={v}")]
    base = ["train", "--data", str(small_data), "--jobs-dir", str(jobs), *hp]
    assert main(base + ["--name", "quiet", "--no-debug-tensors"]) == 0
    record = json.loads((jobs / "quiet" / "job.json").read_text())
    assert record["TrainingJobStatus"] == "Completed" and record["HyperParameters"]["debug"] == "false"
    assert not [p for p in (jobs / "quiet" / "output" / "tensors").rglob("*") if p.is_file()]
    assert main(base + ["--name", "both", "--no-debug-tensors", "--hp", "debug=true"]) == 2
    assert not (jobs / "both").exists()


def test_local_modes_hook_parameters_make_the_same_config(tmp_path):
    """SDK local mode writes no debughookconfig.json: the parameters arrive in LOCALSAGE_DEBUG_HOOK and
    the contract holds the config SageMaker would have written; a file, when present, wins."""
    from localsage.core import contract

    env = {contract.DEBUG_HOOK_ENV: json.dumps({"train.save_interval": 3})}
    loaded = contract.load(tmp_path, env=env, gpus=lambda: 0)
    assert loaded.debughookconfig == contract.default_debughookconfig(tmp_path / "output" / "tensors",
                                                                       {"train.save_interval": "3"})
    for quiet in ({}, {contract.DEBUG_HOOK_ENV: "{}"}, {contract.DEBUG_HOOK_ENV: "off"}):
        assert contract.load(tmp_path, env=quiet, gpus=lambda: 0).debughookconfig is None
    with pytest.raises(ValueError, match="LOCALSAGE_DEBUG_HOOK='{save_interval: 3}' is not a JSON object"):
        contract.load(tmp_path, env={contract.DEBUG_HOOK_ENV: "{save_interval: 3}"}, gpus=lambda: 0)
    contract.config_dir(tmp_path).mkdir(parents=True)
    contract.debughookconfig_file(tmp_path).write_text(json.dumps({"HookParameters": {"save_interval": "7"}}))
    assert contract.load(tmp_path, env=env, gpus=lambda: 0).debughookconfig == {
        "HookParameters": {"save_interval": "7"}}


def test_forced_smdebug_write_failure_is_reported(tmp_path, smdebug_agent_reset, caplog):
    """smdebug swallows write errors with its default (losses-only) configuration, as a SageMaker
    debughookconfig.json gives: the verifier must turn that into an error."""
    cfg = {"HookParameters": {"save_interval": "1"}, "CollectionConfigurations": [{"CollectionName": "losses"}]}
    for strict in (True, False):
        smdebug_agent_reset.disable_smdebug = False
        root = tmp_path / f"broken-{strict}"
        net, crit = TinyNet(), nn.CrossEntropyLoss()
        hook = hook_mod.create(net, crit, contract_for(root, cfg), {"debug": True, "debug-strict": strict})
        tensors = root / "output" / "tensors"
        shutil.rmtree(tensors, ignore_errors=True)
        tensors.parent.mkdir(parents=True, exist_ok=True)
        tensors.write_text("a file where smdebug wants its folder\n")  # every write under it fails
        hook_mod.set_mode(hook, "train")
        batches = random_batches(n=3)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="localsage.debugger"):
            if strict:
                with pytest.raises(hook_mod.DebuggerWriteError, match="disabled itself|no tensors"):
                    for x, y in batches:
                        crit(net(x), y).backward()
            else:
                for x, y in batches:
                    crit(net(x), y).backward()
                assert any("debug-strict=false" in r.getMessage() for r in caplog.records)
        assert smdebug_agent_reset.disable_smdebug, "the fault was not planted: smdebug kept saving"
        __import__("atexit").unregister(hook._cleanup)  # its exit-time flush would fail on the same file


def test_a_full_disk_under_smdebug_fails_the_step_instead_of_hanging(tmp_path, smdebug_agent_reset, monkeypatch):
    """smdebug writes event files from a thread: an OSError there (ENOSPC) used to kill the thread and leave
    the next flush waiting forever on its queue (a CI run hung 48 minutes). Now the step fails."""
    import errno
    import threading

    from smdebug.core.access_layer import file as smdebug_file

    net, crit = TinyNet(), nn.CrossEntropyLoss()
    hook = hook_mod.create(net, crit, contract_for(tmp_path / "full"), {"debug": True, "debug-train-interval": 1,
                                                                       "debug-tensor-interval": 1})
    hook_mod.set_mode(hook, "train")
    def full(self, _bytes):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(smdebug_file.TSAccessFile, "write", full)
    outcome = {}
    def steps():
        try:
            for x, y in random_batches(n=4):
                crit(net(x), y).backward()
            hook_mod.close(hook)
            outcome["ok"] = True
        except Exception as e:  # noqa: BLE001 -- the outcome under test
            outcome["error"] = e
    worker = threading.Thread(target=steps, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the training loop hangs on smdebug's dead writer thread"
    assert "error" in outcome or smdebug_agent_reset.disable_smdebug, outcome
    if "error" in outcome:
        assert isinstance(outcome["error"], (hook_mod.WriterThreadDied, hook_mod.DebuggerWriteError)), outcome
    __import__("atexit").unregister(hook._cleanup)


def test_tensors_written_by_a_debug_loop(tmp_path):
    out = tiny_loop(tmp_path / "t", random_batches(n=3), epochs=1)
    from smdebug.trials import create_trial

    trial = create_trial(str(out / "tensors"))
    names = set(trial.tensor_names())
    assert {debug_names.LOSS_NAME, debug_names.LABELS_NAME, debug_names.LOGITS_NAME} <= names
    assert any(n.startswith("gradient/") for n in names) and any(n.endswith("weight") for n in names)


def test_rule_overrides_are_typed_and_checked():
    assert parse_overrides(["Overfit:ratio_threshold=0.2,patience=3", "ExplodingTensor:only_nan=true"]) == {
        "Overfit": {"ratio_threshold": 0.2, "patience": 3}, "ExplodingTensor": {"only_nan": True}}
    with pytest.raises(ValueError, match="bad parameter"):
        parse_overrides(["Overfit:nope=1"])
    with pytest.raises(ValueError, match="unknown rule"):
        parse_overrides(["Nope:x=1"])


def test_a_rule_is_declared_by_its_class():
    """Name, kind, label and place in the reading are the class's; the name lists derive from RULES. core cannot
    import the rules, so the `rules` hyperparameter's help names the rules rules=default leaves off by hand."""
    assert all(issubclass(cls, LocalRule) for cls in RULES) and len(ALL_RULES) == len(RULES)
    debugger = [cls for cls in RULES if cls.KIND == "debugger"]
    assert all(cls.LABEL for cls in debugger), [cls.__name__ for cls in debugger if not cls.LABEL]
    orders = [cls.ORDER for cls in debugger]
    assert len(set(orders)) == len(orders) and max(orders) < LocalRule.ORDER, "one place each, before the rest"
    help_text = hyperparameters.SPEC["rules"].help
    assert {name for name in ALL_RULES if name in help_text} == set(ACTIVATION_RULES), help_text


def test_rules_default_leaves_the_activation_rules_off_and_names_are_checked():
    assert enabled_rules({}) == [name for name in ALL_RULES if name not in ("PoorWeightInitialization", "DeadRelu")]
    assert enabled_rules({"rules": "all"}) == list(ALL_RULES) and enabled_rules({"rules": "none"}) == []
    assert enabled_rules({"rules": " Overfit, DeadRelu "}) == ["Overfit", "DeadRelu"]
    with pytest.raises(ValueError, match="unknown rule"):
        enabled_rules({"rules": "Overfit,Nope"})


def test_debug_and_report_commands(tmp_path, capsys):
    from localsage.cli import main

    out = tiny_loop(tmp_path / "cli", random_batches(n=3), epochs=2)
    assert main(["debug", str(out.parent), "--rule", "Overfit:ratio_threshold=0.5", "--only", "Overfit,AllZero"]) == 0
    printed = capsys.readouterr().out
    assert "Overfit" in printed and "AllZero" in printed and "LossNotDecreasing" not in printed
    assert json.loads((out / "rules" / "Overfit.json").read_text())["parameters"]["ratio_threshold"] == 0.5
    assert main(["report", str(out.parent)]) == 0
    assert (out / "report" / "report.html").exists() and (out / "report" / "loss.png").exists()
    assert main(["debug", str(out.parent), "--rule", "Overfit:bogus=1"]) == 2


def test_debug_and_profiler_off_write_nothing(tmp_path):
    out = tiny_loop(tmp_path / "off", random_batches(n=2), epochs=1, hp={"debug": False, "profiler": False})
    assert not (out / "tensors").exists() and not (out / "profiler").exists()
    v = verdicts_by_rule(run_rules(out, only=["VanishingGradient", "Dataloader"]))
    assert v["VanishingGradient"]["status"] == "NoData" and v["Dataloader"]["status"] == "NoData"


# ---------------------------------------------------------------- the image's default hook config (issue 32)

def test_the_site_hook_points_smdebug_at_the_image_default_only_when_the_job_has_no_config(tmp_path, monkeypatch):
    """smdebug reads SMDEBUG_CONFIG_FILE_PATH before /opt/ml/input/config/debughookconfig.json: the image's
    start-up hook may set it only when nothing else configures the hook."""
    from localsage.container import smdebug_default
    from localsage.core import contract

    known = smdebug_default.facts()
    assert known["default"] == smdebug_default.IMAGE_CONFIG and known["root"] == contract.DEFAULT_ROOT
    job_config = str(contract.debughookconfig_file(contract.DEFAULT_ROOT))
    present = {known["default"]}

    def choose(env, also=()):
        return smdebug_default.choose(env, known, exists=lambda p: p in present | set(also))

    assert choose({}) == smdebug_default.IMAGE_CONFIG
    assert choose({contract.SMDEBUG_CONFIG_ENV: ""}) == smdebug_default.IMAGE_CONFIG
    assert choose({contract.ROOT_ENV: "/opt/ml/"}) == smdebug_default.IMAGE_CONFIG
    assert choose({contract.SMDEBUG_CONFIG_ENV: "/mine.json"}) is None  # the job's own (scriptmode/run.py's)
    assert choose({}, also=[job_config]) is None  # the platform's file, --debugger-hook-config
    assert choose({contract.DEBUG_HOOK_ENV: "off"}) is None  # debug off (a script job with debug=false)
    assert choose({contract.DEBUG_HOOK_ENV: '{"train.save_interval": "5"}'}) is None  # `train` writes that one
    assert choose({contract.ROOT_ENV: str(tmp_path)}) is None  # the default names /opt/ml's tensors
    present.clear()
    assert choose({}) is None  # not in the image

    # the .pth line the image build writes, run as Python runs it at start-up, sets the variable
    config, pth = smdebug_default.install(tmp_path / "etc" / "debughookconfig.json", site_dir=tmp_path / "site")
    assert json.loads(Path(config).read_text()) == contract.default_debughookconfig(
        contract.tensors_dir(contract.DEFAULT_ROOT))
    assert Path(pth).name.endswith(".pth") and Path(pth).read_text().startswith("import localsage.")
    env = {k: v for k, v in os.environ.items()
           if k not in (contract.SMDEBUG_CONFIG_ENV, contract.DEBUG_HOOK_ENV, contract.ROOT_ENV)}
    probe = (f"import os, site; site.addsitedir({str(tmp_path / 'site')!r}); "
             f"print(os.environ.get({contract.SMDEBUG_CONFIG_ENV!r}))")
    run = lambda extra: subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, capture_output=True,
                                       text=True, check=True).stdout.strip()
    if not os.path.exists(job_config):
        assert run({}) == config
    assert run({contract.DEBUG_HOOK_ENV: "off"}) == "None"
    assert run({contract.SMDEBUG_CONFIG_ENV: "/mine.json"}) == "/mine.json"
    # a broken hook never stops the interpreter
    monkeypatch.delenv(contract.SMDEBUG_CONFIG_ENV, raising=False)
    smdebug_default.apply({})
    assert contract.SMDEBUG_CONFIG_ENV not in os.environ


def _tar(path: Path, entries: dict) -> Path:
    """entries: {arcname: Path | bytes | ("symlink"|"hardlink", target)}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, what in entries.items():
            if isinstance(what, Path):
                tar.add(what, arcname=name)
                continue
            info = tarfile.TarInfo(name)
            if isinstance(what, tuple):
                info.type = tarfile.SYMTYPE if what[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = what[1]
                tar.addfile(info)
            else:
                info.size = len(what)
                tar.addfile(info, io.BytesIO(what))
    return path


def test_debug_and_report_read_an_sdk_v3_local_container_root_and_an_output_tarball(tmp_path, capsys):
    """SDK v3's LOCAL_CONTAINER leaves local_container_root/compressed_artifacts/{model,output}.tar.gz (and an
    empty output/data): `debug` and `report` unpack output.tar.gz into a job-like folder and read its tensors."""
    from localsage.cli import main
    from localsage.debugger import results

    out = tiny_loop(tmp_path / "run", random_batches(n=3), epochs=2)
    root = tmp_path / "v3"
    (root / "output" / "data").mkdir(parents=True)  # the SDK makes it; it stays empty
    tarball = _tar(root / "compressed_artifacts" / "output.tar.gz",
                   {child.name: child for child in sorted(out.iterdir())})  # no top folder, as the SDK packs
    _tar(root / "compressed_artifacts" / "model.tar.gz", {"model.pth": b"weights"})
    assert main(["debug", str(root), "--only", "LossNotDecreasing,AllZero,Dataloader"]) == 0
    assert "LossNotDecreasing" in capsys.readouterr().out
    job = root / "compressed_artifacts" / "output-unpacked"
    verdict = json.loads((job / "output" / "rules" / "AllZero.json").read_text())
    assert verdict["status"] != "NoData" and verdict["datapoints"] > 0, verdict
    assert json.loads((job / "output" / "rules" / "Dataloader.json").read_text())["status"] != "NoData"
    # the same archive given by path: the folder is reused (its verdicts stay), the report is written there
    assert main(["report", str(tarball)]) == 0
    assert (job / "output" / "report" / "report.html").exists() and (job / "output" / "report" / "loss.png").exists()
    assert (job / "output" / "rules" / "AllZero.json").exists()
    # a changed archive is unpacked afresh; --into elsewhere; an archive with a top output/ folder
    other = _tar(tmp_path / "dl" / "job.tgz", {f"output/{c.name}": c for c in sorted(out.iterdir())})
    assert main(["debug", str(other), "--only", "AllZero", "--into", str(tmp_path / "mine")]) == 0
    assert json.loads((tmp_path / "mine" / "output" / "rules" / "AllZero.json").read_text())["datapoints"] > 0
    assert results.job_folder(tmp_path / "mine") == tmp_path / "mine"  # a job-like folder as it is
    (tmp_path / "s3").mkdir()  # a folder with an output.tar.gz (downloaded from S3, say) and no output/
    shutil.copy2(tarball, tmp_path / "s3" / "output.tar.gz")
    assert results.job_folder(tmp_path / "s3") == tmp_path / "s3" / "output-unpacked"
    assert (tmp_path / "s3" / "output-unpacked" / "output" / "tensors" / "index").is_dir()
    # v3's unpacked artifacts/output when there is no archive
    shutil.rmtree(root / "compressed_artifacts")
    shutil.copytree(out, root / "artifacts" / "output")
    assert results.job_folder(root) == root / "artifacts"


@pytest.mark.parametrize("entries, why", [
    ({"tensors/../../evil": b"x"}, "outside the extraction folder"),
    ({"/tmp/evil-abs": b"x"}, "outside the extraction folder"),
    ({"tensors": ("symlink", "/etc")}, "is a link"),
    ({"inside": ("symlink", "data")}, "is a link"),
    ({"data/passwd": ("hardlink", "/etc/passwd")}, "is a link"),
])
def test_an_output_tarball_that_reaches_outside_is_refused(tmp_path, capsys, entries, why):
    from localsage.cli import main

    tarball = _tar(tmp_path / "in" / "output.tar.gz", {"data/ok.txt": b"fine", **entries})
    assert main(["debug", str(tarball)]) == 2
    assert why in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["output.tar.gz"]  # nothing unpacked
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil-abs").exists()


def test_debug_on_bad_results_fails_clearly(tmp_path, capsys):
    from localsage.cli import main

    (tmp_path / "notes.txt").write_text("not an archive")
    assert main(["debug", str(tmp_path / "notes.txt")]) == 2
    assert "not a tar archive" in capsys.readouterr().err
    (tmp_path / "trunc.tar.gz").write_bytes(_tar(tmp_path / "t" / "x.tar.gz", {"a": b"x" * 5000}).read_bytes()[:60])
    assert main(["report", str(tmp_path / "trunc.tar.gz")]) == 2
    assert "tar archive" in capsys.readouterr().err
    tarball = _tar(tmp_path / "j" / "output.tar.gz", {"data/ok.txt": b"fine"})
    (tmp_path / "j" / "output-unpacked").mkdir()
    (tmp_path / "j" / "output-unpacked" / "mine.txt").write_text("a folder of the user's")
    assert main(["debug", str(tarball)]) == 2
    assert "not unpacked by localsage" in capsys.readouterr().err
    assert (tmp_path / "j" / "output-unpacked" / "mine.txt").exists()
