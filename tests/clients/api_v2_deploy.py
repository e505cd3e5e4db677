"""SDK v2 client (sagemaker 2.x) in cloud mode against `localsage api`, as a notebook writes it: the model.tar.gz
uploaded with `Session.upload_data`, then `PyTorchModel(model_data=s3://..., image_uri=..., [entry_point=...])`
`.deploy()` for each endpoint asked for (only the last deploy waits, then boto3's waiter checks the others), and
`predict` on every endpoint at once, a few times each. Nothing of localsage is imported: the environment lines
`localsage api` prints point it at the local API and name the role and bucket. Prints one JSON line:
{"endpoints": {name: [answers]}, "seconds": ...}.

    python api_v2_deploy.py --image IMAGE --model-tar model.tar.gz --jpeg FILE [--name NAME]
        [--endpoint ENTRY_POINT_OR_- ...] [--rounds N]

Each --endpoint deploys one endpoint: '-' serves the model as it is, a file path deploys it with that inference
script (the SDK repacks the model with code/<script>).
"""
import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import sagemaker
from sagemaker.deserializers import JSONDeserializer
from sagemaker.pytorch import PyTorchModel
from sagemaker.serializers import IdentitySerializer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--model-tar", required=True)
    p.add_argument("--jpeg", required=True)
    p.add_argument("--name", default=f"v2-deploy-{int(time.time())}")
    p.add_argument("--endpoint", action="append", default=[])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    session = sagemaker.Session()
    start = time.monotonic()
    model_data = session.upload_data(path=args.model_tar, key_prefix=f"models/{args.name}")
    predictors, entries = [], args.endpoint or ["-"]
    for i, entry in enumerate(entries):
        kwargs = {}
        if entry != "-":
            kwargs = {"entry_point": os.path.basename(entry), "source_dir": os.path.dirname(os.path.abspath(entry))}
        model = PyTorchModel(model_data=model_data, image_uri=args.image, framework_version="2.1", py_version="py310",
                             sagemaker_session=session, name=f"{args.name}-{i}", **kwargs)
        predictors.append(model.deploy(initial_instance_count=1, instance_type="ml.m5.large",
                                       endpoint_name=f"{args.name}-{i}", serializer=IdentitySerializer("image/jpeg"),
                                       deserializer=JSONDeserializer(), wait=i == len(entries) - 1))
    waiter = session.sagemaker_client.get_waiter("endpoint_in_service")  # the last deploy waited; the others?
    for predictor in predictors[:-1]:
        waiter.wait(EndpointName=predictor.endpoint_name)
    deployed = time.monotonic()
    jpeg = open(args.jpeg, "rb").read()
    try:
        calls = [predictor for predictor in predictors for _ in range(args.rounds)]
        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            answers = list(pool.map(lambda predictor: predictor.predict(jpeg), calls))
        done = time.monotonic()
        out = {}
        for predictor, answer in zip(calls, answers):
            out.setdefault(predictor.endpoint_name, []).append(answer)
        print(json.dumps({"endpoints": out, "seconds": {"deploy": round(deployed - start, 2),
                                                        "predict": round(done - deployed, 3)}}), flush=True)
    finally:
        for predictor in predictors:
            predictor.delete_model()  # it reads the endpoint config, which delete_endpoint removes
            predictor.delete_endpoint()


if __name__ == "__main__":
    main()
