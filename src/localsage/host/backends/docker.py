"""Run a job's `train` (or its ContainerEntrypoint) in a container of job.image, through the docker Python SDK.

The job folder's parts are bind-mounted where SageMaker puts them (/opt/ml/input/config, model,
output, checkpoints) and each channel's source folder at /opt/ml/input/data/<channel>, read-only.
Only the JSON files describe the job (no SM_* variables), as for a BYOC training container.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
from pathlib import Path

from localsage.core import contract, procs
from localsage.host.backends import STOP_GRACE_SECONDS, record_info

DEFAULT_IMAGE = os.environ.get("LOCALSAGE_IMAGE", "localsage:latest")
SHM_SIZE = os.environ.get("LOCALSAGE_SHM_SIZE", "2g")  # DataLoader workers share batches through /dev/shm
OPT_ML = "/opt/ml"
LABEL = "localsage.job"
OWNER_LABEL = "localsage.owner"  # JSON procs.identity() of the localsage process that started the container


ECR_URI = re.compile(r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?/(.+)")


def local_image(image: str, engine=None) -> str:
    """The local image a reference names — the tag itself, or for an ECR URI (as `make push` tags it) its
    repository:tag — never pulled; LookupError saying what to do when there is none."""
    import docker

    candidates = [image]
    ecr = ECR_URI.fullmatch(image)
    if ecr:
        repo = ecr.group(1)
        candidates.append(repo if ":" in repo.rpartition("/")[2] or "@" in repo else f"{repo}:latest")
    try:
        engine = engine or client()
        for candidate in candidates:
            try:
                engine.images.get(candidate)
                return candidate
            except docker.errors.DockerException:
                continue
    except docker.errors.DockerException as exc:
        raise LookupError(f"cannot reach the docker engine ({exc})") from None
    raise LookupError(f"image {image[:200]!r} does not exist on this machine, and localsage never pulls an image "
                      "a request names: build or tag it here (make image; make push tags the ECR URI)")


def client():
    import docker

    return docker.from_env()


def gpus_available(engine=None) -> bool:
    """True when the host has NVIDIA GPUs and the engine can hand them to containers."""
    if os.environ.get("LOCALSAGE_GPUS", "").lower() in ("0", "no", "false"):
        return False
    if not (shutil.which("nvidia-smi") or Path("/dev/nvidiactl").exists()):
        return False
    if shutil.which("nvidia-container-runtime-hook") or shutil.which("nvidia-ctk"):
        return True
    try:
        return "nvidia" in (engine or client()).info().get("Runtimes", {})
    except Exception:
        return False


def container_name(job_name: str) -> str:
    """Unique per run: the same job name in two jobs folders (or two runs) never shares a container."""
    return f"localsage-{re.sub(r'[^a-zA-Z0-9_.-]', '-', job_name)}-{secrets.token_hex(4)}"


def remove(name: str, engine=None) -> bool:
    """Stop and remove a container by name; False when there was none."""
    import docker

    try:
        (engine or client()).containers.get(name).remove(force=True)
        return True
    except docker.errors.NotFound:
        return False


def remove_labelled(label_filter: str, started_by_matches, engine=None) -> list:
    """Remove the containers matching a label filter whose owner label (JSON procs.identity()) passes
    `started_by_matches`. Names removed; [] without the SDK or an engine."""
    try:
        import docker
    except ImportError:  # no SDK: the backend itself says so when it runs
        return []
    try:
        engine = engine or client()
        containers = engine.containers.list(all=True, filters={"label": label_filter})
    except docker.errors.DockerException:
        return []
    removed = []
    for container in containers:
        try:
            started_by = json.loads(container.labels.get(OWNER_LABEL, "{}"))
        except ValueError:
            continue
        if started_by_matches(started_by):
            try:
                container.remove(force=True)
                removed.append(container.name)
            except docker.errors.APIError:
                pass
    return removed


def remove_owned(job_name: str, owner: dict, engine=None) -> list:
    """Remove the containers of job `job_name` that `owner` (a procs.identity()) started: the SDK local
    mode's algo-N hosts carry the same labels as ours."""
    return remove_labelled(f"{LABEL}={job_name}", lambda started_by: started_by == owner, engine)


def reap_orphans(engine=None) -> list:
    """Remove every localsage container whose owner process (recorded in its labels) is dead."""
    return remove_labelled(OWNER_LABEL, lambda started_by: procs.alive(started_by) is False, engine)


