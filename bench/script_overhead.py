"""Script-mode overhead: seconds localsage adds around a user's script.

    PYTHONPATH=src python bench/script_overhead.py [--runs 5] [--image localsage:latest] [--no-docker]

The same tiny script (imports torch, one small matmul loop) runs
- bare:    `python train.py --epochs 1` with the SM_* variables set by hand (what a user would do),
- process: `localsage train --entry-point train.py --backend process`,
- docker:  `localsage train --entry-point train.py --backend docker`,
in turn (bare, process, docker, bare, ...) so a changing machine load hits all alike. The script
writes its own start (before `import torch`) and end times; "outside" = wall time of the whole
command - the script's own time. Prints every run and, per mode, the median and range of five.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spread import spread  # bench/spread.py

SCRIPT = '''
import time
t0 = time.time()
import argparse, json, os
import torch
parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
args = parser.parse_args()
x = torch.randn(256, 256)
for _ in range(20 * args.epochs):
    x = torch.tanh(x @ x.T / 256)
os.makedirs(os.environ["SM_MODEL_DIR"], exist_ok=True)
with open(os.path.join(os.environ["SM_MODEL_DIR"], "times.json"), "w") as f:
    json.dump({"start": t0, "end": time.time()}, f)
print("Test set: Average loss: %.4f" % float(x.abs().mean()))
'''



def timing_row(key: str, name: str, run: int, wall: float, times: dict) -> dict:
    """One run: its wall time, the script's own time (the times.json it wrote) and the time outside it."""
    inside = times["end"] - times["start"]
    return {key: name, "run": run, "wall_s": round(wall, 3), "script_s": round(inside, 3),
            "outside_s": round(wall - inside, 3)}

def bare(work: Path, src: Path, data: Path, i: int) -> tuple[float, Path]:
    model = work / f"bare-{i}" / "model"
    env = {**os.environ, "SM_MODEL_DIR": str(model), "SM_CHANNEL_TRAINING": str(data),
           "SM_OUTPUT_DATA_DIR": str(model.parent / "data"), "SM_HPS": '{"epochs": 1}'}
    t0 = time.time()
    subprocess.run([sys.executable, "train.py", "--epochs", "1"], cwd=src, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.time() - t0, model


def localsage(work: Path, src: Path, data: Path, backend: str, image: str, i: int) -> tuple[float, Path]:
    name = f"{backend}-{i}"
    cmd = [sys.executable, "-m", "localsage", "train", "--entry-point", "train.py", "--source-dir", str(src),
           "--data", str(data), "--hp", "epochs=1", "--backend", backend, "--jobs-dir", str(work / "jobs"),
           "--name", name, "--metric-definition", "loss=Test set: Average loss: ([0-9.]+)"]
    if backend == "docker":
        cmd += ["--image", image]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.time() - t0, work / "jobs" / name / "model"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--image", default=os.environ.get("IMAGE", "localsage:latest"))
    ap.add_argument("--no-docker", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="script-overhead-"))
    src = work / "src"
    src.mkdir()
    (src / "train.py").write_text(SCRIPT)
    data = work / "data" / "train"
    data.mkdir(parents=True)
    modes = ["bare", "process"] + ([] if args.no_docker else ["docker"])
    rows = []
    for i in range(args.runs + 1):  # run 0 warms caches (page cache, docker image layers); not counted
        for mode in modes:
            if mode == "bare":
                wall, model = bare(work, src, data.parent, i)
            else:
                wall, model = localsage(work, src, data.parent, mode, args.image, i)
            row = timing_row("mode", mode, i, wall, json.loads((model / "times.json").read_text()))
            print(json.dumps(row) + ("  (warm-up)" if i == 0 else ""), flush=True)
            if i:
                rows.append(row)
    summary = {mode: {"outside_s": spread(r["outside_s"] for r in rows if r["mode"] == mode)} for mode in modes}
    for mode in modes[1:]:
        summary[mode]["added_vs_bare_s"] = round(summary[mode]["outside_s"]["median"]
                                                 - summary["bare"]["outside_s"]["median"], 2)
    print(json.dumps({"runs": args.runs, "cores": os.cpu_count(), "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
