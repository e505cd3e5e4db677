"""Train batches decoded and augmented on the training device (hyperparameter `decode-on=device`).

Why: with `decode-on=workers` (the default) the DataLoader workers decode every JPEG on the CPU
(libjpeg-turbo, a core each), crop and resize it there. On a GPU host with few
cores for its GPU that can set the pace of the step; nvJPEG's batched decoder (hardware JPEG engines
on A100/H100-class GPUs) takes the decode off the cores.

Who does what:
- the workers (`JpegBatches.__getitems__`) read each file, parse its header with PIL (format, size,
  mode, EXIF orientation: no pixels are decoded), and draw the image's RandomResizedCrop box and
  flip with the CPU path's own code and RNG (`data.TrainTransform.params`, Python's `random`,
  seeded per worker), so the boxes follow the CPU path's distribution exactly. An image the device
  decoder is not given (not a JPEG, CMYK, XMP metadata, no end-of-image marker: truncated,
  an unreadable EXIF block) is decoded and augmented right there as the CPU path does (`done`).
- the main process (`DeviceDecoder`, called by localsage.container.feed on its side stream): one
  `decode_jpeg(list, device=...)` call a batch (or a chunk of it: CHUNK_BYTES), then per image the
  EXIF orientation (PIL's exif_transpose as flips and transposes), the crop, an antialiased bilinear
  resize in float32 rounded back to uint8 (what torchvision's Resize does on CUDA), and the flips of
  the batch at once; the result is the uint8 batch the workers would have sent, which the feed
  normalises as before. A stream the device decoder refuses is decoded on the host by
  localsage.container.decode from the bytes the worker read (never the file again); one nothing can read is
  logged once and left out of the batch
  (strict-data: the job fails).

Against the workers' path: the same boxes and flips for the same RNG state, and pixels within 1 of
the CPU's uint8 resize (tests/test_device_decode.py). A photo at least twice the crop size, which
the CPU path decodes DCT-scaled (PIL's draft, 1/2-1/8), gets its box drawn on that scaled size too
(the same boxes), is decoded whole here and area-averaged by the same scale before its resize: close
to, not equal to, a scaled IDCT (a little smoother). On a CPU device the same code runs with
torchvision's CPU decoder (that is how the tests check it; it is no faster there).
"""
from __future__ import annotations

import io
import logging
import random
from typing import NamedTuple

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg  # imported here, before DataLoader workers fork

from localsage.container.data import unreadable
from localsage.container.decode import decode_bytes
from localsage.core.hyperparameters import HyperparameterError

log = logging.getLogger("localsage.container.train")  # where feed logs the workers' unreadable files

EXIF_ORIENTATION = 0x0112


class RawImages(NamedTuple):
    """A train batch as the workers send it with decode-on=device (labels: the JPEGs' first, then `done`'s)."""
    data: torch.Tensor  # uint8: the JPEG files end to end
    offsets: torch.Tensor  # int64 (n + 1,): file k is data[offsets[k]:offsets[k + 1]]
    boxes: torch.Tensor  # int64 (n, 8): top, left, height, width (on the upright image as the CPU path decodes
    #                      it: DCT-scaled), flip, EXIF orientation, draft scale, the file's stored pixels
    index: torch.Tensor  # int64 (n,): dataset indexes (to name a file the device cannot decode)
    done: torch.Tensor  # uint8 (m, crop, crop, 3): images the worker decoded and augmented itself


