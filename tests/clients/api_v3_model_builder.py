"""SDK v3 client against `localsage api` (the SageMaker API on loopback), unchanged cloud code: ModelBuilder in
SAGEMAKER_ENDPOINT mode deploys a model.tar.gz from S3 (uploaded first with boto3: with a local model_path and an
image_uri the SDK uploads nothing) and invokes the endpoint with one JPEG. The caller sets only the lines
`localsage api` prints (AWS_ENDPOINT_URL, dummy credentials, region, SAGEMAKER_USER_CONFIG_OVERRIDE). Prints one
JSON line: {"status": "ok", "endpoint": ..., "seconds": {"deploy": ..., "invoke": ...}, "body": <the answer>}.

    python api_v3_model_builder.py --image IMAGE --model-tar model.tar.gz --jpeg FILE [--name NAME] [--role ARN]

--role: ModelBuilder takes its serving role from the caller identity unless given one (SDK 3.27 reads no config
default for serving); `localsage api` answers GetCallerIdentity as the local role's session, so none is needed.
"""
import argparse
import json
import time

import boto3
from jpeg_payloads import jpeg_schema  # tests/clients/, beside this program
from sagemaker.serve import ModelBuilder, ModelServer
from sagemaker.serve.mode.function_pointers import Mode

BUCKET = "sagemaker-us-east-1-123456789012"  # the SDK defaults file names it too


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--model-tar", required=True)
    p.add_argument("--jpeg", required=True)
    p.add_argument("--name", default=f"v3-builder-{int(time.time())}")
    p.add_argument("--role")
    args = p.parse_args()

    key = f"models/{args.name}/model.tar.gz"
    boto3.client("s3").upload_file(args.model_tar, BUCKET, key)
    jpeg = open(args.jpeg, "rb").read()
    builder = ModelBuilder(
        mode=Mode.SAGEMAKER_ENDPOINT,
        image_uri=args.image,
        model_server=ModelServer.TORCHSERVE,
        model_path=f"s3://{BUCKET}/{key}",
        role_arn=args.role,
        schema_builder=jpeg_schema(jpeg),
    )
    start = time.monotonic()
    builder.build(model_name=args.name)
    endpoint = builder.deploy(endpoint_name=args.name, instance_type="ml.m5.large", initial_instance_count=1)
    deployed = time.monotonic()
    try:
        answer = endpoint.invoke(body=jpeg, content_type="image/jpeg", accept="application/json")
        body = json.loads(answer.body.read())
        invoked = time.monotonic()
        print(json.dumps({"status": "ok", "endpoint": args.name, "body": body,
                          "seconds": {"deploy": round(deployed - start, 2), "invoke": round(invoked - deployed, 3)}}),
              flush=True)
    finally:
        endpoint.delete()


if __name__ == "__main__":
    main()
