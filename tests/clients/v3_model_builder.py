"""SDK v3 client (the sagemaker 3.x venv): ModelBuilder LOCAL_CONTAINER + TorchServe over localsage's image,
deployed and invoked with one JPEG. Prints one JSON line: {"status": ..., "body": <the endpoint's answer>}.

    python v3_model_builder.py --image localsage:latest --model-path DIR --jpeg FILE [--env KEY=VALUE ...]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "sdk-v3"))
import localsage_offline  # noqa: E402, F401 - imported first for its effect: the image exists only locally, no pull
from jpeg_payloads import jpeg_schema  # noqa: E402 - tests/clients/, beside this program
from sagemaker.serve import ModelBuilder, ModelServer  # noqa: E402 - after localsage_offline
from sagemaker.serve.mode.function_pointers import Mode  # noqa: E402 - after localsage_offline


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--model-path", required=True)
    p.add_argument("--jpeg", required=True)
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the model's container")
    args = p.parse_args()

    jpeg = open(args.jpeg, "rb").read()
    builder = ModelBuilder(
        mode=Mode.LOCAL_CONTAINER,
        image_uri=args.image,
        model_server=ModelServer.TORCHSERVE,
        model_path=args.model_path,
        s3_model_data_url="s3://localsage-offline/unused",  # build() would ask STS for a default bucket
        schema_builder=jpeg_schema(jpeg),
        env_vars=dict(kv.split("=", 1) for kv in args.env),
        role_arn="arn:aws:iam::111111111111:role/localsage-dummy",
    )
    builder.build()
    endpoint = builder.deploy()  # a LocalEndpoint: the container answers on 8080
    try:
        answer = json.loads(endpoint.invoke(body=jpeg).body.read())
        print(json.dumps({"status": "ok", "body": answer}), flush=True)
    finally:
        endpoint.delete()  # the endpoint record; the container itself is the mode's server:
        builder.modes[str(Mode.LOCAL_CONTAINER)].destroy_server()


if __name__ == "__main__":
    main()
