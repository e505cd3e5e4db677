"""Image data: ImageFolder-style splits, class names, transforms, loaders, bad-file policy, demo data.

Layout (dogImages): <split>/<NNN.Class_Name>/*.jpg for split in train, valid, test. The class index
is the sorted folder order; `001.Affenpinscher` is shown and exported as `Affenpinscher`.

Speed: workers decode JPEGs with libjpeg-turbo straight into uint8 tensors (torchvision.io; PIL's
DCT-scaled draft decode for photos at least twice the target size; PIL for other formats), resize
and crop those tensors with torch's vectorised uint8 kernels (about 4x cheaper than PIL's resize
here), and hand uint8 batches to the main process; conversion to float, normalisation and
channels_last happen once per batch on the training device (`Normalize`). The dataset index is two numpy
arrays, so forked workers share it instead of copying a list of Python objects.
"""
from __future__ import annotations

import io
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


def decode(path: str, draft_size: int | None = None) -> torch.Tensor:
    """An image file as a uint8 RGB CHW tensor. Raises on unreadable, truncated or corrupt data.

    JPEGs decode with torchvision's libjpeg-turbo (bit-identical to PIL's decode, faster); one whose
    shorter side is at least 2 * draft_size decodes DCT-scaled through PIL's draft (1/2, 1/4, 1/8,
    both sides kept >= draft_size), which is the call the serving handler makes too. Anything
    torchvision's decoder refuses goes through PIL, so a file is skipped only when PIL fails too.
    (torchvision 0.29 marks torchvision.io's decoders deprecated in favour of TorchCodec; the
    pinned version has them.)"""
    from torchvision.io import ImageReadMode, decode_jpeg

    with open(path, "rb") as f:
        raw = f.read()
    img = Image.open(io.BytesIO(raw))  # parses the header only
    if img.format == "JPEG":
        if not (draft_size and min(img.size) >= 2 * draft_size):
            try:
                return decode_jpeg(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB)
            except RuntimeError:
                pass  # PIL below decides: a variant libjpeg-turbo refuses, or really corrupt
        if draft_size:
            img.draft("RGB", (draft_size, draft_size))
    img = img.convert("RGB")
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def train_transform(image_size: int, augment: bool = True, resize_size: int = 0):
    """uint8 CHW tensor -> uint8 CHW crop: RandomResizedCrop + horizontal flip (or the eval path)."""
    from torchvision.transforms import v2

    if not augment:
        return eval_transform(image_size, resize_size)
    return v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()])


def default_resize(image_size: int) -> int:
    return int(round(image_size * 256 / 224))


def eval_transform(image_size: int, resize_size: int = 0):
    """The seed's eval path on uint8 CHW tensors: resize the short side, center crop (normalise later, per batch)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(resize_size or default_resize(image_size), antialias=True), v2.CenterCrop(image_size)])


# ---------------------------------------------------------------- decoded-image cache
#
# Decoding is most of a worker's time per image (libjpeg ~1.5 ms for a 500x375 photo here vs
# ~0.45 ms for the random crop + resize). Epochs after the first read what `decode` returned from
# a raw file instead (~0.15 ms): the cache holds exactly the decoded pixels, so a cached and an
# uncached epoch see bit-identical images. One file per (image path, size, mtime, draft size),
# written to a temp name and renamed (workers, DDP ranks and concurrent tuning trials share it
# safely); a changed source file gets a new key. Lives in $LOCALSAGE_CACHE_DIR
# (default <tmp>/localsage-cache) and survives the job, so later jobs and trials start warm.

CACHE_HEADER = 8  # uint16 channels, height, width, pad


def cache_dir() -> Path:
    import tempfile

    return Path(os.environ.get("LOCALSAGE_CACHE_DIR") or Path(tempfile.gettempdir()) / "localsage-cache")


def cache_estimate(paths) -> int:
    """Bytes the decoded cache needs for these files (JPEG photos decode to ~10-15x their size)."""
    return sum(os.stat(p).st_size for p in paths) * 15


def plan_cache(paths_by_split: dict, mode: str):
    """The cache folder to use, or None (mode off, or too little free disk: logged)."""
    if mode == "off":
        return None
    import shutil

    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    need = sum(cache_estimate(p) for p in paths_by_split.values())
    free = shutil.disk_usage(root).free
    if free < need + 2**30:
        log.warning("decoded-image cache off: %s has %.1f GB free, the cache needs about %.1f GB (+1 GB margin); "
                    "set LOCALSAGE_CACHE_DIR to a larger disk", root, free / 1e9, need / 1e9)
        return None
    log.info("decoded-image cache: %s (up to about %.1f GB)", root, need / 1e9)
    return root


def _cache_key(path: str, draft_size) -> str:
    import hashlib

    st = os.stat(path)
    ident = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{draft_size or 0}"
    return hashlib.sha1(ident.encode()).hexdigest()


def cached_decode(path: str, draft_size, root: Path) -> torch.Tensor:
    """`decode`, read from / written to the cache under root."""
    key = _cache_key(path, draft_size)
    file = root / key[:2] / f"{key}.u8"
    try:
        with open(file, "rb") as f:
            raw = bytearray(f.read())
        c, h, w, _ = np.frombuffer(raw, dtype=np.uint16, count=4)
        if len(raw) == CACHE_HEADER + int(c) * int(h) * int(w):
            return torch.frombuffer(raw, dtype=torch.uint8, offset=CACHE_HEADER).view(int(c), int(h), int(w))
    except (FileNotFoundError, ValueError):
        pass
    img = decode(path, draft_size)
    try:
        file.parent.mkdir(exist_ok=True)
        tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(np.array([*img.shape, 0], dtype=np.uint16).tobytes())
            f.write(img.contiguous().numpy().tobytes())
        os.replace(tmp, file)
    except OSError as exc:  # a full disk slows training down, it does not stop it
        log.warning("could not write the decoded-image cache (%s): %s", file, exc)
    return img


class ImageDataset(torch.utils.data.Dataset):
    """Images as uint8 CHW tensors. A file that fails to decode yields None (skipped by `collate`),
    or raises DataError when strict. With cache (a folder from `plan_cache`), decoded pixels are
    kept there for the next epochs."""

    def __init__(self, paths, targets, transform, draft_size=None, strict=False, cache=None):
        self.paths, self.targets = paths, targets
        self.transform, self.draft_size, self.strict, self.cache = transform, draft_size, strict, cache

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index].decode()
        try:
            if self.cache is not None:
                img = cached_decode(path, self.draft_size, self.cache)
            else:
                img = decode(path, self.draft_size)
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
        # mean/std shift + x * (1/std): one fused pass from uint8 straight into the float output in its
        # final memory format (one allocation a batch); within an ulp of (x - mean) / std and 3-10x
        # cheaper than the float copy, subtract, divide, channels_last copy it replaces. The serving
        # handler's `_to_tensor` does the same arithmetic (its pixels match training's).
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=fmt)
        return torch.addcmul(-self.mean / self.std, x, 1 / self.std, out=out)


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
