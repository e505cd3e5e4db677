"""`localsage debug JOB [--rule Name:param=value]` and `localsage report JOB [--open]`."""
from __future__ import annotations

import json


def cmd_debug(args):
    from .. import runner
    from ..debugger import rules

    verdicts = rules.run_rules(runner.locate(args.job, args.jobs_dir), overrides=args.rule or [], only=args.only or None)
    print(rules.table(verdicts))
    if args.json:
        print(json.dumps(verdicts, indent=2, default=str))
    return 0


def cmd_report(args):
    from .. import runner
    from ..debugger import report

    path = report.build(runner.locate(args.job, args.jobs_dir))
    print(path)
    if args.open:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
    return 0


def add_parser(subparsers):
    p = subparsers.add_parser("debug", help="evaluate the Debugger/Profiler rules on a job (verdicts in output/rules)")
    p.add_argument("job", help="job name or folder")
    p.add_argument("--rule", action="append", metavar="NAME:PARAM=VALUE[,PARAM=VALUE]",
                   help="override rule parameters (repeatable), e.g. Overfit:ratio_threshold=0.2")
    p.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   help="comma list of rules to run (default: all)")
    p.add_argument("--json", action="store_true", help="also print the verdicts as JSON")
    p.add_argument("--jobs-dir")
    p.set_defaults(func=cmd_debug)

    p = subparsers.add_parser("report", help="write the job's HTML debugger/profiler report (output/report/report.html)")
    p.add_argument("job", help="job name or folder")
    p.add_argument("--open", action="store_true", help="open it in the default browser")
    p.add_argument("--jobs-dir")
    p.set_defaults(func=cmd_report)
