"""The local SageMaker API's cost: a training job through `localsage api` vs `localsage train` on the same (docker)
backend, and InvokeEndpoint through the API vs the endpoint container's own /invocations.

    .venv/bin/python bench/api.py [--runs 5] [--image localsage:latest] [--requests 30] [--out runs.json]

One `localsage api` server (docker backend, a temporary folder) serves every run. Per round, in turn:
- api:       boto3 CreateTrainingJob (the built-in trainer, the same hyperparameters, the data on the API's S3),
             DescribeTrainingJob polled every 0.2 s until the job is final: wall time from the create call;
- localsage: `localsage train --backend docker` of the same data and hyperparameters: the process's wall time;
then, on one endpoint made from the first job's model.tar.gz, `--requests` JPEG predictions each way: boto3
sagemaker-runtime InvokeEndpoint (one client, reused) and a requests.Session POST to the serving container's own
port. Round 0 warms caches and is not counted. Prints every round, then the median [min-max] of each figure and
the ratio api / direct of the medians.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spread import spread, spread_text  # bench/spread.py

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HP = {"arch": "resnet18", "weights": "none", "image-size": "32", "epochs": "1", "batch-size": "8", "debug": "false",
      "workers": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, image: str):
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "localsage"), "api", "--root", str(root / "api"), "--port", str(port),
                             "--backend", "docker", "--image", image], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.terminate()
        raise SystemExit(f"localsage api did not start: {(root / 'server.log').read_text()[-2000:]}")
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "local",
                       "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"})
    return proc


def upload(s3, folder: Path, bucket: str, prefix: str) -> str:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}/"


def api_job(sm, name: str, data_uri: str, image: str, bucket: str) -> tuple[float, dict]:
    start = time.perf_counter()
    sm.create_training_job(
        TrainingJobName=name, RoleArn="arn:aws:iam::123456789012:role/localsage", HyperParameters=HP,
        AlgorithmSpecification={"TrainingImage": image, "TrainingInputMode": "File"},
        InputDataConfig=[{"ChannelName": "training", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": data_uri, "S3DataDistributionType": "FullyReplicated"}}}],
        OutputDataConfig={"S3OutputPath": f"s3://{bucket}/bench-output"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 3600})
    while True:
        described = sm.describe_training_job(TrainingJobName=name)
        if described["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
            return time.perf_counter() - start, described
        time.sleep(0.2)


def cli_job(data: Path, jobs: Path, name: str, image: str) -> float:
    args = [str(BIN / "localsage"), "train", "--backend", "docker", "--image", image, "--data", str(data),
            "--jobs-dir", str(jobs), "--name", name, "--no-tracking"]
    for k, v in HP.items():
        args += ["--hp", f"{k}={v}"]
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"localsage train failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")
    return time.perf_counter() - start


def endpoint(sm, model_data: str, image: str, name: str) -> int:
    """An InService endpoint; returns its container's loopback port."""
    import docker

    sm.create_model(ModelName=name, ExecutionRoleArn="arn:aws:iam::123456789012:role/localsage",
                    PrimaryContainer={"Image": image, "ModelDataUrl": model_data})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    deadline = time.time() + 600
    while (status := sm.describe_endpoint(EndpointName=name)["EndpointStatus"]) in ("Creating", "Updating"):
        if time.time() > deadline:
            raise SystemExit("endpoint did not come up")
        time.sleep(0.5)
    if status != "InService":
        raise SystemExit(f"endpoint {status}: {sm.describe_endpoint(EndpointName=name).get('FailureReason')}")
    for c in docker.from_env().containers.list(filters={"label": f"localsage.api=endpoint/{name}"}):
        bound = c.attrs["NetworkSettings"]["Ports"].get("8080/tcp")
        if bound:
            return int(bound[0]["HostPort"])
    raise SystemExit("no serving container found for the endpoint")


def jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 80, 40)).save(buf, "JPEG")
    return buf.getvalue()


def latencies(call, n: int) -> float:
    """The median seconds of n calls (each must succeed)."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--image", default="localsage:latest")
    p.add_argument("--requests", type=int, default=30)
    p.add_argument("--out")
    args = p.parse_args()

    import boto3
    import requests

    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    subprocess.run([str(BIN / "localsage"), "demo-data", str(work / "data"), "--classes", "3", "--per-class", "12",
                    "--size", "40"], check=True, capture_output=True)
    server = start_server(work, args.image)
    rows = []
    try:
        sm, s3 = boto3.client("sagemaker"), boto3.client("s3")
        runtime = boto3.client("sagemaker-runtime")
        bucket = "sagemaker-us-east-1-123456789012"
        data_uri = upload(s3, work / "data", bucket, "bench-data")
        body = jpeg()
        port = None
        for run in range(args.runs + 1):
            api_s, described = api_job(sm, f"bench-api-{run}", data_uri, args.image, bucket)
            if described["TrainingJobStatus"] != "Completed":
                raise SystemExit(f"API job {described['TrainingJobStatus']}: {described.get('FailureReason')}")
            cli_s = cli_job(work / "data", work / "jobs", f"bench-cli-{run}", args.image)
            if port is None:
                port = endpoint(sm, described["ModelArtifacts"]["S3ModelArtifacts"], args.image, "bench-endpoint")
                direct_session = requests.Session()
            invoke_s = latencies(lambda: runtime.invoke_endpoint(
                EndpointName="bench-endpoint", ContentType="image/jpeg", Body=body)["Body"].read(), args.requests)
            direct_s = latencies(lambda: direct_session.post(
                f"http://127.0.0.1:{port}/invocations", data=body,
                headers={"Content-Type": "image/jpeg"}).raise_for_status(), args.requests)
            row = {"run": run, "api_job_s": round(api_s, 2), "cli_job_s": round(cli_s, 2),
                   "invoke_ms": round(invoke_s * 1000, 2), "direct_ms": round(direct_s * 1000, 2)}
            print(json.dumps(row) + ("  (warm-up, not counted)" if run == 0 else ""), flush=True)
            if run:
                rows.append(row)
        sm.delete_endpoint(EndpointName="bench-endpoint")
    finally:
        server.terminate()
        server.wait(timeout=120)
    summary = {k: spread(r[k] for r in rows) for k in ("api_job_s", "cli_job_s", "invoke_ms", "direct_ms")}
    print(f"\n{len(rows)} runs, median [min-max]")
    print(f"training job  api {spread_text(r['api_job_s'] for r in rows)} s   localsage train "
          f"{spread_text(r['cli_job_s'] for r in rows)} s   ratio "
          f"{summary['api_job_s']['median'] / summary['cli_job_s']['median']:.2f}x")
    print(f"prediction    InvokeEndpoint {spread_text((r['invoke_ms'] for r in rows), '{:.1f}')} ms   /invocations "
          f"{spread_text((r['direct_ms'] for r in rows), '{:.1f}')} ms   ratio "
          f"{summary['invoke_ms']['median'] / summary['direct_ms']['median']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
