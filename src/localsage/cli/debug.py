"""`localsage debug JOB [--rule Name:param=value]` and `localsage report JOB [--open]`.

JOB: a job name or folder, an output folder, SDK v3's local_container_root, or an output.tar.gz
(unpacked beside it, or into --into; debugger/results.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _job(args) -> Path:
    from localsage.debugger import results
    from localsage.host import records

    given = Path(args.job)
    where = given if given.is_file() else records.locate(args.job, args.jobs_dir)
    folder = results.job_folder(where, into=args.into)
    if folder != where:
        print(f"localsage: reading {folder}", file=sys.stderr)
    return folder


def cmd_debug(args):
    from localsage.debugger.rules.reading import table
    from localsage.debugger.rules.verdicts import run_rules
    from localsage.host import tracking

    folder = _job(args)
    verdicts = run_rules(folder, overrides=args.rule or [], only=args.only or None)
    print(table(verdicts))
    tracking.attach(folder, [(folder / "output" / "rules", "rules")])  # the job's MLflow run, if it has one
    if args.json:
        print(json.dumps(verdicts, indent=2, default=str))
    return 0


def cmd_report(args):
    from localsage.debugger import report
    from localsage.host import tracking

    folder = _job(args)
    path = report.build(folder)
    print(path)
    tracking.attach(folder, [(path, "report")])
    if args.open:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
    return 0


def _common(p):
    p.add_argument("job", help="job name or folder, an output folder, SDK v3's local_container_root, "
                               "or an output.tar.gz")
    p.add_argument("--into", metavar="DIR",
                   help="unpack an output.tar.gz here (default: beside it, <name>-unpacked/)")
    p.add_argument("--jobs-dir")


def add_parser(subparsers):
    p = subparsers.add_parser("debug", help="evaluate the Debugger/Profiler rules on a job (verdicts in output/rules)")
    _common(p)
    p.add_argument("--rule", action="append", metavar="NAME:PARAM=VALUE[,PARAM=VALUE]",
                   help="override rule parameters (repeatable), e.g. Overfit:ratio_threshold=0.2")
    p.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   help="comma list of rules to run (default: all)")
    p.add_argument("--json", action="store_true", help="also print the verdicts as JSON")
    p.set_defaults(func=cmd_debug)

    p = subparsers.add_parser("report",
                              help="write the job's HTML debugger/profiler report (output/report/report.html)")
    _common(p)
    p.add_argument("--open", action="store_true", help="open it in the default browser")
    p.set_defaults(func=cmd_report)
