"""SDK v2 client (sagemaker 2.x) in cloud mode, as a notebook writes it: the data uploaded with
`Session.upload_data`, then `HyperparameterTuner(PyTorch(entry_point=..., image_uri=...), ...).fit()` and
`best_training_job()`; with --deploy also the best job's model deployed (PyTorchModel, served with the source dir's
inference.py) and `predict` on a JPEG. Nothing of localsage is imported: the environment lines `localsage api`
prints point it at the local API. Prints one JSON line after the tuning, {"tuning_job", "status", "best",
"best_lr", "counters", "jobs", "seconds"}, and with --deploy a second one, {"prediction", "seconds"}.

    python api_v2_tuner.py --image localsage:latest --data DIR --source-dir D --entry E [--hp key=value ...]
        [--jobs N] [--parallel P] [--deploy JPEG]
"""
import argparse
import json
import time

import sagemaker
from sagemaker.pytorch import PyTorch
from sagemaker.tuner import ContinuousParameter, HyperparameterTuner

VALID_LOSS = r"Validation set: Average loss: ([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?|nan|inf)"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--source-dir", required=True)
    p.add_argument("--entry", required=True)
    p.add_argument("--hp", action="append", default=[], help="key=value")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--instance-type", default="ml.m5.large")
    p.add_argument("--deploy", help="a JPEG to send to the best job's endpoint")
    args = p.parse_args()

    session = sagemaker.Session()
    start = time.monotonic()
    inputs = session.upload_data(path=args.data, key_prefix="localsage-tests/v2-tuner-data")
    estimator = PyTorch(
        entry_point=args.entry,
        source_dir=args.source_dir,
        image_uri=args.image,
        instance_count=1,
        instance_type=args.instance_type,
        hyperparameters=dict(kv.split("=", 1) for kv in args.hp),
        sagemaker_session=session,
    )
    tuner = HyperparameterTuner(
        estimator,
        objective_metric_name="valid_loss",
        objective_type="Minimize",
        hyperparameter_ranges={"lr": ContinuousParameter(0.001, 0.01, scaling_type="Logarithmic")},
        metric_definitions=[{"Name": "valid_loss", "Regex": VALID_LOSS}],
        max_jobs=args.jobs,
        max_parallel_jobs=args.parallel,
        early_stopping_type="Auto",
        base_tuning_job_name="v2-tuner",
    )
    tuner.fit({"training": inputs})
    best = tuner.best_training_job()
    name = tuner.latest_tuning_job.name
    described = session.sagemaker_client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    frame = tuner.analytics().dataframe()  # ListTrainingJobsForHyperParameterTuningJob, as a table
    out = {"tuning_job": name, "status": described["HyperParameterTuningJobStatus"], "best": best,
           "best_lr": described["BestTrainingJob"]["TunedHyperParameters"]["lr"],
           "counters": described["TrainingJobStatusCounters"],
           "jobs": sorted(frame["TrainingJobName"].tolist()), "seconds": round(time.monotonic() - start, 2)}
    print(json.dumps(out, default=str), flush=True)
    if args.deploy:
        from sagemaker.deserializers import JSONDeserializer
        from sagemaker.pytorch import PyTorchModel
        from sagemaker.serializers import IdentitySerializer

        # tuner.deploy() attaches the best job's estimator, and v2's attach takes framework_version from AWS's own
        # image names (None for any custom image, in the cloud too): the model is made from the best job instead
        job = session.sagemaker_client.describe_training_job(TrainingJobName=best)
        model = PyTorchModel(model_data=job["ModelArtifacts"]["S3ModelArtifacts"], image_uri=args.image,
                             framework_version="2.1", py_version="py310", entry_point="inference.py",
                             source_dir=args.source_dir, sagemaker_session=session)
        predictor = model.deploy(initial_instance_count=1, instance_type=args.instance_type,
                                 serializer=IdentitySerializer("image/jpeg"), deserializer=JSONDeserializer())
        try:
            with open(args.deploy, "rb") as f:
                prediction = predictor.predict(f.read())
        finally:
            predictor.delete_endpoint()
        print()  # the SDK's deploy progress ("-----!") ends without a newline
        print(json.dumps({"prediction": prediction, "seconds": round(time.monotonic() - start, 2)}), flush=True)


if __name__ == "__main__":
    main()
