"""SageMaker's training job calls on localsage jobs: CreateTrainingJob, DescribeTrainingJob, ListTrainingJobs,
StopTrainingJob; and `start_training_job` for the tuning jobs' trials (each one a training job).

Create checks what it can at once (as the service does: a 400 naming the field) — the instance type, the image
(a local tag, or an ECR URI whose image is on this machine: never pulled), the channels, the metric
definitions, the rules — records the job (InProgress, Starting) and runs it in a background thread
(training_run.py). A job whose server was killed is reconciled the next time it is read: Stopped when the
runner's record says so, else Failed, with the reason."""
from __future__ import annotations

import os
import threading
import time
from datetime import datetime

from localsage.api import channels as ch, rules as api_rules, training_run as tr
from localsage.api.errors import ApiError, already_exists, not_found, validation
from localsage.api.instances import check_training_instance_type
from localsage.api.s3 import parse
from localsage.api.training_run import ACTIVE, FINAL, KIND, Running, Setup
from localsage.host import backends

DEFAULT_CHECKPOINT_PATH = "/opt/ml/checkpoints"
DEFAULT_MAX_RESULTS = 10
SHUTDOWN_WAIT = 45.0  # seconds the server's shutdown waits for its jobs to stop (the runner's grace is 30)
SORT_KEYS = {"Name": "TrainingJobName", "CreationTime": "CreationTime", "Status": "TrainingJobStatus"}
SUMMARY_FIELDS = ("TrainingJobName", "TrainingJobArn", "CreationTime", "TrainingEndTime", "LastModifiedTime",
                  "TrainingJobStatus", "SecondaryStatus")
TIME_FILTERS = (("CreationTimeAfter", "CreationTime", True), ("CreationTimeBefore", "CreationTime", False),
                ("LastModifiedTimeAfter", "LastModifiedTime", True),
                ("LastModifiedTimeBefore", "LastModifiedTime", False))
_registered: set = set()  # roots of the Api objects whose shutdown stops their jobs


# -- Create ------------------------------------------------------------------------------------------------
def create_training_job(api, request: dict) -> dict:
    return start_training_job(api, request)


def start_training_job(api, request: dict, tags: dict | None = None, on_metrics=None,
                       stop: threading.Event | None = None, tuning_job_arn: str | None = None) -> dict:
    """Create and start a training job from a CreateTrainingJob request; {"TrainingJobArn": ...}.
    tags: added to the request's; on_metrics: the runner's callback (a True answer stops the job); stop: an
    event that stops it; tuning_job_arn: the tuning job it is a trial of (DescribeTrainingJob's TuningJobArn)."""
    from localsage.api import validate

    validate.check_request("CreateTrainingJob", request)
    if api.stopping.is_set():
        raise ApiError("ResourceLimitExceeded", "localsage api is stopping: it starts no new training job")
    setup = setup_of(api, request, tags)
    name = setup.name
    running = Running(stop or threading.Event())
    with tr._LOCK:
        if api.store.get(KIND, name) is not None or (api.jobs_dir / name).exists():
            raise already_exists(KIND, name, api.arn("training-job", name))
        record = first_record(api, request, setup, tuning_job_arn)
        api.store.put(KIND, name, record)
        ACTIVE[(str(api.root), name)] = running
    _stop_jobs_at_shutdown(api)
    api.spawn(f"training-{name}", tr.run, api, setup, running, on_metrics)
    return {"TrainingJobArn": record["TrainingJobArn"]}


