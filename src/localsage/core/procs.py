"""Process lifetimes: who owns a job, whether that owner still lives, children that die with it; and
what a process may take from this machine (its cores, a free loopback port).

- `identity(pid)` is (pid, start time in clock ticks since boot, boot id): a PID reused by another
  process, or the same PID after a reboot, is a different identity, so a record that carries its
  owner's identity can tell a dead owner from a live one.
- `die_with_parent(sig)` as a Popen preexec_fn: Linux's PR_SET_PDEATHSIG, so a child gets `sig`
  when the thread that started it dies, even by SIGKILL (when no code of the parent can run).
- `cores()` is the one count of CPUs every share is cut from (loader workers, torch threads, local
  mode's hosts, a tuner's parallel trials, SM_NUM_CPUS, the profiler's per-core samples).

Foundations: no localsage imports, nothing heavy (the CLI, the backends and the launcher use it).
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket

PR_SET_PDEATHSIG = 1


def cores() -> int:
    """The CPUs this process may run on: its affinity mask (what `docker run --cpuset-cpus` or
    `taskset` leaves it), not the machine's count, which os.cpu_count() gives even when most of them
    are out of reach."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this OS
        return os.cpu_count() or 1


def free_port() -> int:
    """A loopback TCP port the kernel has just handed out and nothing holds (free now, not reserved)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def stat_fields(pid: int) -> list | None:
    """The fields of /proc/<pid>/stat after the parenthesised command name (which may hold spaces):
    [0] state, [2] process group, [19] start time in clock ticks; None when there is no such process."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    return fields if len(fields) > 19 else None


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: when the process started."""
    fields = stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except ValueError:
        return None


def identity(pid: int | None = None) -> dict:
    pid = os.getpid() if pid is None else int(pid)
    return {"pid": pid, "start": start_ticks(pid), "boot": _boot_id(), "host": socket.gethostname()}


def alive(owner: dict | None) -> bool | None:
    """True/False for an identity recorded on this machine; None when it cannot be told (another
    host, or a record without one)."""
    if not owner or not owner.get("pid"):
        return None
    if owner.get("host") and owner["host"] != socket.gethostname():
        return None
    if owner.get("boot") and owner["boot"] != _boot_id():
        return False  # rebooted since: every process of that boot is gone
    fields = stat_fields(owner["pid"])
    if fields is None:
        return False
    if owner.get("start") is not None and fields[19] != str(owner["start"]):
        return False  # the PID was reused
    return fields[0] not in ("Z", "X")  # a zombie is dead, only not yet reaped


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None):
    """A preexec_fn: the child receives `sig` when its parent dies (Linux; a no-op elsewhere)."""
    parent = os.getpid() if parent is None else parent

    def preexec():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def terminate(owner: dict, sig: int = signal.SIGTERM) -> bool:
    """Send sig to the process of a recorded identity if it is that process, still alive."""
    if not alive(owner):
        return False
    try:
        os.kill(int(owner["pid"]), sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
