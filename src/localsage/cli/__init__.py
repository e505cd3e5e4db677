"""The `localsage` command: the only command-line layer. Each module registers one command group and
calls library functions; nothing outside this package imports it. Building the parser imports neither
torch nor smdebug (command modules import their libraries inside the command functions)."""
from __future__ import annotations

import argparse
import sys

from . import cloud, debug, demo, jobs, serve, tune
from .common import parse_hp  # noqa: F401 - the --hp parser, also used by tests

GROUPS = (jobs, cloud, tune, serve, debug, demo)  # order of the help listing


def build_parser():
    parser = argparse.ArgumentParser(prog="localsage", description="A local-first SageMaker loop for image classification")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parser(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"localsage: {exc}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