def setup_of(api, request: dict, tags: dict | None = None) -> Setup:
    """What the job needs, checked; an ApiError (400, naming the field) for what localsage cannot run."""
    from localsage.core.hyperparameters import PROGRAM_KEY, SUBMIT_DIR_KEY, decode_value
    from localsage.core.metrics import check_definition

    algorithm = request["AlgorithmSpecification"]
    if algorithm.get("AlgorithmName"):
        raise validation("algorithmSpecification.algorithmName", "localsage runs training images; give "
                         "TrainingImage (AlgorithmName: SageMaker's algorithms and Marketplace are not local)")
    if algorithm.get("TrainingInputMode", "File") not in ch.SUPPORTED_MODES:
        raise validation("algorithmSpecification.trainingInputMode",
                         f"{algorithm['TrainingInputMode']!r}: localsage runs File (and FastFile as File) input")
    resources = request["ResourceConfig"]
    if resources.get("InstanceGroups"):
        raise validation("resourceConfig.instanceGroups", "localsage runs one instance group: give InstanceType "
                                                          "and InstanceCount")
    instance_type = check_training_instance_type(resources.get("InstanceType"))
    count = int(resources.get("InstanceCount") or 1)
    backend = api.backend
    if count > 1:
        if not backends.traits(backend).in_container:
            raise validation("resourceConfig.instanceCount", f"{count} instances need containers: the {api.backend} "
                                                             "backend runs one (localsage api --backend docker)")
        backend = "sagemaker-local"  # its hosts are containers on this machine
    hps = dict(request.get("HyperParameters") or {})
    program = decode_value(hps[PROGRAM_KEY]) if PROGRAM_KEY in hps else None
    submit = decode_value(hps[SUBMIT_DIR_KEY]) if SUBMIT_DIR_KEY in hps else None
    if program is not None:
        if not isinstance(program, str) or not program or program.startswith("/") or ".." in program.split("/"):
            raise validation(f"hyperParameters.{PROGRAM_KEY}", "a program name inside the source code")
        if not isinstance(submit, str) or not submit.startswith("s3://"):
            raise validation(f"hyperParameters.{SUBMIT_DIR_KEY}", "an s3:// URI of the source code tarball "
                                                                  "(sourcedir.tar.gz) is needed with sagemaker_program")
        parse(submit)
    definitions = algorithm.get("MetricDefinitions") or None
    for i, definition in enumerate(definitions or []):
        try:
            check_definition(definition)
        except ValueError as exc:
            raise validation(f"algorithmSpecification.metricDefinitions.{i + 1}.regex", str(exc)) from None
    channels = ch.channels_of(request)
    for channel in channels:
        parse(channel["uri"])
    output = request["OutputDataConfig"]
    parse(output["S3OutputPath"])
    checkpoint = request.get("CheckpointConfig") or {}
    if checkpoint:
        parse(checkpoint["S3Uri"])
    hook = request.get("DebugHookConfig")
    if hook:
        parse(hook["S3OutputPath"])
    specs = api_rules.specs_of(request)
    image = algorithm.get("TrainingImage") or api.image
    in_container = backends.traits(backend).in_container
    if in_container:
        image = resolve_image(image)
    all_tags = {t["Key"]: t.get("Value", "") for t in request.get("Tags") or []}
    all_tags.update(tags or {})
    entrypoint = algorithm.get("ContainerEntrypoint") or None
    return Setup(
        name=request["TrainingJobName"], backend=backend, instance_count=count, instance_type=instance_type,
        image=image if in_container else None, hyperparameters=hps,
        environment=dict(request.get("Environment") or {}), channels=channels,
        submit_uri=submit if program is not None else None, program=program, entrypoint=entrypoint,
        arguments=algorithm.get("ContainerArguments") or None, metric_definitions=definitions,
        max_run=(request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds"), hook_config=hook or None,
        checkpoint_uri=checkpoint.get("S3Uri"), output_path=output["S3OutputPath"], profiler_uri=_profiler_uri(request),
        compression=str(output.get("CompressionType") or "GZIP").upper(), rule_specs=specs, tags=all_tags)


def _profiler_uri(request: dict) -> str | None:
    config = request.get("ProfilerConfig") or {}
    if config.get("DisableProfiler") or not config.get("S3OutputPath"):
        return None
    parse(config["S3OutputPath"])
    return config["S3OutputPath"]


def resolve_image(image: str) -> str:
    """The local image (a tag, or an ECR URI as `make push` tags it); never pulled. A ValidationException otherwise."""
    from localsage.host.backends.docker import local_image

    try:
        return local_image(image)
    except LookupError as exc:
        raise validation("algorithmSpecification.trainingImage", str(exc)) from None


def first_record(api, request: dict, setup: Setup, tuning_job_arn: str | None) -> dict:
    """DescribeTrainingJob's answer at creation: the request echoed, InProgress, Starting."""
    from localsage.core import procs

    now = time.time()
    echoed = {k: v for k, v in request.items() if k in _describe_members() and k not in ("TrainingJobName",)}
    record = {**echoed, "TrainingJobName": setup.name, "TrainingJobArn": api.arn("training-job", setup.name),
              "TrainingJobStatus": "InProgress", "CreationTime": now, "LastModifiedTime": now}
    algorithm = dict(record["AlgorithmSpecification"])
    algorithm.setdefault("TrainingImage", setup.image or api.image)
    algorithm.setdefault("TrainingInputMode", "File")
    record["AlgorithmSpecification"] = algorithm
    record.setdefault("StoppingCondition", {"MaxRuntimeInSeconds": 86400})
    if tuning_job_arn:
        record["TuningJobArn"] = tuning_job_arn
    record.update(api_rules.initial_statuses(api, setup.name, setup.rule_specs))
    tr.transition(record, "Starting", now=now)
    record["Local"] = {"Owner": procs.identity(), "Backend": setup.backend, "JobDir": str(api.jobs_dir / setup.name),
                       "Tags": setup.tags}
    return record


def _describe_members() -> frozenset:
    from localsage.api.validate import service_model

    return frozenset(service_model().operation_model("DescribeTrainingJob").output_shape.members)


# -- Describe, List, Stop ----------------------------------------------------------------------------------
def describe_training_job(api, request: dict) -> dict:
    name = request["TrainingJobName"]
    record = current(api, name)
    if record is None:
        raise not_found(KIND, name)
    return public(record)


def current(api, name: str) -> dict | None:
    """The job's record, reconciled when the server that ran it is gone (see module doc)."""
    record = api.store.get(KIND, name)
    if record is None or record.get("TrainingJobStatus") in FINAL or (str(api.root), name) in ACTIVE:
        return record
    from localsage.core import procs

    owner = (record.get("Local") or {}).get("Owner")
    if procs.alive(owner) is not False and not (owner and owner.get("pid") == os.getpid()):
        return record  # another live server on this folder runs it
    return reconcile(api, name)


def reconcile(api, name: str) -> dict | None:
    from localsage.host import records

    try:
        job = records.describe(name, api.jobs_dir)  # reconciles the runner's record: stops what it left running
    except (FileNotFoundError, ValueError, OSError):
        job = None
    gone = "the localsage api server that ran the job ended before the job did (killed?)"
    if job is not None and job.get("TrainingJobStatus") == "Stopped":
        tr.finish(api, name, "Stopped", reason=f"{gone}; what it left running was stopped")
    elif job is not None and job.get("TrainingJobStatus") == "Completed":
        tr.finish(api, name, "Failed", reason=f"InternalServerError: {gone}: the job completed but its artifacts "
                                              f"were not all uploaded; they are in {job.get('JobDir')}")
    else:
        tr.finish(api, name, "Failed", reason=f"InternalServerError: {gone}")
    return api.store.get(KIND, name)


def public(record: dict) -> dict:
    """What DescribeTrainingJob answers: the record without localsage's own part, empty structures left out
    (sagemaker-core's pydantic models refuse some empty ones)."""
    out = {k: v for k, v in ((k, _pruned(v)) for k, v in record.items() if k != "Local") if not _empty(v)}
    if "OutputDataConfig" in out:  # the service answers an empty KmsKeyId; v2's Estimator.attach reads it
        out["OutputDataConfig"] = {"KmsKeyId": "", **out["OutputDataConfig"]}
    return out


def _pruned(value):
    if isinstance(value, dict):
        return {k: v for k, v in ((k, _pruned(v)) for k, v in value.items()) if not _empty(v)}
    if isinstance(value, list):
        return [v for v in (_pruned(v) for v in value) if not (isinstance(v, dict) and not v)]
    return value


def _empty(value) -> bool:
    return value is None or (isinstance(value, (dict, list)) and not value)


def list_training_jobs(api, request: dict) -> dict:
    records = [current(api, r["TrainingJobName"]) or r for r in api.store.list(KIND) if r.get("TrainingJobName")]
    contains = request.get("NameContains")
    if contains:
        records = [r for r in records if contains.lower() in r["TrainingJobName"].lower()]
    if request.get("StatusEquals"):
        records = [r for r in records if r.get("TrainingJobStatus") == request["StatusEquals"]]
    for key, field, later in TIME_FILTERS:
        if request.get(key) is not None:
            bound = timestamp(request[key], key)
            records = [r for r in records if (r.get(field, 0) > bound if later else r.get(field, 0) < bound)]
    sort_by = request.get("SortBy") or "CreationTime"
    if sort_by not in SORT_KEYS:
        raise validation("sortBy", f"Member must satisfy enum value set: [{', '.join(SORT_KEYS)}]")
    order = request.get("SortOrder") or "Descending"
    if order not in ("Ascending", "Descending"):
        raise validation("sortOrder", "Member must satisfy enum value set: [Ascending, Descending]")
    records.sort(key=lambda r: (r.get(SORT_KEYS[sort_by]) or 0, r["TrainingJobName"]), reverse=order == "Descending")
    start = _token(request.get("NextToken"))
    size = int(request.get("MaxResults") or DEFAULT_MAX_RESULTS)
    page = records[start:start + size]
    answer = {"TrainingJobSummaries": [{k: r[k] for k in SUMMARY_FIELDS if r.get(k) is not None} for r in page]}
    if start + size < len(records):
        answer["NextToken"] = str(start + size)
    return answer


def timestamp(value, field: str) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise validation(field, "Member must be a timestamp") from None


def _token(token) -> int:
    if token in (None, ""):
        return 0
    if not str(token).isdigit():
        raise ApiError("ValidationException", "Invalid pagination token (NextToken).")
    return int(token)


def stop_training_job(api, request: dict) -> dict:
    name = request["TrainingJobName"]
    record = current(api, name)
    if record is None:
        raise not_found(KIND, name)
    status = record.get("TrainingJobStatus")
    if status in FINAL:
        raise ApiError("ValidationException",
                       f"The request was rejected because the training job is in status {status}.")
    if status != "Stopping":
        def stopping(r):
            r["TrainingJobStatus"] = "Stopping"
            tr.transition(r, "Stopping")
        tr.change(api, name, stopping)
    running = ACTIVE.get((str(api.root), name))
    if running is not None:
        running.stop.set()
    return {}


def wait_for(api, name: str, timeout: float | None = None) -> dict:
    """Block until the job (started by this process) is final; its DescribeTrainingJob answer."""
    running = ACTIVE.get((str(api.root), name))
    if running is not None:
        running.done.wait(timeout)
    record = current(api, name)
    if record is None:
        raise not_found(KIND, name)
    return public(record)


def _stop_jobs_at_shutdown(api) -> None:
    key = str(api.root)
    with tr._LOCK:
        if key in _registered:
            return
        _registered.add(key)

    def stop_all():
        with tr._LOCK:
            mine = [(name, run) for (root, name), run in ACTIVE.items() if root == key]
            _registered.discard(key)
        for name, running in mine:
            try:
                stop_training_job(api, {"TrainingJobName": name})
            except ApiError:
                running.stop.set()
        deadline = time.monotonic() + SHUTDOWN_WAIT
        for _, running in mine:
            running.done.wait(max(0.0, deadline - time.monotonic()))

    api.on_shutdown(stop_all)


OPERATIONS = {
    "CreateTrainingJob": create_training_job,
    "DescribeTrainingJob": describe_training_job,
    "ListTrainingJobs": list_training_jobs,
    "StopTrainingJob": stop_training_job,
}


def on_start(api) -> None:
    """A restarted server makes final, at once, every job a killed server left InProgress or Stopping."""
    for record in api.store.list(KIND):
        if record.get("TrainingJobStatus") not in FINAL:
            current(api, record["TrainingJobName"])
