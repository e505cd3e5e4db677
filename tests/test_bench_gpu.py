"""bench/gpu.py, the prepared GPU run, checked on this CPU machine at tiny size: every part it times on the GPU
machine (the runner's loop on resident batches, five runner jobs end to end (decode-on=device among them), the
summary) runs and reports what it says it does. GPU time is scarce (one short run a session, when one is lent at
all), so the script must not find its bugs there."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "gpu.py"


@pytest.mark.integration
def test_gpu_bench_runs_every_part_and_reports_the_goal(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(BENCH), "--out", str(out), "--work", str(tmp_path / "work"),
                           "--device", "cpu", "--tiny", "--photos", "80", "--epochs", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "errors.txt").exists(), (out / "errors.txt").read_text()
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back
    loop = json.loads((out / "loop.json").read_text())
    for name in ("runner", "profiler-on", "cudnn-benchmark-off"):
        assert len(loop[name]["rounds_images_per_sec"]) == 5 and min(loop[name]["rounds_images_per_sec"]) > 0
    phases = loop["profiler-on"]["ms_a_step"]
    assert (phases["forward"] > 0 and phases["backward"] > 0
            and phases["total"] >= phases["forward"] + phases["backward"])

    e2e = {run["run"]: run for run in json.loads((out / "e2e.json").read_text())}
    assert set(e2e) == {"decoded", "off", "decoded-profiler-off", "decode-on-device", "decode-on-device-profiler-off"}
    assert "decode-on=device" in (out / "e2e-logs.txt").read_text()
    for run in e2e.values():
        assert run["rc"] == 0 and [e["epoch"] for e in run["epochs"]] == [1, 2], (out / "e2e-logs.txt").read_text()
        shares = [e["dataloader_share"] for e in run["epochs"]]
        assert all(0 < s < 1 for s in shares) if run["profiler"] else shares == [None, None]
        firsts = [e["first_step_wait_ms"] for e in run["epochs"]]
        assert all(f >= 0 for f in firsts) if run["profiler"] else firsts == [None, None]
    # the decoded-image cache gives the pixels a decode gives: same seed, same losses
    assert [e["train_loss"] for e in e2e["decoded"]["epochs"]] == [e["train_loss"] for e in e2e["off"]["epochs"]]

    decode = json.loads((out / "device.json").read_text())["decode"]
    for name in ("workers_decode_one_core", "device_workers_share_one_core", "device_decode_augment"):
        assert decode[name]["min"] > 0 and decode[name]["min"] <= decode[name]["median"] <= decode[name]["max"]
    assert decode["workers_share_ratio"] > 0 and decode["images"] > 0

    summary = {row["run"]: row for row in json.loads((out / "summary.json").read_text())}
    assert set(summary) == set(e2e)
    for row in summary.values():
        assert row["ratio"] == pytest.approx(row["images_per_sec"]["median"] / row["resident_images_per_sec"], abs=1e-3)
        assert isinstance(row["goal_met"], bool)
    assert summary["decoded"]["resident_images_per_sec"] == loop["profiler-on"]["images_per_sec"]["median"]
    assert summary["decoded-profiler-off"]["resident_images_per_sec"] == loop["runner"]["images_per_sec"]["median"]


def test_gpu_bench_refuses_an_unknown_run_before_it_starts(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--out", str(tmp_path / "out"), "--runs", "decoded,nope"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--runs: unknown ['nope']" in proc.stderr
    assert not (tmp_path / "out").exists()
