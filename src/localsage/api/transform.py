"""Batch transform: Create/Describe/List/StopTransformJob. A job starts the model's server (api/containers.py, as
an endpoint does), sends it every object under TransformInput's S3 prefix (or listed by a manifest), and writes
each answer to `<S3OutputPath>/<the object's path under the prefix>.out`, as SageMaker does.

- SplitType None: an object is one request; Line: its lines are records. BatchStrategy SingleRecord: one
  record a request; MultiRecord (the default): as many consecutive records as fit in MaxPayloadInMB (default
  6; 0 = no limit). A record (or an unsplit object) larger than that fails the job, naming it.
- CompressionType Gzip inputs are decompressed; AssembleWith Line puts a newline after each answer.
- MaxConcurrentTransforms objects are sent at once; ModelClientConfig's timeout and retries (600 s, 3) apply
  (retries after a timeout, a connection error or a 5xx; a 4xx fails the job at once with the model's message).
- The model server gets SAGEMAKER_BATCH, SAGEMAKER_MAX_PAYLOAD_IN_MB, SAGEMAKER_BATCH_STRATEGY and
  SAGEMAKER_MAX_CONCURRENT_TRANSFORMS, as SageMaker sets them, over the model's and the job's Environment.
- Not served (refused at create time): RecordIO/TFRecord splits, DataProcessing filters and joins.
A job the API's stop interrupts ends Stopped; one a killed server left InProgress is marked Failed at the
next start."""
from __future__ import annotations

import gzip
import json
import logging
import secrets
import shutil
import threading
import traceback
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor

from localsage.api import containers
from localsage.api.endpoints import describe, list_page
from localsage.api.errors import ApiError, already_exists, not_found, validation
from localsage.api.hosting import clip, lookup, now
from localsage.api.store import check_name

LOG = logging.getLogger("localsage.api")
LOG_GROUP = "/aws/sagemaker/TransformJobs"
STARTUP_TIMEOUT_S = 600
DEFAULTS = {"BatchStrategy": "MultiRecord", "MaxPayloadInMB": 6, "MaxConcurrentTransforms": 1}
ENV_STRATEGY = {"SingleRecord": "SINGLE_RECORD", "MultiRecord": "MULTI_RECORD"}
_RUNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Api -> {job name: its stop Event}
_RUNS_LOCK = threading.Lock()


class JobError(Exception):
    """The job fails; the message is its FailureReason."""


def _check(api, request: dict) -> dict:
    model_name = check_name(request["ModelName"], "ModelName")
    model = api.store.get("Model", model_name)
    if model is None:
        raise ApiError("ValidationException", f'Could not find model "{api.arn("model", model_name)}".')
    source = request["TransformInput"]["DataSource"]["S3DataSource"]
    if source["S3DataType"] not in ("S3Prefix", "ManifestFile"):
        raise validation("TransformInput.DataSource.S3DataSource.S3DataType", "localsage reads S3Prefix or "
                                                                              "ManifestFile inputs")
    api.s3.parse(source["S3Uri"])
    api.s3.parse(request["TransformOutput"]["S3OutputPath"])
    if (request["TransformInput"].get("SplitType") or "None") not in ("None", "Line"):
        raise validation("TransformInput.SplitType", "localsage splits inputs by None or Line (not RecordIO or "
                                                     "TFRecord)")
    if request.get("BatchStrategy") and request["BatchStrategy"] not in ENV_STRATEGY:
        raise validation("BatchStrategy", "Member must satisfy enum value set: [MultiRecord, SingleRecord]")
    processing = request.get("DataProcessing") or {}
    if processing.get("InputFilter", "$") != "$" or processing.get("OutputFilter", "$") != "$" or \
            processing.get("JoinSource", "None") != "None":
        raise validation("DataProcessing", "localsage does not filter or join transform records (InputFilter, "
                                           "OutputFilter and JoinSource must stay at their defaults)")
    return model


