"""The containers' guard: `python -m localsage.api.guard OWNER_JSON`, one per server process, started with the
first serving container. A SIGKILLed `localsage api` runs no code of its own, and docker keeps its containers
running; the guard, in a session of its own (no terminal signal reaches it), holds the read end of a pipe
whose write end only the server holds. When the server dies, by any signal, the kernel closes that end: the
guard reads EOF (or sees its parent change), and removes every container whose `localsage.owner` label is the
server's identity (endpoints, transform jobs, and the docker backend's training jobs alike), then exits. A
server that stops normally has removed its containers already; the guard's sweep then finds none.

Stdlib, docker's SDK and localsage.core only (it runs as a process of its own)."""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading

from localsage.core import procs
from localsage.host.backends.docker import OWNER_LABEL

LOG = logging.getLogger("localsage.api")

_lock = threading.Lock()
_guard: subprocess.Popen | None = None  # held for the process's life: dropping it would close the pipe


def ensure_guard() -> None:
    """Start this process's guard once (a no-op when it runs); never raises (a missing guard is logged)."""
    global _guard
    with _lock:
        if _guard is not None and _guard.poll() is None:
            return
        try:
            _guard = subprocess.Popen([sys.executable, "-m", "localsage.api.guard", json.dumps(procs.identity())],
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True, close_fds=True)
        except OSError as exc:
            LOG.error("cannot start the containers' guard (a SIGKILLed server would leave its containers): %s",
                      exc)


def sweep(owner: dict, engine=None) -> list:
    """Remove the containers `owner` started (label match); their names."""
    from localsage.host.backends.docker import remove_labelled

    return remove_labelled(OWNER_LABEL, lambda started_by: started_by == owner, engine)


def main(argv: list) -> int:
    owner = json.loads(argv[0])
    parent = os.getppid()
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    while not stopped:
        try:
            readable, _, _ = select.select([0], [], [], 2.0)
        except InterruptedError:
            continue
        if readable and not os.read(0, 4096):
            break  # EOF: the server closed the pipe, or died
        if os.getppid() != parent:
            break
    else:  # SIGTERM while the server lives: leave its containers to it (its next container starts a new guard)
        if os.getppid() == parent:
            return 0
    sweep(owner)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
