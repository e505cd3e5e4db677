"""TorchServe handler for localsage image classifiers.

Self-contained on purpose: it needs torch, torchvision, Pillow and the files of the model
directory (model.pth, model_config.json, index_to_name.json, optional model-config.yaml, and its
sibling modules handler_*.py, which export copies beside it) — never the localsage package — so
`torchserve --models name=<job>/model` and SageMaker's /opt/ml/model load it unchanged.

Requests (one TorchServe request = one entry of the batch handed to `handle`):
  * raw body: image/jpeg, image/png, image/*, application/x-image, application/octet-stream
    (or no content type at all); optional `?topk=N`
  * application/json: {"image": "<base64>", "topk": 3} or {"images": ["<b64>", ...]}
    (and {"url": ...}/{"urls": [...]} only when URL inputs are enabled)
  * multipart/form-data: the image in a file field (data, image, file, body or the only field),
    optional `topk` field
Response: {"predictions": [{"label", "index", "probability"}, ...]} sorted by probability
(for "images"/"urls": {"predictions": [[...], [...]]}, one list per image).
Errors: {"code", "type", "message"} with that request's own status: 4xx for the request's fault,
5xx for the server's. Whatever one request does, the other requests of its batch are answered
normally (nothing escapes `handle`: TorchServe would fail the whole batch with 503).

Modules: handler_defaults (the defaults), handler_errors (RequestError, settings),
handler_requests (parsing), handler_urls (URL inputs), handler_images (decode, preprocessing,
budgets). Settings: handler_defaults.HANDLER <- `handler:` section of model-config.yaml <-
LOCALSAGE_SERVE_<NAME> environment variables (e.g. LOCALSAGE_SERVE_MAX_IMAGE_BYTES=1000000).
"""

import json
import logging
import os
import time

import torch
import torchvision

from handler_defaults import SERVER
from handler_errors import RequestError, load_settings
from handler_images import Budget, Preprocessor, read_preprocess_spec
from handler_requests import parse_request

log = logging.getLogger(__name__)


