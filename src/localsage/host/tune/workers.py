"""The worker pool: an Optuna study whose trials are training jobs, run by `parallel` threads.

Every trial is a real job through `runner.train` (any backend). Metrics reach the study through the
runner's `on_metrics` callback while the job runs in its own process or container (the built-in trainer:
one call per epoch; a script: one call per metric-definition match); when the pruner says so the callback
returns True and the runner stops the job with SIGTERM (job: Stopped, trial: Pruned).

Liveness: every running trial carries a `heartbeat` timestamp in its user attrs, refreshed by the tuner
that runs it. `--resume` fails the running trials whose heartbeat is older than STALE_HEARTBEATS beats
(or whose tuner process on this host is gone): that survives containers (new hostname each run, PIDs reused).
SIGTERM or Ctrl-C to the tuner stops the running jobs (SIGTERM to each), waits for them, and marks their
trials Failed-interrupted (not counted: `--resume` runs them again). A trial whose failure says every trial
would fail the same way (a script rejecting the hyperparameters' names) stops the study the same way, and
run() returns that `error`.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

from localsage.host import backends, records
from localsage.host.tune import preflight, results
from localsage.host.tune.runs import StudyRun
from localsage.host.tune.settings import Tuning
from localsage.host.tune.space import TuneError
from localsage.host.tune.study import counted, creation_lock, make_pruner, make_sampler, make_storage, storage_errors
from localsage.host.tune.trial import run_job

HEARTBEAT_ENV = "LOCALSAGE_TUNE_HEARTBEAT_S"
HEARTBEAT_S = 30.0
STALE_HEARTBEATS = 4  # a trial whose heartbeat is older than this many beats has no live tuner


def heartbeat_interval() -> float:
    try:
        return max(0.1, float(os.environ.get(HEARTBEAT_ENV) or HEARTBEAT_S))
    except ValueError:
        return HEARTBEAT_S


def visible_gpus(setting) -> list:
    if setting:
        return [g for g in str(setting).split(",") if g.strip()]
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(trial, now: float, stale_after: float, host: str) -> str | None:
    """Why a RUNNING trial has no live tuner, or None when it may still have one."""
    ua = trial.user_attrs
    worker = ua.get("worker") or {}
    beat = ua.get("heartbeat")
    here = worker.get("host") == host
    if here and worker.get("pid") and not _alive(int(worker["pid"])):
        return f"the tuner (pid {worker['pid']} on {host}) stopped while trial {trial.number} ran"
    if beat is not None:
        age = now - float(beat)
        if age > stale_after:
            return (f"no heartbeat for {age:.0f}s (over {stale_after:.0f}s) from its tuner "
                    f"({worker.get('host', '?')} pid {worker.get('pid', '?')}) while trial {trial.number} ran")
        return None
    if not worker:
        return f"the tuner (unknown) stopped while trial {trial.number} ran"
    return None  # a tuner of an older version on another host: no way to tell, left alone


def fail_stale(study, storage, log=print, stale_after: float | None = None) -> list:
    """Running trials with no live tuner: mark them Failed (interrupted: not counted in the budget) and
    their jobs Failed in the registry, through Optuna's public storage and study APIs."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    stale_after = stale_after if stale_after is not None else STALE_HEARTBEATS * heartbeat_interval()
    failed, now, host = [], time.time(), socket.gethostname()
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        why = stale_reason(trial, now, stale_after, host)
        if why is None:
            log(f"trial {trial.number} runs on {trial.user_attrs.get('worker', {}).get('host')} "
                f"(heartbeat {now - float(trial.user_attrs.get('heartbeat', now)):.0f}s ago); left alone")
            continue
        reason = f"stale: {why}"
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_user_attr(trial_id, "failure_reason", reason)
        except UpdateFinishedTrialError:  # another resuming tuner was quicker
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        job_dir = trial.user_attrs.get("job_dir")
        if job_dir and (Path(job_dir) / records.RECORD).exists():
            record = records.read_record(job_dir)
            if record.get("TrainingJobStatus") == "InProgress":
                record.update(TrainingJobStatus="Failed", SecondaryStatus="Failed", FailureReason=reason)
                records.write_record(Path(job_dir), record)
        failed.append(trial.number)
        log(f"trial {trial.number}: {reason}; marked Failed")
    return failed


