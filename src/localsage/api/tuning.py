"""SageMaker's hyperparameter tuning calls: Create/Describe/List/Stop/DeleteHyperParameterTuningJob and
ListTrainingJobsForHyperParameterTuningJob. A tuning job is an Optuna study (tuning_study.py reads the request;
the study's journal is `<root>/tuning/<name>/journal.log`) whose trials are training jobs started through
training.py: each one is in DescribeTrainingJob (with TuningJobArn), ListTrainingJobs and `localsage jobs list`.
The objective reaches the study while a job runs (the objective's MetricDefinitions regex for a program, the
built-in trainer's epoch metrics otherwise), and the pruner stops a job through its stop event.

The record (`<root>/resources/HyperParameterTuningJob/<name>.json`) keeps the request and one
HyperParameterTrainingJobSummary per trial; Describe derives the counters and the best jobs from them. A server
stopped (SIGTERM, Ctrl-C) while a tuning job runs ends it Stopped; after a kill, the restarted server marks it
Failed when it is next read. Either way its study stays: a warm start (IdenticalDataAndAlgorithm) continues it."""
from __future__ import annotations

import logging
import math
import os
import secrets
import shutil
import threading
import time
import weakref

from localsage.api import tuning_study as ts
from localsage.api.errors import ApiError, already_exists, in_use, not_found, validation
from localsage.api.store import check_name

LOG = logging.getLogger("localsage.api")
KIND = "HyperParameterTuningJob"
NAME = "HyperParameterTuningJobName"
STATUS = "HyperParameterTuningJobStatus"
RUNNING = ("InProgress", "Stopping")
JOB_FINAL = ("Completed", "Failed", "Stopped")
DESCRIBED = (NAME, "HyperParameterTuningJobArn", ts.CONFIG, ts.DEFINITION, STATUS, "CreationTime",
             "HyperParameterTuningEndTime", "LastModifiedTime", "WarmStartConfig", "FailureReason")
FAIL_FIRST = 3  # the tuning job fails when its first this many finished jobs all failed
JOIN_S = 1.0
SHUTDOWN_WAIT_S = 45.0
SERVER_STOPPED = ("localsage api stopped while the tuning job ran; its study is kept: a warm start "
                  "(IdenticalDataAndAlgorithm) continues its trials")
_LIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # api -> {name: TuningRun} running in this process
_LIVE_LOCK = threading.Lock()


def study_path(api, name: str):
    return api.root / "tuning" / check_name(name) / "journal.log"


def _live(api) -> dict:
    with _LIVE_LOCK:
        runs = _LIVE.get(api)
        if runs is None:
            runs = _LIVE[api] = {}
            api.on_shutdown(lambda: _shutdown(api))
        return runs


def _training():
    from localsage.api import training

    return training