def mounts(job) -> dict:
    """host path -> {"bind": container path, "mode": ...} for docker-py's `volumes`."""
    job_dir = Path(job.dir).resolve()
    volumes = {}
    for sub, mode in (("input/config", "ro"), ("model", "rw"), ("output", "rw"), ("checkpoints", "rw")):
        host = job_dir / sub
        host.mkdir(parents=True, exist_ok=True)
        volumes[str(host)] = {"bind": f"{OPT_ML}/{sub}", "mode": mode}
    code = contract.code_dir(job_dir)  # a script job's copy of its source dir
    if getattr(job, "script", None) and code.is_dir():
        volumes[str(code)] = {"bind": contract.container_path(contract.CODE_SUBDIR), "mode": "rw"}
    # a job's own copy of its channels (localsage api's staged S3 inputs) may be written to, as on SageMaker
    channel_mode = "rw" if (getattr(job, "options", None) or {}).get("channels_writable") else "ro"
    for channel, src in job.channels.items():
        volumes[str(Path(src).resolve())] = {"bind": f"{OPT_ML}/input/data/{channel}", "mode": channel_mode}
    return volumes


def command(job) -> dict:
    """What the container runs: the image's `train`, or SageMaker's ContainerEntrypoint/ContainerArguments
    (SDK v3 script jobs: /bin/bash -c '... sm_train.sh') instead of the image's entrypoint and command."""
    if getattr(job, "entrypoint", None):
        # SDK v3's driver writes /opt/ml/input/sm_training.env: there, /opt/ml/input is a writable tmpfs (the
        # image's belongs to root; the job runs as the caller), the config and channels mounted inside it
        return {"entrypoint": list(job.entrypoint), "command": list(job.arguments or []),
                "tmpfs": {f"{OPT_ML}/input": "mode=1777"}}
    if getattr(job, "arguments", None):
        return {"command": list(job.arguments)}
    return {"command": ["train"]}


def wants_gpus(job, engine) -> bool:
    """The job's GPUs: every one the engine can hand over, unless the job's options say `gpus: False`
    (localsage api: an instance type without GPUs)."""
    if (getattr(job, "options", None) or {}).get("gpus") is False:
        return False
    return gpus_available(engine)


def run(job, log, stop: threading.Event) -> int:
    import docker

    engine = client()
    image = job.image or DEFAULT_IMAGE
    engine.images.get(image)  # ImageNotFound -> the runner records "could not run the job: ... (run `make image`)"
    name = container_name(job.name)

    kwargs = command(job)
    if wants_gpus(job, engine):
        kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if os.getuid() != 0:  # files in the job folder stay the caller's
        kwargs["user"] = f"{os.getuid()}:{os.getgid()}"
    env = {"PYTHONUNBUFFERED": "1", "HOME": "/tmp"} if os.getuid() != 0 else {"PYTHONUNBUFFERED": "1"}
    env.update(job.env or {})

    container = engine.containers.create(
        image, name=name, hostname="algo-1", environment=env, volumes=mounts(job),
        shm_size=SHM_SIZE, labels={LABEL: job.name, OWNER_LABEL: json.dumps(procs.identity())}, detach=True,
        init=True,  # docker-init as PID 1 relays SIGTERM; a bare PID 1 ignores it until train installs its handler
        **kwargs)
    record_info(job.dir, Container=name)
    done = threading.Event()

    def watch():  # stop: SIGTERM now, SIGKILL after the grace period (docker stop semantics)
        while not stop.wait(0.5):
            if done.is_set():
                return
        if not done.is_set():
            log(f"stopping container {name}: SIGTERM, kill after {STOP_GRACE_SECONDS}s")
            try:
                container.stop(timeout=STOP_GRACE_SECONDS)
            except docker.errors.APIError:
                pass

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        container.start()
        watcher.start()
        pending = b""
        for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                log(line.decode("utf-8", "replace").rstrip("\r"))
        if pending:
            log(pending.decode("utf-8", "replace").rstrip("\r"))
        return int(container.wait()["StatusCode"])
    finally:
        done.set()
        try:
            container.remove(force=True)  # also kills it if we got here by an exception (Ctrl-C)
        except docker.errors.NotFound:
            pass


def reap_orphan(record: dict, info: dict, engine=None) -> None:
    """The job's container, when the localsage that ran it is gone."""
    if info.get("Container"):
        remove(info["Container"], engine)
