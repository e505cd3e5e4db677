"""`python -m localsage.core.groupguard [--cleanup DIR] -- CMD ...`: run CMD and take its whole process
group down with this guard.

Why: TorchServe's launcher (`torchserve --foreground`) starts a JVM, and the JVM starts the Python
workers; a parent-death signal (PR_SET_PDEATHSIG) reaches only a direct child, and the launcher
dies on SIGTERM without passing it on. So a SIGKILLed `localsage serve` (no code of its own runs)
left the JVM and its workers holding the port and their memory. The owner starts this guard in a session
of its own with a parent-death signal (procs.die_with_parent); the guard runs CMD in that same
process group, and on SIGTERM/SIGINT/SIGHUP or its owner's death it sends SIGTERM to the group, waits
up to --grace seconds, SIGKILLs whatever is left, removes --cleanup (the server's private temp
folder) and exits with CMD's status (128 + signal when it was stopped).

Stdlib and localsage.core.procs only (it runs as a process of its own, started for every server).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from localsage.core import procs

STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stop_group(pgid: int, child: subprocess.Popen, grace: float) -> None:
    """SIGTERM the group (this guard ignores it), wait for CMD, then SIGKILL the rest but the guard."""
    for sig in STOPS:
        signal.signal(sig, signal.SIG_IGN)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    for pid in _members(pgid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    child.wait()


def _members(pgid: int) -> list:
    """PIDs of the group's live processes other than this one."""
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            fields = procs.stat_fields(entry)
            if fields and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


def parse(argv: list) -> tuple:
    """[--cleanup DIR] [--grace S] -- CMD ... -> (cleanup, grace, cmd)."""
    opts, rest = {"--cleanup": None, "--grace": "20"}, list(argv)
    while rest and rest[0] != "--":
        if rest[0] not in opts or len(rest) < 2:
            raise SystemExit(f"groupguard: unexpected {rest[0]!r}; usage: {__doc__.splitlines()[0]}")
        opts[rest[0]] = rest[1]
        rest = rest[2:]
    if not rest[1:]:
        raise SystemExit("groupguard: no command given after --")
    return opts["--cleanup"], float(opts["--grace"]), rest[1:]


def main(argv=None) -> int:
    cleanup, grace, cmd = parse(sys.argv[1:] if argv is None else argv)
    if os.getpgid(0) != os.getpid():  # never signal the group of whoever started us
        os.setpgid(0, 0)
    pgid = os.getpgid(0)
    stopped = []
    for sig in STOPS:
        signal.signal(sig, lambda signum, _frame: stopped.append(signum))
    child = subprocess.Popen(cmd)
    try:
        while child.poll() is None and not stopped:
            time.sleep(0.2)
        if stopped or _members(pgid):  # stopped, or CMD exited and left processes behind
            stop_group(pgid, child, grace)
    finally:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
    return 128 + stopped[0] if stopped else child.returncode


if __name__ == "__main__":
    sys.exit(main())
