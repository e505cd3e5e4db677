"""Run the `train` entrypoint as a child process with SAGEMAKER_BASE_DIR pointing at the job folder.

`localsage.container.entry` is the image's `train`: the built-in trainer, or the user's script for a script job
(its requirements go to <job>/code/.deps through LOCALSAGE_PIP_TARGET, set by the runner).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from localsage.core import contract, procs
from localsage.host.backends import STOP_GRACE_SECONDS, record_info


def run(job, log, stop: threading.Event) -> int:
    env = dict(os.environ)
    env.update(job.env or {})
    env[contract.ROOT_ENV] = str(job.dir)
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "localsage.container.entry"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,  # Ctrl-C reaches the runner, which relays SIGTERM as SageMaker does
        preexec_fn=procs.die_with_parent(signal.SIGTERM),  # the runner SIGKILLed: the job checkpoints and stops
    )
    record_info(job.dir, Process=procs.identity(proc.pid))

    def watch():
        while not stop.wait(0.5):
            if proc.poll() is not None:
                return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()

    threading.Thread(target=watch, daemon=True).start()
    for line in proc.stdout:
        log(line.rstrip("\n"))
    code = proc.wait()
    return code


def reap_orphan(record: dict, info: dict, engine=None) -> None:
    """The job's process, when the localsage that ran it is gone (SIGKILL: it may still be training)."""
    if info.get("Process"):
        procs.terminate(info["Process"], signal.SIGKILL)