class TuningRun:
    """One tuning job running in this server: MaxParallelTrainingJobs workers asking the study for trials."""

    def __init__(self, api, record: dict, plan: ts.Plan):
        self.api, self.plan, self.name, self.arn = api, plan, record[NAME], record["HyperParameterTuningJobArn"]
        self.definition, self.tags, self.created = record[ts.DEFINITION], record.get("Tags"), record["CreationTime"]
        self.lock, self.prune_lock, self.halt = threading.Lock(), threading.Lock(), threading.Event()
        self.stops: dict = {}  # running job -> its stop event
        self.trials: dict = {}  # job -> its HyperParameterTrainingJobSummary
        self.launched, self.stale, self.best = 0, 0, None
        self.finished: list = []  # (TrainingJobStatus, failure reason) in the order the jobs ended
        self.ending: tuple | None = None  # (status, reason) decided by a stop, a limit or a failure
        self.study = self.thread = None

    def start(self):
        self.thread = self.api.spawn(f"tuning-{self.name}", self.run)

    def run(self):
        try:
            self.study = self._open()
            workers = [self.api.spawn(f"tuning-{self.name}-{slot}", self.worker) for slot in range(self.plan.parallel)]
            deadline = self.created + self.plan.max_runtime if self.plan.max_runtime else math.inf
            while any(w.is_alive() for w in workers):
                for w in workers:
                    w.join(JOIN_S)
                if time.time() > deadline and not self.halt.is_set():
                    self.stop("Completed", None)  # ResourceLimits.MaxRuntimeInSeconds
            self.final(*self._ending())
        except BaseException as exc:
            self.final("Failed", f"localsage could not run the tuning job: {type(exc).__name__}: {exc}")
            raise

    def _open(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=self.name, storage=ts.storage(study_path(self.api, self.name)),
                                    sampler=ts.make_sampler(self.plan), pruner=ts.make_pruner(self.plan),
                                    direction=self.plan.direction)
        for parent in self.plan.parents:
            trials = optuna.load_study(study_name=parent, storage=ts.storage(study_path(self.api, parent))).trials
            study.add_trials(ts.inherited(parent, trials, self.plan))
        return study

    def worker(self):
        from optuna.trial import TrialState

        while True:
            with self.lock:
                if self.halt.is_set() or self.api.stopping.is_set() or self.launched >= self.plan.budget:
                    return
                self.launched += 1
                number, trial = self.launched, self.study.ask()
                tuned = {r.name: r.suggest(trial) for r in self.plan.ranges}  # under the lock: draws in trial order
            job = f"{self.name}-{number:03d}-{secrets.token_hex(4)}"
            trial.set_user_attr("job_name", job)
            trial.set_user_attr("hyperparameters", tuned)
            self._summary(job, {"TrainingJobName": job, "TrainingJobArn": self.api.arn("training-job", job),
                                "TuningJobName": self.name, "CreationTime": time.time(),
                                "TrainingJobStatus": "InProgress", "TunedHyperParameters": tuned})
            try:
                state, value, summary, reason = self.run_trial(trial, job, tuned, number)
            except Exception as exc:  # our own error: the trial fails, the study goes on
                LOG.exception("tuning job %s: trial %s", self.name, job)
                state, value, reason = "FAIL", None, f"localsage: {type(exc).__name__}: {exc}"
                summary = {"TrainingJobStatus": "Failed", "ObjectiveStatus": "Failed", "FailureReason": reason[:1024]}
            self._summary(job, summary)
            try:
                if reason:
                    trial.set_user_attr("failure_reason", str(reason))
                self.study.tell(trial, value if state == "COMPLETE" else None, state=getattr(TrialState, state))
            except Exception:
                LOG.exception("tuning job %s: telling the study about %s", self.name, job)
            self._ended(summary["TrainingJobStatus"], reason, value if state == "COMPLETE" else None)

    def run_trial(self, trial, job: str, tuned: dict, number: int) -> tuple:
        p = self.plan
        hps = {**self.definition.get("StaticHyperParameters", {}), **tuned}
        if not p.script and "localsage" in str(self.definition["AlgorithmSpecification"].get("TrainingImage")
                                               or self.api.image):
            hps.setdefault("debug", "false")  # as localsage tune's trials: no debugger tensors (~100 MB a job)
        last = None if p.script else ts.epochs_of(hps)  # after the built-in trainer's last epoch: nothing to save
        values, pruned = [], []

        def on_metrics(point: dict) -> bool:
            try:
                value, step = ts.objective_point(point, p.objective, len(values) + 1)
                if value is None:
                    return False
                values.append(value)
                trial.report(value, step)
                if p.pruning == "none" or (last is not None and step >= last):
                    return False
                with self.prune_lock:  # Optuna's Hyperband pruner sets itself up on first use, unguarded
                    if not trial.should_prune():
                        return False
            except Exception:  # the job's log reader calls this: never break it
                LOG.exception("tuning job %s: the objective of %s", self.name, job)
                return False
            pruned.append(step)
            return True

        stop = threading.Event()
        with self.lock:
            self.stops[job] = stop
            if self.ending or self.api.stopping.is_set():  # stopped while this trial was being asked for
                stop.set()
        training = _training()
        try:
            request = ts.trial_request(self.definition, job, hps, self.tags)
            request["Environment"] = {**self._thread_share(request), **request.get("Environment", {})}
            training.start_training_job(self.api, request, tags={"tune-study": self.name, "tune-trial": str(number)},
                                        on_metrics=on_metrics, stop=stop, tuning_job_arn=self.arn)
            described = training.wait_for(self.api, job)
        except ApiError as exc:  # the trial's request was refused: every trial's would be
            described = {"TrainingJobStatus": "Failed", "FailureReason": f"CreateTrainingJob: {exc.message}"}
            self.stop("Failed", f"the training job {job} was refused: {exc.message}")
        finally:
            with self.lock:
                self.stops.pop(job, None)
        return ts.outcome(p, described, values, bool(pruned))

    def _thread_share(self, request: dict) -> dict:
        """Parallel trials on CPU: each an equal share of the cores, as localsage tune's (without it each job
        starts a thread per core); the definition's Environment wins."""
        from localsage.api.training_run import gpu_setting
        from localsage.core import procs
        from localsage.host.backends import thread_share_env

        if self.plan.parallel < 2 or gpu_setting(request["ResourceConfig"].get("InstanceType"), self.api.backend)[0]:
            return {}
        return thread_share_env(procs.cores(), self.plan.parallel)

    def _ended(self, status: str, reason, value):
        """After a job: the completion criteria, and the first-failures rule."""
        with self.lock:
            self.finished.append((status, reason))
            if value is not None:
                improved = self.plan.better(value, self.best)
                self.best, self.stale = (value, 0) if improved else (self.best, self.stale + 1)
                if self.plan.reached(value) or (self.plan.not_improving and self.stale >= self.plan.not_improving):
                    self.halt.set()  # TuningJobCompletionCriteria: no new jobs; the running ones finish
            first = self.finished[:min(FAIL_FIRST, self.plan.budget)]
            failed = len(first) == min(FAIL_FIRST, self.plan.budget) and all(s == "Failed" for s, _ in first)
        if failed:
            self.stop("Failed", f"The first {len(first)} training jobs failed; the first failure: {first[0][1]}")

    def _ending(self) -> tuple:
        if self.ending:
            return self.ending
        if ts.best_of(self.trials.values(), self.plan.direction):
            return "Completed", None
        reasons = [r for _, r in self.finished if r]
        return "Failed", (f"No training job reported the objective metric {self.plan.objective}"
                          + (f"; the first failure: {reasons[0]}" if reasons else ""))

    def stop(self, status: str, reason: str | None):
        """No new trials, every running job stopped; the tuning job ends (status, reason) unless already decided."""
        with self.lock:
            self.ending = self.ending or (status, reason)
            self.halt.set()
            events = list(self.stops.values())
        for event in events:
            event.set()

    def _summary(self, job: str, fields: dict):
        with self.lock:
            self.trials[job] = {**self.trials.get(job, {}), **fields}
            self.api.store.update(KIND, self.name, Trials=dict(self.trials), LastModifiedTime=time.time())

    def final(self, status: str, reason: str | None = None):
        """The record final (once: a no-op when it already is)."""
        with self.lock:
            record = self.api.store.get(KIND, self.name)
            if record is not None and record[STATUS] in RUNNING:
                changes = {STATUS: status, "HyperParameterTuningEndTime": time.time(), "LastModifiedTime": time.time()}
                self.api.store.update(KIND, self.name, changes, **({"FailureReason": reason[:1024]} if reason else {}))
        _live(self.api).pop(self.name, None)