def create_transform_job(api, request: dict) -> dict:
    start(api)
    name = check_name(request["TransformJobName"], "TransformJobName")
    arn = api.arn("transform-job", name)
    if api.store.get("TransformJob", name) is not None:
        raise already_exists("TransformJob", name, arn)
    model = _check(api, request)
    stamp = now()
    record = {k: v for k, v in request.items() if k != "Tags" and v not in (None, {}, [])}
    record = {**DEFAULTS, **record, "TransformJobArn": arn, "TransformJobStatus": "InProgress",
              "CreationTime": stamp, "LastModifiedTime": stamp}
    api.store.put("TransformJob", name, record)
    stop = threading.Event()
    with _RUNS_LOCK:
        _RUNS[api][name] = stop
    api.spawn(f"transform-{name}", Run(api, record, model, stop).run)
    return {"TransformJobArn": arn}


def _stored(api, request: dict) -> tuple[str, dict]:
    """The named transform job's record; ResourceNotFound when there is none."""
    start(api)
    name = check_name(request["TransformJobName"], "TransformJobName")
    record = api.store.get("TransformJob", name)
    if record is None:
        raise not_found("TransformJob", name)
    return name, record


def describe_transform_job(api, request: dict) -> dict:
    return describe(_stored(api, request)[1], "DescribeTransformJob")


def list_transform_jobs(api, request: dict) -> dict:
    start(api)
    return list_page(request, api.store.list("TransformJob"), "TransformJobName",
                     ("TransformJobName", "TransformJobArn", "CreationTime", "TransformEndTime", "LastModifiedTime",
                      "TransformJobStatus", "FailureReason"), "TransformJobSummaries", status_key="TransformJobStatus")


def stop_transform_job(api, request: dict) -> dict:
    name, record = _stored(api, request)
    if record["TransformJobStatus"] not in ("InProgress", "Stopping"):
        raise ApiError("ValidationException", f"The transform job {name} is {record['TransformJobStatus']}: only "
                                              "an InProgress job can be stopped.")
    api.store.update("TransformJob", name, TransformJobStatus="Stopping", LastModifiedTime=now())
    with _RUNS_LOCK:
        stop = _RUNS[api].get(name)
    if stop is not None:
        stop.set()
    return {}


def start(api) -> None:
    """Once per Api: a job a killed server left InProgress or Stopping ends (Failed or Stopped); the API's stop
    stops the jobs that run."""
    with _RUNS_LOCK:
        if api in _RUNS:
            return
        _RUNS[api] = {}
    for record in api.store.list("TransformJob"):
        status, name = record.get("TransformJobStatus"), record.get("TransformJobName")
        if status in ("InProgress", "Stopping") and lookup(api, "TransformJob", name) is not None:
            final = {"TransformJobStatus": "Stopped"} if status == "Stopping" else {
                "TransformJobStatus": "Failed", "FailureReason": "The localsage api that ran this job was killed "
                                                                 "before it finished; create the job again."}
            api.store.update("TransformJob", name, final, TransformEndTime=now(), LastModifiedTime=now())

    def stop_all():
        with _RUNS_LOCK:
            stops = list(_RUNS.get(api, {}).values())
        for event in stops:
            event.set()

    api.on_shutdown(stop_all)


