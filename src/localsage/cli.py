"""The `localsage` command. Thin: parse arguments, call the module that owns the work."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .tune import add_parser as add_tune_parser


def parse_hp(pairs, hp_file=None) -> dict:
    values = {}
    if hp_file:
        values.update(json.loads(Path(hp_file).read_text()))
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--hp expects name=value, got {pair!r}")
        values[key.strip()] = value.strip()
    return values


def cmd_demo_data(args):
    from .data import make_demo_data

    root = make_demo_data(args.dir, classes=args.classes, per_class=args.per_class, size=args.size,
                          seed=args.seed, corrupt=args.corrupt, imbalance=args.imbalance)
    print(f"demo data written to {root} ({args.classes} classes, {args.per_class} images each, {args.size}px)")


def cmd_train(args):
    from . import runner

    if args.backend == "sagemaker":
        from . import cloud

        return cloud.guard(cloud.cmd_train)(args)
    record = runner.train(args.data, parse_hp(args.hp, args.hp_file), backend=args.backend, name=args.name,
                          jobs_dir=args.jobs_dir, image=args.image, instance_count=args.instance_count)
    return 0 if record["TrainingJobStatus"] == "Completed" else 1


def _fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def cmd_jobs(args):
    from . import runner

    if args.action == "describe":
        print(json.dumps(runner.describe(args.name, args.jobs_dir, refresh=True), indent=2, default=str))
        return 0
    rows = []
    for r in runner.list_jobs(args.jobs_dir):
        final = {m["MetricName"]: m["Value"] for m in r.get("FinalMetricDataList", [])}
        hps = " ".join(f"{k}={v}" for k, v in sorted(r.get("HyperParameters", {}).items()))
        shown = " ".join(f"{k}={_fmt(final[k])}" for k in ("valid_acc", "valid_loss", "test_acc") if k in final)
        rows.append((r["TrainingJobName"], r["TrainingJobStatus"], _fmt(r.get("TrainingTimeInSeconds", "")), shown, hps))
    if not rows:
        print("no jobs")
        return 0
    header = ("NAME", "STATUS", "SECONDS", "FINAL METRICS", "HYPERPARAMETERS")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    return 0


def cmd_metric_definitions(args):
    from .metrics import METRIC_DEFINITIONS

    print(json.dumps(METRIC_DEFINITIONS, indent=2))


def cmd_hyperparameters(args):
    from .hyperparameters import markdown_table

    print(markdown_table())


def build_parser():
    parser = argparse.ArgumentParser(prog="localsage", description="A local-first SageMaker loop for image classification")
    sub = parser.add_subparsers(dest="command", required=True)

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
    from . import cloud

    cloud.add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("jobs", help="list or describe training jobs")
    p.add_argument("action", choices=("list", "describe"))
    p.add_argument("name", nargs="?")
    p.add_argument("--jobs-dir")
    p.set_defaults(func=cmd_jobs)

    cloud.add_parser(sub)

    p = sub.add_parser("metric-definitions", help="print the SageMaker metric_definitions regexes")
    p.set_defaults(func=cmd_metric_definitions)

    add_tune_parser(sub)

    p = sub.add_parser("hyperparameters", help="print the hyperparameter reference (markdown)")
    p.set_defaults(func=cmd_hyperparameters)

    from . import debugger, demo, serving

    serving.add_parser(sub)  # predict, package, serve
    debugger.add_parser(sub)  # debug JOB, report JOB
    demo.add_parser(sub)  # the whole loop
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "jobs" and args.action == "describe" and not args.name:
        raise SystemExit("jobs describe needs a job name")
    try:
        code = args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"localsage: {exc}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
