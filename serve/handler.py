"""TorchServe handler for localsage image classifiers.

Self-contained on purpose: it needs torch, torchvision, Pillow and the files of the model
directory (model.pth, model_config.json, index_to_name.json, optional model-config.yaml) —
never the localsage package — so `torchserve --models name=<job>/model` and SageMaker's
/opt/ml/model load it unchanged.

Requests (one TorchServe request = one entry of the batch handed to `handle`):
  * raw body: image/jpeg, image/png, image/*, application/x-image, application/octet-stream
    (or no content type at all); optional `?topk=N`
  * application/json: {"image": "<base64>", "topk": 3} or {"images": ["<b64>", ...]}
    (and {"url": ...}/{"urls": [...]} only when URL inputs are enabled)
  * multipart/form-data: the image in a file field (data, image, file, body or the only field),
    optional `topk` field
Response: {"predictions": [{"label", "index", "probability"}, ...]} sorted by probability
(for "images"/"urls": {"predictions": [[...], [...]]}, one list per image).
Errors: a 4xx with {"code", "type", "message"}; each request of a dynamic batch gets its own
status, so one bad item fails only that item.

Settings: defaults below <- `handler:` section of model-config.yaml <- LOCALSAGE_SERVE_<NAME>
environment variables (e.g. LOCALSAGE_SERVE_MAX_IMAGE_BYTES=1000000).
"""

import base64
import binascii
import http.client
import io
import ipaddress
import json
import logging
import os
import re
import socket
import ssl
import time
import urllib.parse

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps
from torchvision.transforms import v2 as transforms

log = logging.getLogger(__name__)

# We enforce our own pixel limit (max_pixels) from the header before decoding.
Image.MAX_IMAGE_PIXELS = None

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
RAW_TYPES = ("application/x-image", "application/octet-stream", "binary/octet-stream", "")
FILE_FIELDS = ("body", "data", "image", "file", "inputs", "input")
INTERPOLATION = {
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "nearest": transforms.InterpolationMode.NEAREST,
}

DEFAULTS = {
    "topk": 5,
    "max_image_bytes": 6 * 1024 * 1024,  # decoded image bytes per image
    "max_pixels": 40_000_000,  # width*height from the header, checked before decoding
    "max_images": 16,  # per request ("images"/"urls")
    "max_forward": 32,  # images per forward pass (bounds activation memory)
    "jpeg_draft": True,  # JPEG DCT-scaled decode, as the training loader does
    "threads": 0,  # torch intra-op threads per worker; 0 = CPUs / workers
    "fuse": True,  # fold BatchNorm into conv for CPU inference (checked numerically)
    "allow_urls": False,
    "url_allowlist": [],  # host names (exact, or ".example.com" for subdomains)
    "url_max_bytes": 6 * 1024 * 1024,
    "url_timeout": 5.0,  # seconds, whole download
}


class RequestError(Exception):
    """A problem with one request; becomes that request's 4xx JSON answer."""

    def __init__(self, code, kind, message):
        super().__init__(message)
        self.code, self.kind, self.message = code, kind, message

    def body(self):
        return {"code": self.code, "type": self.kind, "message": self.message}


# ---------------------------------------------------------------------------------------
# settings


def _coerce(value, default):
    if isinstance(default, bool):
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(default, list):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value)
    return type(default)(value)


def load_settings(yaml_handler=None, env=None):
    env = os.environ if env is None else env
    settings = dict(DEFAULTS)
    for source in (yaml_handler or {}, {
        k: env["LOCALSAGE_SERVE_" + k.upper()] for k in DEFAULTS if "LOCALSAGE_SERVE_" + k.upper() in env
    }):
        for key, value in source.items():
            if key in DEFAULTS:
                settings[key] = _coerce(value, DEFAULTS[key])
    return settings


# ---------------------------------------------------------------------------------------
# URL inputs (off by default)


def _host_allowed(host, allowlist):
    host = host.lower().rstrip(".")
    for entry in allowlist:
        entry = entry.lower().rstrip(".")
        if entry.startswith(".") and host.endswith(entry):
            return True
        if host == entry:
            return True
    return False


def _public(addr):
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
        or ip.is_reserved or ip.is_unspecified
    )


