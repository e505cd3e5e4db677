"""`localsage demo-data | train | jobs | metric-definitions | hyperparameters`."""
from __future__ import annotations

import json

from .common import fmt, parse_hp, print_table


def cmd_demo_data(args):
    from ..data import make_demo_data

    root = make_demo_data(args.dir, classes=args.classes, per_class=args.per_class, size=args.size,
                          seed=args.seed, corrupt=args.corrupt, imbalance=args.imbalance)
    print(f"demo data written to {root} ({args.classes} classes, {args.per_class} images each, {args.size}px)")


def cmd_train(args):
    if args.backend == "sagemaker":
        from .cloud import train_on_sagemaker

        return train_on_sagemaker(args)
    from .. import runner

    record = runner.train(args.data, parse_hp(args.hp, args.hp_file), backend=args.backend, name=args.name,
                          jobs_dir=args.jobs_dir, image=args.image, instance_count=args.instance_count)
    return 0 if record["TrainingJobStatus"] == "Completed" else 1


def cmd_jobs(args):
    from .. import runner

    if args.action == "describe":
        if not args.name:
            raise SystemExit("jobs describe needs a job name")
        print(json.dumps(runner.describe(args.name, args.jobs_dir, refresh=True), indent=2, default=str))
        return 0
    rows = []
    for r in runner.list_jobs(args.jobs_dir):
        final = {m["MetricName"]: m["Value"] for m in r.get("FinalMetricDataList", [])}
        hps = " ".join(f"{k}={v}" for k, v in sorted(r.get("HyperParameters", {}).items()))
        shown = " ".join(f"{k}={fmt(final[k])}" for k in ("valid_acc", "valid_loss", "test_acc") if k in final)
        rows.append((r["TrainingJobName"], r["TrainingJobStatus"], fmt(r.get("TrainingTimeInSeconds", "")), shown, hps))
    if not rows:
        print("no jobs")
        return 0
    print_table(rows, ("NAME", "STATUS", "SECONDS", "FINAL METRICS", "HYPERPARAMETERS"))
    return 0


def cmd_metric_definitions(args):
    from ..metrics import METRIC_DEFINITIONS

    print(json.dumps(METRIC_DEFINITIONS, indent=2))


def cmd_hyperparameters(args):
    from ..hyperparameters import markdown_table

    print(markdown_table())


def add_parser(sub) -> None:
    from .cloud import add_train_arguments

    p = sub.add_parser("demo-data", help="write a small learnable ImageFolder set (train/valid/test)")
    p.add_argument("dir")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corrupt", type=int, default=0, help="add this many corrupt files to train (for tests)")
    p.add_argument("--imbalance", type=float, default=1.0, help="first class gets per-class * this many images")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("train", help="run a training job")
    p.add_argument("--data", required=True, help="folder with train/ valid/ [test/] (one 'training' channel)")
    p.add_argument("--hp", action="append", metavar="NAME=VALUE", help="hyperparameter (repeatable)")
    p.add_argument("--hp-file", help="JSON file of hyperparameters (e.g. best_hyperparameters.json)")
    p.add_argument("--backend", default="process", help="process | docker | sagemaker-local | sagemaker")
    p.add_argument("--name")
    p.add_argument("--jobs-dir")
    p.add_argument("--image", help="container image (docker and SageMaker backends)")
    p.add_argument("--instance-count", type=int, default=1)
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("jobs", help="list or describe training jobs")
    p.add_argument("action", choices=("list", "describe"))
    p.add_argument("name", nargs="?")
    p.add_argument("--jobs-dir")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("metric-definitions", help="print the SageMaker metric_definitions regexes")
    p.set_defaults(func=cmd_metric_definitions)

    p = sub.add_parser("hyperparameters", help="print the hyperparameter reference (markdown)")
    p.set_defaults(func=cmd_hyperparameters)
