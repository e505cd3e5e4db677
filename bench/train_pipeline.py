"""Training pipeline benchmark: ours vs the seed's, measured side by side in one run.

1. Input pipeline images/s on dogImages-sized JPEGs (500x375, quality 90, generated):
   seed  = ImageFolder + Resize((224,224)) + ToTensor + Normalize, PIL, num_workers=0
   ours  = localsage.container.data's train path (RandomResizedCrop + flip) in uint8 workers sized to the cores:
           libjpeg-turbo decode to tensors, torch uint8 resize, per-batch normalisation
           and the decoded-image cache (data-cache=decoded): epoch 1 decodes and fills it, epoch 2 reads it
   ours_nocache = the same with data-cache=off (every epoch decodes)
   ours_eval = the same loader with the eval transform (resize 256, center crop 224)
Each pipeline side makes two passes (epochs) over the images; the table shows each side's epoch 1
and its best epoch (seed: both epochs cost the same; ours: epoch 2 reads the cache).
2. Train-step images/s, same model and batch:
   naive = fp32 NCHW loop, default threads, SGD (Nesterov momentum, weight decay) in torch's default implementation
   ours  = localsage.container.train's settings (channels_last, threads = cores, the same SGD fused);
           ours_bf16 adds amp=bf16 (CPU autocast). torch.compile was measured and left out: on this CPU
           it took 61 s to compile and gave no faster step (15.2 vs 15-16 img/s median).
Each side runs in its own subprocess (peak RSS and PSS of the process tree, workers included); the sides
alternate for --rounds rounds (default 5) and each round pairs the baseline with ours: the table gives
the median and the range of the per-round ratios, the per-round PSS excess of ours over the baseline,
and the load average (the machine is shared: only ratios measured side by side mean anything).
Train step: the median of --steps steps; ours gets the batch layout localsage's loader hands over
(NHWC uint8, an NCHW view in channels_last), the naive loop the seed's NCHW. The train sides of a round
run in lockstep: each sets up in its own process, then they take their steps in turn (step k of each
side before step k + 1 of any), so both sides of a ratio see the same minutes of the machine's load.

    python bench/train_pipeline.py [--images 512] [--steps 10] [--skip-train | --skip-pipeline]
        [--model resnet18] [--batch 32] [--rounds 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def _rollup(pid: int) -> tuple:
    """(RSS, PSS) bytes of one process from /proc/<pid>/smaps_rollup (one cheap read; psutil's
    memory_full_info parses the whole smaps, which costs the measured side CPU on a 2-core machine)."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


def tree_memory(proc: psutil.Process) -> tuple:
    """(RSS, PSS) of a process and its children. RSS counts pages shared between the parent and its
    forked DataLoader workers (torch's libraries, the dataset index) once per process; PSS splits
    each shared page between the processes that map it, so it is the tree's real footprint."""
    rss = pss = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            r, s = _rollup(p.pid)
            rss, pss = rss + r, pss + s
        except (OSError, psutil.NoSuchProcess):
            pass
    return rss, pss


class Side:
    """One side in a subprocess, the memory of its process tree sampled while it runs."""

    def __init__(self, args: list, lockstep: bool = False):
        self.args = args
        self.proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                                     stdin=subprocess.PIPE if lockstep else subprocess.DEVNULL)
        self.peak = [0, 0]
        self.active = threading.Event()  # sampled only while it runs: a lockstep side waiting its turn holds still
        self.active.set()
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def _sample(self):
        ps = psutil.Process(self.proc.pid)
        while self.proc.poll() is None:
            if self.active.wait(0.1):
                try:
                    rss, pss = tree_memory(ps)
                    self.peak[0], self.peak[1] = max(self.peak[0], rss), max(self.peak[1], pss)
                except psutil.NoSuchProcess:
                    break
                time.sleep(0.1)

    def line(self) -> str:
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError(f"side {self.args} failed")
        return out.strip()

    def expect(self, word: str) -> None:
        if self.line() != word:
            raise RuntimeError(f"side {self.args}: expected {word!r}")
        self.active.clear()

    def step(self) -> None:
        """Lockstep: let the side take one train step and wait for it to finish."""
        self.active.set()
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.expect("stepped")

    def result(self) -> dict:
        self.active.set()
        if self.proc.stdin:
            self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.wait()
        self.sampler.join()
        if self.proc.returncode != 0:
            raise RuntimeError(f"side {self.args} failed")
        result = json.loads(out.strip().splitlines()[-1])
        result["peak_rss_mb"], result["peak_pss_mb"] = round(self.peak[0] / 2**20), round(self.peak[1] / 2**20)
        return result


def run_side(args: list) -> dict:
    return Side(args).result()


