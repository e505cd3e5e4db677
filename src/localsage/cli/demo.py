"""`localsage demo`: the whole loop on generated data."""
from __future__ import annotations

from localsage.cli.common import at_least_one
from localsage.cli.track import add_tracking_flag
from localsage.host.backends import BACKENDS


def cmd_demo(args):
    from localsage.host import demo

    return demo.run(args.data, args.jobs_dir, args.backend, args.image, args.trials, args.parallel)


def add_parser(subparsers):
    from localsage.host.demo import TRIALS

    p = subparsers.add_parser("demo",
                              help="the whole loop on generated data: tune, train, rules, report, serve, predict")
    p.add_argument("--data", default="data/demo")
    p.add_argument("--jobs-dir", default="jobs")
    p.add_argument("--backend", default="process", help=" | ".join(BACKENDS))
    p.add_argument("--image")
    p.add_argument("--trials", type=at_least_one, default=TRIALS)
    p.add_argument("--parallel", type=at_least_one, default=1)
    add_tracking_flag(p)
    p.set_defaults(func=cmd_demo)
