"""MLflow's model registry for localsage models: `localsage register JOB` makes the job's model (the TorchServe
model folder its run logged as the artifact `model`) a version of a registered model, and
`localsage serve models:/NAME/VERSION` (or `models:/NAME@alias`) serves that folder again.

A built-in model fetched back gets this installation's handler files (export.make_torchserve_dir), not the ones
stored with it: the registry hands back weights and settings, the code that reads them is ours. A script model
(code/inference.py) is served with its own code, as `localsage serve` does for a script job's folder.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from localsage.host import records, tracking

MODEL_ARTIFACT = "model"
SCHEME = "models:/"


def run_of(job_dir: Path) -> tuple[str, str]:
    """(tracking URI, run id) of a job's MLflow run."""
    stored = tracking.stored_run(job_dir)
    if stored is None:
        raise ValueError(f"job {job_dir.name} has no MLflow run ({tracking.RUN_FILE} missing): it ran with tracking "
                         "off or its tracking store could not be reached")
    return stored


def register(job, jobs_dir=None, name: str | None = None) -> tuple[str, str, str]:
    """Register a Completed job's model; returns (registered model name, version, tracking URI)."""
    job_dir = records.locate(job, jobs_dir)
    record = records.read_record(job_dir)
    if record.get("TrainingJobStatus") != "Completed":
        raise ValueError(f"job {job_dir.name} is {record.get('TrainingJobStatus')}: only a Completed job has a model")
    uri, run_id = run_of(job_dir)
    mlflow = tracking.client(uri)
    if not mlflow.list_artifacts(run_id, MODEL_ARTIFACT):
        raise ValueError(f"job {job_dir.name}'s run {run_id} holds no '{MODEL_ARTIFACT}' artifact (its upload did "
                         "not finish?)")
    name = name or job_dir.name
    from mlflow.exceptions import MlflowException

    try:
        mlflow.create_registered_model(name, description="localsage model (a TorchServe model folder)")
    except MlflowException as exc:
        if "ALREADY_EXISTS" not in str(getattr(exc, "error_code", "")) and "already exists" not in str(exc):
            raise
    source = f"{mlflow.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
    version = mlflow.create_model_version(name, source, run_id=run_id, tags={
        tracking.TAG + "job": job_dir.name, tracking.TAG + "arch": record.get("HyperParameters", {}).get("arch", "")})
    return name, str(version.version), uri


def is_model_uri(text) -> bool:
    return str(text).startswith(SCHEME)


def fetch(model_uri: str, jobs_dir=None) -> tuple[Path, Path]:
    """Download a registered model's folder into a new private temp folder: (the model folder, the temp folder
    the caller removes)."""
    uri = tracking.tracking_uri(jobs_dir if jobs_dir is not None else records.jobs_root())
    if uri is None:
        raise ValueError(f"{model_uri}: tracking is off ({tracking.OFF_ENV}=off), so there is no registry to read")
    tracking.client(uri)  # bounded requests, quiet logs
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    dest = Path(tempfile.mkdtemp(prefix="localsage-registry-"))
    try:
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest)))
        if not (path / "code").is_dir():  # a built-in model: this installation's handler, not the stored one
            from localsage.container import export

            export.make_torchserve_dir(path, "model")
        return path, dest
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
