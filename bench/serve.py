"""Serving benchmark: our handler vs a seed-style handler vs a user's inference.py, same weights, one TorchServe.

    python bench/serve.py [--arch resnet18] [--concurrency 8] [--requests 240] [--duration 90]

One TorchServe (loopback only) serves two models built from the same state_dict (random init,
133 classes like dogImages, 224 px crop):
  * ours: serve/handler.py as exported (resize 256 + center crop 224 = the eval transform,
    JPEG draft decode, channels_last, conv-bn folding, torch threads = CPUs / workers,
    dynamic batching from model-config.yaml)
  * seed: the seed's inference-script style — PIL Resize((224, 224)), ToTensor, Normalize, fp32,
    one image per call (batchSize 1), torch's default threads, workers = CPU count (the
    SageMaker PyTorch toolkit's default)
  * script: examples/dog-breeds/inference.py (model_fn/input_fn/predict_fn/output_fn) through
    serve/script_handler.py with the toolkit's batching (1 worker, batch 1 / 100 ms)
  * script-batched: the same file plus `BATCH_PREDICT = True` (predict_fn once per TorchServe batch,
    batch 8 / 5 ms)
and, after the server stops, the bare batched forward of the same model in this process (batch 8,
preprocessed tensors, inference_mode, all CPUs): the limit; each side is reported as served / bare.
The load generator is a real HTTP client (threads, keep-alive), bounded by --requests and
--duration, sending generated dogImages-sized JPEGs (500x375, quality 90). It reports req/s,
p50/p95/p99 latency, errors, and each model's worker RSS idle (after warm-up) and after load.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import requests
import torch
import torchvision
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from localsage.container import export
from localsage.host import torchserve_script  # noqa: E402 - after the sys.path insert

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "dog-breeds" / "inference.py"
SIDES = ("seed", "ours", "script", "script-batched")

SEED_HANDLER = '''
"""Seed-style handler (benchmark baseline): PIL Resize((224,224)), fp32, batch 1, raw logits."""
import io, json, os
import torch, torchvision
from PIL import Image
from torchvision import transforms

_model = None
_tf = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                          transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


def handle(data, context):
    global _model
    if _model is None:
        d = context.system_properties["model_dir"]
        cfg = json.load(open(os.path.join(d, "model_config.json")))
        _model = torchvision.models.get_model(cfg["arch"], num_classes=cfg["num_classes"], weights=None)
        _model.load_state_dict(torch.load(os.path.join(d, "model.pth"), map_location="cpu"))
        _model.eval()
    if data is None:
        return None
    out = []
    for row in data:
        body = row.get("body") or row.get("data")
        img = Image.open(io.BytesIO(body)).convert("RGB")
        with torch.no_grad():
            logits = _model(_tf(img).unsqueeze(0))
        out.append(json.dumps(logits[0].tolist()))
    return out
'''


def make_model_dirs(root: Path, arch: str, num_classes: int, seed_workers: int):
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=num_classes, weights=None).eval()
    classes = [f"{i + 1:03d}.Breed_{i}" for i in range(num_classes)]
    cfg = {"arch": arch, "num_classes": num_classes, "image_size": 224, "resize_size": 256,
           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "classes": classes}
    ours, seed = root / "ours", root / "seed"
    for d in (ours, seed):
        d.mkdir(parents=True)
        torch.save(model.state_dict(), d / "model.pth")
        (d / "model_config.json").write_text(json.dumps(cfg))
        (d / "index_to_name.json").write_text(json.dumps({str(i): c for i, c in enumerate(classes)}))
    export.make_torchserve_dir(ours)  # our defaults: 1 worker, batch 8, delay 5 ms
    (seed / "handler.py").write_text(SEED_HANDLER)
    (seed / "MAR-INF").mkdir()
    (seed / "MAR-INF" / "MANIFEST.json").write_text(json.dumps({
        "runtime": "python", "model": {"modelName": "seed", "serializedFile": "model.pth", "handler": "handler.py",
                                       "modelVersion": "1.0", "configFile": "model-config.yaml"}}))
    (seed / "model-config.yaml").write_text(
        f"minWorkers: {seed_workers}\nmaxWorkers: {seed_workers}\nbatchSize: 1\nmaxBatchDelay: 100\n"
        "responseTimeout: 120\n")
    scripts = {}
    for name, extra in (("script", ""), ("script-batched", "\nBATCH_PREDICT = True\n")):
        d = root / name  # a plain SageMaker model dir: model.pth + index_to_name.json + code/inference.py
        (d / "code").mkdir(parents=True)
        for f in ("model.pth", "index_to_name.json"):
            shutil.copyfile(ours / f, d / f)
        (d / "code" / "inference.py").write_text(EXAMPLE.read_text() + extra)
        scripts[name] = d
    return ours, seed, scripts


def bare_forward(arch, num_classes, batch=8, seconds=20.0):
    """Images/s of the batched forward alone (the limit of any handler), in this process."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=num_classes, weights=None).eval()
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 3:
            model(x)
            n += 1
        wall = time.perf_counter() - t0
    return n * batch / wall


