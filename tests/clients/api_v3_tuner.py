"""SDK v3 client (sagemaker 3.x) in its default mode, as a notebook writes it: the data uploaded with
`Session.upload_data`, then `HyperparameterTuner(model_trainer=ModelTrainer(source_code=...), ...).tune()` over a
user's script, optionally warm-started from an earlier tuning job. Nothing of localsage is imported: the
environment lines `localsage api` prints point it at the local API. Prints one JSON line: {"tuning_job",
"status", "best", "counters", "objective_counters", "jobs": [{"name", "status", "lr", "value"}], "seconds"}.

    python api_v3_tuner.py --image localsage:latest --data DIR --source-dir D --entry E [--hp key=value ...]
        [--jobs N] [--parallel P] [--lr MIN,MAX | --lr-values A,B,...] [--strategy Bayesian] [--early-stopping Auto]
        [--warm-start-from NAME] [--seed N] [--name NAME]
"""
import argparse
import json
import time

from sagemaker.core.helper.session_helper import Session
from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter
from sagemaker.core.shapes import HyperParameterTuningJobWarmStartConfig, ParentHyperParameterTuningJob
from sagemaker.core.training.configs import InputData
from sagemaker.train import ModelTrainer
from sagemaker.train.configs import Compute, SourceCode
from sagemaker.train.tuner import HyperparameterTuner

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
    p.add_argument("--lr", default="0.001,0.01", help="MIN,MAX: a continuous range, logarithmic")
    p.add_argument("--lr-values", help="A,B,...: a categorical range instead")
    p.add_argument("--strategy", default="Bayesian")
    p.add_argument("--early-stopping", default="Auto")
    p.add_argument("--warm-start-from")
    p.add_argument("--seed", type=int)
    p.add_argument("--name")
    p.add_argument("--instance-type", default="ml.m5.large")
    args = p.parse_args()

    session = Session()
    start = time.monotonic()
    data = session.upload_data(path=args.data, key_prefix="localsage-tests/v3-tuner-data")
    trainer = ModelTrainer(
        training_image=args.image,
        source_code=SourceCode(source_dir=args.source_dir, entry_script=args.entry),
        compute=Compute(instance_type=args.instance_type, instance_count=1),
        hyperparameters=dict(kv.split("=", 1) for kv in args.hp),
        base_job_name="v3-tuner",
    )
    if args.lr_values:
        lr = CategoricalParameter(args.lr_values.split(","))
    else:
        low, high = map(float, args.lr.split(","))
        lr = ContinuousParameter(low, high, scaling_type="Logarithmic")
    warm = None
    if args.warm_start_from:
        warm = HyperParameterTuningJobWarmStartConfig(
            parent_hyper_parameter_tuning_jobs=[ParentHyperParameterTuningJob(
                hyper_parameter_tuning_job_name=args.warm_start_from)],
            warm_start_type="IdenticalDataAndAlgorithm")
    tuner = HyperparameterTuner(
        model_trainer=trainer,
        objective_metric_name="valid_loss",
        objective_type="Minimize",
        hyperparameter_ranges={"lr": lr},
        metric_definitions=[{"Name": "valid_loss", "Regex": VALID_LOSS}],
        strategy=args.strategy,
        max_jobs=None if args.strategy == "Grid" else args.jobs,
        max_parallel_jobs=args.parallel,
        early_stopping_type=args.early_stopping,
        warm_start_config=warm,
        random_seed=args.seed,
        base_tuning_job_name="v3-tuner",
    )
    tuner.tune(inputs=[InputData(channel_name="training", data_source=data)], job_name=args.name, wait=True)
    name = tuner.describe().hyper_parameter_tuning_job_name  # sagemaker-core's pydantic parse of the answer
    best = tuner.best_training_job()
    client = session.sagemaker_client
    described = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    jobs = client.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name)["TrainingJobSummaries"]
    print(json.dumps({
        "tuning_job": name,
        "status": described["HyperParameterTuningJobStatus"],
        "best": best,
        "counters": described["TrainingJobStatusCounters"],
        "objective_counters": described["ObjectiveStatusCounters"],
        "jobs": [{"name": j["TrainingJobName"], "status": j["TrainingJobStatus"],
                  "lr": j["TunedHyperParameters"]["lr"],
                  "value": (j.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")} for j in jobs],
        "seconds": round(time.monotonic() - start, 2)}), flush=True)


if __name__ == "__main__":
    main()
