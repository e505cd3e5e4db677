"""Image files -> uint8 RGB tensors, upright (EXIF orientation applied), in the decoder's own HWC layout.

`decode` returns a CHW *view* of HWC memory (strides (1, 3W, 3)): libjpeg-turbo and PIL both write
pixels interleaved, and torch's vectorised uint8 antialiased resize runs fastest on that layout
directly (against a contiguous CHW copy: docs/performance.md). Keep images in this layout until they are
batched.

EXIF orientation: the same result as PIL's `ImageOps.exif_transpose` (what the serving handler
applies), for all eight orientations. JPEGs take torchvision's libjpeg-turbo decoder, which reads the
orientation tag from the APP1 segment and flips/rotates the decoded tensor itself; a JPEG that carries
XMP metadata (where PIL also looks for an orientation) and every other format go through PIL's
exif_transpose. A broken EXIF block keeps the pixels as stored (the handler does the same).
"""
from __future__ import annotations

import io
import logging

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg  # imported here, before DataLoader workers fork

log = logging.getLogger("localsage.container.data")


def as_hwc(img: torch.Tensor) -> torch.Tensor:
    """A CHW uint8 tensor as a CHW view of contiguous HWC memory (a copy only when it is not already)."""
    hwc = img.permute(1, 2, 0)
    return img if hwc.is_contiguous() else hwc.contiguous().permute(2, 0, 1)


def _pil_decode(img: Image.Image, draft_size: int | None) -> torch.Tensor:
    if draft_size and img.format in ("JPEG", "MPO"):
        img.draft("RGB", (draft_size, draft_size))
    img.load()
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block is no reason to refuse the pixels
        log.debug("ignoring unreadable EXIF orientation: %s", exc)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def decode(path: str, draft_size: int | None = None) -> torch.Tensor:
    """An image file as an upright uint8 RGB CHW tensor (a view of HWC memory). Raises on
    unreadable, truncated or corrupt data.

    JPEGs decode with torchvision's libjpeg-turbo (bit-identical to PIL's decode, faster); one whose
    shorter side is at least 2 * draft_size decodes DCT-scaled through PIL's draft (1/2, 1/4, 1/8,
    both sides kept >= draft_size), which is the call the serving handler makes too. Anything
    torchvision's decoder refuses goes through PIL, so a file is skipped only when PIL fails too.
    (torchvision 0.29 marks torchvision.io's decoders deprecated in favour of TorchCodec; the
    pinned version has them.)"""
    with open(path, "rb") as f:
        return decode_bytes(f.read(), draft_size)


def decode_bytes(raw: bytes, draft_size: int | None = None) -> torch.Tensor:
    """`decode` of a file's bytes already read (a caller that looked at them first reads the file once)."""
    img = Image.open(io.BytesIO(raw))  # parses the header only
    if img.format == "JPEG" and "xmp" not in img.info and not (draft_size and min(img.size) >= 2 * draft_size):
        try:
            out = decode_jpeg(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB,
                              apply_exif_orientation=True)
            return as_hwc(out)  # orientations 5-8 come back as transposed views
        except RuntimeError:
            pass  # PIL below decides: a variant libjpeg-turbo refuses, a broken EXIF block, or really corrupt
    return _pil_decode(img, draft_size)