def make_jpegs(n=16, width=500, height=375, quality=90):
    """dogImages-sized photo-like JPEGs (smooth structure + sensor noise)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        base = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(base).resize((width, height), Image.BICUBIC), dtype=np.float32)
        img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def worker_rss_mb(server, model):
    desc = server.describe(model)
    total = 0
    for w in desc["workers"]:
        try:
            total += psutil.Process(int(w["pid"])).memory_info().rss
        except (psutil.Error, KeyError, ValueError):
            pass
    return total / 2**20


def load(url, images, concurrency, max_requests, duration):
    """Closed-loop load: `concurrency` clients, each sends the next image when the last answered."""
    latencies, errors, lock = [], [], threading.Lock()
    counter = iter(range(max_requests))
    deadline = time.monotonic() + duration

    def client(cid):
        with requests.Session() as s:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    r = s.post(url, data=images[i % len(images)], headers={"Content-Type": "image/jpeg"}, timeout=120)
                    ok = r.status_code == 200
                except requests.RequestException:
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    (latencies if ok else errors).append(dt)

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - t0
    lat = sorted(latencies)

    def pct(p):
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] * 1000 if lat else float("nan")

    return {"requests": len(lat), "errors": len(errors), "seconds": wall, "rps": len(lat) / wall,
            "p50": pct(50), "p95": pct(95), "p99": pct(99),
            "mean": statistics.fmean(lat) * 1000 if lat else float("nan")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18", help="torchvision arch (resnet18 or resnet50)")
    ap.add_argument("--classes", type=int, default=133)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=240, help="max requests per handler")
    ap.add_argument("--duration", type=float, default=90.0, help="max seconds of load per handler")
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--seed-workers", type=int, default=len(os.sched_getaffinity(0)),
                    help="seed workers (default: CPU count, the SageMaker toolkit default)")
    ap.add_argument("--port", type=int, default=18480)
    ap.add_argument("--bare-seconds", type=float, default=20.0, help="seconds of the bare batched forward")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="localsage-bench-serve-"))
    ours, seed, scripts = make_model_dirs(root, args.arch, args.classes, args.seed_workers)
    images = make_jpegs()
    print(f"model {args.arch} ({args.classes} classes) at 224 px, {len(images)} JPEGs 500x375 q90 "
          f"(~{sum(map(len, images)) // len(images) // 1024} KB), concurrency {args.concurrency}, "
          f"<= {args.requests} requests / {args.duration:.0f} s per handler, {os.cpu_count()} CPUs", flush=True)
    server = torchserve_script.ScriptServer({"ours": ours, "seed": seed, **scripts}, port=args.port,
                                      log_path=root / "torchserve.out")
    results = {}
    try:
        server.start(wait_s=300)
        for name in SIDES:
            url = f"{server.url}/predictions/{name}"
            for img in images[: args.warmup]:
                requests.post(url, data=img, headers={"Content-Type": "image/jpeg"}, timeout=120).raise_for_status()
            idle = worker_rss_mb(server, name)
            peak = [idle]
            stop = threading.Event()

            def sample():
                while not stop.wait(0.5):
                    peak.append(worker_rss_mb(server, name))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            r = load(url, images, args.concurrency, args.requests, args.duration)
            stop.set()
            sampler.join()
            r.update(rss_idle_mb=idle, rss_after_mb=worker_rss_mb(server, name), rss_peak_mb=max(peak))
            results[name] = r
            print(f"{name}: {json.dumps({k: round(v, 1) for k, v in r.items()})}", flush=True)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    bare = bare_forward(args.arch, args.classes, seconds=args.bare_seconds)
    print(f"bare batched forward (batch 8, {torch.get_num_threads()} threads): {bare:.2f} images/s", flush=True)

    s, o = results["seed"], results["ours"]
    print()
    print("| handler | req/s | served/bare | p50 ms | p95 ms | p99 ms | errors | worker RSS idle MB "
          "| after load MB | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, label in (("seed", f"seed-style (Resize 224x224, fp32, batch 1, {args.seed_workers} workers)"),
                        ("ours", "ours (eval transform, batching 8, channels_last, 1 worker)"),
                        ("script", "script: examples/dog-breeds/inference.py (batch 1 / 100 ms, 1 worker)"),
                        ("script-batched", "script + BATCH_PREDICT = True (batch 8 / 5 ms, 1 worker)")):
        r = results[name]
        r["served_over_bare"] = r["rps"] / bare
        print(f"| {label} | {r['rps']:.2f} | {r['served_over_bare']:.2f} | {r['p50']:.0f} | {r['p95']:.0f} | "
              f"{r['p99']:.0f} | {r['errors']} | {r['rss_idle_mb']:.0f} | {r['rss_after_mb']:.0f} "
              f"| {r['rss_peak_mb']:.0f} |")
    speedup = o["rps"] / s["rps"]
    print(f"\nthroughput x{speedup:.2f}, p99 {o['p99']:.0f} vs {s['p99']:.0f} ms; "
          f"our worker RSS after/idle {o['rss_after_mb'] / o['rss_idle_mb']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "speedup": speedup,
                                               "bare_images_per_s": bare}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
