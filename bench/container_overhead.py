"""Container overhead: the same demo job through the process backend and the docker backend.

    PYTHONPATH=src python bench/container_overhead.py [--rounds 2] [--epochs 1] [--image localsage:latest]

Runs alternate (process, docker, process, docker, ...) so a changing machine load hits both alike,
and prints wall time per run, the train time the job itself measured, and the difference.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from localsage import runner
from localsage.data import make_demo_data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", default="1")
    ap.add_argument("--image", default="localsage:latest")
    args = ap.parse_args()
    hp = {"arch": "resnet18", "weights": "none", "image-size": "64", "epochs": args.epochs, "batch-size": "32",
          "lr": "0.003", "workers": "1", "seed": "0"}
    work = Path(tempfile.mkdtemp(prefix="overhead-"))
    data = make_demo_data(work / "demo", classes=6, per_class=60, size=96, seed=0)
    rows = []
    for r in range(args.rounds):
        for backend in ("process", "docker"):
            t0 = time.time()
            rec = runner.train(data, hp, backend=backend, image=args.image if backend == "docker" else None,
                               jobs_dir=work / "jobs", name=f"{backend}-{r}", echo=False)
            wall = time.time() - t0
            summary = rec.get("Summary") or {}
            rows.append({"backend": backend, "round": r, "status": rec["TrainingJobStatus"], "wall_s": round(wall, 1),
                         "train_s": round(summary.get("train_time", float("nan")), 1),
                         "init_s": round(summary.get("init_time", float("nan")), 1)})
            print(json.dumps(rows[-1]), flush=True)
    med = {b: statistics.median(x["wall_s"] for x in rows if x["backend"] == b) for b in ("process", "docker")}
    print(json.dumps({"median_wall_s": med, "overhead_s": round(med["docker"] - med["process"], 1),
                      "ratio": round(med["docker"] / med["process"], 2)}))


if __name__ == "__main__":
    main()
