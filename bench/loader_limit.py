"""The input pipeline against this machine's limit, measured in one run.

The limit: what the cores could do if they did nothing but the unavoidable per-image work, measured
with single-threaded loops on the same generated images (500x375 q90 JPEGs, 224 px train crops):
  decode-only   libjpeg-turbo decode (localsage.container.decode)                       - the cache-off work
  read-only     reading the decoded pixels back from the decoded-image cache  - the cache-warm work
                (into one reused buffer, as the loader's workers do)
  resize-only   RandomResizedCrop + flip of a decoded image (TrainTransform)  - both
  limit         cores / (decode + resize) with data-cache=off, cores / (read + resize) with the cache warm
Then our pipeline (localsage.container.data's train loader, workers sized to the cores, normalised per batch
as train.py does) runs four epochs in a subprocess and is printed as a fraction of each limit
(cache warm: the median of epochs 2-4, epoch 1 fills the cache; data-cache=off: every epoch decodes,
the median of all four). 2,048 images by default: a 512-image epoch is 16 batches of 32, and the
start and end of an epoch, when some workers have nothing to do, weigh a tenth of it. Rounds
alternate loops and pipeline; the median of the rounds is printed with the range, and the load
average beside them (the machine is shared).

    python bench/loader_limit.py [--images 2048] [--rounds 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def loops(root: str) -> dict:
    """Seconds per image of each stage, one thread."""
    import torch

    from localsage.container import data, data_cache
    from localsage.container.data_cache import ReadBuffer, cached_decode
    from localsage.container.decode import decode

    torch.set_num_threads(1)
    paths, _, _ = data.scan_split(Path(root) / "train", "train")
    files = [p.decode() for p in paths]
    cache = data_cache.private_dir(Path(tempfile.mkdtemp(dir=root)))
    images = [cached_decode(f, 224, cache) for f in files]  # fills the cache, warms the page cache
    tf = data.train_transform(224)
    out = torch.empty((224, 224, 3), dtype=torch.uint8)
    random.seed(0)

    def per_image(fn, items):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        return (time.perf_counter() - t0) / len(items)

    buf = ReadBuffer()  # as the loader's workers read entries
    return {"decode": per_image(lambda f: decode(f, 224), files),
            "read": per_image(lambda f: cached_decode(f, 224, cache, buf), files),
            "resize": per_image(lambda img: tf.write(img, out), images)}


def pipeline(root: str, cache_mode: str) -> dict:
    from localsage.container import data
    from localsage.container.data_cache import plan_cache
    from localsage.container.normalize import Normalize

    paths, targets, _ = data.scan_split(Path(root) / "train", "train")
    os.environ["LOCALSAGE_CACHE_DIR"] = tempfile.mkdtemp(dir=root)
    cache = plan_cache({"train": paths}, cache_mode)
    ds = data.ImageDataset(paths, targets, data.train_transform(224), draft_size=224, cache=cache)
    loader = data.make_loader(ds, 32, True, data.default_workers())
    norm = Normalize(channels_last=True)
    rates = []
    for _ in range(4):
        n, t0 = 0, time.perf_counter()
        for images, _, _ in loader:
            n += norm(images).shape[0]
        rates.append(n / (time.perf_counter() - t0))
    return {"epoch_images_per_sec": rates, "workers": data.default_workers()}


def sub(what: str, root: str, extra=()) -> dict:
    out = subprocess.run([sys.executable, __file__, "--side", what, "--root", root, *extra],
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--cache", default="decoded", help=argparse.SUPPRESS)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    a = p.parse_args()
    if a.side == "loops":
        print(json.dumps(loops(a.root)))
        return
    if a.side == "pipeline":
        print(json.dumps(pipeline(a.root, a.cache)))
        return

    sys.path.insert(0, str(HERE))
    from localsage.core import procs
    from spread import spread_text
    from train_pipeline import make_images

    cores = procs.cores()
    load_start = [round(v, 2) for v in os.getloadavg()]
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        make_images(Path(tmp), a.images)
        for r in range(a.rounds):
            st = sub("loops", tmp)
            warm = statistics.median(sub("pipeline", tmp, ["--cache", "decoded"])["epoch_images_per_sec"][1:])
            off = statistics.median(sub("pipeline", tmp, ["--cache", "off"])["epoch_images_per_sec"])
            limit_warm = cores / (st["read"] + st["resize"])
            limit_off = cores / (st["decode"] + st["resize"])
            rounds.append({**{k: v * 1e3 for k, v in st.items()}, "limit_warm": limit_warm, "limit_off": limit_off,
                           "ours_warm": warm, "ours_off": off, "fraction_warm": warm / limit_warm,
                           "fraction_off": off / limit_off})
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.3g}" for k, v in rounds[-1].items()), flush=True)
    load_end = [round(v, 2) for v in os.getloadavg()]

    def row(key, fmt="{:.3g}"):
        values = [x[key] for x in rounds]
        return spread_text(values, fmt)

    print(f"\n{cores} cores, {a.rounds} rounds, median [range]; load average at start {load_start}, at end {load_end}")
    print("| per image, one core | ms |\n|---|---|")
    for key in ("decode", "read", "resize"):
        print(f"| {key}-only | {row(key)} |")
    print("\n| | limit img/s | ours img/s | ours / limit |\n|---|---|---|---|")
    print(f"| cache warm (read + resize) | {row('limit_warm', '{:.0f}')} | {row('ours_warm', '{:.0f}')} "
          f"| {row('fraction_warm', '{:.0%}')} |")
    print(f"| data-cache=off (decode + resize) | {row('limit_off', '{:.0f}')} | {row('ours_off', '{:.0f}')} "
          f"| {row('fraction_off', '{:.0%}')} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"cores": cores, "load_average_start_end": [load_start, load_end],
                                            "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