def _shutdown(api):
    runs = list(_live(api).values())
    for run in runs:
        run.stop("Stopped", SERVER_STOPPED)
    deadline = time.monotonic() + SHUTDOWN_WAIT_S
    for run in runs:
        if run.thread is not None:
            run.thread.join(max(0.0, deadline - time.monotonic()))
        run.final("Stopped", SERVER_STOPPED)


# -- records ------------------------------------------------------------------------------------------------------
def _settle(api, record: dict) -> dict:
    """A record left running by an earlier server (killed): final now, its unfinished jobs as they ended."""
    from localsage.core import procs

    owner = record.get("Owner") or {}
    if record[STATUS] not in RUNNING or record[NAME] in _live(api) or (
            procs.alive(owner) is not False and owner.get("pid") != os.getpid()):
        return record  # running here, or in another live server on this folder
    trials = dict(record.get("Trials") or {})
    for job, summary in trials.items():
        if summary.get("TrainingJobStatus") not in JOB_FINAL:
            try:
                status = _training().describe_training_job(api, {"TrainingJobName": job})["TrainingJobStatus"]
            except ApiError:
                status = None
            trials[job] = {**summary, "TrainingJobStatus": status if status in JOB_FINAL else "Stopped",
                           "ObjectiveStatus": "Failed"}
    now = time.time()
    changes = {STATUS: "Stopped" if record[STATUS] == "Stopping" else "Failed", "Trials": trials,
               "HyperParameterTuningEndTime": now, "LastModifiedTime": now, "FailureReason": SERVER_STOPPED}
    return api.store.update(KIND, record[NAME], changes) or record


