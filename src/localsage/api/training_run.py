"""One training job of the API from its request to its final status, in a background thread of the server:
Downloading (the S3 channels, the submitted source code and the checkpoints into the job's staging folder),
Training (localsage's runner, its log lines tailed into CloudWatch Logs as they come, checkpoints synced to S3),
Uploading (the debugger/profiler rules judged, model.tar.gz and output.tar.gz, tensors, rule verdicts and the
last checkpoints to S3), then Completed, Failed or Stopped with SageMaker's secondary status transitions.

The job's record (what DescribeTrainingJob answers) is the API store's "TrainingJob" record; the localsage job
in the jobs folder is the runner's own (`localsage jobs list` shows it)."""
from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from localsage.api import channels as ch, rules as api_rules
from localsage.host import backends

LOG = logging.getLogger("localsage.api")
KIND = "TrainingJob"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
FINAL = ("Completed", "Failed", "Stopped")
TAIL_SECONDS = 1.0  # how often the job's new log lines go to CloudWatch Logs
CHECKPOINT_SYNC_SECONDS = 10.0
MESSAGES = {
    "Starting": "Preparing the instances for training",
    "Downloading": "Downloading input data",
    "Training": "Training image download completed. Training in progress.",
    "Uploading": "Uploading generated training model",
    "Completed": "Training job completed",
    "Failed": "Training job failed",
    "Stopping": "Stopping the training job",
    "Stopped": "Training job stopped",
    "MaxRuntimeExceeded": "Training job stopped: it ran longer than StoppingCondition.MaxRuntimeInSeconds",
}

_LOCK = threading.RLock()  # every change of a TrainingJob record: read, change, write under it
ACTIVE: dict = {}  # (api root, job name) -> Running, the jobs this process runs


@dataclass
class Setup:
    """What Create worked out from the request; the rest happens in the job's thread."""
    name: str
    backend: str
    instance_count: int
    instance_type: str
    image: str | None
    hyperparameters: dict
    environment: dict
    channels: list
    submit_uri: str | None = None
    program: str | None = None
    entrypoint: list | None = None
    arguments: list | None = None
    metric_definitions: list | None = None
    max_run: int | None = None
    hook_config: dict | None = None
    checkpoint_uri: str | None = None
    profiler_uri: str | None = None  # ProfilerConfig.S3OutputPath: output/profiler goes to <it>/<job>/profiler-output
    output_path: str = ""
    compression: str = "GZIP"
    rule_specs: list = field(default_factory=list)
    tags: dict = field(default_factory=dict)


@dataclass
class Running:
    stop: threading.Event
    done: threading.Event = field(default_factory=threading.Event)


# -- the record ----------------------------------------------------------------------------------------------
def change(api, name: str, fn) -> dict | None:
    """fn(record) changes the job's record in place; written under the lock; the new record (None if gone)."""
    with _LOCK:
        record = api.store.get(KIND, name)
        if record is None:
            return None
        fn(record)
        record["LastModifiedTime"] = time.time()
        api.store.put(KIND, name, record)
        return record


def transition(record: dict, status: str, message: str | None = None, now: float | None = None) -> None:
    """SecondaryStatus `status`, the previous transition closed; final statuses close their own too."""
    now = time.time() if now is None else now
    steps = record.setdefault("SecondaryStatusTransitions", [])
    if steps and steps[-1]["Status"] == status:
        return
    if steps and "EndTime" not in steps[-1]:
        steps[-1]["EndTime"] = now
    step = {"Status": status, "StartTime": now, "StatusMessage": message or MESSAGES.get(status, status)}
    if status in FINAL or status == "MaxRuntimeExceeded":
        step["EndTime"] = now
    steps.append(step)
    record["SecondaryStatus"] = status


def _advance(api, name: str, status: str, message: str | None = None, **fields) -> None:
    """A step of a running job; once the job is Stopping only the Uploading step still shows."""
    def fn(record):
        if record.get("TrainingJobStatus") == "Stopping" and status != "Uploading":
            record.update(fields)
            return
        transition(record, status, message)
        record.update(fields)
    change(api, name, fn)