def validate_url(url, allowlist, resolve=socket.getaddrinfo):
    """Check a URL input against the policy; return (scheme, host, port, path, ip).

    Only http/https, no credentials, host in the allow-list, and every address the host
    resolves to must be public (no private, loopback, link-local, multicast, reserved).
    The caller connects to the returned ip, so a second DNS answer cannot differ.
    """
    if not isinstance(url, str) or len(url) > 2048:
        raise RequestError(400, "InvalidURL", "url must be a string of at most 2048 characters")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise RequestError(400, "InvalidURL", f"malformed url: {e}")
    if parts.scheme not in ("http", "https"):
        raise RequestError(403, "URLNotAllowed", "only http and https URLs are allowed")
    if parts.username or parts.password:
        raise RequestError(403, "URLNotAllowed", "URLs with credentials are not allowed")
    host = parts.hostname
    if not host:
        raise RequestError(400, "InvalidURL", "url has no host")
    if not _host_allowed(host, allowlist):
        raise RequestError(403, "URLNotAllowed", f"host {host!r} is not in the URL allow-list")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as e:
        raise RequestError(400, "InvalidURL", f"cannot resolve host {host!r}: {e}")
    addrs = sorted({info[4][0] for info in infos})
    if not addrs:
        raise RequestError(400, "InvalidURL", f"host {host!r} has no address")
    for addr in addrs:
        if not _public(addr.split("%")[0]):
            raise RequestError(403, "URLNotAllowed", f"host {host!r} resolves to non-public address {addr}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, host, port, path, addrs[0]


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host, port, ip, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self):
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host, port, ip, timeout):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self):
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


def fetch_url(url, settings):
    """Download an allowed URL (no redirects) within the size and time limits."""
    scheme, host, port, path, ip = validate_url(url, settings["url_allowlist"])
    limit, timeout = settings["url_max_bytes"], settings["url_timeout"]
    deadline = time.monotonic() + timeout
    conn = (_PinnedHTTPS if scheme == "https" else _PinnedHTTP)(host, port, ip, timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "localsage-handler", "Accept": "image/*"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RequestError(400, "URLFetchFailed", f"url answered HTTP {resp.status} (redirects are not followed)")
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise RequestError(413, "ImageTooLarge", f"url content is {length} bytes, limit {limit}")
        chunks, size = [], 0
        while True:
            if time.monotonic() > deadline:
                raise RequestError(400, "URLFetchFailed", f"url download exceeded {timeout} s")
            chunk = resp.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise RequestError(413, "ImageTooLarge", f"url content exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except (OSError, http.client.HTTPException) as e:
        raise RequestError(400, "URLFetchFailed", f"url download failed: {e}")
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------
# request parsing


def _as_bytes(value):
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value).encode("utf-8")


def parse_topk(value, num_classes, default):
    if value is None:
        return min(default, num_classes)
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, "InvalidTopK", f"topk must be an integer between 1 and {num_classes}")
    if not 1 <= value <= num_classes:
        raise RequestError(400, "InvalidTopK", f"topk={value} is out of range 1..{num_classes}")
    return value


_B64_JUNK = re.compile(rb"\s+")


