"""Run a job as a real SageMaker training job with the project's ECR image.

The job's channels are S3 URIs; JobSpec.options carries training.TrainingOptions (output path, role,
instance type, spot, script mode's entry point...). The backend uploads a script's sourcedir.tar.gz,
creates the job with the sagemaker SDK's Estimator, writes its
ARN to <job>/backend.json (the runner merges it into the job record), streams the CloudWatch log
lines to `log` (so metrics reach the runner like any backend), calls StopTrainingJob when `stop` is
set, and on completion downloads model.tar.gz / output.tar.gz into the job folder so the job can be
served locally too.
"""
from __future__ import annotations

import tarfile
import time
from pathlib import Path

from localsage.core import contract
from localsage.host.backends import INFO_FILE
from localsage.host.cloud import s3, session, training
from localsage.host.cloud.constants import TRAINING_LOG_GROUP

FINAL = ("Completed", "Failed", "Stopped")


def save(job_dir: Path, info: dict) -> None:
    """What the runner merges into the job record (written as soon as the ARN is known)."""
    from localsage.core.files import atomic_write_json

    fields = {
        "TrainingJobArn": info.get("TrainingJobArn"),
        "AlgorithmSpecification": {"TrainingImage": info.get("TrainingImage"), "TrainingInputMode": "File",
                                   "MetricDefinitions": info.get("MetricDefinitions") or []},
        "ResourceConfig": {"InstanceType": info.get("InstanceType"), "InstanceCount": info.get("InstanceCount")},
        "SageMaker": info,
    }
    if info.get("HyperParameters"):  # what SageMaker was sent (script mode adds sagemaker_program...)
        fields["HyperParameters"] = info["HyperParameters"]
    atomic_write_json(Path(job_dir) / INFO_FILE, fields, default=str)


class LogTail:
    """New CloudWatch log lines of a training job (every host's stream), oldest first."""

    def __init__(self, logs_client, job_name: str, hosts: int = 1):
        self.client, self.job_name, self.hosts = logs_client, job_name, hosts
        self.seen, self.start = set(), 0

    def poll(self) -> list:
        events = []
        try:
            pages = self.client.get_paginator("filter_log_events").paginate(
                logGroupName=TRAINING_LOG_GROUP, logStreamNamePrefix=f"{self.job_name}/", startTime=self.start)
            for page in pages:
                events.extend(e for e in page["events"] if e["eventId"] not in self.seen
                              and e["logStreamName"].startswith(f"{self.job_name}/"))
        except self.client.exceptions.ResourceNotFoundException:  # no log group before the first job starts
            return []
        lines = []
        for event in sorted(events, key=lambda e: (e["timestamp"], e["eventId"])):
            self.seen.add(event["eventId"])
            self.start = max(self.start, event["timestamp"])
            message = event["message"].rstrip("\n")
            if self.hosts > 1:  # streams are <job>/algo-N-<epoch>
                host = event["logStreamName"].split("/", 1)[-1].rsplit("-", 1)[0]
                message = f"[{host}] {message}"
            lines.append(message)
        return lines


def _fetch(s3_client, uri: str, dest_dir: Path, log) -> bool:
    """Download an s3://.../*.tar.gz and unpack it into dest_dir; False when it is not there."""
    bucket, key = s3.split_s3(uri)
    archive = dest_dir.parent / f".{dest_dir.name}.download.tar.gz"
    try:
        s3_client.download_file(bucket, key, str(archive))
    except Exception as exc:  # botocore ClientError 404 and friends
        log(f"could not download {uri}: {exc}")
        return False
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest_dir, filter="data")
    archive.unlink()
    return True


def run(job, log, stop) -> int:
    opts = training.TrainingOptions.from_dict(getattr(job, "options", None) or {})
    boto_session = session.aws_session(opts.region)
    data = {ch: str(src) for ch, src in job.channels.items()}
    info = training.start_training(data, job.hyperparameters, opts, job.name, job.instance_count, job.env, boto_session)
    save(job.dir, info)
    log(f"SageMaker training job {info['TrainingJobArn']} ({job.instance_count} x {opts.instance_type}"
        + (", spot" if opts.spot else "") + ")")
    sm = boto_session.client("sagemaker")
    tail = LogTail(boto_session.client("logs"), job.name, job.instance_count)
    stop_sent, secondary = False, None
    while True:
        described = sm.describe_training_job(TrainingJobName=job.name)
        status = described["TrainingJobStatus"]
        if described.get("SecondaryStatus") != secondary:
            secondary = described.get("SecondaryStatus")
            log(f"SageMaker status: {status} / {secondary}")
        for line in tail.poll():
            log(line)
        if status in FINAL:
            break
        if stop.is_set() and not stop_sent:
            log("stopping the SageMaker training job (StopTrainingJob)")
            sm.stop_training_job(TrainingJobName=job.name)
            stop_sent = True
        if stop_sent:
            time.sleep(opts.poll_seconds)
        else:
            stop.wait(opts.poll_seconds)
    for line in tail.poll():
        log(line)

    info.update({
        "TrainingJobStatus": status,
        "SecondaryStatus": described.get("SecondaryStatus"),
        "BillableTimeInSeconds": described.get("BillableTimeInSeconds"),
        "TrainingTimeInSeconds": described.get("TrainingTimeInSeconds"),
    })
    s3_model = (described.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if s3_model:
        info["S3ModelArtifacts"] = s3_model
    save(job.dir, info)
    # the job folder's /opt/ml layout: not this process's SM_* variables, and no GPU count (this is the host)
    layout = contract.load(job.dir, env={"SM_NUM_GPUS": "0"})
    if status == "Completed":
        s3_client = boto_session.client("s3")
        if not _fetch(s3_client, info["S3ModelArtifacts"], layout.model_dir, log):
            contract.write_failure(layout.failure_file,
                                   f"the SageMaker job completed but {info['S3ModelArtifacts']} "
                                   "could not be downloaded")
            return 1
        _fetch(s3_client, info["S3ModelArtifacts"].rsplit("/", 1)[0] + "/output.tar.gz", layout.output_data_dir, log)
        return 0
    reason = described.get("FailureReason") or f"SageMaker training job {status.lower()}"
    contract.write_failure(layout.failure_file, reason)
    return 1


def refresh(record: dict) -> dict:
    """Update a job record from DescribeTrainingJob (for `jobs describe` while the job is not final)."""
    info = record.get("SageMaker") or {}
    if record.get("TrainingJobStatus") in FINAL and info.get("TrainingJobStatus") in FINAL:
        return record
    try:
        boto_session = session.aws_session(info.get("Region"))
        described = boto_session.client("sagemaker").describe_training_job(TrainingJobName=record["TrainingJobName"])
    except Exception as exc:  # no credentials or network: show the stored record and why it is not fresh
        return {**record, "SageMaker": {**info, "RefreshError": str(exc)}}
    info = {**info, "TrainingJobStatus": described["TrainingJobStatus"],
            "SecondaryStatus": described.get("SecondaryStatus"),
            "BillableTimeInSeconds": described.get("BillableTimeInSeconds")}
    if described.get("FailureReason"):
        info["FailureReason"] = described["FailureReason"]
    record = {**record, "SageMaker": info}
    if record.get("TrainingJobStatus") == "InProgress":  # the local runner is gone; SageMaker knows
        record["TrainingJobStatus"] = described["TrainingJobStatus"]
    return record


def reap_orphan(record: dict, info: dict, engine=None) -> None:
    """Nothing of a cloud job runs on this machine (the job itself goes on in SageMaker: `jobs stop` stops it)."""