def finish(api, name: str, status: str, secondary: str | None = None, reason: str | None = None, **fields) -> None:
    def fn(record):
        now = time.time()
        record.update(fields)
        record["TrainingJobStatus"] = status
        record.setdefault("TrainingEndTime", now)
        if reason and status == "Failed":
            record["FailureReason"] = reason[:1024]
        elif reason:
            record.setdefault("Local", {})["StopReason"] = reason
        transition(record, secondary or status, now=now)
        if secondary and secondary != status:  # MaxRuntimeExceeded: the job's last status stays Stopped
            record["SecondaryStatus"] = secondary
        for key, statuses in api_rules.stopped_statuses(
                {k: record[k] for k in api_rules.KINDS.values() if k in record},
                f"the training job ended {status}").items():
            record[key] = statuses
    change(api, name, fn)


# -- the thread ----------------------------------------------------------------------------------------------
def run(api, setup: Setup, running: Running, on_metrics=None) -> None:
    """The job's thread: never raises; the record ends final whatever happens."""
    name, stop = setup.name, running.stop
    staging = api.root / "staging" / name
    tail = None
    try:
        _advance(api, name, "Downloading")
        folders = ch.stage_channels(api.s3, setup.channels, staging)
        code = ch.stage_code(api.s3, setup.submit_uri, staging / "code") if setup.submit_uri else None
        checkpoints = None
        if setup.checkpoint_uri:
            checkpoints = staging / "checkpoints"
            ch.download_prefix(api.s3, setup.checkpoint_uri, checkpoints)
        plan, options = _plan(api, setup, code, folders, checkpoints)
        if stop.is_set():
            finish(api, name, "Stopped", reason="stopped before training started")
            return
        stream = f"{name}/algo-1-{int(time.time())}"
        tail = LogTail(api, name, api.jobs_dir / name, stream, setup.checkpoint_uri)
        for line in options.pop("notes", []):
            tail.note(line)
        if backends.traits(setup.backend).containers:  # a SIGKILLed server's containers are removed by its guard
            from localsage.api.guard import ensure_guard

            ensure_guard()
        _advance(api, name, "Training", TrainingStartTime=time.time())
        tail.start()
        from localsage.host import runner

        record = runner.train(folders, plan, backend=setup.backend, name=name, jobs_dir=api.jobs_dir,
                              instance_count=setup.instance_count, on_metrics=on_metrics, stop=stop, echo=False,
                              tags=setup.tags, backend_options=options)
        tail.close()
        if stop.is_set() and record.get("TrainingJobStatus") == "Completed":
            # told to stop (StopTrainingJob, MaxRuntimeInSeconds, the tuner's early stopping) and the program
            # exited 0 on SIGTERM: SageMaker calls that Stopped
            ran_out = setup.max_run and (record.get("TrainingTimeInSeconds") or 0) >= setup.max_run
            record = {**record, "TrainingJobStatus": "Stopped",
                      "SecondaryStatus": "MaxRuntimeExceeded" if ran_out else "Stopped"}
        _advance(api, name, "Uploading")
        _upload_and_finish(api, setup, record, Path(record.get("JobDir") or api.jobs_dir / name))
    except ch.StagingError as exc:
        finish(api, name, "Failed", reason=str(exc))
    except Exception as exc:
        LOG.error("training job %s:\n%s", name, traceback.format_exc())
        finish(api, name, "Failed", reason=f"InternalServerError: {type(exc).__name__}: {exc}")
    finally:
        if tail is not None:
            tail.close()
        shutil.rmtree(staging, ignore_errors=True)  # the job's copies of its inputs (code/ is in the job's folder)
        running.done.set()
        with _LOCK:
            ACTIVE.pop((str(api.root), name), None)


def _plan(api, setup: Setup, code: Path | None, folders: dict, checkpoints: Path | None):
    """The localsage JobPlan of the request, and the backend's options (with "notes": lines for the log)."""
    from localsage.host.jobplan import JobPlan
    from localsage.host.script_job import Script

    options, notes, env = {}, [], dict(setup.environment)
    gpus, note = gpu_setting(setup.instance_type, setup.backend)
    if note:
        notes.append(note)
    options["gpus"] = gpus
    in_container = backends.traits(setup.backend).in_container
    if not gpus and not in_container:
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
    env.setdefault("TRAINING_JOB_NAME", setup.name)  # SageMaker sets both in the container
    env.setdefault("TRAINING_JOB_ARN", api.arn("training-job", setup.name))
    if in_container:
        options["channels_writable"] = True  # the job's own copy (SDK v3's driver chmods its script)
    common = dict(hyperparameters=setup.hyperparameters, metric_definitions=setup.metric_definitions,
                  max_run=setup.max_run, env=env, image=setup.image, as_given=True, hook_config=setup.hook_config,
                  checkpoints_from=checkpoints, instance_type=setup.instance_type)
    script = None
    if setup.program and code is not None:
        if not (code / setup.program).is_file():
            raise ch.StagingError(f"ClientError: the program {setup.program!r} (sagemaker_program) is not in "
                                  f"{setup.submit_uri}")
        script = Script(setup.program, code)
    elif setup.entrypoint and not in_container:
        return v3_script_plan(setup, folders, common), {**options, "notes": notes}
    plan = JobPlan(script=script, container_entrypoint=setup.entrypoint, container_arguments=setup.arguments,
                   **common)
    return plan, {**options, "notes": notes}


