"""The `localsage` command: the only command-line layer. Each module registers one command group and
calls library functions; nothing outside this package imports it. Building the parser imports neither
torch nor smdebug (command modules import their libraries inside the command functions)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from localsage.cli import api, cloud, debug, demo, jobs, serve, track, tune
from localsage.host.tracking import OFF_ENV

GROUPS = (jobs, cloud, tune, serve, debug, track, demo, api)  # order of the help listing


def build_parser():
    parser = argparse.ArgumentParser(prog="localsage",
                                     description="A local-first SageMaker loop for image classification")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parser(sub)
    return parser


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM takes Ctrl-C's path: every command's cleanup runs


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "no_tracking", False):  # every job this command runs (trials included)
        os.environ[OFF_ENV] = "off"
    previous = None
    if threading.current_thread() is threading.main_thread():
        # docker stop, systemd and supervisors send SIGTERM; a command that runs a job (train) replaces
        # this with its own handler that stops the job and records it, as for Ctrl-C
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        code = args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"localsage: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("localsage: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
