"""Image data: ImageFolder-style splits, class names, transforms, loaders, bad-file policy, demo data.

Layout (dogImages): <split>/<NNN.Class_Name>/*.jpg for split in train, valid, test. The class index
is the sorted folder order; `001.Affenpinscher` is shown and exported as `Affenpinscher`.

Speed: workers decode JPEGs with PIL's draft mode (DCT scaling, when the target size allows) and
hand uint8 tensors to the main process; conversion to float, normalisation and channels_last
happen once per batch on the training device (`Normalize`). The dataset index is two numpy
arrays, so forked workers share it instead of copying a list of Python objects.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger("localsage.data")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(ValueError):
    pass


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


def open_rgb(path: str, draft_size: int | None = None) -> Image.Image:
    img = Image.open(path)
    if draft_size and img.format == "JPEG":
        img.draft("RGB", (draft_size, draft_size))
    return img.convert("RGB")


def train_transform(image_size: int, augment: bool = True, resize_size: int = 0):
    from torchvision.transforms import v2

    if not augment:
        return eval_transform(image_size, resize_size)
    return v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()])


def default_resize(image_size: int) -> int:
    return int(round(image_size * 256 / 224))


def eval_transform(image_size: int, resize_size: int = 0):
    """The seed's eval path: resize the short side, center crop, (normalise later, per batch)."""
    from torchvision.transforms import v2

    return v2.Compose(
        [v2.Resize(resize_size or default_resize(image_size), antialias=True), v2.CenterCrop(image_size), v2.PILToTensor()]
    )


class ImageDataset(torch.utils.data.Dataset):
    """Images as uint8 CHW tensors. A file that fails to decode yields None (skipped by `collate`),
    or raises DataError when strict."""

    def __init__(self, paths, targets, transform, draft_size=None, strict=False):
        self.paths, self.targets = paths, targets
        self.transform, self.draft_size, self.strict = transform, draft_size, strict

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index].decode()
        try:
            img = open_rgb(path, self.draft_size)
            img.load()
        except Exception as exc:  # PIL raises many types for corrupt data
            if self.strict:
                raise DataError(f"unreadable image {path}: {exc} (strict-data=true)") from exc
            return None, index
        return (self.transform(img) if self.transform else img, int(self.targets[index])), index


def collate(items):
    """Stack good items; report the indexes of the bad ones so the caller can count them."""
    good = [item for item, _ in items if item is not None]
    bad = [index for item, index in items if item is None]
    if not good:
        return None, None, bad
    images = torch.stack([g[0] for g in good])
    labels = torch.tensor([g[1] for g in good], dtype=torch.long)
    return images, labels, bad


class Normalize(torch.nn.Module):
    """uint8 NCHW batch -> normalised float batch (on the batch's device), optionally channels_last."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, channels_last=False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)
        self.channels_last = channels_last

    def forward(self, x):
        x = x.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x - self.mean) / self.std


def default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(0, min(cores, 8))


def make_loader(dataset, batch_size, shuffle, workers, pin_memory=False, sampler=None, drop_last=False, seed=0):
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
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


# ---------------------------------------------------------------- demo data

DEMO_CLASSES = (
    ("Red_circle", "circle", (220, 40, 40)),
    ("Green_square", "square", (40, 180, 60)),
    ("Blue_triangle", "triangle", (50, 80, 220)),
    ("Yellow_stripes", "hstripes", (230, 210, 40)),
    ("Magenta_checks", "checks", (200, 50, 200)),
    ("Cyan_ring", "ring", (40, 200, 210)),
    ("Orange_cross", "cross", (240, 140, 30)),
    ("Gray_vstripes", "vstripes", (140, 140, 140)),
)


def _draw(kind: str, colour, size: int, rng: random.Random) -> Image.Image:
    bg = tuple(rng.randint(0, 90) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    jitter = tuple(max(0, min(255, c + rng.randint(-35, 35))) for c in colour)
    s = rng.uniform(0.35, 0.7) * size
    cx, cy = rng.uniform(s / 2, size - s / 2), rng.uniform(s / 2, size - s / 2)
    box = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
    if kind == "circle":
        d.ellipse(box, fill=jitter)
    elif kind == "ring":
        d.ellipse(box, outline=jitter, width=max(2, int(s / 7)))
    elif kind == "square":
        d.rectangle(box, fill=jitter)
    elif kind == "triangle":
        d.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=jitter)
    elif kind == "cross":
        w = s / 6
        d.rectangle((cx - w, box[1], cx + w, box[3]), fill=jitter)
        d.rectangle((box[0], cy - w, box[2], cy + w), fill=jitter)
    elif kind in ("hstripes", "vstripes"):
        step = max(4, size // rng.randint(6, 10))
        for k in range(0, size, step * 2):
            rect = (0, k, size, k + step) if kind == "hstripes" else (k, 0, k + step, size)
            d.rectangle(rect, fill=jitter)
    elif kind == "checks":
        step = max(4, size // rng.randint(4, 7))
        for i in range(0, size, step):
            for j in range(0, size, step):
                if (i // step + j // step) % 2 == 0:
                    d.rectangle((i, j, i + step, j + step), fill=jitter)
    arr = np.asarray(img, dtype=np.int16)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 18, arr.shape)
    img = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.0)))


def make_demo_data(root, classes=6, per_class=60, size=96, seed=0, corrupt=0, imbalance=1.0,
                   splits=(("train", 0.7), ("valid", 0.15), ("test", 0.15))) -> Path:
    """Write a small, learnable ImageFolder set with dogImages-style names; returns root.

    corrupt: that many broken files (truncated JPEG, text named .jpg) added to train.
    imbalance: the first class gets per_class * imbalance images, the others per_class.
    """
    if not 2 <= classes <= len(DEMO_CLASSES):
        raise ValueError(f"classes must be between 2 and {len(DEMO_CLASSES)}")
    root = Path(root)
    rng = random.Random(seed)
    for ci, (name, kind, colour) in enumerate(DEMO_CLASSES[:classes]):
        folder = f"{ci + 1:03d}.{name}"
        n = int(round(per_class * imbalance)) if ci == 0 else per_class
        start = 0
        for si, (split, frac) in enumerate(splits):
            count = n - start if si == len(splits) - 1 else max(1, int(round(n * frac)))
            out = root / split / folder
            out.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                _draw(kind, colour, size, rng).save(out / f"{name}_{start + k:05d}.jpg", quality=90)
            start += count
    first = root / "train" / f"001.{DEMO_CLASSES[0][0]}"
    for k in range(corrupt):
        bad = first / f"corrupt_{k:03d}.jpg"
        if k % 2 == 0:
            good = _draw("circle", (200, 30, 30), size, rng)
            good.save(bad, quality=90)
            bad.write_bytes(bad.read_bytes()[: 200])  # truncated: header only
        else:
            bad.write_text("this is not an image\n")
    return root


def make_photo_like(path, width=500, height=375, seed=0, quality=90):
    """A dogImages-sized JPEG with photo-like detail (for benchmarks)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((width, height), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 12, (height, width, 3))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=quality)