class Run:
    def __init__(self, api, record: dict, model: dict, stop: threading.Event):
        self.api, self.record, self.model, self.stop = api, record, model, stop
        self.name = record["TransformJobName"]
        self.folder = api.root / "transform" / self.name
        self.stream = (LOG_GROUP, f"{self.name}/i-{secrets.token_hex(4)}")
        self.server = None
        self.abort = threading.Event()  # an object failed: the others are not sent

    def run(self) -> None:
        try:
            self._run()
            final = {"TransformJobStatus": "Stopped" if self.stop.is_set() else "Completed"}
        except (JobError, containers.ServeError) as exc:
            final = {"TransformJobStatus": "Stopped"} if self.stop.is_set() else {
                "TransformJobStatus": "Failed", "FailureReason": clip(str(exc))}
        except Exception as exc:
            LOG.error("transform job %s failed:\n%s", self.name, traceback.format_exc())
            final = {"TransformJobStatus": "Failed", "FailureReason": f"localsage failed: {type(exc).__name__}: {exc}"}
        finally:
            if self.server is not None:
                self.server.stop()
            shutil.rmtree(self.folder / "model", ignore_errors=True)
            shutil.rmtree(self.folder / "code", ignore_errors=True)
            with _RUNS_LOCK:
                _RUNS.get(self.api, {}).pop(self.name, None)
        self.api.store.update("TransformJob", self.name, final, TransformEndTime=now(), LastModifiedTime=now())
        LOG.info("transform job %s: %s", self.name, final.get("FailureReason") or final["TransformJobStatus"])

    def _log(self, line: str) -> None:
        if self.server is not None:
            self.server.log(f"localsage: {line}")

    def _run(self) -> None:
        import urllib3

        record, container = self.record, self.model["PrimaryContainer"]
        inputs = list_inputs(self.api, record["TransformInput"]["DataSource"]["S3DataSource"])
        env = {**(container.get("Environment") or {}), **(record.get("Environment") or {}),
               "SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(record["MaxPayloadInMB"]),
               "SAGEMAKER_BATCH_STRATEGY": ENV_STRATEGY[record["BatchStrategy"]],
               "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": str(record["MaxConcurrentTransforms"])}
        self.folder.mkdir(parents=True, exist_ok=True)
        model_dir = containers.fetch_model(self.api, container, self.folder / "model")
        code_dir = containers.fetch_code(self.api, env, self.folder / "code")
        self.server = containers.make_server(
            self.api, "transform-job", self.name, container.get("Image") or self.api.image, model_dir, env,
            self.folder / "serve.log", self.stream, record["TransformResources"].get("InstanceType"), code_dir)
        self.server.start()
        self.server.wait_ready(STARTUP_TIMEOUT_S, self.stop)
        if self.stop.is_set():
            return
        self.api.store.update("TransformJob", self.name, TransformStartTime=now(), LastModifiedTime=now())
        self._log(f"{len(inputs)} object(s) to transform")
        host, _, port = self.server.url.rpartition("/")[2].partition(":")
        workers = max(1, int(record["MaxConcurrentTransforms"]))
        with urllib3.HTTPConnectionPool(host, int(port), maxsize=workers, retries=False) as pool:
            with ThreadPoolExecutor(max_workers=workers) as executor:
                try:
                    for _ in executor.map(lambda item: self._transform(pool, *item), inputs):
                        pass
                except BaseException:
                    self.abort.set()
                    raise

    def _transform(self, pool, bucket: str, key: str, relative: str) -> None:
        if self.stop.is_set() or self.abort.is_set():
            return
        record = self.record
        data = self.api.s3.get(bucket, key)
        if record["TransformInput"].get("CompressionType") == "Gzip":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError, zlib.error) as exc:
                raise JobError(f"s3://{bucket}/{key} is not gzip data (CompressionType Gzip): {exc}") from None
        split = (record["TransformInput"].get("SplitType") or "None") == "Line"
        items = [line for line in data.splitlines(keepends=True) if line.strip()] if split else [data]
        answers = []
        for payload in batches(items, record["BatchStrategy"], int(record["MaxPayloadInMB"]), f"s3://{bucket}/{key}"):
            if self.stop.is_set() or self.abort.is_set():
                return
            answers.append(self._invoke(pool, payload, f"s3://{bucket}/{key}"))
        line = (record["TransformOutput"].get("AssembleWith") or "None") == "Line"
        out_bucket, out_key = self.api.s3.parse(record["TransformOutput"]["S3OutputPath"])
        out_key = (out_key.rstrip("/") + "/" if out_key.rstrip("/") else "") + relative + ".out"
        self.api.s3.put(out_bucket, out_key, b"".join(a + b"\n" if line else a for a in answers))
        self._log(f"s3://{bucket}/{key} -> s3://{out_bucket}/{out_key} ({len(answers)} request(s))")

    def _invoke(self, pool, payload: bytes, source: str) -> bytes:
        import urllib3

        client = self.record.get("ModelClientConfig") or {}
        timeout = client.get("InvocationsTimeoutInSeconds") or 600
        retries = client.get("InvocationsMaxRetries", 3)
        headers = {}
        if self.record["TransformInput"].get("ContentType"):
            headers["Content-Type"] = self.record["TransformInput"]["ContentType"]
        if self.record["TransformOutput"].get("Accept"):
            headers["Accept"] = self.record["TransformOutput"]["Accept"]
        problem = ""
        for _ in range(int(retries) + 1):
            try:
                answer = pool.urlopen("POST", "/invocations", body=payload, headers=headers, retries=False,
                                      timeout=urllib3.Timeout(connect=5, read=timeout))
            except urllib3.exceptions.HTTPError as exc:
                problem = f"no answer from the model server ({type(exc).__name__}: {exc})"
                continue
            if answer.status < 300:
                return answer.data
            problem = (f"the model server answered {answer.status}: "
                       f"{answer.data.decode('utf-8', 'replace')[:500]}")
            if answer.status < 500:
                break
        raise JobError(f"ClientError: {source}: {problem}. See {LOG_GROUP}/{self.stream[1]} for the model's log.")