def v3_script_plan(setup: Setup, folders: dict, common: dict):
    """The process backend cannot run a ContainerEntrypoint (SDK v3's driver reads /opt/ml): a v3 script job
    (channels `code` and `sm_drivers`, sourcecode.json naming the entry script) runs as a localsage script."""
    from localsage.core.hyperparameters import decode
    from localsage.host.jobplan import JobPlan

    source = folders.get("sm_drivers") and Path(folders["sm_drivers"]) / "sourcecode.json"
    try:
        spec = json.loads(source.read_text()) if source else {}
    except (OSError, ValueError):
        spec = {}
    entry = spec.get("entry_script")
    if not entry or spec.get("command") or "code" not in folders or not str(entry).endswith(".py"):
        raise ch.StagingError("ClientError: the process backend runs a ContainerEntrypoint only for an SDK v3 "
                              "script job (source_code with an entry_script); run `localsage api --backend docker`")
    rest = {k: v for k, v in common.items() if k not in ("hyperparameters", "as_given", "hook_config")}
    return JobPlan.for_script(entry, source_dir=folders["code"], hyperparameters=decode(setup.hyperparameters),
                              **rest)


def gpu_setting(instance_type: str, backend: str) -> tuple[bool, str | None]:
    """(give the job this machine's GPUs, a line for the job's log): GPU instance types get them when there
    are any, CPU types run on CPU as they would on SageMaker."""
    from localsage.api.instances import is_gpu_type

    have = _local_gpus(backend)
    if is_gpu_type(instance_type):
        if have:
            return True, None
        return False, f"localsage: {instance_type} has GPUs; this machine has none the {backend} backend can use: " \
                      "the job runs on CPU"
    return False, (f"localsage: {instance_type} has no GPU: the job runs on CPU" if have else None)


def _local_gpus(backend: str) -> bool:
    if not backends.traits(backend).in_container:
        return bool(shutil.which("nvidia-smi"))
    try:
        from localsage.host.backends.docker import gpus_available

        return gpus_available()
    except Exception:
        return False


# -- after the job -------------------------------------------------------------------------------------------
def _upload_and_finish(api, setup: Setup, record: dict, job_dir: Path) -> None:
    from localsage.host.records import pack

    name, status = setup.name, record["TrainingJobStatus"]
    fields = {"TrainingTimeInSeconds": int(round(record.get("TrainingTimeInSeconds") or 0)),
              "FinalMetricDataList": metric_data(record)}
    fields["BillableTimeInSeconds"] = fields["TrainingTimeInSeconds"]
    if setup.rule_specs:
        results = api_rules.evaluate(job_dir, setup.rule_specs)
        current = api.store.get(KIND, name) or {}
        statuses = api_rules.final_statuses({k: current[k] for k in api_rules.KINDS.values() if k in current},
                                            results)
        fields.update(statuses)
        for spec in setup.rule_specs:
            rule_files = [job_dir / "output" / "rules" / f"{r}.json" for r in spec.rules]
            target = spec.s3_output or f"{_base(setup)}/rule-output"
            for path in rule_files:
                if path.is_file():
                    api.s3.upload_file(path, f"{target.rstrip('/')}/{spec.config_name}/{path.name}")
    base = _base(setup)
    model_dir = job_dir / "model"
    if status != "Completed" and model_dir.is_dir() and any(model_dir.iterdir()):
        pack(model_dir, job_dir / "model.tar.gz")  # SageMaker uploads what a stopped job left, too
    if setup.compression == "NONE":
        if ch.upload_tree(api.s3, model_dir, f"{base}/output/model"):
            fields["ModelArtifacts"] = {"S3ModelArtifacts": f"{base}/output/model/"}
    elif (job_dir / "model.tar.gz").is_file():
        fields["ModelArtifacts"] = {"S3ModelArtifacts": api.s3.upload_file(job_dir / "model.tar.gz",
                                                                           f"{base}/output/model.tar.gz")}
    if (job_dir / "output.tar.gz").is_file():
        api.s3.upload_file(job_dir / "output.tar.gz", f"{base}/output/output.tar.gz")
    if setup.hook_config and setup.hook_config.get("S3OutputPath"):
        ch.upload_tree(api.s3, job_dir / "output" / "tensors",
                       f"{setup.hook_config['S3OutputPath'].rstrip('/')}/{name}/debug-output")
    if setup.profiler_uri:
        ch.upload_tree(api.s3, job_dir / "output" / "profiler",
                       f"{setup.profiler_uri.rstrip('/')}/{name}/profiler-output")
    if setup.checkpoint_uri:
        ch.FolderSync(api.s3, job_dir / "checkpoints", setup.checkpoint_uri).sync()
    reason = record.get("FailureReason") or record.get("StopReason")
    secondary = record.get("SecondaryStatus") if record.get("SecondaryStatus") not in (None, status) else None
    if status == "Failed" and reason and not reason.startswith(("AlgorithmError", "ClientError")):
        reason = f"AlgorithmError: {reason}"
    finish(api, name, status, secondary=secondary, reason=reason, **fields)


