"""SDK v2 client (sagemaker 2.x) in cloud mode against `localsage api`: batch transform of a folder of JPEGs, as a
notebook writes it. The folder and the model.tar.gz go up with `Session.upload_data`, then
`PyTorchModel(...).transformer(...)` and `Transformer.transform(s3_prefix, content_type="image/jpeg")`, which
waits for the job and tails its CloudWatch log. Nothing of localsage is imported. Prints one JSON line:
{"job": ..., "status": ..., "inputs": [keys], "outputs": {key: answer}, "seconds": ...}.

    python api_v2_transform.py --image IMAGE --model-tar model.tar.gz --images DIR [--name NAME]
        [--strategy SingleRecord|MultiRecord] [--concurrency N]
"""
import argparse
import json
import time

import sagemaker
from sagemaker.pytorch import PyTorchModel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--model-tar", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--name", default=f"v2-transform-{int(time.time())}")
    p.add_argument("--strategy", default="SingleRecord")
    p.add_argument("--concurrency", type=int, default=2)
    args = p.parse_args()

    session = sagemaker.Session()
    bucket = session.default_bucket()
    start = time.monotonic()
    inputs = session.upload_data(path=args.images, key_prefix=f"transform/{args.name}/input")
    model_data = session.upload_data(path=args.model_tar, key_prefix=f"transform/{args.name}/model")
    model = PyTorchModel(model_data=model_data, image_uri=args.image, framework_version="2.1", py_version="py310",
                         sagemaker_session=session, name=f"{args.name}-model")
    output = f"s3://{bucket}/transform/{args.name}/output"
    transformer = model.transformer(instance_count=1, instance_type="ml.m5.large", strategy=args.strategy,
                                    output_path=output, accept="application/json",
                                    max_concurrent_transforms=args.concurrency)
    transformer.transform(inputs, content_type="image/jpeg", split_type=None, job_name=args.name, wait=True,
                          logs=True)
    described = session.sagemaker_client.describe_transform_job(TransformJobName=args.name)
    s3 = session.boto_session.client("s3")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"transform/{args.name}/")["Contents"]
    keys = sorted(o["Key"] for o in listed)
    outputs = {k: json.loads(s3.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in keys
               if k.startswith(f"transform/{args.name}/output/")}
    print(json.dumps({"job": args.name, "status": described["TransformJobStatus"],
                      "inputs": [k for k in keys if k.startswith(f"transform/{args.name}/input/")],
                      "outputs": outputs, "seconds": round(time.monotonic() - start, 2)}), flush=True)
    session.delete_model(model.name)


if __name__ == "__main__":
    main()