def _get(api, name) -> dict:
    record = api.store.get(KIND, check_name(name, NAME))
    if record is None:
        raise not_found(KIND, name)
    return _settle(api, record)


def _direction(record: dict) -> str:
    return record[ts.CONFIG]["HyperParameterTuningJobObjective"]["Type"].lower()


def _overall_best(api, record: dict, depth: int = 0) -> dict | None:
    """The best job of this tuning job and, through IdenticalDataAndAlgorithm warm starts, of its parents."""
    found = [ts.best_of((record.get("Trials") or {}).values(), _direction(record))]
    warm = record.get("WarmStartConfig") or {}
    if warm.get("WarmStartType") == "IdenticalDataAndAlgorithm" and depth < 20:
        for p in warm.get("ParentHyperParameterTuningJobs") or []:
            parent = api.store.get(KIND, p["HyperParameterTuningJobName"])
            found.append(_overall_best(api, parent, depth + 1) if parent else None)
    return ts.best_of(found, _direction(record))


def describe_record(api, record: dict) -> dict:
    out = {k: record[k] for k in DESCRIBED if record.get(k) is not None}
    trials = list((record.get("Trials") or {}).values())
    out["TrainingJobStatusCounters"], out["ObjectiveStatusCounters"] = ts.counters(trials)
    out["BestTrainingJob"] = ts.best_of(trials, _direction(record))
    if (record.get("WarmStartConfig") or {}).get("WarmStartType") == "IdenticalDataAndAlgorithm":
        out["OverallBestTrainingJob"] = _overall_best(api, record)
    end = record.get("HyperParameterTuningEndTime") or time.time()
    out["ConsumedResources"] = {"RuntimeInSeconds": int(end - record["CreationTime"])}
    return ts.pruned_empty(out)


# -- operations ---------------------------------------------------------------------------------------------------
def create(api, request: dict) -> dict:
    name = check_name(request[NAME], NAME)
    plan = ts.plan(name, request)
    definition = dict(request[ts.DEFINITION])
    definition["StaticHyperParameters"] = ts.static_hyperparameters(definition, plan.objective)
    for i, parent in enumerate(plan.parents, 1):
        field = f"WarmStartConfig.ParentHyperParameterTuningJobs.{i}.HyperParameterTuningJobName"
        found = _get(api, parent)
        if found[STATUS] in RUNNING or not study_path(api, parent).is_file():
            raise validation(field, f"The parent tuning job {parent} is {found[STATUS]}; a parent must have ended"
                             if found[STATUS] in RUNNING else f"The parent tuning job {parent} has no study left")
        if found[ts.CONFIG]["HyperParameterTuningJobObjective"]["MetricName"] != plan.objective:
            raise validation(field, f"The objective metric must be the parent tuning job {parent}'s")
    from localsage.api import validate
    from localsage.core import procs

    # what every trial's CreateTrainingJob would be refused for, refused now (a 400 naming the field)
    sample = {**definition["StaticHyperParameters"], **{r.name: r.text(r.dim.first()) for r in plan.ranges}}
    sample = ts.trial_request(definition, f"{name}-001-00000000", sample, request.get("Tags"))
    validate.check_request("CreateTrainingJob", sample)
    _training().setup_of(api, sample)
    runs, arn, now = _live(api), api.arn("hyper-parameter-tuning-job", name), time.time()
    with _LIVE_LOCK:
        if api.store.get(KIND, name) is not None:
            raise already_exists(KIND, name, arn)
        shutil.rmtree(study_path(api, name).parent, ignore_errors=True)  # the study of a deleted job of that name
        record = {NAME: name, "HyperParameterTuningJobArn": arn, ts.CONFIG: request[ts.CONFIG],
                  ts.DEFINITION: definition, STATUS: "InProgress", "CreationTime": now, "LastModifiedTime": now,
                  "Trials": {}, "Owner": procs.identity(),
                  **{k: request[k] for k in ("WarmStartConfig", "Tags") if request.get(k)}}
        api.store.put(KIND, name, record)
        run = runs[name] = TuningRun(api, record, plan)
    run.start()
    return {"HyperParameterTuningJobArn": arn}


