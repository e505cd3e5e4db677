"""Image data: ImageFolder-style splits, class names, transforms, loaders, bad-file policy, demo data.

Layout (dogImages): <split>/<NNN.Class_Name>/*.jpg for split in train, valid, test. The class index
is the sorted folder order; `001.Affenpinscher` is shown and exported as `Affenpinscher`.

Speed: workers decode JPEGs with libjpeg-turbo straight into uint8 tensors (localsage.container.decode: EXIF
orientation applied; PIL's DCT-scaled draft decode for photos at least twice the target size; PIL for
other formats), keep them in the decoder's HWC layout, crop and resize them with torch's vectorised
uint8 kernel (its fast path wants that layout), write each result into its slot of one shared-memory
NHWC batch (`ImageDataset.__getitems__`; the train loader reuses those batch slots: localsage.container.batch_ring)
and hand uint8 batches to the main process; conversion to
float, normalisation and channels_last happen once per batch on the training device (localsage.container.normalize).
Epochs after the first read decoded pixels from the decoded-image cache (localsage.container.data_cache).
The dataset index is two numpy arrays, so forked workers share it instead of copying a list of
Python objects. One preprocessing spec (`preprocess_spec`) is the source of the transforms here and
of the serving handler's (model_config.json "preprocess").
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2.functional import center_crop  # imported before DataLoader workers fork

from localsage.container.batch_ring import Ring, RingBatch
from localsage.container.data_cache import ReadBuffer, cached_decode
from localsage.container.decode import decode
from localsage.container.normalize import IMAGENET_MEAN, IMAGENET_STD
from localsage.container.shm import ring_slots
from localsage.core import procs

log = logging.getLogger("localsage.container.data")

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(ValueError):
    pass


def unreadable(path: str, exc: BaseException) -> DataError:
    """The error that fails a strict-data job on a file no decoder reads."""
    return DataError(f"unreadable image {path}: {exc} (strict-data=true)")


def class_name(folder: str) -> str:
    """`001.Affenpinscher` -> `Affenpinscher` (folders without a numeric prefix stay as they are)."""
    head, dot, tail = folder.partition(".")
    return tail if dot and head.isdigit() and tail else folder


def scan_split(split_dir: Path, split: str):
    """Index one split: (paths array, targets array, class folder names). Raise DataError when unusable."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"{split} split not found: {split_dir} is not a folder")
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{split} split is empty: no class folders in {split_dir}")
    paths, targets = [], []
    for index, folder in enumerate(folders):
        files = sorted(
            str(p) for p in (split_dir / folder).iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS
        )
        if not files:
            raise DataError(f"{split} class folder {folder!r} has no images ({split_dir / folder})")
        paths.extend(files)
        targets.extend([index] * len(files))
    return np.array(paths, dtype=np.bytes_), np.array(targets, dtype=np.int64), folders


def check_classes(folders_by_split: dict) -> list:
    """The class folders must be the same in every split; returns them."""
    splits = list(folders_by_split)
    reference = folders_by_split[splits[0]]
    for split in splits[1:]:
        other = folders_by_split[split]
        if other != reference:
            missing = sorted(set(reference) - set(other))
            extra = sorted(set(other) - set(reference))
            raise DataError(
                f"class folders differ between {splits[0]} and {split}: "
                f"missing in {split}: {missing[:5] or 'none'}; only in {split}: {extra[:5] or 'none'}"
            )
    return reference


def default_resize(image_size: int) -> int:
    return int(round(image_size * 256 / 224))


