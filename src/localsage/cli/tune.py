"""`localsage tune`: an Optuna study of training jobs, or the same space as SageMaker HPO."""
from __future__ import annotations

import json
import signal
import sys

from localsage.cli.common import print_table
from localsage.cli.track import add_tracking_flag
from localsage.host.backends import BACKENDS
from localsage.host.tune.settings import OBJECTIVE_TYPES, PRUNERS, SAMPLERS, SETTINGS, STORAGE_ENV
from localsage.host.tune.space import DEFAULT_SPACE, describe_space, parse_space

EXIT_SIGNALLED = {"SIGTERM": 128 + signal.SIGTERM, "Ctrl-C": 128 + signal.SIGINT}


def add_parser(subparsers):
    p = subparsers.add_parser("tune", help="tune hyperparameters: an Optuna study of training jobs (or SageMaker HPO)")
    p.add_argument("--data", help="folder with train/ valid/ [test/] (a script's own layout with --entry-point)")
    p.add_argument("--config", help="YAML: space, fixed, enqueue and any of the options below")
    p.add_argument("--space", action="append", metavar="NAME={...}",
                   help="a searched hyperparameter (a script's: named as its option), e.g. "
                        "'learning-rate={type: float, min: 0.001, max: 0.1, scale: log}' or "
                        "'batch-size={values: [32, 64]}' (repeatable; replaces that name of the config's space). "
                        f"With no space given: {describe_space(parse_space(DEFAULT_SPACE, script=True))}")
    p.add_argument("--trials", type=int, help=f"trial budget of the study (default {SETTINGS['trials']})")
    p.add_argument("--parallel", type=int, help="parallel trials on this machine (default 1)")
    p.add_argument("--storage", help="SQLAlchemy URL (postgresql://...) or journal file (default "
                                     f"${STORAGE_ENV}, else <jobs>/tune-<study>/journal.log)")
    p.add_argument("--study", help="study name (default tune)")
    p.add_argument("--resume", action="store_true",
                   help="continue the study to its budget; fail its stale running trials")
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument("--pruner", choices=PRUNERS)
    p.add_argument("--no-prune", action="store_true", help="same as --pruner none")
    p.add_argument("--objective", help="metric to optimise: valid_loss | valid_acc, or a --metric-definition name")
    p.add_argument("--objective-type", choices=OBJECTIVE_TYPES,
                   help="minimize | maximize (needed for a script's metric)")
    p.add_argument("--entry-point", help="script mode: the training script each trial runs (SageMaker's entry_point)")
    p.add_argument("--source-dir",
                   help="script mode: folder with the script and its files (default: the script's folder)")
    p.add_argument("--metric-definition", action="append", metavar="NAME=REGEX",
                   help="script mode: a metric read from the script's log (repeatable; SageMaker metric_definitions)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-run", type=int, help="seconds a trial's job may run before it is stopped and failed "
                                                "(SageMaker's MaxRuntimeInSeconds; default: no limit locally)")
    p.add_argument("--backend", help=" | ".join(BACKENDS) + " (SageMaker HPO)")
    p.add_argument("--image", help="container image (docker, sagemaker-local, sagemaker)")
    p.add_argument("--gpus", help="GPU ids for the parallel trials, e.g. 0,1 (default: all visible)")
    p.add_argument("--jobs-dir")
    p.add_argument("--quiet", action="store_true", help="do not echo the jobs' logs")
    p.add_argument("--dry-run", action="store_true", help="with --backend sagemaker: print the request, send nothing")
    p.add_argument("--role", help="SageMaker execution role ARN or name (default $LOCALSAGE_SAGEMAKER_ROLE)")
    p.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    p.add_argument("--instance-type", help="SageMaker instance type (default: cloud's, ml.g4dn.xlarge)")
    p.add_argument("--s3-data", help="S3 URI of the training channel (SageMaker)")
    p.add_argument("--s3-output", help="S3 URI for model artifacts (SageMaker)")
    add_tracking_flag(p)
    p.set_defaults(func=cmd_tune)


def tuning(args):
    """The validated tuning setup the command line (and its --config, or the stored study) describes."""
    from localsage.host.tune.settings import build, load_yaml
    from localsage.host.tune.study import stored_config

    if args.resume:
        raw = stored_config(args.study or SETTINGS["study"], args.storage, args.jobs_dir)
    else:
        raw = load_yaml(args.config) if args.config else {}
    overrides = {k: getattr(args, k) for k in ("data", "trials", "parallel", "storage", "study", "sampler", "pruner",
                                               "objective", "objective_type", "seed", "backend", "image", "gpus",
                                               "entry_point", "source_dir", "max_run")}
    if args.metric_definition:
        overrides["metric_definitions"] = args.metric_definition
    if args.no_prune:
        overrides["pruner"] = "none"
    if args.space:
        overrides["space"] = args.space
    return build(raw, overrides, args.jobs_dir)


def cmd_tune(args):
    from localsage.host import backends
    from localsage.host.cloud.constants import DEFAULT_INSTANCE_TYPE
    from localsage.host.tune.sagemaker import dry_run_calls, start_sagemaker, validate_request
    from localsage.host.tune.space import TuneError
    from localsage.host.tune.workers import run as run_study

    t = tuning(args)
    if t.space_note:
        print(t.space_note, file=sys.stderr)
    instance_type = args.instance_type or DEFAULT_INSTANCE_TYPE
    if backends.traits(t.backend).remote:  # the same space as a SageMaker HPO request
        if args.dry_run:
            calls = dry_run_calls(t, image=t.image, role=args.role, s3_data=args.s3_data,
                                  output_path=args.s3_output, instance_type=instance_type, region=args.region)
            validate_request(calls[-1]["request"])
            for call in calls[:-1]:  # e.g. the source dir's upload: what the SDK would send before the request
                print(f"dry run, before the request: {json.dumps(call, default=str)}", file=sys.stderr)
            print(json.dumps(calls[-1]["request"], indent=2, default=str))
            return 0
        name = start_sagemaker(t, args.s3_data, role=args.role, region=args.region,
                               instance_type=instance_type, output_path=args.s3_output)
        print(f"SageMaker tuning job started: {name}")
        return 0
    if args.dry_run:
        raise TuneError("--dry-run applies to --backend sagemaker")
    result = run_study(t, resume=args.resume, echo=not args.quiet)
    if result["rows"]:
        print_table(result["rows"], result["header"])
    for line in result["lines"]:
        print(line)
    if result.get("error"):  # the study stopped itself: every trial would fail the same way
        print(f"localsage: {result['error']}", file=sys.stderr)
        return 2
    if result.get("interrupted"):
        return EXIT_SIGNALLED.get(result["interrupted"], 1)
    return 0 if "best_trial" in result else 1
