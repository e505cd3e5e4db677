"""Tuning benchmark: the same seeded study (same sampler seed, same trial budget) with and without pruning,
measured in one run on generated demo data. Reports total epochs consumed, best valid accuracy, wall time.

    python bench/tune.py [--trials 20] [--epochs 5] [--seed 0] [--pruners median,successive-halving]
        [--out bench-artifacts/tune]

Target (issue 5): pruning uses >= 40% fewer epochs, best valid accuracy within 1 point.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from localsage.container.demo_images import make_demo_data  # noqa: E402 - after the sys.path insert
from localsage.host.tune.settings import OBJECTIVES, build
from localsage.host.tune.space import DEFAULT_SPACE
from localsage.host.tune.study import make_storage
from localsage.host.tune.workers import run as run_study


def study(name, data, out, args, pruner):
    config = {
        "space": DEFAULT_SPACE,  # the space: lr log [1e-3, 1e-1], batch-size {32, 64, 128, 256}
        "fixed": {"arch": "resnet18", "weights": "none", "image-size": args.image_size, "epochs": args.epochs,
                  "workers": 0, "seed": 0, "debug": False, "profiler": False},
        "trials": args.trials, "parallel": args.parallel, "seed": args.seed, "sampler": "tpe", "pruner": pruner,
        "objective": args.objective, "prune_startup_trials": args.startup, "prune_warmup_steps": 0,
    }
    t = build(config, {"data": str(data), "study": name}, jobs_dir=out / "jobs")
    t0 = time.time()
    result = run_study(t, echo=False, log=lambda line: print(f"[{name}] {line}", flush=True))
    wall = time.time() - t0
    import optuna

    trials = optuna.load_study(study_name=name, storage=make_storage(t)).get_trials(deepcopy=False)
    epochs = sum(int(tr.user_attrs.get("epochs_run") or 0) for tr in trials)
    accs = [tr.user_attrs.get("valid_acc") for tr in trials if tr.state.name == "COMPLETE"]
    return {"pruner": pruner, "trials": len(trials), "states": result["trials"], "epochs": epochs,
            "best_valid_acc": max(a for a in accs if a is not None) if accs else None,
            "best_trial": result.get("best_trial"), "best_params": result.get("best_params"),
            "wall_s": round(wall, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--startup", type=int, default=2, help="median pruner: completed trials before pruning starts")
    p.add_argument("--objective", default="valid_loss", choices=tuple(OBJECTIVES))
    p.add_argument("--pruners", default="median,successive-halving", help="pruners compared with no pruning")
    p.add_argument("--out", default="bench-artifacts/tune")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    data = make_demo_data(out / "demo", classes=4, per_class=30, size=64, seed=0)
    runs = [study(f"bench-{pruner}", data, out, args, pruner) for pruner in ("none", *args.pruners.split(","))]
    base = runs[0]
    for r in runs[1:]:
        r["epochs_saved"] = round(1 - r["epochs"] / base["epochs"], 3)
        r["best_acc_delta_points"] = round(100 * (r["best_valid_acc"] - base["best_valid_acc"]), 2)
        r["wall_ratio"] = round(r["wall_s"] / base["wall_s"], 3)
        r["target_met"] = r["epochs_saved"] >= 0.4 and r["best_acc_delta_points"] >= -1
    summary = {"setup": {k: v for k, v in vars(args).items() if k != "out"}, "runs": runs}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    for r in runs[1:]:
        print(f"{r['pruner']}: {r['epochs']} epochs vs {base['epochs']} without pruning "
              f"({100 * r['epochs_saved']:.0f}% fewer); "
              f"best valid_acc {r['best_valid_acc']:.3f} vs {base['best_valid_acc']:.3f} "
              f"({r['best_acc_delta_points']:+.1f} points); "
              f"wall {r['wall_s']:.0f}s vs {base['wall_s']:.0f}s; target (>= 40% fewer epochs, best accuracy within "
              f"1 point) {'met' if r['target_met'] else 'NOT met'}")
    return 0 if any(r["target_met"] for r in runs[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