def _base(setup: Setup) -> str:
    return f"{setup.output_path.rstrip('/')}/{setup.name}"


def metric_data(record: dict) -> list:
    """FinalMetricDataList: one entry a name (the last one wins), finite values, a timestamp each."""
    import math

    end = time.time()
    out = {}
    for item in record.get("FinalMetricDataList") or []:
        try:
            value = float(item["Value"])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[str(item["MetricName"])] = {"MetricName": str(item["MetricName"]), "Value": value,
                                            "Timestamp": float(item.get("Timestamp") or end)}
    return list(out.values())


# -- the job's log into CloudWatch Logs ----------------------------------------------------------------------
class LogTail(threading.Thread):
    """Reads the job's train.log as it grows and puts its lines into `/aws/sagemaker/TrainingJobs`, stream
    `<job>/algo-1-<epoch>` (what v2's `fit(logs=True)` tails); syncs the checkpoints to S3 on the way."""

    def __init__(self, api, name: str, job_dir: Path, stream: str, checkpoint_uri: str | None):
        super().__init__(name=f"logs-{name}", daemon=True)
        self.api, self.path, self.stream = api, Path(job_dir) / "train.log", stream
        self.sync = ch.FolderSync(api.s3, Path(job_dir) / "checkpoints", checkpoint_uri) if checkpoint_uri else None
        self.offset, self.pending = 0, b""
        self.stopped = threading.Event()
        self._closed = False
        self._lock = threading.Lock()

    def note(self, line: str) -> None:
        LOG.info("%s", line)
        self._put([line])

    def _put(self, lines: list) -> None:
        try:
            self.api.logs.put(LOG_GROUP, self.stream, [line[:200_000] for line in lines])
        except Exception:  # the job goes on; its lines stay in its train.log
            LOG.error("CloudWatch Logs put failed for %s:\n%s", self.stream, traceback.format_exc())

    def run(self) -> None:
        last_sync = time.monotonic()
        while not self.stopped.wait(TAIL_SECONDS):
            self.flush()
            if self.sync is not None and time.monotonic() - last_sync >= CHECKPOINT_SYNC_SECONDS:
                self._sync()
                last_sync = time.monotonic()

    def _sync(self) -> None:
        try:
            self.sync.sync()
        except Exception:
            LOG.error("checkpoint sync failed:\n%s", traceback.format_exc())

    def flush(self, final: bool = False) -> None:
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    f.seek(self.offset)
                    data = f.read()
            except FileNotFoundError:
                return
            self.offset += len(data)
            data = self.pending + data
            *lines, self.pending = data.split(b"\n")
            if final and self.pending:
                lines, self.pending = lines + [self.pending], b""
            if lines:
                self._put([line.decode("utf-8", "replace").rstrip("\r") for line in lines])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stopped.set()
        if self.is_alive():
            self.join(5)
        self.flush(final=True)