def draft_scale(width: int, height: int, draft_size) -> int:
    """The DCT scale (1, 2, 4 or 8) that localsage.container.decode's PIL draft decodes a JPEG of this size at:
    none below twice the draft size, else the largest that keeps both sides >= draft_size
    (PIL's JpegImageFile.draft; the decoded size is then ceil(side / scale))."""
    if not draft_size or min(width, height) < 2 * draft_size:
        return 1
    fit = min(width // draft_size, height // draft_size)
    return next(s for s in (8, 4, 2, 1) if fit >= s)


def device_header(raw: bytes, draft_size=None):
    """(width, height, EXIF orientation, draft scale, stored pixels) of a JPEG the device decoder is given,
    width and height as the CPU path would decode it (upright, DCT-scaled); None for anything that goes
    the CPU way instead (see the module docstring)."""
    if raw[:2] != b"\xff\xd8" or raw[-2:] != b"\xff\xd9":
        return None
    try:
        img = Image.open(io.BytesIO(raw))  # the header only
        if img.format != "JPEG" or img.mode not in ("RGB", "L") or "xmp" in img.info:
            return None
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - PIL raises many types; the CPU path decides what the file is
        return None
    orientation = orientation if orientation in range(1, 9) else 1
    scale = draft_scale(*img.size, draft_size)
    w, h = (-(-side // scale) for side in img.size)
    pixels = img.size[0] * img.size[1]
    return (h, w, orientation, scale, pixels) if orientation >= 5 else (w, h, orientation, scale, pixels)


class JpegBatches(torch.utils.data.Dataset):
    """The train split for decode-on=device: each batch fetched whole (`__getitems__`) as RawImages."""

    def __init__(self, paths, targets, transform, draft_size=None, strict=False):
        self.paths, self.targets = paths, targets
        self.transform, self.draft_size, self.strict = transform, draft_size, strict  # data.TrainTransform

    def __len__(self):
        return len(self.paths)

    def _bad(self, path, exc):
        if self.strict:
            raise unreadable(path, exc) from exc

    def __getitems__(self, indexes):
        tf = self.transform
        chunks, boxes, index, labels, done, done_labels, bad = [], [], [], [], [], [], []
        for i in indexes:
            path = self.paths[i].decode()
            try:
                with open(path, "rb") as f:
                    raw = f.read()
                header = device_header(raw, self.draft_size)
                if header is None:  # the CPU path's decode and transform, here
                    out = torch.empty((*tf.size, 3), dtype=torch.uint8)
                    tf.write(decode_bytes(raw, self.draft_size), out)  # the bytes read above
                    done.append(out)
                    done_labels.append(int(self.targets[i]))
                    continue
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
                self._bad(path, exc)
                bad.append(i)
                continue
            width, height, orientation, scale, pixels = header
            top, left, h, w = tf.params(height, width)
            flip = random.random() < tf.hflip  # drawn after the box, as TrainTransform.write does
            chunks.append(raw)
            boxes.append((top, left, h, w, int(flip), orientation, scale, pixels))
            index.append(i)
            labels.append(int(self.targets[i]))
        if not chunks and not done:
            return None, None, bad
        offsets = [0]
        for c in chunks:
            offsets.append(offsets[-1] + len(c))
        raw = RawImages(
            torch.frombuffer(bytearray(b"".join(chunks)) or bytearray(1), dtype=torch.uint8)[:offsets[-1]],
            torch.tensor(offsets, dtype=torch.int64),
            torch.tensor(boxes, dtype=torch.int64).view(-1, 8),
            torch.tensor(index, dtype=torch.int64),
            torch.stack(done) if done else torch.empty((0, *tf.size, 3), dtype=torch.uint8))
        return raw, torch.tensor(labels + done_labels, dtype=torch.long), bad


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """A CHW image as stored -> upright, as PIL's ImageOps.exif_transpose turns it (views where it can)."""
    if orientation in (5, 6, 7, 8):
        img = img.transpose(1, 2)  # 5: TRANSPOSE
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]  # then 6: ROTATE_270 = transpose + mirror, ...
    if orientation in (2, 3):
        img = img.flip(2)
    if orientation in (3, 4):
        img = img.flip(1)
    return img


def check_device(device) -> None:
    """Raise HyperparameterError, before the first step, when this torchvision cannot decode a JPEG on
    `device` (a build without nvJPEG): every batch would otherwise fall back to the host image by image."""
    from torchvision.io import encode_jpeg

    sample = encode_jpeg(torch.zeros((3, 16, 16), dtype=torch.uint8))
    try:
        decode_jpeg([sample], mode=ImageReadMode.RGB, device=torch.device(device))
    except (RuntimeError, ValueError) as exc:
        raise HyperparameterError(f"decode-on=device: this torchvision cannot decode JPEGs on {device} ({exc}); "
                                  "use decode-on=workers") from exc


class DeviceDecoder:
    """RawImages + labels -> (uint8 NCHW batch, labels) on `device`: see the module docstring.

    A batch is decoded in chunks of at most CHUNK_BYTES of decoded pixels, each cropped and resized before
    the next is decoded: 128 dogImages-sized photos (~0.6 MB decoded each) are one call, but 128 12-MP
    phone photos would be 4.6 GB at once (the CPU path decodes those at 1/8 scale)."""

    CHUNK_BYTES = 256 << 20

    def __init__(self, spec: dict, device: torch.device, paths, strict: bool = False):
        self.spec, self.size = spec, (spec["crop"], spec["crop"])
        self.device, self.paths, self.strict = torch.device(device), paths, strict

    def __call__(self, raw: RawImages, labels: torch.Tensor, skipped: set):
        """`skipped`: the split's unreadable files (feed: Progress.bad_files), each logged once."""
        dev = self.device
        if not isinstance(raw, RawImages):  # feed.host_batches' DDP stand-in: plain uint8 pixels
            return raw.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        n, done = len(raw.boxes), raw.done.to(dev, non_blocking=True)
        offsets, boxes, index = raw.offsets.tolist(), raw.boxes.tolist(), raw.index.tolist()
        stage = torch.empty((n, 3, *self.size), dtype=torch.float32, device=dev)
        kept = []
        for chunk in self._chunks(boxes):
            images = self._decode([raw.data[offsets[k]:offsets[k + 1]] for k in chunk], [index[k] for k in chunk],
                                  [boxes[k] for k in chunk], skipped)
            for k, img in zip(chunk, images):
                if img is not None:
                    self._augment(img, boxes[k], stage[len(kept)])
                    kept.append(k)
            del images  # the chunk's full-size pixels go back to the allocator before the next chunk
        stage = stage[:len(kept)]
        out = torch.empty((len(kept) + len(done), *self.size, 3), dtype=torch.uint8, device=dev)
        # round half up, in range: the antialias filter's weights are >= 0 and sum to 1
        out[:len(kept)] = stage.add_(0.5).clamp_(0, 255).permute(0, 2, 3, 1)
        flips = [slot for slot, k in enumerate(kept) if boxes[k][4]]
        if flips:
            at = torch.tensor(flips, device=dev)
            out[at] = out[at].flip(2)
        out[len(kept):] = done
        if len(kept) < n:
            labels = torch.cat([labels[kept], labels[n:]])
        return out.permute(0, 3, 1, 2), labels.to(dev, non_blocking=True)

    def _chunks(self, boxes):
        chunk, size = [], 0
        for k, box in enumerate(boxes):
            if chunk and size + 3 * box[7] > self.CHUNK_BYTES:
                yield chunk
                chunk, size = [], 0
            chunk.append(k)
            size += 3 * box[7]
        if chunk:
            yield chunk

    def _augment(self, img, box, into):
        """Crop, the draft's area average, resize (float, not yet rounded) into `into` (3, crop, crop)."""
        top, left, h, w, _, _, s, _ = box
        crop = img[:, top * s:(top + h) * s, left * s:(left + w) * s].unsqueeze(0).float()
        if s > 1:  # the CPU path's DCT-scaled decode, as an area average (a partial last block: its own mean)
            crop = torch.nn.functional.avg_pool2d(crop, s, s, ceil_mode=True)
        into.copy_(torch.nn.functional.interpolate(crop, size=self.size, mode=self.spec["interpolation"],
                                                   align_corners=False, antialias=self.spec["antialias"])[0])

    def _decode(self, streams, index, boxes, skipped):
        """Upright CHW uint8 images on the device; None where nothing could read the file."""
        try:
            images = decode_jpeg(streams, mode=ImageReadMode.RGB, device=self.device)
            return [orient(img, box[5]) for img, box in zip(images, boxes)]
        except RuntimeError:  # one stream the batch decoder refused: each on its own, then the host
            pass
        out = []
        for stream, i, box in zip(streams, index, boxes):
            try:
                out.append(orient(decode_jpeg(stream, mode=ImageReadMode.RGB, device=self.device), box[5]))
                continue
            except RuntimeError:
                pass
            path = self.paths[i].decode()
            try:  # the bytes the worker read (the file may be gone); upright already, the box's size
                out.append(decode_bytes(stream.numpy().tobytes()).to(self.device))
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
                if self.strict:
                    raise unreadable(path, exc) from exc
                if i not in skipped:
                    skipped.add(i)
                    log.warning("skipped unreadable image %s", path)
                out.append(None)
        return out
