"""`localsage demo-data | train | jobs | metric-definitions | hyperparameters`."""
from __future__ import annotations

import json

from localsage.cli.common import at_least_one, fmt, pairs, parse_hp, print_table
from localsage.host.backends import BACKENDS


def cmd_demo_data(args):
    from localsage.container.demo_images import make_demo_data

    root = make_demo_data(args.dir, classes=args.classes, per_class=args.per_class, size=args.size,
                          seed=args.seed, corrupt=args.corrupt, imbalance=args.imbalance)
    print(f"demo data written to {root} ({args.classes} classes, {args.per_class} images each, {args.size}px)")


CLOUD_MAX_RUN = 4 * 3600  # --max-run's default for --backend sagemaker; local jobs have none unless given


def job_plan(args, hps: dict):
    """The job plan of `localsage train` on a local backend: the built-in trainer, or --entry-point's script."""
    from localsage.core.hyperparameters import decode_value
    from localsage.core.metrics import definition
    from localsage.host.jobplan import JobPlan

    try:
        definitions = [definition(d) for d in args.metric_definition or []]
    except ValueError as exc:
        raise SystemExit(f"--metric-definition: {exc}") from None
    # SageMaker's debughookconfig.json: it wins over the debug-* hyperparameters, as in the cloud
    common = {"metric_definitions": definitions or None, "env": pairs(args.env, "--env") or {},
              "max_run": args.max_run, "debug": getattr(args, "debug_tensors", True), "image": args.image,
              "processes_per_host": args.processes_per_host,  # the built-in trainer honours it too
              "debugger_hook_config": pairs(args.debugger_hook_config, "--debugger-hook-config") or None}
    if args.entry_point:  # the script's own values: `--hp epochs=5` is 5, as hyperparameters={"epochs": 5}
        return JobPlan.for_script(args.entry_point, source_dir=args.source_dir, distribution=args.distribution,
                                  inference_entry_point=args.inference_entry_point,
                                  hyperparameters={k: decode_value(v) for k, v in hps.items()}, **common)
    if args.source_dir or args.distribution or args.inference_entry_point:
        raise SystemExit("--source-dir, --distribution and --inference-entry-point need --entry-point")
    return JobPlan(hyperparameters=hps, **common)


def train_data(args):
    channels = pairs(args.channel, "--channel")
    if channels and args.data:
        raise SystemExit("give --data or --channel NAME=PATH, not both")
    if not channels and not args.data:
        raise SystemExit("train needs --data DIR (one 'training' channel) or --channel NAME=PATH")
    return channels or args.data


def cmd_train(args):
    from localsage.host import backends

    if backends.traits(args.backend).remote:  # the cloud's own flags and request
        from localsage.cli.cloud import train_on_sagemaker

        if args.max_run is None:
            args.max_run = CLOUD_MAX_RUN
        return train_on_sagemaker(args)
    from localsage.host import runner

    plan = job_plan(args, parse_hp(args.hp, args.hp_file))
    record = runner.train(train_data(args), plan, backend=args.backend, name=args.name, jobs_dir=args.jobs_dir,
                          instance_count=args.instance_count)
    return 0 if record["TrainingJobStatus"] == "Completed" else 1


def cmd_jobs(args):
    from localsage.host import records

    if args.action == "describe":
        if not args.name:
            raise SystemExit("jobs describe needs a job name")
        print(json.dumps(records.describe(args.name, args.jobs_dir, refresh=True), indent=2, default=str))
        return 0
    rows = []
    for r in records.list_jobs(args.jobs_dir):
        final = {m["MetricName"]: m["Value"] for m in r.get("FinalMetricDataList", [])}
        hps = " ".join(f"{k}={v}" for k, v in sorted(r.get("HyperParameters", {}).items()))
        names = [k for k in ("valid_acc", "valid_loss", "test_acc") if k in final] or list(final)  # script jobs: theirs
        shown = " ".join(f"{k}={fmt(final[k])}" for k in names)
        rows.append((r["TrainingJobName"], r["TrainingJobStatus"], fmt(r.get("TrainingTimeInSeconds", "")), shown, hps))
    if not rows:
        print("no jobs")
        return 0
    print_table(rows, ("NAME", "STATUS", "SECONDS", "FINAL METRICS", "HYPERPARAMETERS"))
    return 0


def cmd_metric_definitions(args):
    from localsage.core.metrics import METRIC_DEFINITIONS

    print(json.dumps(METRIC_DEFINITIONS, indent=2))


def cmd_hyperparameters(args):
    from localsage.core.hyperparameters import markdown_table

    print(markdown_table())


def add_parser(sub) -> None:
    from localsage.cli.cloud import add_train_arguments
    from localsage.cli.track import add_tracking_flag

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
    p.add_argument("--data", help="folder with train/ valid/ [test/] (one 'training' channel)")
    p.add_argument("--channel", action="append", metavar="NAME=PATH",
                   help="an input channel (repeatable; instead of --data)")
    p.add_argument("--hp", action="append", metavar="NAME=VALUE", help="hyperparameter (repeatable)")
    p.add_argument("--hp-file", help="JSON file of hyperparameters (e.g. best_hyperparameters.json)")
    p.add_argument("--backend", default="process", help=" | ".join(BACKENDS))
    p.add_argument("--name")
    p.add_argument("--jobs-dir")
    p.add_argument("--image", help="container image (docker and SageMaker backends)")
    p.add_argument("--instance-count", type=at_least_one, default=1,
                   help="hosts (sagemaker-local: containers on this machine; sagemaker: instances)")
    add_train_arguments(p)
    for action in p._actions:  # local jobs: no run-time limit unless --max-run is given
        if action.dest == "max_run":
            action.default = None
            action.help = f"seconds before the job is stopped (MaxRuntimeExceeded; sagemaker default {CLOUD_MAX_RUN})"
    add_script_arguments(p)
    add_tracking_flag(p)
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


def add_script_arguments(p) -> None:
    g = p.add_argument_group("script mode (a SageMaker user's own training script)")
    g.add_argument("--entry-point", help="the script to run (relative to --source-dir), as PyTorch(entry_point=...)")
    g.add_argument("--source-dir", help="folder with the script and its files (requirements.txt is installed)")
    g.add_argument("--metric-definition", action="append", metavar="NAME=REGEX",
                   help="scrape NAME from the job log: the regex's first group is the value (repeatable)")
    g.add_argument("--env", action="append", metavar="KEY=VALUE", help="environment variable for the job (repeatable)")
    g.add_argument("--distribution", choices=("torch_distributed",), help="run the script with torchrun")
    g.add_argument("--processes-per-host", type=at_least_one,
                   help="processes per host, for the built-in trainer too (sagemaker_mpi_num_of_processes_per_host; "
                   "default: GPUs, else 1)")
    g.add_argument("--debugger-hook-config", action="append", metavar="KEY=VALUE",
                   help="DebuggerHookConfig hook_parameters, e.g. train.save_interval=100 (repeatable; "
                   "for the built-in trainer too: the config wins over its debug-* hyperparameters, as in the cloud)")
    g.add_argument("--inference-entry-point", help="the inference program copied with the source into model/code "
                   "(default: inference.py when the source dir has one)")
