"""SDK v3 client (sagemaker 3.x) in its default mode (SAGEMAKER_TRAINING_JOB), as a notebook writes it:
`ModelTrainer(...).train()` with local data (the SDK uploads it), with or without a user's source code.
Nothing of localsage is imported: the environment lines `localsage api` prints point it at the local API.
Prints one JSON line: {"job", "status", "model_data", "metrics", "seconds"}.

    python api_v3_model_trainer.py --image localsage:latest --data DIR [--source-dir D --entry E]
        [--hp key=value ...] [--instance-type ml.m5.large]
"""
import argparse
import json
import time

from sagemaker.train import ModelTrainer
from sagemaker.train.configs import Compute, InputData, SourceCode


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--source-dir")
    p.add_argument("--entry")
    p.add_argument("--hp", action="append", default=[], help="key=value")
    p.add_argument("--instance-type", default="ml.m5.large")
    args = p.parse_args()

    extra = {}
    if args.source_dir:
        extra["source_code"] = SourceCode(source_dir=args.source_dir, entry_script=args.entry)
    trainer = ModelTrainer(
        training_image=args.image,
        compute=Compute(instance_type=args.instance_type, instance_count=1),
        hyperparameters=dict(kv.split("=", 1) for kv in args.hp),
        input_data_config=[InputData(channel_name="training", data_source=args.data)],
        base_job_name="v3-api",
        **extra,
    )
    start = time.monotonic()
    trainer.train(wait=True, logs=True)
    job = trainer._latest_training_job
    job.refresh()
    metrics = {m.metric_name: m.value for m in (job.final_metric_data_list or [])}
    print(json.dumps({"job": job.training_job_name, "status": job.training_job_status,
                      "model_data": job.model_artifacts.s3_model_artifacts, "metrics": metrics,
                      "seconds": round(time.monotonic() - start, 2)}), flush=True)


if __name__ == "__main__":
    main()