class Study:
    """An Optuna study whose trials are training jobs."""

    def __init__(self, t: Tuning, resume=False, echo=True, log=print):
        import optuna

        from localsage.host.tune.settings import STORED

        self.t, self.echo, self.log = t, echo, log
        self.direction = t.direction
        self._local = threading.Lock()
        with storage_errors(t), creation_lock(t, self._local):
            self.storage = make_storage(t)
            self.study = optuna.create_study(study_name=t.study, storage=self.storage, sampler=make_sampler(t),
                                             pruner=make_pruner(t), direction=self.direction, load_if_exists=True)
            stored = self.study.user_attrs.get("config")
            if stored is None:
                self.study.set_user_attr("config", t.stored())
                for params in t.enqueue:
                    self.study.enqueue_trial(params, skip_if_exists=True)
        if stored is not None:
            mine = t.stored()
            differ = [k for k in STORED if stored.get(k) != mine.get(k)]
            if differ:
                raise TuneError(f"study {t.study!r} exists with a different {', '.join(differ)}; use another --study "
                                f"name or the same settings (--resume alone reuses the stored ones)")
            # the seed makes a new study reproducible; a worker joining or resuming it must not replay the
            # creator's random draws (it would repeat the same params), so it draws its own
            self.study.sampler.reseed_rng()
        if resume:
            fail_stale(self.study, self.storage, log)
        self.halt = threading.Event()
        self.interrupted = None  # "SIGTERM" / "Ctrl-C" once the tuner was told to stop
        self.error = None  # why the study stopped itself (every trial would fail the same way)
        self.running = set()  # stop events of the running jobs
        self.active = {}  # trial number -> optuna Trial of this tuner's running trials (heartbeats)
        self.gpus = visible_gpus(t.gpus) if backends.traits(t.backend).local_gpus else []
        self.runs = None  # the study's MLflow parent run (runs.StudyRun), made by run()

    # one trial = one job
    def run_trial(self, trial, params: dict, slot: int):
        return run_job(self, trial, params, slot)

    def next_trial(self):
        with creation_lock(self.t, self._local):
            used = sum(counted(tr) for tr in self.study.get_trials(deepcopy=False))
            if used >= self.t.trials or self.halt.is_set():
                return None
            trial = self.study.ask()
            trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
            trial.set_user_attr("heartbeat", time.time())  # for --resume: this trial has a live tuner
            self.active[trial.number] = trial
            # sampled under the lock: the sampler's random draws go to trials in trial order
            params = {name: dim.suggest(trial) for name, dim in self.t.space.items()}
            return trial, params

    def worker(self, slot: int):
        while not self.halt.is_set():
            asked = self.next_trial()
            if asked is None:
                return
            trial, params = asked
            try:
                state = self.run_trial(trial, params, slot)
            except BaseException as exc:  # never leave a trial RUNNING because of the tuner's own error
                from optuna.trial import TrialState

                trial.set_user_attr("failure_reason", f"tuner error: {type(exc).__name__}: {exc}")
                trial.set_user_attr("interrupted", True)
                self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            finally:
                self.active.pop(trial.number, None)
            self.log(f"trial {trial.number}: {state}")

    def heartbeat(self, done: threading.Event):
        """Refresh the heartbeat of this tuner's running trials until done."""
        interval = heartbeat_interval()
        while not done.wait(interval):
            for trial in list(self.active.values()):
                try:
                    trial.set_user_attr("heartbeat", time.time())
                except Exception:  # finished meanwhile, or the storage blinked: the next beat retries
                    pass

    def stop(self, why: str):
        """Stop the study: no new trials; SIGTERM to every running job (the runner waits for each)."""
        if self.interrupted is None:
            self.interrupted = why
            self.log(f"{why}: stopping the running trials (resume with --resume)")
        self._halt()

    def abort(self, error: str):
        """Stop the study because every trial would fail the same way: no new trials, the running ones stopped."""
        with self._local:  # the lock under which workers ask for trials: none is asked for after this
            first = self.error is None
            self.error = self.error or error
            self.halt.set()
        if first:
            self.log(f"stopping the study: no new trials, the running ones stopped ({error.split('. ')[0]})")
        self._halt()

    def _halt(self):
        self.halt.set()
        for stop in list(self.running):
            stop.set()

    def run(self):
        threads = [threading.Thread(target=self.worker, args=(slot,), name=f"tune-worker-{slot}", daemon=True)
                   for slot in range(self.t.parallel)]
        done = threading.Event()
        beat = threading.Thread(target=self.heartbeat, args=(done,), name="tune-heartbeat", daemon=True)
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda signum, frame: self.stop("SIGTERM"))
        beat.start()
        for th in threads:
            th.start()
        try:
            while any(th.is_alive() for th in threads):
                try:
                    for th in threads:
                        th.join(0.5)
                except KeyboardInterrupt:
                    self.stop("Ctrl-C")
        finally:
            done.set()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return self.study


def run(t: Tuning, resume=False, echo=True, log=print) -> dict:
    """Check what every trial shares, run the study to its budget, write its results. The result has the
    trials table (`header`, `rows`) and summary `lines` for the caller to print; `interrupted` when the
    tuner was stopped (SIGTERM, Ctrl-C); `error` when the study stopped itself."""
    preflight.check(t)
    s = Study(t, resume=resume, echo=echo, log=log)
    s.runs = StudyRun(t, s.study)
    try:
        study = s.run()
    finally:
        s.runs.close(s.interrupted, s.error)
    result = results.report(t, study, log)
    if s.interrupted:
        result["interrupted"] = s.interrupted
    if s.error:
        result["error"] = s.error
    return result