def decode_base64(value, limit, what="image"):
    if not isinstance(value, str) or not value:
        raise RequestError(400, "InvalidBase64", f"{what} must be a non-empty base64 string")
    data = value.encode("ascii", "replace")
    if data.startswith(b"data:"):  # data URL: data:image/jpeg;base64,....
        data = data.partition(b",")[2]
    data = _B64_JUNK.sub(b"", data)
    if len(data) * 3 // 4 > limit + 3:
        raise RequestError(413, "ImageTooLarge", f"{what} is over the limit of {limit} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, "InvalidBase64", f"{what} is not valid base64: {e}")


def _content_type(context, idx, name):
    ct = ""
    if context is not None:
        try:
            param = context.get_request_header(idx, name)
            if isinstance(param, dict):
                ct = param.get("content-type") or ""
            if not ct and name == "body":
                ct = context.get_request_header(idx, "Content-Type") or context.get_request_header(idx, "content-type") or ""
        except (AttributeError, IndexError, KeyError, TypeError):
            ct = ""
    return ct.split(";")[0].strip().lower()


def _header(context, idx, name):
    """A request header, case-insensitively (TorchServe keeps the client's spelling)."""
    if context is None:
        return None
    try:
        props = context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    for key, value in props.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return None


def _topk_from_headers(context, idx):
    """X-Topk: N, or SageMaker's X-Amzn-SageMaker-Custom-Attributes: topk=N."""
    value = _header(context, idx, "x-topk")
    if value is not None:
        return value
    attrs = _header(context, idx, "x-amzn-sagemaker-custom-attributes") or ""
    for part in re.split(r"[;,]", attrs):
        key, _, val = part.partition("=")
        if key.strip().lower() == "topk":
            return val.strip()
    return None


def parse_request(item, idx, context, settings, num_classes):
    """Return (list of image bytes, topk, is_list) for one request of the batch.
    topk: JSON "topk" > form field or query parameter "topk" (/invocations) > X-Topk header."""
    if not isinstance(item, dict):
        raise RequestError(400, "EmptyBody", "request has no body")
    topk_field = item.get("topk")
    if topk_field is None:
        topk_field = _topk_from_headers(context, idx)
    fields = {k: v for k, v in item.items() if k != "topk" and k != "model_name"}
    if not fields:
        raise RequestError(400, "EmptyBody", "request body is empty")
    name = next((f for f in FILE_FIELDS if f in fields), None)
    if name is None:
        if len(fields) != 1:
            raise RequestError(400, "MissingImage", f"expected one image field, got fields {sorted(fields)}")
        name = next(iter(fields))
    value = fields[name]
    ctype = _content_type(context, idx, name)

    if ctype in ("", "text/plain") and isinstance(value, (bytes, bytearray, str)) and _as_bytes(value).lstrip()[:1] == b"{":
        ctype = "application/json"  # no/odd content type but a JSON object body
    if ctype == "application/json" or isinstance(value, (dict, list)):
        if isinstance(value, (bytes, bytearray, str)):
            raw = _as_bytes(value)
            if not raw.strip():
                raise RequestError(400, "EmptyBody", "request body is empty")
            try:
                value = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise RequestError(400, "InvalidJSON", f"body is not valid JSON: {e}")
        return _parse_json(value, settings, num_classes, topk_field)

    raw = _as_bytes(value)
    if not raw:
        raise RequestError(400, "EmptyBody", "request body is empty")
    if not (ctype in RAW_TYPES or ctype.startswith("image/") or ctype == "multipart/form-data"):
        raise RequestError(
            415, "UnsupportedContentType",
            f"content type {ctype!r} is not supported; send image/jpeg, image/png, "
            "application/x-image, application/octet-stream, application/json or multipart/form-data",
        )
    if len(raw) > settings["max_image_bytes"]:
        raise RequestError(413, "ImageTooLarge", f"image is {len(raw)} bytes, limit {settings['max_image_bytes']}")
    return [raw], parse_topk(topk_field, num_classes, settings["topk"]), False


def _parse_json(doc, settings, num_classes, topk_field):
    if not isinstance(doc, dict):
        raise RequestError(400, "InvalidJSON", 'JSON body must be an object like {"image": "<base64>"}')
    topk = parse_topk(doc.get("topk", topk_field), num_classes, settings["topk"])
    keys = [k for k in ("image", "images", "url", "urls") if k in doc]
    if len(keys) != 1:
        raise RequestError(400, "MissingImage", 'JSON body needs exactly one of "image", "images", "url", "urls"')
    key = keys[0]
    if key in ("url", "urls") and not settings["allow_urls"]:
        raise RequestError(403, "URLInputDisabled", "URL inputs are disabled on this endpoint")
    many = key.endswith("s")
    values = doc[key] if many else [doc[key]]
    if many and (not isinstance(values, list) or not values):
        raise RequestError(400, "InvalidJSON", f'"{key}" must be a non-empty list')
    if len(values) > settings["max_images"]:
        raise RequestError(413, "TooManyImages", f"{len(values)} images in one request, limit {settings['max_images']}")
    images = []
    for i, value in enumerate(values):
        what = f"{key}[{i}]" if many else key
        if key.startswith("url"):
            if not isinstance(value, str):
                raise RequestError(400, "InvalidURL", f"{what} must be a string")
            images.append(fetch_url(value, settings))
        else:
            images.append(decode_base64(value, settings["max_image_bytes"], what))
        if not images[-1]:
            raise RequestError(400, "EmptyBody", f"{what} is empty")
    return images, topk, many


# ---------------------------------------------------------------------------------------
# image decoding and preprocessing


def open_image(raw, settings, resize_size, what="image"):
    """Bytes -> RGB PIL image (EXIF-oriented); 4xx RequestError on anything wrong."""
    try:
        img = Image.open(io.BytesIO(raw), formats=FORMATS)
    except Image.UnidentifiedImageError:
        raise RequestError(400, "NotAnImage", f"{what} is not a supported image ({', '.join(FORMATS)})")
    except Exception as e:  # noqa: BLE001 - any parser failure is the client's bad bytes
        raise RequestError(400, "InvalidImage", f"{what} cannot be parsed: {e}")
    width, height = img.size
    if width < 1 or height < 1:
        raise RequestError(400, "InvalidImage", f"{what} has no pixels ({width}x{height})")
    if width * height > settings["max_pixels"]:
        raise RequestError(
            413, "ImageTooLarge",
            f"{what} is {width}x{height} = {width * height} pixels, limit {settings['max_pixels']}",
        )
    try:
        if img.format in ("JPEG", "MPO") and settings["jpeg_draft"]:
            # DCT-scaled decode (1/2, 1/4, 1/8) keeping both sides >= resize_size: the same
            # call as the training data loader, so the pixels match its eval transform.
            img.draft("RGB", (resize_size, resize_size))
        img.load()
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as e:  # noqa: BLE001 - a broken EXIF block is no reason to refuse the pixels
            log.info("ignoring unreadable EXIF orientation: %s", e)
        if img.mode != "RGB":
            img = img.convert("RGB")
    except RequestError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated/corrupt data
        raise RequestError(400, "InvalidImage", f"{what} is truncated or corrupt: {e}")
    return img


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
        self.image_size = int(cfg["image_size"])
        self.resize_size = int(cfg.get("resize_size") or self.image_size)
        interpolation = INTERPOLATION[cfg.get("interpolation", "bilinear")]
        # The same torchvision ops as the training eval transform (resize shorter side, center crop) on
        # uint8 tensors (torch's vectorised kernel, several times cheaper than PIL's resize);
        # normalisation is done batched in `_to_tensor` with the training code's float arithmetic.
        self.geometry = transforms.Compose([
            transforms.Resize(self.resize_size, interpolation=interpolation, antialias=True),
            transforms.CenterCrop(self.image_size),
        ])
        self.device = torch.device(device)
        self.amp = self.device.type == "cuda"
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(cfg["std"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1) * 255

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

    def preprocess_image(self, raw, what="image"):
        img = open_image(raw, self.settings, self.resize_size, what)
        chw = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return self.geometry(chw).permute(1, 2, 0)  # HWC uint8 (resized on the tensor, as in training)

    def _to_tensor(self, hwc_list):
        batch = torch.stack(hwc_list).to(self.device, non_blocking=True)  # NHWC uint8
        # the training loader's arithmetic (data.Normalize): -mean/std + x * (1/std) in one pass from
        # uint8 into a channels_last float batch (the NHWC stack is already an NCHW view in that layout)
        batch = batch.permute(0, 3, 1, 2)
        out = torch.empty(batch.shape, dtype=torch.float32, device=batch.device, memory_format=torch.channels_last)
        return torch.addcmul(-self.mean / self.std, batch, 1 / self.std, out=out)

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

    def handle(self, data, context):
        """One TorchServe batch -> one response per request, each with its own status."""
        t0 = time.perf_counter()
        results = [None] * len(data)
        jobs = []  # (request index, topk, is_list, tensors)
        for idx, item in enumerate(data):
            try:
                images, topk, many = parse_request(item, idx, context, self.settings, self.num_classes)
                tensors = [
                    self.preprocess_image(raw, f"images[{i}]" if many else "image") for i, raw in enumerate(images)
                ]
                jobs.append((idx, topk, many, tensors))
            except RequestError as e:
                results[idx] = e
        t1 = time.perf_counter()
        flat = [t for job in jobs for t in job[3]]
        probs = self.predict(flat) if flat else None
        t2 = time.perf_counter()
        pos = 0
        for idx, topk, many, tensors in jobs:
            answers = [self.answer(probs[pos + j], topk) for j in range(len(tensors))]
            pos += len(tensors)
            results[idx] = {"predictions": answers if many else answers[0]}
        out = []
        for idx, result in enumerate(results):
            if isinstance(result, RequestError):
                _set_status(context, idx, result.code, result.kind)
                result = result.body()
            _set_json(context, idx)
            out.append(result)
        _metrics(context, (t1 - t0) * 1000, (t2 - t1) * 1000, len(flat))
        return out


def _set_status(context, idx, code, phrase):
    if context is not None:
        context.set_response_status(code=code, phrase=phrase, idx=idx)


def _set_json(context, idx):
    if context is not None:
        context.set_response_content_type(idx, "application/json")


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
    return _service.handle(data, context)