def preprocess_spec(image_size: int, resize_size: int = 0, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> dict:
    """The one preprocessing spec: training's transforms are built from it and export writes it into
    model_config.json under "preprocess" for the serving handler. Evaluation / serving, in order:

    1. decode to RGB uint8; a JPEG whose shorter side is at least 2 * resize decodes DCT-scaled
       (PIL's `draft("RGB", (resize, resize))`: 1/2, 1/4 or 1/8, both sides kept >= resize) when
       "jpeg_draft" is true;
    2. "exif_transpose": apply the EXIF orientation as PIL's `ImageOps.exif_transpose` does;
    3. resize the shorter side to "resize" (the longer one to int(resize * long / short)) with
       "interpolation" (torch's uint8 kernel, "antialias" as given: torchvision's `Resize`);
    4. center crop "crop" x "crop" (top = round((h - crop) / 2), left likewise: `CenterCrop`);
    5. normalise per channel: (x / 255 - mean) / std with "mean" / "std" in RGB order, computed as
       x * (1 / (255 std)) - mean / std in float32 (`Normalize`; NCHW, channels_last in memory).
    Training replaces steps 3-4 by "train_augment" (torchvision's RandomResizedCrop to crop x crop with
    the given scale and ratio ranges, same interpolation and antialias, then a horizontal flip with
    probability hflip)."""
    return {
        "resize": int(resize_size or default_resize(image_size)),
        "crop": int(image_size),
        "interpolation": "bilinear",
        "antialias": True,
        "exif_transpose": True,
        "jpeg_draft": True,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "train_augment": {"random_resized_crop": {"scale": [0.08, 1.0], "ratio": [3 / 4, 4 / 3]}, "hflip": 0.5},
    }


def _resize(img: torch.Tensor, size, spec) -> torch.Tensor:
    """Resize a CHW uint8 view of HWC memory to size (h, w): 1CHW channels_last in, channels_last out
    (restrided so that torch sees an unambiguous channels_last batch of one, which picks its fast
    uint8 kernel rather than the slower one the plain view gets). Same pixels as torchvision's resize."""
    c, h, w = img.shape
    x = img.as_strided((1, c, h, w), (c * h * w * 4 + 1, *img.stride()), img.storage_offset())
    return torch.nn.functional.interpolate(x, size=list(size), mode=spec["interpolation"], align_corners=False,
                                           antialias=spec["antialias"])[0]


class TrainTransform:
    """RandomResizedCrop + RandomHorizontalFlip as torchvision does them (same parameter sampling, same
    resize kernel), on CHW views of HWC memory, with Python's RNG (seeded per DataLoader worker) and
    none of the per-call dispatch of a v2.Compose (most of its cost per image). `write` puts
    the result into one slot of an HWC batch."""

    def __init__(self, spec: dict):
        aug = spec["train_augment"]
        self.spec, self.size = spec, (spec["crop"], spec["crop"])
        self.scale = aug["random_resized_crop"]["scale"]
        self.log_ratio = [math.log(r) for r in aug["random_resized_crop"]["ratio"]]
        self.ratio = aug["random_resized_crop"]["ratio"]
        self.hflip = aug["hflip"]

    def params(self, height: int, width: int):
        """(top, left, h, w): torchvision's RandomResizedCrop.make_params."""
        area = height * width
        for _ in range(10):
            target = area * random.uniform(*self.scale)
            aspect = math.exp(random.uniform(*self.log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        in_ratio = width / height  # fallback: central crop
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def write(self, img: torch.Tensor, out: torch.Tensor) -> None:
        top, left, h, w = self.params(img.shape[1], img.shape[2])
        hwc = _resize(img[:, top:top + h, left:left + w], self.size, self.spec).permute(1, 2, 0)
        if random.random() < self.hflip:
            out.copy_(hwc.flip(1))
        else:
            out.copy_(hwc)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        out = torch.empty((*self.size, 3), dtype=torch.uint8)
        self.write(img, out)
        return out.permute(2, 0, 1)


class EvalTransform:
    """Resize the shorter side, center crop (torchvision's Resize + CenterCrop, the serving handler's ops)."""

    def __init__(self, spec: dict):
        self.spec, self.size = spec, (spec["crop"], spec["crop"])

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        _, h, w = img.shape
        short, long = (h, w) if h <= w else (w, h)
        r = self.spec["resize"]
        size = (r, int(r * long / short)) if h <= w else (int(r * long / short), r)
        if size != (h, w):
            img = _resize(img, size, self.spec)
        return center_crop(img, list(self.size))

    def write(self, img: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(self(img).permute(1, 2, 0))


def train_transform(image_size: int, augment: bool = True, resize_size: int = 0):
    """uint8 CHW tensor -> uint8 CHW crop: RandomResizedCrop + horizontal flip (or the eval path)."""
    spec = preprocess_spec(image_size, resize_size)
    return TrainTransform(spec) if augment else EvalTransform(spec)


def eval_transform(image_size: int, resize_size: int = 0):
    """The seed's eval path on uint8 CHW tensors: resize the short side, center crop (normalise later, per batch)."""
    return EvalTransform(preprocess_spec(image_size, resize_size))


class ImageDataset(torch.utils.data.Dataset):
    """Images as uint8 CHW tensors. A file that fails to decode yields None (skipped by `collate`),
    or raises DataError when strict. With cache (a folder from `plan_cache`), decoded pixels are
    kept there for the next epochs.

    The DataLoader fetches whole batches through `__getitems__`: each image is read (into one reused
    buffer) and transformed straight into its slot of one NHWC uint8 batch in shared memory (a reused
    ring slot for the train loader, else a segment of its own), so the batch crosses to the main
    process without the stack and the copy into shared memory that a list of per-image tensors costs;
    the main process gets it as an NCHW view in channels_last layout."""

    def __init__(self, paths, targets, transform, draft_size=None, strict=False, cache=None):
        self.paths, self.targets = paths, targets
        self.transform, self.draft_size, self.strict, self.cache = transform, draft_size, strict, cache
        self._buf = ReadBuffer()  # the read buffer of cached entries (each forked worker has its own copy)
        self.ring = None  # reused shared-memory batch slots (make_loader sets them for the train loader)

    def __len__(self):
        return len(self.paths)

    def load(self, index, into=None):
        """The decoded (cached) image, or None when unreadable (DataError when strict). With `into`
        (see data_cache.read_entry) a cached image is a view of that buffer, valid until its next use."""
        path = self.paths[index].decode()
        try:
            if self.cache is not None:
                return cached_decode(path, self.draft_size, self.cache, into)
            return decode(path, self.draft_size)
        except Exception as exc:  # PIL raises many types for corrupt data
            if self.strict:
                raise unreadable(path, exc) from exc
            return None

    def __getitem__(self, index):
        img = self.load(index)
        if img is None:
            return None, index
        return (self.transform(img) if self.transform else img, int(self.targets[index])), index

    def __getitems__(self, indexes):
        write = getattr(self.transform, "write", None)
        if write is None:  # a transform of another kind: per-image tensors, stacked by `collate`
            return [self[i] for i in indexes]
        h, w = self.transform.size
        worker = torch.utils.data.get_worker_info()
        taken = self.ring.take(worker.id, len(indexes)) if self.ring is not None and worker is not None else None
        if taken is not None:  # a reused shared-memory slot (localsage.container.batch_ring)
            slot, batch = taken
        else:  # a shared-memory segment of its own in a worker (the batch's final home), else private
            n = len(indexes) * h * w * 3
            storage = torch.UntypedStorage._new_shared(n) if worker is not None else torch.UntypedStorage(n)
            batch = torch.empty(0, dtype=torch.uint8).set_(storage).view(len(indexes), h, w, 3)
        good, bad = [], []
        for i in indexes:  # each image is read and written into its slot while it is still in the CPU's cache
            img = self.load(i, self._buf)
            if img is None:
                bad.append(i)
                continue
            write(img, batch[len(good)])
            good.append(i)
        if not good:
            return None, None, bad
        if taken is not None:
            return self.ring.send(slot, len(good), self.targets[good], bad)
        labels = torch.tensor([int(self.targets[i]) for i in good], dtype=torch.long)
        return batch[:len(good)].permute(0, 3, 1, 2), labels, bad


def collate(items):
    """Stack good items; report the indexes of the bad ones so the caller can count them.
    (A batch `ImageDataset.__getitems__` already assembled passes through.)"""
    if isinstance(items, (tuple, RingBatch)):
        return items
    good = [item for item, _ in items if item is not None]
    bad = [index for item, index in items if item is None]
    if not good:
        return None, None, bad
    images = torch.stack([g[0] for g in good])
    labels = torch.tensor([g[1] for g in good], dtype=torch.long)
    return images, labels, bad


def default_workers() -> int:
    return max(0, min(procs.cores(), 8))


# batches a worker has in flight (torch's prefetch_factor, default 2): 4 smooths out the moments the main
# process and the workers take the same core (the gain: docs/performance.md)
PREFETCH = 4


def reuses_batches(dataset, shuffle, workers, reuse_batches=None) -> bool:
    """Whether make_loader gives this loader's workers a batch_ring (see make_loader)."""
    return bool((shuffle if reuse_batches is None else reuse_batches) and workers > 0
                and isinstance(dataset, ImageDataset) and hasattr(dataset.transform, "write"))


def make_loader(dataset, batch_size, shuffle, workers, pin_memory=False, sampler=None, drop_last=False, seed=0,
                reuse_batches=None, prefetch=PREFETCH):
    """A DataLoader over `dataset`, each worker `prefetch` batches ahead (PREFETCH unless /dev/shm is
    short: localsage.container.shm). reuse_batches (default: shuffle, i.e. the train loader) gives an
    ImageDataset's workers reused shared-memory batch slots (localsage.container.batch_ring) for the whole run:
    shm.ring_slots(prefetch) a worker (its batches in flight, the one the loop holds, one spare); the
    eval loaders keep one segment a batch."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    if reuses_batches(dataset, shuffle, workers, reuse_batches):
        dataset.ring = Ring(workers, ring_slots(prefetch), (batch_size, *dataset.transform.size, 3))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch if workers > 0 else None,
        collate_fn=collate,
        drop_last=drop_last,
        generator=generator,
    )


def load_splits(split_dirs: dict):
    """Index train/valid/test; every problem with the layout is raised before training starts."""
    for required in ("train", "valid"):
        if required not in split_dirs:
            raise DataError(
                f"missing data channel for {required!r}: give channels train/valid[/test] "
                "or one 'training' channel holding train/ valid/ test/"
            )
    indexed = {split: scan_split(path, split) for split, path in split_dirs.items()}
    folders = check_classes({split: idx[2] for split, idx in indexed.items()})
    return indexed, folders
