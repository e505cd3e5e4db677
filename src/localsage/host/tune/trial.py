"""One trial = one training job: its name, hyperparameters and resources, the metrics it reports to the
pruner while it runs, and what the study is told when it ends.

The built-in trainer reports one value per epoch (the objective of its metrics line); a script reports
one value per match of the objective's metric definition in its log (SageMaker's metric_definitions):
every match is an intermediate value for the pruner, the last one is the trial's value."""
from __future__ import annotations

import math
import re
import threading
import zlib
from pathlib import Path

from localsage.core import hyperparameters, procs
from localsage.host import backends, records, runner
from localsage.host.jobplan import JobPlan

# what Python's standard option parser prints when a script is passed options it does not define
UNRECOGNIZED = re.compile(r"error: unrecognized arguments: ([^\n\"]*)")
USAGE = re.compile(r"usage: (.*?)\n[^\n]*: error: unrecognized arguments", re.S)

JOB_NAME_MAX = 63  # SageMaker: letters, digits, hyphens; at most 63 characters
STAMP_LEN = len(records.job_name("x")) - 2  # the timestamp records.job_name appends


def trial_job_name(study: str, number: int) -> str:
    """<study>-t<NNN>-<timestamp>, fit for SageMaker (letters, digits, hyphens, <= 63 characters): the study
    part is sanitised and, when it must be shortened, keeps a short hash of the full name."""
    suffix = f"-t{number:03d}"
    room = JOB_NAME_MAX - len(suffix) - 1 - STAMP_LEN
    part = re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9-]", "-", study)).strip("-") or "study"
    if part != study or len(part) > room:
        digest = f"{zlib.crc32(study.encode()):08x}"[:6]
        part = f"{part[:room - len(digest) - 1].rstrip('-')}-{digest}" if len(part) > room else part
    return records.job_name(f"{part}{suffix}")


def slot_env(slot: int, parallel: int, gpus: list, fixed: dict, cores: int, script: bool = False) -> tuple[dict, dict]:
    """Resources of one parallel worker: a GPU each (round robin) or an equal share of the CPU threads
    for each process of its job (the built-in trainer's `threads` hyperparameter; a script gets
    OMP/MKL_NUM_THREADS instead): `parallel` trials of P processes each (the fixed
    sagemaker_mpi_num_of_processes_per_host, else 1) split the cores parallel x P ways."""
    if gpus:
        return {"CUDA_VISIBLE_DEVICES": str(gpus[slot % len(gpus)])}, {}
    env = backends.thread_share_env(cores, parallel * hyperparameters.processes_per_host(fixed, 0))
    if script:
        return env, {}
    hp = {} if "threads" in fixed else {"threads": int(env["OMP_NUM_THREADS"])}
    return {}, hp


def rejected_arguments(t, number: int, reason: str) -> str | None:
    """The error that stops a study whose script rejects the hyperparameters it is passed (its option
    parser's "unrecognized arguments"): every trial would fail the same way. None for any other failure."""
    found = UNRECOGNIZED.search(reason or "") if t.script else None
    if not found:
        return None
    options = [tok.split("=", 1)[0] for tok in found.group(1).split() if tok.startswith("-")]
    names = [o.lstrip("-") for o in dict.fromkeys(options)]
    searched = [n for n in t.space if n in names]  # in the space's order
    fixed = [n for n in names if n in t.fixed]
    shown = ", ".join("--" + n for n in searched + fixed) or found.group(1).strip()
    text = f"trial {number}: the script {t.entry_point} does not accept {shown} (unrecognized arguments)"
    usage = USAGE.search(reason)
    if usage:
        text += f"; it takes: {' '.join(usage.group(1).split())}"
    text += ". Every trial would fail the same way: the study stopped."
    if searched or not fixed:
        dim = t.space[searched[0]] if searched else next(iter(t.space.values()))
        where = "the default search space (no space was given)" if t.default_space else "the search space"
        verb = "comes" if len(searched) == 1 else "come"
        named = f" {', '.join(searched)} {verb} from {where}:" if searched else ""
        text += (f"{named} search the script's own option names with --space, e.g. --space '{dim.entry('NAME')}' "
                 "(repeatable), or space: in --config.")
    if fixed:
        text += f" {', '.join(fixed)}: fixed in the config; take them out of fixed: or use the script's names."
    return text