def run_lockstep(kinds, common: list, steps: int) -> dict:
    """The train sides in lockstep: all set up in their own processes, then step k of each side runs
    in turn (the order rotating every step) while the others wait, so that every side's steps are
    timed in the same few seconds of the machine's load, not one side a minute after the other."""
    sides = {kind: Side(["--side", f"{kind}:train", "--lockstep", *common], lockstep=True) for kind in kinds}
    for side in sides.values():
        side.expect("ready")
    order = list(sides.values())
    for k in range(steps + 1):
        for side in order[k % len(order):] + order[:k % len(order)]:
            side.step()
    return {kind: side.result() for kind, side in sides.items()}


def make_images(root: Path, count: int):
    from localsage.container.demo_images import make_photo_like

    for i in range(count):
        folder = root / "train" / f"{i % 4 + 1:03d}.Breed_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        make_photo_like(folder / f"img_{i:05d}.jpg", 500, 375, seed=i, quality=90)


# ---------------------------------------------------------------- sides (run in subprocesses)

def side_pipeline(kind: str, root: str, batch: int, epochs: int = 2) -> dict:
    """Images/s of each of `epochs` passes over the train folder (ours: epoch 1 fills the decoded cache)."""
    import torch

    from localsage.container import data
    from localsage.container.data_cache import plan_cache
    from localsage.container.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalize

    if kind == "seed":
        from torchvision import datasets, transforms

        tf = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                                 transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        loader = torch.utils.data.DataLoader(datasets.ImageFolder(Path(root) / "train", tf), batch_size=batch,
                                             shuffle=True, num_workers=0)
        unpack = lambda b: b[0]  # noqa: E731 - one of two one-line variants
    else:
        paths, targets, _ = data.scan_split(Path(root) / "train", "train")
        os.environ["LOCALSAGE_CACHE_DIR"] = tempfile.mkdtemp(dir=root)
        cache = plan_cache({"train": paths}, "off" if kind == "ours_nocache" else "decoded")
        if kind == "ours_eval":  # the valid/test path (resize 256, center crop 224)
            ds = data.ImageDataset(paths, targets, data.eval_transform(224), draft_size=data.default_resize(224),
                                   cache=cache)
        else:  # what train.py builds for the train split (augment=true)
            ds = data.ImageDataset(paths, targets, data.train_transform(224), draft_size=224, cache=cache)
        loader = data.make_loader(ds, batch, True, data.default_workers())
        norm = Normalize(channels_last=True)
        unpack = lambda b: norm(b[0])  # noqa: E731 - one of two one-line variants
    rates = []
    for _ in range(epochs):
        n = 0
        t0 = time.time()
        for b in loader:
            x = unpack(b)
            n += x.shape[0]
        rates.append(n / (time.time() - t0))
    return {"images_per_sec": max(rates), "epoch_images_per_sec": [round(r, 1) for r in rates], "images": n}


