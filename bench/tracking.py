"""MLflow tracking's cost per epoch on the demo job: the same job with tracking on (the embedded SQLite store,
or $MLFLOW_TRACKING_URI) and off (LOCALSAGE_TRACKING=off), interleaved (off, on, off, on, ...) so a changing
machine load hits both alike.

    PYTHONPATH=src python bench/tracking.py [--runs 5] [--epochs 6] [--data DIR]

Per job: the mean epoch time the trainer measured (metrics.jsonl's epoch_time: what tracking could slow
down while the job trains) and the whole command's wall time (the run's start before the job and its
closing calls, the model folder's copy among them, after it). Prints every run, the median and range of
each, and tracking's cost: (on - off) / epochs, as a share of an epoch. Goal: <= 1% of epoch time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spread import spread_text  # bench/spread.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from localsage.host.demo import FIXED  # noqa: E402  (the demo job's recipe)


def job(data: Path, jobs: Path, name: str, epochs: int, tracking: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("LOCALSAGE_TRACKING", None)
    if not tracking:
        env["LOCALSAGE_TRACKING"] = "off"
    hp = {**FIXED, "epochs": epochs, "batch-size": 32, "lr": 0.003, "debug": "false"}
    args = [a for k, v in hp.items() for a in ("--hp", f"{k}={v}")]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "localsage", "train", "--data", str(data), "--jobs-dir", str(jobs),
                           "--name", name, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (jobs / name / "output" / "data" / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    epoch_times = [r["epoch_time"] for r in rows if "epoch_time" in r]
    tracked = (jobs / name / "tracking.json").exists()
    assert tracked == tracking, f"{name}: tracking.json {'missing' if tracking else 'written with tracking off'}"
    return {"wall": wall, "epoch": statistics.mean(epoch_times), "epochs": len(epoch_times)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--epochs", type=int, default=FIXED["epochs"])
    p.add_argument("--data", help="an ImageFolder set (default: the demo set, generated)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if args.data else tmp / "demo"
        if not args.data:
            from localsage.container.demo_images import make_demo_data

            make_demo_data(data, seed=0)
        job(data, tmp / "jobs", "warm-up", 1, True)  # the store's tables, the page cache, the decoded-image cache
        runs = {"off": [], "on": []}
        for i in range(args.runs):
            for mode in ("off", "on"):
                r = job(data, tmp / "jobs", f"{mode}-{i}", args.epochs, mode == "on")
                runs[mode].append(r)
                print(f"run {i} tracking {mode:3}: wall {r['wall']:.2f} s, epoch {r['epoch']:.3f} s "
                      f"({r['epochs']} epochs)", flush=True)
    print(f"\n{args.runs} runs each, interleaved, {os.cpu_count()} cores: median [min-max]")
    print(f"{'tracking':10}{'epoch s':>24}{'wall s':>24}")
    for mode, rs in runs.items():
        print(f"{mode:10}{spread_text([r['epoch'] for r in rs], '{:.3f}'):>24}"
              f"{spread_text([r['wall'] for r in rs]):>24}")
    per_round_epoch = [(on["epoch"] - off["epoch"]) / off["epoch"] * 100 for off, on in zip(runs["off"], runs["on"])]
    per_round_wall = [(on["wall"] - off["wall"]) / args.epochs / off["epoch"] * 100
                      for off, on in zip(runs["off"], runs["on"])]
    print(f"epoch time, on vs off (same round):          {spread_text(per_round_epoch, '{:+.2f}')} % of an epoch")
    print(f"whole job, (on - off) / epochs (same round): {spread_text(per_round_wall, '{:+.2f}')} % of an epoch")


if __name__ == "__main__":
    main()
