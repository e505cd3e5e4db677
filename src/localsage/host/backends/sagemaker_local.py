"""Run a job with the real SageMaker Python SDK (v2) in local mode: Estimator.fit on file:// channels.

No AWS account is involved: the SDK gets its own boto3 session with a fixed region and dummy
credentials (real ones are never read), telemetry is opted out, and while the SDK runs the process
environment points the AWS config/credential files at /dev/null. The SDK starts one container per
instance with docker-compose (hosts algo-1-<suffix>, algo-2-<suffix>, ... on one network) and packs
model.tar.gz / output.tar.gz; they are unpacked into the job's model/ and output/ so the runner
records the job like any other.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import threading
from pathlib import Path

from localsage.core import procs
from localsage.core.hyperparameters import processes_per_host
from localsage.host.backends import STOP_GRACE_SECONDS, thread_share_env
from localsage.host.backends.docker import DEFAULT_IMAGE, LABEL, OWNER_LABEL, SHM_SIZE, gpus_available

REGION = "us-east-1"
DUMMY_ROLE = "arn:aws:iam::111111111111:role/localsage-dummy"
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
LOCAL_ENV = {
    "AWS_DEFAULT_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "localsage",
    "AWS_SECRET_ACCESS_KEY": "localsage",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
    "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
    # keep the SDK away from the user's/admin's SDK defaults files
    "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": os.devnull,
    "SAGEMAKER_USER_CONFIG_OVERRIDE": os.devnull,
}
UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@contextlib.contextmanager
def local_aws_env():
    """Region and dummy credentials for the SDK, only while it runs; the previous values come back."""
    saved = {k: os.environ.get(k) for k in (*LOCAL_ENV, *UNSET)}
    os.environ.update(LOCAL_ENV)
    for k in UNSET:
        os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class LineWriter(io.TextIOBase):
    """A stdout stand-in that hands complete lines to `log` (the SDK prints docker-compose output).

    Anything printed while `log` itself runs (the runner echoes lines) goes to the real stdout.
    """

    def __init__(self, log, real):
        self.log, self.real, self.pending, self.busy = log, real, "", False

    def write(self, text):
        if self.busy:
            return self.real.write(text)
        self.pending += ANSI.sub("", text).replace("\r", "")
        *lines, self.pending = self.pending.split("\n")
        self.busy = True
        try:
            for line in lines:
                self.log(line)
        finally:
            self.busy = False
        return len(text)

    def flush(self):
        self.real.flush()

    def close_lines(self):
        if self.pending:
            self.log(self.pending)
            self.pending = ""


def session(container_root: Path, job_name: str, init: bool = True):
    import boto3
    from sagemaker.local import LocalSession

    boto = boto3.Session(aws_access_key_id=LOCAL_ENV["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key=LOCAL_ENV["AWS_SECRET_ACCESS_KEY"], region_name=REGION)
    sess = LocalSession(boto_session=boto, sagemaker_config=SDK_CONFIG)
    container_root.mkdir(parents=True, exist_ok=True)
    sess.config = {"local": {
        "local_code": True,
        "container_root": str(container_root),
        # merged into every container's compose service
        "container_config": {"shm_size": SHM_SIZE, "init": init,
                             "labels": {LABEL: job_name, OWNER_LABEL: json.dumps(procs.identity())}},
    }}
    return sess


def sdk_job_name(name: str) -> str:
    """SageMaker job names: letters, digits and hyphens, at most 63 characters."""
    return re.sub(r"[^a-zA-Z0-9-]", "-", name)[:63].strip("-") or "localsage"


def host_index(container_name: str) -> int:
    """1 for '<prefix>-algo-1-<suffix>' (the SDK's container names)."""
    m = re.search(r"algo-(\d+)-", container_name)
    return int(m.group(1)) if m else 0


def unpack(tar_path: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")


def script_estimator(script: dict, common: dict):
    """A script job through the SDK's own PyTorch estimator: it JSON-encodes the hyperparameters, adds
    sagemaker_program / sagemaker_submit_directory and (local_code) mounts the source dir at /opt/ml/code."""
    with local_aws_env():
        from sagemaker.pytorch import PyTorch

    hps = dict(script.get("hyperparameters") or {})
    if script.get("processes_per_host"):
        hps["sagemaker_mpi_num_of_processes_per_host"] = int(script["processes_per_host"])
    return PyTorch(entry_point=script["entry_point"], source_dir=script["source_dir"], hyperparameters=hps,
                   distribution=script.get("distribution") or None, debugger_hook_config=False, **common)


def host_thread_env(job, gpu: bool, cores: int) -> tuple[dict, str | None]:
    """(the containers' environment, a line saying how they share the cores, or None). Local mode's hosts
    are containers on this one machine, not machines of their own: on CPU, with several hosts, each of the
    H x P processes (P per host, as sagemaker_mpi_num_of_processes_per_host says) gets cores / (H x P)
    threads, unless the job's environment sets them."""
    env = dict(job.env or {})
    if job.instance_count <= 1 or gpu or {"OMP_NUM_THREADS", "MKL_NUM_THREADS"} & set(env):
        return env, None
    per_host = processes_per_host(job.hyperparameters, 0)
    env = {**thread_share_env(cores, job.instance_count * per_host), **env}
    each = (f"{per_host} processes on each of {job.instance_count} hosts" if per_host > 1
            else f"{job.instance_count} hosts")
    return env, f"local mode: {each} share this machine's {cores} cores: OMP_NUM_THREADS={env['OMP_NUM_THREADS']} each"


def run(job, log, stop: threading.Event) -> int:
    import docker

    with local_aws_env():  # the SDK reads its settings at import time
        from sagemaker.estimator import Estimator
    logging.getLogger("sagemaker").setLevel(logging.WARNING)  # not the compose file dump; the job log has the rest

    job_dir = Path(job.dir).resolve()
    work = job_dir / "sagemaker-local"  # the SDK's container_root and output_path
    results = work / "results"
    results.mkdir(parents=True, exist_ok=True)
    engine = docker.from_env()
    image = job.image or DEFAULT_IMAGE
    engine.images.get(image)  # a clear ImageNotFound before the SDK's docker-compose tries to pull
    done = threading.Event()

    def watch():  # stop: SIGTERM to every container of this job, kill after the grace period
        while not stop.wait(0.5):
            if done.is_set():
                return
        log(f"stopping the job's containers: SIGTERM, kill after {STOP_GRACE_SECONDS}s")
        for c in engine.containers.list(filters={"label": f"{LABEL}={job.name}"}):
            try:
                c.stop(timeout=STOP_GRACE_SECONDS)
            except docker.errors.APIError:
                pass

    threading.Thread(target=watch, daemon=True).start()
    gpu = (job.options or {}).get("gpus") is not False and gpus_available(engine)
    env, shared = host_thread_env(job, gpu, procs.cores())
    if shared:
        log(shared)
    writer = LineWriter(log, sys.stdout)
    code = 0
    try:
        with local_aws_env(), contextlib.redirect_stdout(writer):
            common = dict(
                image_uri=image,
                role=DUMMY_ROLE,
                instance_count=job.instance_count,
                instance_type="local_gpu" if gpu else "local",
                environment=env,
                output_path=f"file://{results}",
                sagemaker_session=session(work, job.name),
                disable_profiler=True,
            )
            if getattr(job, "entrypoint", None):  # SageMaker's ContainerEntrypoint/Arguments, run on every host
                common.update(container_entry_point=list(job.entrypoint),
                              container_arguments=list(job.arguments or []) or None)
            if getattr(job, "script", None):
                estimator = script_estimator(job.script, common)
            else:
                estimator = Estimator(hyperparameters=dict(job.hyperparameters), **common)
            channels = {ch: f"file://{Path(src).resolve()}" for ch, src in job.channels.items()}
            try:
                estimator.fit(channels, job_name=sdk_job_name(job.name), wait=True, logs=True)
            except RuntimeError as exc:  # docker-compose exited non-zero: a container failed or was stopped
                log(f"sagemaker local mode: {exc}")
                code = 1
    finally:
        done.set()
        writer.close_lines()
        # The job's exit code is the containers' (compose itself exits 0 or 130 after Ctrl-C):
        # the first host, in host order, that did not exit 0.
        containers = engine.containers.list(all=True, filters={"label": f"{LABEL}={job.name}"})
        codes = []
        for c in sorted(containers, key=lambda c: host_index(c.name)):
            codes.append(c.attrs["State"]["ExitCode"])
            log(f"{c.name} exited with code {codes[-1]}")
            c.remove(force=True)
        # compose stops the other hosts when the first exits (--abort-on-container-exit): 143/137 from
        # those is compose's doing, not a failure, once a host exited 0 (train.py's final barrier makes
        # every host wait for the leader's model first). Any other non-zero code is the job's.
        failures = [x for x in codes if x and x not in (137, 143)]
        if failures:
            code = failures[0]
        elif 0 not in codes:
            code = next((x for x in codes if x), code)

    # The SDK packs model/ and output/ of all hosts (leader writes the model); give them to the runner.
    for name, sub in (("model.tar.gz", "model"), ("output.tar.gz", "output")):
        if (results / name).exists():
            unpack(results / name, job_dir / sub)
    if code and not (job_dir / "output" / "failure").exists() and not stop.is_set():
        log("no output/failure was written by the containers")
    shutil.rmtree(work, ignore_errors=True)
    return code


def reap_orphan(record: dict, info: dict, engine=None) -> None:
    """The SDK's algo-N containers of the job (its compose then exits), when the localsage that ran it is gone."""
    from localsage.host.backends.docker import remove_owned

    remove_owned(record["TrainingJobName"], record["Owner"], engine)
