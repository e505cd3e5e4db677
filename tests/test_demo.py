"""`make demo`: the whole loop end to end on the process backend, as a newcomer runs it."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # every test here runs jobs, servers or containers

ROOT = Path(__file__).resolve().parent.parent


def test_make_demo_end_to_end(tmp_path):
    data, jobs = tmp_path / "data", tmp_path / "jobs"
    proc = subprocess.run(["make", "demo", f"DATA={data}", f"JOBS={jobs}", "BACKEND=process"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for n in range(1, 7):
        assert f"[{n}/6]" in out
    record = json.loads((jobs / "demo-best" / "job.json").read_text())
    assert record["TrainingJobStatus"] == "Completed"
    assert record["Summary"]["best_valid_acc"] >= 0.9
    m = re.search(r"(\d+)/(\d+) predictions came back over HTTP, (\d+) correct", out)
    assert m, out[-2000:]
    ok, total, correct = map(int, m.groups())
    assert ok == total >= 6 and correct >= total - 1
    assert (jobs / "tune-demo" / "best_hyperparameters.json").exists()
    assert (jobs / "demo-best" / "output" / "report" / "report.html").exists()
    assert list((jobs / "demo-best" / "output" / "rules").glob("*.json"))