def run_job(study, trial, params: dict, slot: int) -> str:
    """Run the trial's job to its end (study: the workers.Study running it); returns the trial's state."""
    t = study.t
    env, extra = slot_env(slot, t.parallel, study.gpus, t.fixed, procs.cores(), script=t.script)
    hp = {**t.trial_hyperparameters(params), **extra}
    name = trial_job_name(t.study, trial.number)
    job_dir = Path(t.jobs_dir).resolve() / name
    trial.set_user_attr("job_name", name)
    trial.set_user_attr("job_dir", str(job_dir))
    pruned, values = [], []
    if t.script:
        plan = JobPlan.for_script(t.entry_point, source_dir=t.source_dir, hyperparameters=hp,
                                  metric_definitions=t.metric_definitions, image=t.image, env=env, max_run=t.max_run)

        def on_metrics(point):
            if point.get("name") != t.objective:
                return False
            values.append(float(point["value"]))
            trial.report(values[-1], len(values))
            if trial.should_prune():
                pruned.append(len(values))
                return True
            return False
    else:
        plan = JobPlan(hyperparameters=hp, image=t.image, env=env, max_run=t.max_run)
        final_epoch = last_epoch(hp)

        def on_metrics(epoch_values):
            value = epoch_values.get(t.objective)
            if value is None:
                return False
            values.append(value)
            trial.report(value, epoch_values["epoch"])
            # after the last epoch there is nothing left to save: the trial completes
            if epoch_values["epoch"] < final_epoch and trial.should_prune():
                pruned.append(epoch_values["epoch"])
                return True
            return False

    stop = threading.Event()
    study.running.add(stop)
    try:
        if study.halt.is_set():
            stop.set()
        record = runner.train(t.data, plan, backend=t.backend, name=name, jobs_dir=t.jobs_dir, on_metrics=on_metrics,
                              stop=stop, echo=study.echo, tags={"tune-study": t.study, "tune-trial": str(trial.number)},
                              tracking_parent=study.runs.parent_id() if study.runs is not None else None)
    finally:
        study.running.discard(stop)
    final = {m["MetricName"]: m["Value"] for m in record.get("FinalMetricDataList", [])}
    if t.script:
        trial.set_user_attr("metric_points", len(values))
        for d in t.metric_definitions:
            if d["Name"] in final:
                trial.set_user_attr(d["Name"], final[d["Name"]])
        value = values[-1] if values else final.get(t.objective)
    else:
        trial.set_user_attr("epochs_run", record.get("EpochsCompleted", 0))
        for key in ("valid_acc", "valid_loss"):
            if key in final:
                trial.set_user_attr(key, final[key])
        value = final.get(t.objective)
    return trial_outcome(study, trial, record, value, bool(pruned))


def trial_outcome(study, trial, record: dict, value, pruned: bool) -> str:
    """Tell the study how the trial's job ended; returns Complete, Pruned or Fail."""
    from optuna.trial import TrialState

    t = study.t
    status = record["TrainingJobStatus"]
    trial.set_user_attr("job_status", status)
    trial.set_user_attr("duration_s", record.get("TrainingTimeInSeconds"))
    if status == "Stopped" and pruned:
        study.study.tell(trial, state=TrialState.PRUNED)
        return "Pruned"
    if status == "Completed" and value is not None and math.isfinite(value):
        study.study.tell(trial, value)
        return "Complete"
    reason = record.get("FailureReason") or record.get("StopReason") or f"job {status} without a finite {t.objective}"
    if status == "Stopped" and (study.interrupted or study.error):
        reason = (f"interrupted: the tuner got {study.interrupted} and stopped the job" if study.interrupted
                  else f"stopped: the study stopped ({study.error})")
        record["StopReason"] = reason
        records.write_record(Path(record["JobDir"]), record)
    trial.set_user_attr("failure_reason", reason)
    if status == "Stopped" and record.get("SecondaryStatus") != records.MAX_RUNTIME:  # a job over max_run counts
        trial.set_user_attr("interrupted", True)
    rejected = rejected_arguments(t, trial.number, reason) if status == "Failed" else None
    if rejected:
        study.abort(rejected)  # before the next trial can be asked for
    study.study.tell(trial, state=TrialState.FAIL)
    study.log(f"trial {trial.number} failed: {reason}")
    return "Fail"


def last_epoch(hp: dict) -> int:
    return int(hyperparameters.parse(hyperparameters.to_strings(hp))["epochs"])
