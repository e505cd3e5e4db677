"""Local mode's hosts on one machine: SageMaker SDK local mode, instance_count=2 (two containers on this
machine), data-parallel built-in job, with each host's thread share (what the sagemaker-local backend
sets: OMP_NUM_THREADS = cores / hosts) against every host taking all the cores (what it did before).

    PYTHONPATH=src python bench/local_hosts.py [--rounds 5] [--epochs 2] [--image localsage:latest]

Each round runs both sides back to back, alternating which goes first, so a changing machine load hits
both alike. Prints each run, then the median and range of wall time and of the train time the job
measured, and the median ratio of the paired train times (all cores / share).
"""
from __future__ import annotations

import argparse
import json
import os
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
    ap.add_argument("--epochs", default="2")
    ap.add_argument("--image", default="localsage:latest")
    args = ap.parse_args()
    cores = str(len(os.sched_getaffinity(0)))
    hp = {"arch": "resnet18", "weights": "none", "image-size": "64", "epochs": args.epochs, "batch-size": "16",
          "lr": "0.003", "workers": "1", "seed": "0", "debug": "false", "profiler": "false"}
    sides = {"share": {}, "all-cores": {"OMP_NUM_THREADS": cores, "MKL_NUM_THREADS": cores}}  # set: no share
    work = Path(tempfile.mkdtemp(prefix="local-hosts-"))
    data = make_demo_data(work / "demo", classes=6, per_class=60, size=96, seed=0)
    rows = []
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for side in order:
            t0 = time.time()
            rec = runner.train(data, JobPlan(hyperparameters=hp, image=args.image, env=sides[side]),
                               backend="sagemaker-local", instance_count=2, jobs_dir=work / "jobs",
                               name=f"{side}-{r}", echo=False)
            summary = rec.get("Summary") or {}
            rows.append({"side": side, "round": r, "status": rec["TrainingJobStatus"],
                         "wall_s": round(time.time() - t0, 1),
                         "train_s": round(summary.get("train_time", float("nan")), 1)})
            print(json.dumps(rows[-1]), flush=True)
    by = {s: [x for x in rows if x["side"] == s] for s in sides}
    ratios = [a["train_s"] / b["train_s"] for a, b in zip(by["all-cores"], by["share"])]
    print(json.dumps({"cores": int(cores), "hosts": 2, "rounds": args.rounds,
                      **{s: {"wall_s": spread([x["wall_s"] for x in by[s]]),
                             "train_s": spread([x["train_s"] for x in by[s]])}
                         for s in sides},
                      "train_time_ratio_all_cores_over_share": spread(ratios)}))


if __name__ == "__main__":
    main()
