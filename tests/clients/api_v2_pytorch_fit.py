"""SDK v2 client (sagemaker 2.x) in cloud mode, as a notebook writes it: the data uploaded with
`Session.upload_data`, then `PyTorch(entry_point=..., image_uri=...).fit(logs=True)` with a debugger rule.
Nothing of localsage is imported: the environment lines `localsage api` prints point it at the local API.
Prints one JSON line: {"job", "model_data", "status", "rules": [[name, status], ...], "seconds"}.

    python api_v2_pytorch_fit.py --image localsage:latest --data DIR --source-dir D --entry E [--hp key=value ...]
        [--instance-type ml.m5.large] [--no-rules] [--loss-save-interval N] [--rule-param key=value ...]
"""
import argparse
import json
import time

import sagemaker
from sagemaker.debugger import CollectionConfig, Rule, rule_configs
from sagemaker.pytorch import PyTorch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--source-dir", required=True)
    p.add_argument("--entry", required=True)
    p.add_argument("--hp", action="append", default=[], help="key=value")
    p.add_argument("--instance-type", default="ml.m5.large")
    p.add_argument("--no-rules", action="store_true")
    p.add_argument("--loss-save-interval", help="save the losses every N steps (the SDK's default is 500)")
    p.add_argument("--rule-param", action="append", default=[], help="key=value for LossNotDecreasing")
    args = p.parse_args()

    # the rule's own collection: its default (every 500 steps) would also go into the hook's config and win
    saved = [CollectionConfig(name="losses", parameters={"save_interval": args.loss_save_interval})] \
        if args.loss_save_interval else None
    session = sagemaker.Session()
    start = time.monotonic()
    inputs = session.upload_data(path=args.data, key_prefix="localsage-tests/v2-data")
    estimator = PyTorch(
        entry_point=args.entry,
        source_dir=args.source_dir,
        image_uri=args.image,
        instance_count=1,
        instance_type=args.instance_type,
        hyperparameters=dict(kv.split("=", 1) for kv in args.hp),
        rules=None if args.no_rules else [Rule.sagemaker(
            rule_configs.loss_not_decreasing(), rule_parameters=dict(kv.split("=", 1) for kv in args.rule_param),
            collections_to_save=saved)],
        sagemaker_session=session,
    )
    estimator.fit({"training": inputs}, logs=True)
    job = estimator.latest_training_job
    described = job.describe()
    rules = [[r["RuleConfigurationName"], r["RuleEvaluationStatus"]] for r in job.rule_job_summary()]
    print(json.dumps({"job": job.name, "model_data": estimator.model_data, "status": described["TrainingJobStatus"],
                      "rules": rules, "seconds": round(time.monotonic() - start, 2)}), flush=True)


if __name__ == "__main__":
    main()
