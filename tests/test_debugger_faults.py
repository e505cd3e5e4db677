"""Planted training faults: the rule named for each fault fires, with a recommendation that fits and a
reading that names the cause first; a healthy run gets no debugger-rule issue.

The faults are in-process test models (bench/debugger_faults.py, which prints the same table) trained
2-3 epochs on the demo set at 32 px through the product's debugger API; also: short jobs (NoData with
the reason, scaling never over a user-set parameter) and a script-mode job's own plain smd.Hook.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import debugger_faults as faults  # noqa: E402 - bench/debugger_faults.py, after the sys.path insert
from localsage.debugger.rules.reading import reading, table  # noqa: E402 - after the sys.path insert
from localsage.debugger.rules.registry import REGISTRY  # noqa: E402 - after the sys.path insert
from localsage.debugger.rules.verdicts import run_rules  # noqa: E402 - after the sys.path insert


@pytest.fixture(scope="module")
def demo32(demo_data):
    """The demo set in memory at 32 px; one torch thread (tiny models, shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield faults.load_demo(demo_data)
    torch.set_num_threads(threads)


@pytest.mark.integration
@pytest.mark.parametrize("name", [n for n in faults.FAULTS if n != "healthy"])
def test_planted_fault_fires_its_rule(name, demo32, tmp_path):
    fault = faults.FAULTS[name]
    r = faults.run(name, demo32, tmp_path)
    by = r["by_rule"]
    for rule in fault.must_fire:
        assert by[rule]["triggered"], (rule, by[rule]["evidence"], r["reading"])
    if fault.any_of:
        assert any(by[rule]["triggered"] for rule in fault.any_of), ({k: by[k]["evidence"] for k in fault.any_of})
    for rule in (*fault.must_fire, *fault.any_of):
        if by[rule]["triggered"]:  # evidence names the step; the recommendation is the rule's own
            assert by[rule]["evidence"] and by[rule]["trigger_steps"], by[rule]
            assert by[rule]["recommendation"] == REGISTRY[rule].RECOMMENDATION
    assert r["reading_names_cause"], (fault.reading, r["reading"])
    shown = table(list(by.values()))
    fired_rows = [line.split()[0] for line in shown.splitlines()[3:] if "IssuesFound" in line.split()[1:2]]
    assert fired_rows == r["fired"], shown  # fired rules first, in the reading's order
    assert shown.startswith("Reading: " + r["reading"])
    if name == "divergence-adamw":  # the cause, its step and values, and what to do: not the symptoms
        assert r["reading"].startswith("Diverged (LossDiverging) at step 1: TRAIN loss "), r["reading"]
        assert "lower the learning rate" in r["reading"] and "(step 0) ->" in by["LossDiverging"]["evidence"]


@pytest.mark.integration
@pytest.mark.parametrize("seed", [0, 1])
def test_healthy_run_has_no_debugger_issue(seed, demo32, tmp_path):
    r = faults.run("healthy", demo32, tmp_path, seed=seed)
    assert not r["false_alarms"], {a: r["by_rule"][a]["evidence"] for a in r["false_alarms"]}
    by = r["by_rule"]
    for name in ("LossNotDecreasing", "LossDiverging", "Overfit", "Overtraining", "VanishingGradient",
                 "ExplodingTensor", "PoorWeightInitialization", "DeadRelu", "ClassImbalance", "WeightUpdateRatio"):
        assert by[name]["status"] == "NoIssuesFound" and by[name]["datapoints"] > 0, by[name]
    assert r["reading"].startswith("No training issue found"), r["reading"]


@pytest.mark.integration
def test_short_job_scales_and_says_why_it_has_no_data(demo32, tmp_path):
    short = faults.Fault("short", "3 steps", (), epochs=1, batch=32,
                         data=lambda x, y: faults.per_class(x, y, {}, default=16))  # 96 images: 3 steps
    out = faults.train(short, demo32, tmp_path / "short", hp={"debug-train-interval": 1})
    by = {v["rule"]: v for v in run_rules(out)}
    lnd = by["LossNotDecreasing"]
    assert lnd["status"] == "NoData" and lnd["evidence"] == (
        "3 TRAIN loss points, needs 5: save more often with debug-train-interval"), lnd
    assert "needs 3" in by["Overtraining"]["evidence"], by["Overtraining"]
    assert all(v["evidence"] for v in by.values() if v["status"] == "NoData")  # never a silent NoData

    longer = faults.Fault("longer", "8 steps", (), epochs=1, batch=32)
    out = faults.train(longer, demo32, tmp_path / "longer")  # default debug-train-interval (10): dense start
    v = run_rules(out, only=["LossNotDecreasing"])[0]
    assert v["datapoints"] >= 3 and v["parameters"]["num_steps"] == 1 and "num_steps" in v["scaled"], v
    # a parameter the user set is used as set: 8 points over 8 steps cannot hold two checks 10 apart
    v = run_rules(out, only=["LossNotDecreasing"], overrides=["LossNotDecreasing:num_steps=10"])[0]
    assert v["parameters"]["num_steps"] == 10 and not v["scaled"] and v["status"] == "NoData", v
    assert "num_steps=10 needs 11" in v["evidence"]


def test_script_mode_hook_without_collections_gets_reasons_and_verdicts(tmp_path):
    """A user's script with its own plain smd.Hook (losses only, no modes): no crash, the rules that
    need other collections say which, and a diverging run is still called a divergence."""
    import smdebug.pytorch as smd
    from smdebug.core.save_config import SaveConfig

    torch.manual_seed(0)
    out = tmp_path / "output"
    net, crit = faults.PlainNet(3), nn.CrossEntropyLoss()
    hook = smd.Hook(out_dir=str(out / "tensors"), save_config=SaveConfig(save_interval=1))
    hook.register_module(net)
    hook.register_loss(crit)
    opt = torch.optim.AdamW(net.parameters(), lr=50.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 3, (16,), generator=g)
        loss = crit(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    hook.close()
    by = {v["rule"]: v for v in run_rules(out)}
    assert by["LossDiverging"]["triggered"] and by["LossNotDecreasing"]["triggered"], by["LossDiverging"]
    assert by["VanishingGradient"]["status"] == "NoData" and "gradients" in by["VanishingGradient"]["evidence"]
    assert by["ClassImbalance"]["status"] == "NoData" and "labels_predictions" in by["ClassImbalance"]["evidence"]
    assert by["Overfit"]["status"] == "NoData" and "EVAL" in by["Overfit"]["evidence"]
    assert by["Dataloader"]["status"] == "NoData" and by["Dataloader"]["evidence"]
    assert reading(list(by.values())).startswith("Diverged")