def describe(api, request: dict) -> dict:
    return describe_record(api, _get(api, request[NAME]))


def stop(api, request: dict) -> dict:
    record = _get(api, request[NAME])
    if record[STATUS] != "InProgress":
        raise validation(NAME, f"The hyperparameter tuning job {record[NAME]} is {record[STATUS]}; only an "
                               "InProgress job can be stopped")
    api.store.update(KIND, record[NAME], {STATUS: "Stopping", "LastModifiedTime": time.time()})
    run = _live(api).get(record[NAME])
    if run is not None:
        run.stop("Stopped", None)
    return {}


def delete(api, request: dict) -> dict:
    record = _get(api, request[NAME])
    if record[STATUS] in RUNNING:
        raise in_use(KIND, record[NAME], f"The hyperparameter tuning job {record[NAME]} is {record[STATUS]}; "
                                         "stop it before deleting it")
    api.store.delete(KIND, record[NAME])
    shutil.rmtree(study_path(api, record[NAME]).parent, ignore_errors=True)
    return {}


def _page(items: list, request: dict, key: str, sort_keys: dict, default: str) -> dict:
    by = request.get("SortBy") or default
    if by not in sort_keys:
        raise validation("SortBy", f"Member must satisfy enum value set: [{', '.join(sort_keys)}]")
    items = sorted((s for s in items if sort_keys[by](s) is not None), key=sort_keys[by],
                   reverse=request.get("SortOrder") == "Descending")
    token = request.get("NextToken") or "0"
    if not token.isdigit():
        raise ApiError("ValidationException", "Invalid pagination token (NextToken).")
    start, size = int(token), request.get("MaxResults") or 100
    out = {key: items[start:start + size]}
    if start + size < len(items):
        out["NextToken"] = str(start + size)
    return out


def list_jobs(api, request: dict) -> dict:
    stamp = _training().timestamp
    bounds = [(f"{field}{side}", field, side == "After") for field in ("CreationTime", "LastModifiedTime")
              for side in ("After", "Before")]
    summaries = []
    for record in api.store.list(KIND):
        record = _settle(api, record)
        if request.get("StatusEquals") not in (None, record[STATUS]) or (
                request.get("NameContains") or "").lower() not in record[NAME].lower():
            continue
        if any(request.get(key) is not None and (record.get(field, 0) > stamp(request[key], key)) != after
               for key, field, after in bounds):
            continue
        described = describe_record(api, record)
        summary = {k: described[k] for k in (NAME, "HyperParameterTuningJobArn", STATUS, "CreationTime",
                                             "HyperParameterTuningEndTime", "LastModifiedTime",
                                             "TrainingJobStatusCounters", "ObjectiveStatusCounters") if k in described}
        summaries.append({**summary, "Strategy": record[ts.CONFIG]["Strategy"],
                          "ResourceLimits": record[ts.CONFIG]["ResourceLimits"]})
    keys = {"Name": lambda s: s[NAME], "Status": lambda s: s[STATUS], "CreationTime": lambda s: s["CreationTime"]}
    return _page(summaries, request, "HyperParameterTuningJobSummaries", keys, "Name")


def list_training_jobs(api, request: dict) -> dict:
    record = _get(api, request[NAME])
    trials = [ts.pruned_empty(s) for s in (record.get("Trials") or {}).values()
              if request.get("StatusEquals") in (None, s["TrainingJobStatus"])]
    keys = {"Name": lambda s: s["TrainingJobName"], "CreationTime": lambda s: s["CreationTime"],
            "Status": lambda s: s["TrainingJobStatus"],
            "FinalObjectiveMetricValue": lambda s: (s.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get(
                "Value")}
    return _page(trials, request, "TrainingJobSummaries", keys, "Name")


OPERATIONS = {
    "CreateHyperParameterTuningJob": create,
    "DescribeHyperParameterTuningJob": describe,
    "ListHyperParameterTuningJobs": list_jobs,
    "StopHyperParameterTuningJob": stop,
    "DeleteHyperParameterTuningJob": delete,
    "ListTrainingJobsForHyperParameterTuningJob": list_training_jobs,
}
