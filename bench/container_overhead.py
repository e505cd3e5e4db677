"""Container overhead: the same demo job through the process backend and the docker backend.

    PYTHONPATH=src python bench/container_overhead.py [--rounds 5] [--epochs 1] [--image localsage:latest]

Runs alternate (process, docker, process, docker, ...) so a changing machine load hits both alike,
and prints wall time per run, the train time the job itself measured and the time outside it (wall -
train: start-up, data index, packing, container start and removal); then, per backend, the median and
range of the rounds, and of each round's docker-minus-process difference.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from localsage.container.demo_images import make_demo_data
from localsage.host import runner
from localsage.host.jobplan import JobPlan
from spread import spread  # bench/spread.py


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
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
            rec = runner.train(data, JobPlan(hyperparameters=hp, image=args.image if backend == "docker" else None),
                               backend=backend, jobs_dir=work / "jobs", name=f"{backend}-{r}", echo=False)
            wall = time.time() - t0
            summary = rec.get("Summary") or {}
            train_s = summary.get("train_time", float("nan"))
            rows.append({"backend": backend, "round": r, "status": rec["TrainingJobStatus"], "wall_s": round(wall, 1),
                         "train_s": round(train_s, 1), "outside_s": round(wall - train_s, 1),
                         "init_s": round(summary.get("init_time", float("nan")), 1)})
            print(json.dumps(rows[-1]), flush=True)
    by = {b: [x for x in rows if x["backend"] == b] for b in ("process", "docker")}
    print(json.dumps({"rounds": args.rounds,
                      **{b: {k: spread([x[k] for x in by[b]], 1) for k in ("wall_s", "outside_s")} for b in by},
                      "docker_minus_process_outside_s": spread(
                          [d["outside_s"] - p["outside_s"] for p, d in zip(by["process"], by["docker"])], 1),
                      "docker_over_process_wall": spread(
                          [d["wall_s"] / p["wall_s"] for p, d in zip(by["process"], by["docker"])])}, indent=2))


if __name__ == "__main__":
    main()
