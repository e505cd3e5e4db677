"""The built-in trainer's images/s in the container at docker's default /dev/shm (64m) and at 2g.

    PYTHONPATH=src python bench/shm.py [--rounds 5] [--steps 6] [--warmup 1] [--image localsage:latest] [--sizes 64m,2g]

`docker run --shm-size=SIZE IMAGE train` on a fresh demo set (300-px photo-like JPEGs), the default
224-px crop, batch 64 and workers, resnet18 from scratch, one epoch of --steps steps. At 64m the
loaders are fitted to /dev/shm (localsage.container.shm: fewer batches ahead, fewer workers); at 2g they are
not. The sizes alternate within each round (64m, 2g, 64m, 2g, ...) so a changing machine load hits
both alike; --warmup rounds run first and are not counted. Each run
prints the train images/s the job measured (metrics.jsonl), the workers it used and its wall time;
then, per size, the median and range of the rounds, and of each round's ratio small / large.
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import docker

from localsage.container.demo_images import make_demo_data
from localsage.core import contract, metrics
from spread import spread  # bench/spread.py


def run(engine, image: str, shm_size: str, data: Path, ml: Path, hp: dict) -> dict:
    contract.make_dirs(ml)
    contract.write_config(ml, hp, [contract.COMBINED_CHANNEL])
    t0 = time.time()
    container = engine.containers.run(image, ["train"], detach=True, shm_size=shm_size,
                                      volumes={str(ml): {"bind": "/opt/ml", "mode": "rw"},
                                               str(data): {"bind": "/opt/ml/input/data/training", "mode": "ro"}})
    try:
        code = container.wait(timeout=1800)["StatusCode"]
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    wall = time.time() - t0
    if code != 0:
        raise SystemExit(f"{shm_size}: train exited {code}\n{logs[-3000:]}")
    rows = [r for r in metrics.read_jsonl(ml / "output" / "data" / "metrics.jsonl") if "images_per_sec" in r]
    workers = re.search(r" workers=(\d+) ", logs)
    return {"shm": shm_size, "images_per_sec": round(rows[-1]["images_per_sec"], 2),
            "workers": int(workers.group(1)) if workers else None, "shrunk": "/dev/shm is small" in logs,
            "wall_s": round(wall, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    ap.add_argument("--image", default="localsage:latest")
    ap.add_argument("--sizes", default="64m,2g", help="two --shm-size values: small,large")
    args = ap.parse_args()
    sizes = args.sizes.split(",")
    batch = 64
    work = Path(tempfile.mkdtemp(prefix="bench-shm-"))
    per_class = -(-args.steps * batch // (6 * 0.9)) + 1  # enough train images for every step to be a full batch
    data = make_demo_data(work / "demo", classes=6, per_class=int(per_class), size=300, seed=0,
                          splits=(("train", 0.9), ("valid", 0.05), ("test", 0.05)))
    hp = {"arch": "resnet18", "weights": "none", "epochs": "1", "max-steps": str(args.steps),
          "batch-size": str(batch), "debug": "false", "seed": "0"}
    engine = docker.from_env()
    rows = []
    for r in range(-args.warmup, args.rounds):
        for size in sizes:
            row = {"round": r, **run(engine, args.image, size, data, work / f"ml-{size}-{r}", hp)}
            print(json.dumps({**row, "warmup": r < 0}), flush=True)
            if r >= 0:
                rows.append(row)
    by = {s: [x for x in rows if x["shm"] == s] for s in sizes}
    small, large = sizes
    print(json.dumps({"rounds": args.rounds, "steps": args.steps, "batch": batch, "image_size": 224,
                      **{s: {"images_per_sec": spread([x["images_per_sec"] for x in by[s]]),
                             "workers": sorted({x["workers"] for x in by[s]})} for s in sizes},
                      f"{small}_over_{large}": spread([a["images_per_sec"] / b["images_per_sec"]
                                                       for a, b in zip(by[small], by[large])], 3)}, indent=2))


if __name__ == "__main__":
    main()