class Classifier:
    """The model, its preprocessing and the batch logic."""

    def __init__(self, model_dir, yaml_config=None, device="cpu", env=None):
        yaml_config = yaml_config or {}
        self.settings = load_settings(yaml_config.get("handler"), env)
        with open(os.path.join(model_dir, "model_config.json")) as f:
            self.cfg = json.load(f)
        cfg = self.cfg
        self.num_classes = int(cfg["num_classes"])
        labels_path = os.path.join(model_dir, "index_to_name.json")
        if os.path.exists(labels_path):
            with open(labels_path) as f:
                mapping = json.load(f)
            self.labels = [mapping.get(str(i), str(i)) for i in range(self.num_classes)]
        else:
            self.labels = list(cfg.get("classes") or [str(i) for i in range(self.num_classes)])
        self.spec = read_preprocess_spec(cfg)
        self.image_size = self.spec["crop"]
        self.device = torch.device(device)
        self.amp = self.device.type == "cuda"
        self.pre = Preprocessor(self.spec, self.settings, self.device)
        timeout = float(yaml_config.get("responseTimeout") or SERVER["responseTimeout"])
        self.batch_time_s = timeout * self.settings["batch_time_fraction"]
        self.clock = time.monotonic  # the budgets' clock (tests substitute their own)

        if self.device.type == "cpu":
            threads = self.settings["threads"]
            if threads <= 0:
                workers = max(1, int(os.environ.get("LOCALSAGE_SERVE_WORKERS") or yaml_config.get("minWorkers") or 1))
                threads = max(1, len(os.sched_getaffinity(0)) // workers)
            torch.set_num_threads(threads)
            self.threads = threads

        model = torchvision.models.get_model(cfg["arch"], num_classes=self.num_classes, weights=None)
        state = torch.load(os.path.join(model_dir, "model.pth"), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval().to(self.device)
        if self.device.type == "cpu" and self.settings["fuse"]:
            model = self._fused(model)
        self.model = model.to(memory_format=torch.channels_last)

    def _fused(self, model):
        """Fold conv+BN (numerically equivalent); keep the plain model if anything differs."""
        try:
            from torch.fx.experimental.optimization import fuse

            fused = fuse(model)
            x = torch.rand(2, 3, self.image_size, self.image_size)
            with torch.inference_mode():
                same = torch.allclose(model(x), fused(x), rtol=1e-3, atol=1e-4)
            if same:
                return fused
            log.warning("conv-bn fusion changed outputs; serving the unfused model")
        except Exception as e:  # noqa: BLE001 - fusion is an optimisation only
            log.warning("conv-bn fusion unavailable (%s); serving the unfused model", e)
        return model

    # the pieces (also used by tests and benchmarks)
    def preprocess_image(self, raw, what="image", budget=None):
        return self.pre.image(raw, budget, what)

    def _to_tensor(self, hwc_list):
        return self.pre.to_batch(hwc_list, self.device)

    @torch.inference_mode()
    def predict(self, hwc_list):
        """Probabilities for a list of HWC uint8 crops, in forward passes of at most `max_forward` images."""
        out = []
        step = self.settings["max_forward"]
        for i in range(0, len(hwc_list), step):
            x = self._to_tensor(hwc_list[i:i + step])
            if self.amp:
                with torch.autocast("cuda", dtype=torch.float16):
                    logits = self.model(x)
            else:
                logits = self.model(x)
            out.append(torch.softmax(logits.float(), dim=1).cpu())
        return torch.cat(out)

    def answer(self, probs, topk):
        values, indices = probs.topk(topk)
        return [
            {"label": self.labels[i], "index": i, "probability": round(float(p), 6)}
            for p, i in zip(values.tolist(), indices.tolist())
        ]

    # the batch
    def _prepare(self, item, idx, context, batch_deadline):
        """One request -> (topk, is_list, crops); RequestError for anything wrong with it."""
        Budget(self.settings, batch_deadline, self.clock).check_time("request")  # the batch may be out of time
        images, topk, many = parse_request(item, idx, context, self.settings, self.num_classes)
        budget = Budget(self.settings, batch_deadline, self.clock)
        crops = [self.preprocess_image(raw, f"images[{i}]" if many else "image", budget)
                 for i, raw in enumerate(images)]
        return topk, many, crops

    def _predict_each(self, flat):
        """Probabilities per crop; a crop whose forward pass fails gets the exception instead."""
        try:
            return list(self.predict(flat))
        except Exception as e:  # noqa: BLE001 - find the failing crops, answer the others
            log.exception("batched forward pass failed; retrying image by image")
            if len(flat) == 1:
                return [e]
        out = []
        for crop in flat:
            try:
                out.append(self.predict([crop])[0])
            except Exception as e:  # noqa: BLE001 - this crop's own error, answered on its own
                out.append(e)
        return out

    def handle(self, data, context):
        """One TorchServe batch -> one response per request, each with its own status."""
        t0 = time.perf_counter()
        batch_deadline = self.clock() + self.batch_time_s
        results = [None] * len(data)
        jobs = []  # (request index, topk, is_list, crops)
        for idx, item in enumerate(data):
            try:
                jobs.append((idx, *self._prepare(item, idx, context, batch_deadline)))
            except RequestError as e:
                results[idx] = e
            except MemoryError:
                log.error("request %d: out of memory while decoding", idx)
                results[idx] = RequestError(507, "OutOfMemory", "the server ran out of memory decoding this request")
            except Exception as e:  # noqa: BLE001 - whatever the request's bytes provoked: its own 400
                log.warning("request %d refused: %s: %s", idx, type(e).__name__, e, exc_info=True)
                results[idx] = RequestError(400, "InvalidRequest", f"request cannot be processed: {type(e).__name__}")
        t1 = time.perf_counter()
        flat = [t for job in jobs for t in job[3]]
        probs = self._predict_each(flat) if flat else []
        t2 = time.perf_counter()
        pos = 0
        for idx, topk, many, crops in jobs:
            mine = probs[pos:pos + len(crops)]
            pos += len(crops)
            failed = next((p for p in mine if isinstance(p, BaseException)), None)
            if failed is not None:
                results[idx] = server_error(failed)
                continue
            answers = [self.answer(p, topk) for p in mine]
            results[idx] = {"predictions": answers if many else answers[0]}
        out = [respond(context, idx, result) for idx, result in enumerate(results)]
        _metrics(context, (t1 - t0) * 1000, (t2 - t1) * 1000, len(flat))
        return out


def server_error(exc):
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return RequestError(507, "OutOfMemory", "the server ran out of memory for this request")
    return RequestError(500, "InternalError", f"inference failed: {type(exc).__name__}")


def respond(context, idx, result):
    """Status and content type of one response; the body (dict) TorchServe serialises."""
    if isinstance(result, RequestError):
        if context is not None:
            context.set_response_status(code=result.code, phrase=result.kind, idx=idx)
        result = result.body()
    if context is not None:
        context.set_response_content_type(idx, "application/json")
    return result


def _metrics(context, pre_ms, inf_ms, batch):
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    try:
        metrics.add_time("LocalsagePreprocessTime", round(pre_ms, 3), None, "ms")
        metrics.add_time("LocalsageInferenceTime", round(inf_ms, 3), None, "ms")
        metrics.add_metric("LocalsageBatchSize", batch, "count", None, [], _GAUGE)
    except Exception as e:  # noqa: BLE001 - metrics must never fail a request
        log.warning("metrics not recorded: %s", e)


try:
    from ts.metrics.metric_type_enum import MetricTypes

    _GAUGE = MetricTypes.GAUGE
except ImportError:  # outside TorchServe
    _GAUGE = None


_service = None


def handle(data, context):
    """TorchServe entry point; called with data=None once to initialise."""
    global _service
    if _service is None:
        props = context.system_properties
        device = "cpu"
        if torch.cuda.is_available() and props.get("gpu_id") is not None:
            device = f"cuda:{props.get('gpu_id')}"
        _service = Classifier(props.get("model_dir"), getattr(context, "model_yaml_config", None), device)
        log.info("localsage handler ready: %s on %s, %s threads", _service.cfg["arch"], device,
                 getattr(_service, "threads", "-"))
    if data is None:
        return None
    try:
        return _service.handle(data, context)
    except Exception:  # noqa: BLE001 - a bug here must not become TorchServe's 503 for the whole batch
        log.exception("handler failed for a batch of %d", len(data))
        out = []
        for idx in range(len(data)):
            try:
                out.append(respond(context, idx, RequestError(500, "InternalError", "the handler failed")))
            except Exception:  # noqa: BLE001 - the last resort: a plain 500 for this request
                out.append({"code": 500, "type": "InternalError", "message": "the handler failed"})
        return out
