"""Generated image sets: the learnable demo set (dogImages-style names) and photo-like JPEGs for benchmarks.
(Re-exported by localsage.container.data.)"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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