def list_inputs(api, source: dict) -> list:
    """[(bucket, key, relative path)] of S3Prefix (every object whose key starts with the prefix) or a
    ManifestFile ([{"prefix": "s3://…/"}, "relative/key", ...]); JobError when there is none."""
    uri = source["S3Uri"]
    bucket, key = api.s3.parse(uri)
    if source["S3DataType"] == "ManifestFile":
        try:
            manifest = json.loads(api.s3.get(bucket, key))
            prefix_bucket, prefix = api.s3.parse(manifest[0]["prefix"])
            entries = [str(entry) for entry in manifest[1:]]
        except (FileNotFoundError, ValueError, KeyError, IndexError, TypeError, ApiError) as exc:
            raise JobError(f"ClientError: the manifest {uri} cannot be read: {exc}") from None
        return [(prefix_bucket, prefix + entry, entry) for entry in entries if api.s3.exists(prefix_bucket,
                                                                                             prefix + entry)]
    found = [(bucket, k, relative(k, key)) for k in api.s3.list(bucket, key) if not k.endswith("/")]
    if not found:
        raise JobError(f"ClientError: no S3 objects found under {uri}")
    return found


def relative(key: str, prefix: str) -> str:
    """An input's path under the output prefix: its key after the prefix's folder (the prefix itself when that
    is a folder: `in/` or `in` and `in/a/b.jpg` -> `a/b.jpg`), its base name when the prefix names it."""
    if key == prefix:
        return key.rpartition("/")[2]
    if not prefix or prefix.endswith("/") or key[len(prefix)] == "/":
        return key[len(prefix):].lstrip("/")
    return key[len(prefix.rpartition("/")[0]) + 1:] if "/" in prefix else key


def batches(records: list, strategy: str, max_mb: int, source: str):
    """The request bodies: one record each (SingleRecord), or consecutive records packed up to max_mb."""
    limit = max_mb * 1024 * 1024 if max_mb else None
    pending = b""
    for item in records:
        if limit is not None and len(item) > limit:
            what = "object" if len(records) == 1 else "record"
            raise JobError(f"ClientError: a {what} of {source} is {len(item)} bytes, more than MaxPayloadInMB="
                           f"{max_mb}: raise MaxPayloadInMB or split the input (SplitType Line)")
        if strategy == "SingleRecord":
            yield item
        elif pending and limit is not None and len(pending) + len(item) > limit:
            yield pending
            pending = item
        else:
            pending += item
    if pending:
        yield pending


OPERATIONS = {
    "CreateTransformJob": create_transform_job, "DescribeTransformJob": describe_transform_job,
    "ListTransformJobs": list_transform_jobs, "StopTransformJob": stop_transform_job,
}


def on_start(api) -> None:
    start(api)
