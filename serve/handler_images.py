"""Image decoding and preprocessing of the TorchServe handler, and the per-request budgets.

The preprocessing is the model's own: model_config.json's "preprocess" spec, written by training
({"resize", "crop", "interpolation", "antialias", "exif_transpose", "mean", "std"}); for models
exported before that key existed it is derived from image_size/resize_size/mean/std and what
training did then (handler_defaults.LEGACY_PREPROCESS).

Bounds, all checked before the memory they protect is allocated:
  * max_pixels per image and max_request_pixels per request, from the image headers;
  * max_aspect: an image longer than max_aspect x its shorter side is centre-cropped to that ratio
    before resizing (only the centre survives the centre crop anyway), so the resized tensor is at
    most resize x (max_aspect * resize) whatever the file claims;
  * request_time_s per request and a batch deadline, checked before each image (one image's
    decode is bounded by the pixel limits).
"""

import io
import logging
import math
import time

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2 as transforms

from handler_defaults import LEGACY_PREPROCESS
from handler_errors import RequestError

log = logging.getLogger(__name__)

# Our own pixel limits (max_pixels, max_request_pixels) are checked from the header before decoding.
Image.MAX_IMAGE_PIXELS = None

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
INTERPOLATION = {
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "nearest": transforms.InterpolationMode.NEAREST,
    "nearest-exact": transforms.InterpolationMode.NEAREST_EXACT,
}
SPEC_KEYS = ("resize", "crop", "interpolation", "antialias", "exif_transpose", "mean", "std")


def read_preprocess_spec(cfg):
    """The preprocessing spec training wrote (container/data.py preprocess_spec) read back from
    model_config.json and validated; ValueError if unusable."""
    spec = cfg.get("preprocess")
    if spec is None:  # exported before the "preprocess" key existed
        crop = cfg["image_size"]
        spec = {"resize": cfg.get("resize_size") or crop, "crop": crop, **LEGACY_PREPROCESS,
                "mean": cfg["mean"], "std": cfg["std"]}
    if not isinstance(spec, dict):
        raise ValueError(f"model_config.json: preprocess must be an object, got {type(spec).__name__}")
    missing = [k for k in SPEC_KEYS if k not in spec]
    if missing:
        raise ValueError(f"model_config.json: preprocess lacks {missing}")
    out = dict(spec)
    for key in ("resize", "crop"):
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise ValueError(f"model_config.json: preprocess.{key}={value!r} must be an integer 1..4096")
    if spec["interpolation"] not in INTERPOLATION:
        raise ValueError(f"model_config.json: preprocess.interpolation={spec['interpolation']!r}; "
                         f"known: {sorted(INTERPOLATION)}")
    for key in ("antialias", "exif_transpose"):
        if not isinstance(spec[key], bool):
            raise ValueError(f"model_config.json: preprocess.{key} must be true or false")
    for key in ("mean", "std"):
        values = spec[key]
        if not (isinstance(values, list) and len(values) == 3
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)):
            raise ValueError(f"model_config.json: preprocess.{key} must be 3 numbers")
        out[key] = [float(v) for v in values]
    if any(v <= 0 for v in out["std"]):
        raise ValueError("model_config.json: preprocess.std must be positive")
    return out


class Budget:
    """Pixels and time one request may spend, inside the batch's own deadline."""

    def __init__(self, settings, batch_deadline, now=time.monotonic):
        self.now = now
        self.max_pixels = settings["max_request_pixels"]
        self.pixels = 0
        self.deadline = now() + settings["request_time_s"]
        self.request_time_s = settings["request_time_s"]
        self.batch_deadline = batch_deadline

    def charge(self, pixels, what):
        self.pixels += pixels
        if self.pixels > self.max_pixels:
            raise RequestError(413, "RequestTooExpensive",
                               f"{what}: the request's images total {self.pixels} pixels, "
                               f"limit {self.max_pixels} per request")

    def check_time(self, what):
        """Before each image: refuse to start it once the request's or the batch's time is spent."""
        now = self.now()
        if now > self.deadline:
            raise RequestError(413, "RequestTooExpensive",
                               f"{what}: decoding the request's images took over {self.request_time_s} s")
        if self.batch_deadline is not None and now > self.batch_deadline:
            raise RequestError(503, "ServerBusy", "the batch this request was in ran out of time "
                               "decoding other requests' images; retry")


