"""The same space, objective and budget as a SageMaker HyperparameterTuner, built around the project's
training Estimator (localsage.host.cloud.training.estimator: image, role, instance type, max_run all from
the cloud modules)."""
from __future__ import annotations

from localsage.host.cloud import (
    ecr,
    s3,
    session as cloud_session,  # `session` is the SDK session passed around below
    source,
    training,
)
from localsage.host.cloud.constants import ACCOUNT_PLACEHOLDER, DEFAULT_INSTANCE_TYPE, DEFAULT_MAX_RUN
from localsage.host.tune.settings import Tuning
from localsage.host.tune.space import TuneError

DRY_RUN_OUTPUT = "s3://localsage-dry-run/output"
DRY_RUN_DATA = "s3://localsage-dry-run/data"


def _metric_definitions(t: Tuning) -> list:
    if t.script:
        return list(t.metric_definitions)
    from localsage.core.metrics import METRIC_DEFINITIONS

    return METRIC_DEFINITIONS


def sagemaker_tuner(t: Tuning, session=None, image=None, role=None, instance_type=DEFAULT_INSTANCE_TYPE,
                    output_path=None, max_parallel=None, region=None):
    """(sagemaker.tuner.HyperparameterTuner over training.estimator() for the project's image, the script's
    source package or None). A script-mode study's package must be uploaded before the tuner starts."""
    from sagemaker.tuner import HyperparameterTuner

    script = {"entry_point": t.entry_point, "source_dir": t.source_dir,
              "metric_definitions": t.metric_definitions} if t.script else {}
    opts = training.TrainingOptions(output_path=output_path or DRY_RUN_OUTPUT, role=role, image=image,
                                    instance_type=instance_type, region=region,
                                    debug_tensors=str(t.fixed.get("debug", "false")).lower() == "true",
                                    max_run=t.max_run or DEFAULT_MAX_RUN, **script)
    base = t.study[:20].rstrip("-_").replace("_", "-") or "tune"
    package = None
    if t.script:
        hps, package = script_hyperparameters(t, opts.output_path, base, region or session.boto_region_name)
    else:
        from localsage.core.hyperparameters import to_strings

        hps = to_strings(t.fixed)
    estimator = training.estimator(opts, base, hps, 1, session, image, role)
    # one checkpoint URI shared by every training job of the tuning job would make trials resume each other
    estimator.checkpoint_s3_uri = None
    strategy = {"random": "Random", "grid": "Grid"}.get(t.sampler, "Bayesian")
    tuner = HyperparameterTuner(
        estimator, objective_metric_name=t.objective,
        hyperparameter_ranges={n: d.sagemaker() for n, d in t.space.items()},
        metric_definitions=_metric_definitions(t),
        objective_type="Minimize" if t.direction == "minimize" else "Maximize",
        strategy=strategy, max_jobs=None if strategy == "Grid" else t.trials,
        max_parallel_jobs=max_parallel or t.parallel, base_tuning_job_name=base,
        early_stopping_type="Off" if t.pruner == "none" else "Auto")
    return tuner, package


def script_hyperparameters(t: Tuning, output_path: str, base: str, region: str) -> tuple:
    """(static hyperparameters, SourcePackage) of a script-mode study: the fixed values JSON-encoded under
    sagemaker_program / sagemaker_submit_directory (the source dir as sourcedir.tar.gz), as the SDK's
    framework estimators send them; built by localsage.host.cloud.source's script-mode functions."""
    hps, package = source.source_package(t.source_dir, t.entry_point, source.source_prefix(output_path, base),
                                         region=region)
    return {**source.encode_hyperparameters(t.fixed), **hps}, package


def dry_run_request(t: Tuning, image=None, role=None, s3_data=None, output_path=None,
                    instance_type=DEFAULT_INSTANCE_TYPE, region=None) -> dict:
    """The CreateHyperParameterTuningJob request the SDK would send, built through session.dry_run's
    session (placeholder credentials, telemetry off, no EC2-metadata lookup; nothing leaves the machine)."""
    return dry_run_calls(t, image, role, s3_data, output_path, instance_type, region)[-1]["request"]


def dry_run_calls(t: Tuning, image=None, role=None, s3_data=None, output_path=None,
                  instance_type=DEFAULT_INSTANCE_TYPE, region=None) -> list:
    """What starting the study sends: the source upload of script mode (not sent), then the tuning request
    as {"operation", "request"}."""
    with cloud_session.dry_run(region) as (session, calls):
        tuner, package = sagemaker_tuner(
            t, session=session, role=cloud_session.role_arn(role), instance_type=instance_type, region=region,
            image=image or ecr.ecr_image_uri(ACCOUNT_PLACEHOLDER, session.boto_region_name),
            output_path=output_path or (s3.default_output_path(s3_data) if s3_data else DRY_RUN_OUTPUT))
        tuner.fit({"training": s3_data or DRY_RUN_DATA}, wait=False)
    tuning = [c for c in calls if c["operation"] == "CreateHyperParameterTuningJob"]
    return ([package.to_dict()] if package else []) + tuning


def validate_request(request: dict):
    """botocore's own parameter validation against the SageMaker service model (offline)."""
    import botocore.session
    from botocore.validate import validate_parameters

    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(request, model.operation_model("CreateHyperParameterTuningJob").input_shape)


def start_sagemaker(t: Tuning, s3_data: str, role=None, region=None, instance_type=DEFAULT_INSTANCE_TYPE,
                    output_path=None) -> str:
    """Start the study as a SageMaker HPO job (no wait); returns the tuning job's name."""
    if not (t.image and s3_data):
        raise TuneError("--backend sagemaker needs --image and --s3-data (or --dry-run)")
    try:
        boto_session = cloud_session.aws_session(region)
        role = cloud_session.role_arn(role, boto_session)
        output_path = output_path or s3.default_output_path(s3_data)
    except cloud_session.CloudError as exc:
        raise TuneError(str(exc)) from None
    tuner, package = sagemaker_tuner(t, session=cloud_session.sagemaker_session(boto_session), image=t.image, role=role,
                                     instance_type=instance_type, output_path=output_path,
                                     region=boto_session.region_name)
    if package:
        package.upload(boto_session.client("s3"))
    tuner.fit({"training": s3_data}, wait=False)
    return tuner.latest_tuning_job.name