def side_train(kind: str, model: str, batch: int, steps: int, size: int, lockstep: bool = False) -> dict:
    import torch
    import torchvision

    from localsage.container import data, recipe
    from localsage.container.normalize import Normalize

    torch.manual_seed(0)
    net = torchvision.models.get_model(model, num_classes=133)
    x = torch.randint(0, 255, (batch, 3, size, size), dtype=torch.uint8)
    y = torch.randint(0, 133, (batch,))
    if kind != "naive":  # what localsage's loader hands over: an NHWC uint8 batch (NCHW view, channels_last)
        x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    if kind == "naive":
        norm = Normalize()
        amp = None
    else:
        torch.set_num_threads(data.default_workers())
        net = net.to(memory_format=torch.channels_last)
        norm = Normalize(channels_last=True)
        amp = recipe.amp_dtype(torch.device("cpu"), "bf16" if kind == "ours_bf16" else "auto")
    hp = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight-decay": 1e-4}
    if kind == "naive":  # torch's default (foreach) implementation
        opt = torch.optim.SGD(net.parameters(), lr=hp["lr"], momentum=hp["momentum"],
                              weight_decay=hp["weight-decay"], nesterov=True)
    else:  # train.py's optimizer: the same update, fused
        opt = recipe.make_optimizer(net, hp)
    net.train()
    times = []
    if lockstep:
        print("ready", flush=True)
    for i in range(steps + 1):
        if lockstep and sys.stdin.readline().strip() != "go":
            raise SystemExit("lockstep: the benchmark went away")
        t0 = time.time()
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(net(norm(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.time() - t0)
        if lockstep:
            print("stepped", flush=True)
    typical = sorted(times[1:])[len(times[1:]) // 2]  # median step; the first warms up oneDNN kernels
    return {"images_per_sec": batch / typical, "amp": str(amp), "threads": torch.get_num_threads()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    p.add_argument("--skip-train", action="store_true", help="input pipeline only")
    p.add_argument("--skip-pipeline", action="store_true", help="train step only")
    p.add_argument("--lockstep", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:
        kind, what = a.side.split(":")
        if what == "pipeline":
            print(json.dumps(side_pipeline(kind, a.root, a.batch)))
        else:
            print(json.dumps(side_train(kind, a.model, a.batch, a.steps, a.size, a.lockstep)))
        return

    from localsage.container.recipe import cpu_has_bf16

    train_kinds = ("naive", "ours", "ours_bf16") if cpu_has_bf16() else ("naive", "ours")
    if "ours_bf16" not in train_kinds and not a.skip_train:
        print("amp=bf16 side skipped: this CPU has no bfloat16 instructions (emulated autocast, ~13x slower)",
              flush=True)
    load_start = [round(v, 2) for v in os.getloadavg()]
    results = {"pipeline": {"seed": [], "ours": [], "ours_nocache": [], "ours_eval": []},
               "train": {"naive": [], "ours": [], "ours_bf16": []}}
    with tempfile.TemporaryDirectory() as tmp:
        make_images(Path(tmp), a.images)
        common = ["--batch", str(a.batch), "--model", a.model, "--steps", str(a.steps), "--size", str(a.size)]
        for r in range(a.rounds):
            for kind in () if a.skip_pipeline else ("seed", "ours", "ours_nocache", "ours_eval"):
                results["pipeline"][kind].append(run_side(["--side", f"{kind}:pipeline", "--root", tmp, *common]))
                print(f"round {r + 1} pipeline {kind}: {results['pipeline'][kind][-1]}", flush=True)
            for kind, result in ({} if a.skip_train else run_lockstep(train_kinds, common, a.steps)).items():
                results["train"][kind].append(result)
                print(f"round {r + 1} train {kind}: {result}", flush=True)

    summary = {"machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
               "load_average_start_end": [load_start, [round(v, 2) for v in os.getloadavg()]],
               "images": a.images, "model": a.model, "batch": a.batch, "size": a.size, "rounds": a.rounds}
    rows = (("pipeline", "pipeline", "seed", "ours"), ("pipeline_nocache", "pipeline", "seed", "ours_nocache"),
            ("pipeline_eval", "pipeline", "seed", "ours_eval"),
            ("train", "train", "naive", "ours"), ("train_bf16", "train", "naive", "ours_bf16"))
    labels = {"pipeline": "input pipeline, train transform, epoch 2 (decoded cache warm)",
              "pipeline_nocache": "input pipeline, train transform, data-cache=off",
              "pipeline_eval": "input pipeline, eval transform, epoch 2 (cache warm)",
              "train": "train step fp32", "train_bf16": "train step amp=bf16 (CPU autocast)"}

    print(f"\n{a.rounds} rounds, each pairing both sides; ratio = median [min-max] of the per-round ratios; "
          f"load average at start {load_start}, at end {summary['load_average_start_end'][1]}")
    print("| part | baseline img/s (median) | ours img/s (median) | ratio | per-round ratios | baseline peak PSS MB "
          "| ours peak PSS MB (max excess) |")
    print("|---|---|---|---|---|---|---|")
    for name, part, base, ours in rows:
        if not results[part][ours]:
            continue
        pairs = list(zip(results[part][base], results[part][ours]))
        ratios = [o["images_per_sec"] / b["images_per_sec"] for b, o in pairs]
        excess = max(o["peak_pss_mb"] - b["peak_pss_mb"] for b, o in pairs)
        summary[name] = {"ratio_median": round(statistics.median(ratios), 2), "ratio_min": round(min(ratios), 2),
                         "ratio_max": round(max(ratios), 2), "ratios": [round(r, 2) for r in ratios],
                         base: [b for b, _ in pairs], "ours": [o for _, o in pairs], "pss_excess_max_mb": excess}
        print(f"| {labels[name]} | {statistics.median([b['images_per_sec'] for b, _ in pairs]):.1f} "
              f"| {statistics.median([o['images_per_sec'] for _, o in pairs]):.1f} "
              f"| **{statistics.median(ratios):.2f}x** [{min(ratios):.2f}-{max(ratios):.2f}] "
              f"| {' '.join(f'{r:.2f}' for r in ratios)} | {statistics.median([b['peak_pss_mb'] for b, _ in pairs])} "
              f"| {statistics.median([o['peak_pss_mb'] for _, o in pairs])} ({excess:+d}) |")
    if results["pipeline"]["ours"]:
        r1 = [o["epoch_images_per_sec"][0] / b["epoch_images_per_sec"][0]
              for b, o in zip(results["pipeline"]["seed"], results["pipeline"]["ours"])]
        summary["pipeline_epoch1"] = {"ratio_median": round(statistics.median(r1), 2), "ratio_min": round(min(r1), 2),
                                      "ratio_max": round(max(r1), 2)}
        print(f"| input pipeline, train transform, epoch 1 (decodes, fills the cache) | | "
              f"| **{statistics.median(r1):.2f}x** "
              f"[{min(r1):.2f}-{max(r1):.2f}] | {' '.join(f'{r:.2f}' for r in r1)} | | |")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
