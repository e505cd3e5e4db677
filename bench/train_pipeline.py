"""Training pipeline benchmark: ours vs the seed's, measured side by side in one run.

1. Input pipeline images/s on dogImages-sized JPEGs (500x375, quality 90, generated):
   seed  = ImageFolder + Resize((224,224)) + ToTensor + Normalize, PIL, num_workers=0
   ours  = localsage.data's train path (RandomResizedCrop + flip) in uint8 workers sized to the cores:
           libjpeg-turbo decode to tensors, torch uint8 resize, per-batch normalisation
           and the decoded-image cache (data-cache=decoded): epoch 1 decodes and fills it, epoch 2 reads it
   ours_nocache = the same with data-cache=off (every epoch decodes)
   ours_eval = the same loader with the eval transform (resize 256, center crop 224)
Each pipeline side makes two passes (epochs) over the images; the table shows each side's epoch 1
and its best epoch (seed: both epochs cost the same; ours: epoch 2 reads the cache).
2. Train-step images/s, same model and batch:
   naive = fp32 NCHW loop, default threads, SGD (Nesterov momentum, weight decay) in torch's default implementation
   ours  = localsage.train's settings (channels_last, threads = cores, the same SGD fused);
           ours_bf16 adds amp=bf16 (CPU autocast). torch.compile was measured and left out: on this CPU
           it took 61 s to compile and gave no faster step (15.2 vs 15-16 img/s median).
Each side runs in its own subprocess (peak RSS of the process tree, workers included), the sides
alternate for --rounds rounds and the best round of each is reported (train step: the median of --steps steps).

    python bench/train_pipeline.py [--images 512] [--steps 10] [--skip-train] [--model resnet18] [--batch 32] [--rounds 2] [--json out.json]
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


def tree_memory(proc: psutil.Process) -> tuple:
    """(RSS, PSS) of a process and its children. RSS counts pages shared between the parent and its
    forked DataLoader workers (torch's libraries, the dataset index) once per process; PSS splits
    each shared page between the processes that map it, so it is the tree's real footprint."""
    rss = pss = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            info = p.memory_full_info()
            rss, pss = rss + info.rss, pss + info.pss
        except psutil.NoSuchProcess:
            pass
    return rss, pss


def run_side(args: list) -> dict:
    """Run one side in a subprocess, sampling the memory of its process tree."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = [0, 0]

    def sample():
        while proc.poll() is None:
            try:
                rss, pss = tree_memory(ps)
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
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
    result["peak_rss_mb"], result["peak_pss_mb"] = round(peak[0] / 2**20), round(peak[1] / 2**20)
    return result


def make_images(root: Path, count: int):
    from localsage.data import make_photo_like

    for i in range(count):
        folder = root / "train" / f"{i % 4 + 1:03d}.Breed_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        make_photo_like(folder / f"img_{i:05d}.jpg", 500, 375, seed=i, quality=90)


# ---------------------------------------------------------------- sides (run in subprocesses)

def side_pipeline(kind: str, root: str, batch: int, epochs: int = 2) -> dict:
    """Images/s of each of `epochs` passes over the train folder (ours: epoch 1 fills the decoded cache)."""
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
        os.environ["LOCALSAGE_CACHE_DIR"] = tempfile.mkdtemp(dir=root)
        cache = data.plan_cache({"train": paths}, "off" if kind == "ours_nocache" else "decoded")
        if kind == "ours_eval":  # the valid/test path (resize 256, center crop 224)
            ds = data.ImageDataset(paths, targets, data.eval_transform(224), draft_size=data.default_resize(224), cache=cache)
        else:  # what train.py builds for the train split (augment=true)
            ds = data.ImageDataset(paths, targets, data.train_transform(224), draft_size=224, cache=cache)
        loader = data.make_loader(ds, batch, True, data.default_workers())
        norm = data.Normalize(channels_last=True)
        unpack = lambda b: norm(b[0])  # noqa: E731
    rates = []
    for _ in range(epochs):
        n = 0
        t0 = time.time()
        for b in loader:
            x = unpack(b)
            n += x.shape[0]
        rates.append(n / (time.time() - t0))
    return {"images_per_sec": max(rates), "epoch_images_per_sec": [round(r, 1) for r in rates], "images": n}


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
    hp = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight-decay": 1e-4}
    if kind == "naive":  # torch's default (foreach) implementation
        opt = torch.optim.SGD(net.parameters(), lr=hp["lr"], momentum=hp["momentum"],
                              weight_decay=hp["weight-decay"], nesterov=True)
    else:  # train.py's optimizer: the same update, fused
        opt = train.make_optimizer(net, hp)
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
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json")
    p.add_argument("--skip-train", action="store_true", help="input pipeline only")
    a = p.parse_args()
    if a.side:
        kind, what = a.side.split(":")
        if what == "pipeline":
            print(json.dumps(side_pipeline(kind, a.root, a.batch)))
        else:
            print(json.dumps(side_train(kind, a.model, a.batch, a.steps, a.size)))
        return

    results = {"pipeline": {"seed": [], "ours": [], "ours_nocache": [], "ours_eval": []}, "train": {"naive": [], "ours": [], "ours_bf16": []}}
    with tempfile.TemporaryDirectory() as tmp:
        make_images(Path(tmp), a.images)
        common = ["--batch", str(a.batch), "--model", a.model, "--steps", str(a.steps), "--size", str(a.size)]
        for r in range(a.rounds):
            for kind in ("seed", "ours", "ours_nocache", "ours_eval"):
                results["pipeline"][kind].append(run_side(["--side", f"{kind}:pipeline", "--root", tmp, *common]))
                print(f"round {r + 1} pipeline {kind}: {results['pipeline'][kind][-1]}", flush=True)
            for kind in () if a.skip_train else ("naive", "ours", "ours_bf16"):
                results["train"][kind].append(run_side(["--side", f"{kind}:train", *common]))
                print(f"round {r + 1} train {kind}: {results['train'][kind][-1]}", flush=True)

    def best(rows):
        return max(rows, key=lambda r: r["images_per_sec"])

    summary = {"machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
               "images": a.images, "model": a.model, "batch": a.batch, "size": a.size}
    rows = (("pipeline", "pipeline", "seed", "ours"), ("pipeline_nocache", "pipeline", "seed", "ours_nocache"),
            ("pipeline_eval", "pipeline", "seed", "ours_eval"),
            ("train", "train", "naive", "ours"), ("train_bf16", "train", "naive", "ours_bf16"))
    labels = {"pipeline": "input pipeline, train transform, epoch 2 (decoded cache warm)",
              "pipeline_nocache": "input pipeline, train transform, data-cache=off",
              "pipeline_eval": "input pipeline, eval transform, epoch 2 (cache warm)",
              "train": "train step fp32", "train_bf16": "train step amp=bf16 (CPU autocast)"}
    print("\n| part | baseline img/s | ours img/s | ratio | baseline peak RSS / PSS MB | ours peak RSS / PSS MB |")
    print("|---|---|---|---|---|---|")
    for name, part, base, ours in rows:
        if not results[part][ours]:
            continue
        b, o = best(results[part][base]), best(results[part][ours])
        summary[name] = {base: b, "ours": o, "ratio": round(o["images_per_sec"] / b["images_per_sec"], 2)}
        print(f"| {labels[name]} | {b['images_per_sec']:.1f} | {o['images_per_sec']:.1f} | {summary[name]['ratio']}x "
              f"| {b['peak_rss_mb']} / {b['peak_pss_mb']} | {o['peak_rss_mb']} / {o['peak_pss_mb']} |")
    if results["pipeline"]["ours"]:
        seed1 = max(r["epoch_images_per_sec"][0] for r in results["pipeline"]["seed"])
        ours1 = max(r["epoch_images_per_sec"][0] for r in results["pipeline"]["ours"])
        summary["pipeline_epoch1"] = {"seed": seed1, "ours": ours1, "ratio": round(ours1 / seed1, 2)}
        print(f"| input pipeline, train transform, epoch 1 (decodes, fills the cache) | {seed1:.1f} | {ours1:.1f} "
              f"| {summary['pipeline_epoch1']['ratio']}x | | |")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
