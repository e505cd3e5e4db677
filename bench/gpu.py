"""GPU benchmark (issue 2), one prepared run on a CUDA machine; every figure is written as it is measured.

1. ResNet50 train-step images/s at 224 px on synthetic uint8 batches (the loader's output), normalised
   on the GPU as train.py does: naive fp32 NCHW at batch 64 vs channels_last with AMP (bf16; fp16 +
   GradScaler) at batch 64/128/256, peak GPU memory of each; optionally torch.compile (--compile).
2. End to end through the runner (process backend): `localsage train` on generated dogImages-sized
   photos (500x375 JPEG q90), resnet50 weights=none, amp=auto, with data-cache=decoded and off:
   images/s per epoch from metrics.jsonl (includes waiting for the loader).

    python bench/gpu.py --out DIR [--compile] [--photos 2048]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def step_bench(batch, amp, channels_last, compile_=False, steps=20, warmup=6, arch="resnet50", size=224):
    import torch
    import torchvision

    from localsage import data

    torch.manual_seed(0)
    dev = torch.device("cuda")
    net = torchvision.models.get_model(arch, num_classes=133).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = torch.compile(net) if compile_ else net
    norm = data.Normalize(channels_last=channels_last).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
    x = torch.randint(0, 255, (batch, 3, size, size), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 133, (batch,), device=dev)
    torch.cuda.reset_peak_memory_stats()
    t_first = time.time()
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.time()
            warm_s = t0 - t_first
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(norm(x)), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    torch.cuda.synchronize()
    dt = time.time() - t0
    out = {"arch": arch, "batch": batch, "amp": amp or "off", "channels_last": channels_last, "compile": compile_,
           "images_per_sec": round(batch * steps / dt, 1), "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
           "warmup_s": round(warm_s, 1)}
    del model, net, opt
    torch.cuda.empty_cache()
    return out


def write(out: Path, name: str, obj):
    (out / name).write_text(json.dumps(obj, indent=2))
    print(json.dumps(obj), flush=True)


def make_photos(root: Path, count: int, classes: int = 8):
    from localsage.data import make_photo_like

    splits = (("train", 0.8), ("valid", 0.1), ("test", 0.1))
    i = 0
    for split, frac in splits:
        for k in range(int(count * frac)):
            folder = root / split / f"{k % classes + 1:03d}.Breed_{k % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            make_photo_like(folder / f"img_{i:05d}.jpg", 500, 375, seed=i, quality=90)
            i += 1


def e2e(out: Path, photos: int):
    root = Path("/tmp/localsage-gpu-photos")
    if not (root / "train").exists():
        t0 = time.time()
        make_photos(root, photos)
        print(f"generated {photos} photos in {time.time() - t0:.0f}s", flush=True)
    results = []
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "LOCALSAGE_CACHE_DIR": "/tmp/localsage-gpu-cache"}
    for cache in ("decoded", "off"):
        name = f"gpu-e2e-{cache}"
        hp = {"arch": "resnet50", "weights": "none", "epochs": "3", "batch-size": "128", "lr": "0.001",
              "debug": "false", "data-cache": cache}
        # the runner's process backend, called from Python (the CLI's debugger commands need smdebug)
        code = ("import sys, json; from localsage import runner; r = runner.train(sys.argv[1], json.loads(sys.argv[2]), "
                "name=sys.argv[3], jobs_dir='/tmp/localsage-gpu-jobs', echo=True); print(r['TrainingJobStatus'], r.get('FailureReason'))")
        cmd = [sys.executable, "-c", code, str(root), json.dumps(hp), name]
        t0 = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        job = Path("/tmp/localsage-gpu-jobs") / name
        (out / f"{name}.log").write_text(proc.stdout[-20000:] + "\n--- stderr ---\n" + proc.stderr[-20000:])
        metrics = job / "output/data/metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        results.append({"data-cache": cache, "rc": proc.returncode, "wall_s": round(time.time() - t0, 1),
                        "epochs": [{k: r.get(k) for k in ("epoch", "images_per_sec", "epoch_time", "train_loss", "valid_acc")}
                                   for r in rows if "images_per_sec" in r]})
        write(out, "e2e.json", results)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--photos", type=int, default=2048)
    p.add_argument("--skip", default="", help="comma list of parts to skip: steps,e2e")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    write(out, "device.json", {"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
                               "cpus": os.cpu_count()})
    skip = set(a.skip.split(","))
    if "steps" not in skip:
        rows = []
        configs = [(64, None, False), (64, None, True), (64, "bf16", True), (128, "bf16", True),
                   (256, "bf16", True), (128, "fp16", True)]
        for batch, amp, cl in configs:
            rows.append(step_bench(batch, amp, cl))
            write(out, "steps.json", rows)
        if a.compile:
            rows.append(step_bench(128, "bf16", True, compile_=True))
            write(out, "steps.json", rows)
    if "e2e" not in skip:
        e2e(out, a.photos)


if __name__ == "__main__":
    main()
