"""Training pipeline benchmark: ours vs the seed's, measured side by side in one run.

1. Input pipeline images/s on dogImages-sized JPEGs (500x375, quality 90, generated):
   seed  = ImageFolder + Resize((224,224)) + ToTensor + Normalize, PIL, num_workers=0
   ours  = localsage.data (uint8 workers sized to the cores, draft decode, per-batch normalisation)
2. Train-step images/s, same model and batch:
   naive = fp32 NCHW loop, default threads
   ours  = localsage.train's settings (channels_last, threads = cores); ours_bf16 adds amp=bf16 (CPU autocast)
Each side runs in its own subprocess (peak RSS of the process tree, workers included), the sides
alternate for --rounds rounds and the best round of each is reported.

    python bench/train_pipeline.py [--images 256] [--model resnet18] [--batch 32] [--rounds 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_side(args: list) -> dict:
    """Run one side in a subprocess, sampling the RSS of its process tree."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = [0]

    def sample():
        while proc.poll() is None:
            try:
                peak[0] = max(peak[0], tree_rss(ps))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    t.join()
    if proc.returncode != 0:
        raise RuntimeError(f"side {args} failed")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = round(peak[0] / 2**20)
    return result


def make_images(root: Path, count: int):
    from localsage.data import make_photo_like

    for i in range(count):
        folder = root / "train" / f"{i % 4 + 1:03d}.Breed_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        make_photo_like(folder / f"img_{i:05d}.jpg", 500, 375, seed=i, quality=90)


# ---------------------------------------------------------------- sides (run in subprocesses)

def side_pipeline(kind: str, root: str, batch: int) -> dict:
    import torch

    from localsage import data

    if kind == "seed":
        from torchvision import datasets, transforms

        tf = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                                 transforms.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])
        loader = torch.utils.data.DataLoader(datasets.ImageFolder(Path(root) / "train", tf), batch_size=batch,
                                             shuffle=True, num_workers=0)
        unpack = lambda b: b[0]  # noqa: E731
    else:
        paths, targets, _ = data.scan_split(Path(root) / "train", "train")
        ds = data.ImageDataset(paths, targets, data.eval_transform(224), draft_size=data.default_resize(224))
        loader = data.make_loader(ds, batch, True, data.default_workers())
        norm = data.Normalize(channels_last=True)
        unpack = lambda b: norm(b[0])  # noqa: E731
    n = 0
    t0 = time.time()
    for b in loader:
        x = unpack(b)
        n += x.shape[0]
    return {"images_per_sec": n / (time.time() - t0), "images": n}


def side_train(kind: str, model: str, batch: int, steps: int, size: int) -> dict:
    import torch
    import torchvision

    from localsage import data, train

    torch.manual_seed(0)
    net = torchvision.models.get_model(model, num_classes=133)
    x = torch.randint(0, 255, (batch, 3, size, size), dtype=torch.uint8)
    y = torch.randint(0, 133, (batch,))
    if kind == "naive":
        norm = data.Normalize()
        amp = None
    else:
        torch.set_num_threads(data.default_workers())
        net = net.to(memory_format=torch.channels_last)
        norm = data.Normalize(channels_last=True)
        amp = train.amp_dtype(torch.device("cpu"), "bf16" if kind == "ours_bf16" else "auto")
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net.train()
    times = []
    for i in range(steps + 1):
        t0 = time.time()
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(net(norm(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.time() - t0)
    best = min(times[1:])  # first step warms up oneDNN kernels
    return {"images_per_sec": batch / best, "amp": str(amp), "threads": torch.get_num_threads()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json")
    a = p.parse_args()
    if a.side:
        kind, what = a.side.split(":")
        if what == "pipeline":
            print(json.dumps(side_pipeline(kind, a.root, a.batch)))
        else:
            print(json.dumps(side_train(kind, a.model, a.batch, a.steps, a.size)))
        return

    results = {"pipeline": {"seed": [], "ours": []}, "train": {"naive": [], "ours": [], "ours_bf16": []}}
    with tempfile.TemporaryDirectory() as tmp:
        make_images(Path(tmp), a.images)
        common = ["--batch", str(a.batch), "--model", a.model, "--steps", str(a.steps), "--size", str(a.size)]
        for r in range(a.rounds):
            for kind in ("seed", "ours"):
                results["pipeline"][kind].append(run_side(["--side", f"{kind}:pipeline", "--root", tmp, *common]))
                print(f"round {r + 1} pipeline {kind}: {results['pipeline'][kind][-1]}", flush=True)
            for kind in ("naive", "ours", "ours_bf16"):
                results["train"][kind].append(run_side(["--side", f"{kind}:train", *common]))
                print(f"round {r + 1} train {kind}: {results['train'][kind][-1]}", flush=True)

    def best(rows):
        return max(rows, key=lambda r: r["images_per_sec"])

    summary = {"machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
               "images": a.images, "model": a.model, "batch": a.batch, "size": a.size}
    for part, (base, ours) in (("pipeline", ("seed", "ours")), ("train", ("naive", "ours"))):
        b, o = best(results[part][base]), best(results[part][ours])
        summary[part] = {base: b, "ours": o, "ratio": round(o["images_per_sec"] / b["images_per_sec"], 2)}
    bf = best(results["train"]["ours_bf16"])
    summary["train_bf16"] = {"ours": bf, "ratio": round(bf["images_per_sec"] / summary["train"]["naive"]["images_per_sec"], 2)}
    print("\n| part | baseline img/s | ours img/s | ratio | baseline peak RSS MB | ours peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for part, base in (("pipeline", "seed"), ("train", "naive")):
        s = summary[part]
        print(f"| {part} | {s[base]['images_per_sec']:.1f} | {s['ours']['images_per_sec']:.1f} | {s['ratio']}x "
              f"| {s[base]['peak_rss_mb']} | {s['ours']['peak_rss_mb']} |")
    s = summary["train_bf16"]
    print(f"| train, amp=bf16 (CPU autocast) | {summary['train']['naive']['images_per_sec']:.1f} | "
          f"{s['ours']['images_per_sec']:.1f} | {s['ratio']}x | {summary['train']['naive']['peak_rss_mb']} | {s['ours']['peak_rss_mb']} |")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