def open_image(raw, settings, spec, budget=None, what="image"):
    """Bytes -> RGB PIL image (oriented as the spec says); 4xx RequestError on anything wrong."""
    try:
        img = Image.open(io.BytesIO(raw), formats=FORMATS)
    except Image.UnidentifiedImageError:
        raise RequestError(400, "NotAnImage", f"{what} is not a supported image ({', '.join(FORMATS)})") from None
    except Exception as e:  # noqa: BLE001 - any parser failure is the client's bad bytes
        raise RequestError(400, "InvalidImage", f"{what} cannot be parsed: {str(e)[:200]}") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise RequestError(400, "InvalidImage", f"{what} has no pixels ({width}x{height})")
    if width * height > settings["max_pixels"]:
        raise RequestError(
            413, "ImageTooLarge",
            f"{what} is {width}x{height} = {width * height} pixels, limit {settings['max_pixels']}",
        )
    if budget is not None:
        budget.charge(width * height, what)
    try:
        if img.format in ("JPEG", "MPO") and spec.get("jpeg_draft", settings["jpeg_draft"]):
            # DCT-scaled decode (1/2, 1/4, 1/8) keeping both sides >= resize: the same call as the
            # training data loader, so the pixels match its eval transform.
            img.draft("RGB", (spec["resize"], spec["resize"]))
        img.load()
        if spec["exif_transpose"]:
            try:
                img = ImageOps.exif_transpose(img)
            except Exception as e:  # noqa: BLE001 - a broken EXIF block is no reason to refuse the pixels
                log.info("ignoring unreadable EXIF orientation: %s", e)
        if img.mode != "RGB":
            img = img.convert("RGB")
    except RequestError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated/corrupt data
        raise RequestError(400, "InvalidImage", f"{what} is truncated or corrupt: {str(e)[:200]}") from None
    return bound_aspect(img, settings["max_aspect"])


def bound_aspect(img, max_aspect):
    """Centre-crop the longer side to at most max_aspect x the shorter one (a view-sized copy)."""
    width, height = img.size
    short, long_ = min(width, height), max(width, height)
    keep = max(1, int(short * max_aspect))
    if long_ <= keep:
        return img
    off = (long_ - keep) // 2
    box = (off, 0, off + keep, height) if width > height else (0, off, width, off + keep)
    return img.crop(box)


class Preprocessor:
    """Decoded image -> the model's HWC uint8 crop, and crops -> a normalised batch."""

    def __init__(self, spec, settings, device):
        self.spec, self.settings = spec, settings
        # The torchvision ops of the training eval transform (resize shorter side, centre crop) on
        # uint8 tensors; normalisation is batched in `to_batch` with the training code's arithmetic.
        self.geometry = transforms.Compose([
            transforms.Resize(spec["resize"], interpolation=INTERPOLATION[spec["interpolation"]],
                              antialias=spec["antialias"]),
            transforms.CenterCrop(spec["crop"]),
        ])
        self.mean = torch.tensor(spec["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(spec["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255

    def image(self, raw, budget=None, what="image"):
        if budget is not None:
            budget.check_time(what)
        img = open_image(raw, self.settings, self.spec, budget, what)
        chw = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
        del img
        return self.geometry(chw).permute(1, 2, 0)  # HWC uint8 (resized on the tensor, as in training)

    def to_batch(self, hwc_list, device):
        batch = torch.stack(hwc_list).to(device, non_blocking=True)  # NHWC uint8
        # the training loader's arithmetic (localsage.container.normalize): -mean/std + x * (1/std) in one pass from
        # uint8 into a channels_last float batch (the NHWC stack is already an NCHW view in that layout)
        batch = batch.permute(0, 3, 1, 2)
        out = torch.empty(batch.shape, dtype=torch.float32, device=batch.device, memory_format=torch.channels_last)
        return torch.addcmul(-self.mean / self.std, batch, 1 / self.std, out=out)
