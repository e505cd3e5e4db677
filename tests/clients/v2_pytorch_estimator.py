"""SDK v2 client (sagemaker 2.x): sagemaker.pytorch.PyTorch in local mode over localsage's image, as a user writes
it; nothing of localsage is imported. The caller sets the offline environment (dummy credentials, region, AWS config
files at /dev/null, SAGEMAKER_USER_CONFIG_OVERRIDE with telemetry off). Prints one JSON line:
{"root": ..., "seconds": ...}; the model comes back as ROOT/out/**/model.tar.gz.

    python v2_pytorch_estimator.py --image localsage:latest --data DIR --root DIR --source-dir D --entry E
        [--hp key=value ...]
"""
import argparse
import json
import os
import time

import boto3
from sagemaker.local import LocalSession
from sagemaker.pytorch import PyTorch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--root", required=True, help="the local session's container_root; the model goes to ROOT/out")
    p.add_argument("--source-dir", required=True)
    p.add_argument("--entry", required=True)
    p.add_argument("--hp", action="append", default=[], help="key=value")
    args = p.parse_args()

    root = os.path.abspath(args.root)
    os.makedirs(root, exist_ok=True)
    session = LocalSession(boto_session=boto3.Session(region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1")))
    session.config = {"local": {"local_code": True, "container_root": root}}
    estimator = PyTorch(
        entry_point=args.entry,
        source_dir=args.source_dir,
        image_uri=args.image,
        role="arn:aws:iam::111111111111:role/localsage-dummy",
        instance_count=1,
        instance_type="local",
        hyperparameters=dict(kv.split("=", 1) for kv in args.hp),
        output_path=f"file://{root}/out",
        sagemaker_session=session,
    )
    start = time.monotonic()
    estimator.fit({"training": f"file://{os.path.abspath(args.data)}"})
    print(json.dumps({"root": root, "seconds": round(time.monotonic() - start, 2)}), flush=True)


if __name__ == "__main__":
    main()
