"""GPU benchmark: issue 17's GPU goal in one prepared run on a CUDA machine. Each figure is written as it is measured.

Goal: end to end through the runner (ResNet50, amp=auto -> bf16, channels_last, batch 128) at >= 90% of the
GPU-resident step rate of the same loop on the same machine, with the dataloader's wait < 5% of step time.

Parts (`--skip steps,loop,decode,e2e`):
  steps  the hardware table: ResNet50 train step on GPU-resident uint8 batches normalised on the GPU, naive
         fp32 NCHW at batch 64 vs channels_last with AMP (bf16; fp16 + GradScaler) at batch 64/128/256, peak GPU
         memory; `--compile` adds torch.compile. A plain SGD loop, not the runner's (CUDA only).
  loop   the denominator: the runner's own loop (`train.train_one_epoch` over `recipe.build_parts`: fused
         AdamW, the schedule, AMP, localsage.container.feed) on GPU-resident batches, ROUNDS rounds interleaved across
         configs: the runner as it is (profiler off), with the profiler's step timer on (it syncs the
         device at each phase), and with cudnn.benchmark off (torch's default).
  decode where train images are decoded, on the same photos, batch by batch in this process: the workers'
         path (decode + crop/resize/flip, data-cache off) on one core, against decode-on=device
         (localsage.container.device_decode): the workers' share (read, header, boxes) on one core and the
         device's decode + augment (nvJPEG on CUDA), with a device sync; into device.json.
  e2e    the numerator: `runner.train` (process backend) on generated 500x375 q90 JPEGs, data-cache decoded
         and off with the profiler on (the default: its steps.jsonl gives the dataloader's share),
         decoded with the profiler off, and decode-on=device with the profiler on and off (the step
         timer syncs the device at each phase, so with it on the device's decode cannot overlap the
         step); images/s per epoch from metrics.jsonl. `--runs a,b` runs only the named ones.
summary.json: epochs >= 2 of each e2e run, median [range] images/s, the ratio to the loop's median rate with
the same profiler setting, the dataloader's share of step time, and whether the goal is met. The jobs' logs
go to e2e-logs.txt; a part that fails writes its traceback to errors.txt and the next part runs: 7 files at
most, which the device tool brings back (8 at most).

    python bench/gpu.py --out DIR [--compile] [--photos 8192] [--epochs 6] [--skip PARTS] [--runs RUNS]
    python bench/gpu.py --out DIR --device cpu --tiny   # the script's own check without a GPU (tests/test_bench_gpu.py)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from localsage.core import files  # noqa: E402  (after the path insert)
from spread import spread  # noqa: E402  (bench/spread.py)

CLASSES = 8
FULL = {"arch": "resnet50", "batch": 128, "size": 224, "photo": (500, 375), "steps": 30, "warm": 10, "rounds": 5}
TINY = {"arch": "resnet18", "batch": 8, "size": 32, "photo": (64, 48), "steps": 4, "warm": 2, "rounds": 5}


def write(out: Path, name: str, obj):
    (out / name).write_text(json.dumps(obj, indent=2))
    print(json.dumps(obj), flush=True)


# ------------------------------------------------------------------ steps: the hardware table (CUDA)

def step_bench(batch, amp, channels_last, compile_=False, steps=20, warmup=6, arch="resnet50", size=224):
    import torch
    import torchvision

    from localsage.container.normalize import Normalize

    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True  # as the runner sets it on CUDA
    dev = torch.device("cuda")
    net = torchvision.models.get_model(arch, num_classes=133).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = torch.compile(net) if compile_ else net
    norm = Normalize(channels_last=channels_last).to(dev)
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
           "images_per_sec": round(batch * steps / dt, 1),
           "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
           "warmup_s": round(warm_s, 1)}
    del model, net, opt
    torch.cuda.empty_cache()
    return out


def steps_part(out: Path, compile_: bool):
    rows = []
    configs = [(64, None, False), (64, None, True), (64, "bf16", True), (128, "bf16", True),
               (256, "bf16", True), (128, "fp16", True)]
    for batch, amp, cl in configs:
        rows.append(step_bench(batch, amp, cl))
        write(out, "steps.json", rows)
    if compile_:
        rows.append(step_bench(128, "bf16", True, compile_=True))
        write(out, "steps.json", rows)


# ------------------------------------------------------------------ loop: the runner's loop, GPU-resident batches

LOOP_CONFIGS = {"runner": {"profiler": False, "cudnn_benchmark": True},
                "profiler-on": {"profiler": True, "cudnn_benchmark": True},
                "cudnn-benchmark-off": {"profiler": False, "cudnn_benchmark": False}}


def loop_part(out: Path, work: Path, device, size: dict):
    import torch

    from localsage.container import recipe, train
    from localsage.container.debug_sampler import StepTimer
    from localsage.container.feed import Data
    from localsage.container.normalize import Normalize
    from localsage.container.recipe import Ranks, build_model, build_parts
    from localsage.core.debug_names import PROFILE_STEPS as STEPS
    from localsage.core.hyperparameters import parse

    hp = parse({"arch": size["arch"], "weights": "none", "batch-size": str(size["batch"]),
                "image-size": str(size["size"]), "epochs": "1"})
    ranks = Ranks(0, 1, 0, device, recipe.amp_dtype(device, hp["amp"]))
    g = torch.Generator(device=device).manual_seed(0)
    nhwc = torch.randint(0, 256, (size["batch"], size["size"], size["size"], 3), dtype=torch.uint8, device=device,
                         generator=g)
    labels = torch.randint(0, CLASSES, (size["batch"],), device=device, generator=g)
    resident = [(nhwc.permute(0, 3, 1, 2), labels, [])] * max(size["steps"], size["warm"])  # the loader's layout
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    if sync:
        sync()  # the feed reads the batch on its side stream
    runs = {}
    for name, cfg in LOOP_CONFIGS.items():
        torch.backends.cudnn.benchmark = cfg["cudnn_benchmark"]
        model = build_model(hp, ranks, CLASSES)
        parts = build_parts(hp, ranks, model, (size["rounds"] + 1) * len(resident))
        d = Data({"train": None}, {"train": resident}, None, [], size["size"], size["size"], 0,
                 Normalize(channels_last=hp["channels-last"]).to(device))
        timer_dir = work / "loop-profiler" / name
        shutil.rmtree(timer_dir, ignore_errors=True)  # the timer appends
        dbg = SimpleNamespace(mode=lambda _: None, timer=StepTimer(timer_dir, sync=sync, enabled=cfg["profiler"]))
        progress = train.Progress(bad_files={"train": set()})
        train.train_one_epoch(parts, d, ranks, progress, dbg, size["warm"])  # cuDNN's choice, allocator, autotuning
        runs[name] = SimpleNamespace(cfg=cfg, parts=parts, d=d, dbg=dbg, progress=progress, rates=[], dir=timer_dir)
    for _ in range(size["rounds"]):
        for name, run in runs.items():
            torch.backends.cudnn.benchmark = run.cfg["cudnn_benchmark"]
            r = train.train_one_epoch(run.parts, run.d, ranks, run.progress, run.dbg, size["steps"])
            run.rates.append(r["images"] / r["time"])
    result = {"arch": size["arch"], "batch": size["batch"], "amp": str(ranks.amp), "channels_last": hp["channels-last"],
              "steps_a_round": size["steps"], "rounds": size["rounds"]}
    for name, run in runs.items():
        run.dbg.timer.close()
        row = {**run.cfg, "images_per_sec": spread(run.rates, 1),
               "rounds_images_per_sec": [round(v, 1) for v in run.rates]}
        if run.cfg["profiler"]:
            rows = files.read_jsonl(run.dir / STEPS)[size["warm"]:]
            row["ms_a_step"] = {k: round(1000 * statistics.median(r.get(k, 0.0) for r in rows), 2)
                                for k in ("dataloader", "forward", "backward", "optimizer", "other", "total")}
        result[name] = row
    torch.backends.cudnn.benchmark = True
    write(out, "loop.json", result)
    return result


# ------------------------------------------------------------------ e2e: through the runner

# (name, data-cache, profiler, decode-on)
E2E_RUNS = (("decoded", "decoded", True, "workers"), ("decode-on-device", "decoded", True, "device"),
            ("off", "off", True, "workers"), ("decoded-profiler-off", "decoded", False, "workers"),
            ("decode-on-device-profiler-off", "decoded", False, "device"))


def _photo(args):
    from localsage.container.demo_images import make_photo_like

    path, w, h, seed = args
    make_photo_like(path, w, h, seed=seed, quality=90)


def make_photos(root: Path, count: int, wh: tuple):
    todo = []
    for split, frac in (("train", 0.8), ("valid", 0.1), ("test", 0.1)):
        for k in range(int(count * frac)):
            folder = root / split / f"{k % CLASSES + 1:03d}.Breed_{k % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            todo.append((folder / f"img_{len(todo):05d}.jpg", *wh, len(todo)))
    # spawned, not forked: by now this process holds a CUDA context, which forked children must not inherit
    with get_context("spawn").Pool(os.cpu_count()) as pool:
        pool.map(_photo, todo, chunksize=16)


def dataloader_waits(steps_file: Path, steps_an_epoch: int):
    """Per epoch (train steps of profiler/steps.jsonl): the dataloader's wait over the step time, and the
    first step's wait in ms (the epoch's start)."""
    rows = [r for r in files.read_jsonl(steps_file) if r.get("mode") == "train"]
    waits = []
    for e in range(math.ceil(len(rows) / steps_an_epoch)):
        part = rows[e * steps_an_epoch:(e + 1) * steps_an_epoch]
        share = sum(r["dataloader"] for r in part) / max(1e-9, sum(r["total"] for r in part))
        waits.append((round(share, 4), round(1000 * part[0]["dataloader"], 1)))
    return waits


def ensure_photos(work: Path, photos: int, size: dict) -> Path:
    root = work / "photos"
    if not (root / "train").exists():
        t0 = time.time()
        make_photos(root, photos, size["photo"])
        print(f"generated {photos} photos in {time.time() - t0:.0f}s", flush=True)
    return root


# ------------------------------------------------------------------ decode: workers' path vs decode-on=device

def decode_part(out: Path, work: Path, device, size: dict, photos: int, info: dict):
    import numpy as np
    import torch

    from localsage.container import data, device_decode

    device_decode.check_device(device)  # a torchvision without nvJPEG: this part's error, not a slow fallback
    root = ensure_photos(work, photos, size)
    batch = size["batch"]
    files_ = sorted(str(p).encode() for p in (root / "train").rglob("*.jpg"))[:8 * batch]
    paths, targets = np.array(files_, dtype=np.bytes_), np.zeros(len(files_), dtype=np.int64)
    spec = data.preprocess_spec(size["size"])
    workers_path = data.ImageDataset(paths, targets, data.TrainTransform(spec), draft_size=size["size"])
    device_set = device_decode.JpegBatches(paths, targets, data.TrainTransform(spec), draft_size=size["size"])
    decoder = device_decode.DeviceDecoder(spec, device, paths)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches = [list(range(k, min(k + batch, len(files_)))) for k in range(0, len(files_), batch)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, as one DataLoader worker has
    decoder(*device_set.__getitems__(batches[0])[:2], set())  # warm-up: nvJPEG's handles, kernels
    sync()
    rates = {"workers_decode_one_core": [], "device_workers_share_one_core": [], "device_decode_augment": []}
    for _ in range(size["rounds"]):  # each round times the three side by side
        t0 = time.perf_counter()
        for b in batches:
            workers_path.__getitems__(b)
        rates["workers_decode_one_core"].append(len(files_) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        raws = [device_set.__getitems__(b) for b in batches]
        rates["device_workers_share_one_core"].append(len(files_) / (time.perf_counter() - t0))
        sync()
        t0 = time.perf_counter()
        for raw, labels, _ in raws:
            decoder(raw, labels, set())
        sync()
        rates["device_decode_augment"].append(len(files_) / (time.perf_counter() - t0))
    torch.set_num_threads(threads)
    result = {name: spread(v, 1) for name, v in rates.items()}
    result["images"], result["batch"], result["crop"] = len(files_), batch, size["size"]
    result["workers_share_ratio"] = round(statistics.median(rates["device_workers_share_one_core"])
                                          / statistics.median(rates["workers_decode_one_core"]), 2)
    write(out, "device.json", {**info, "decode": result})
    return result


# ------------------------------------------------------------------ e2e: through the runner

def e2e_part(out: Path, work: Path, device, size: dict, photos: int, epochs: int, runs=None, job_timeout=None):
    root, jobs = ensure_photos(work, photos, size), work / "jobs"
    n_train = sum(1 for _ in (root / "train").rglob("*.jpg"))
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "LOCALSAGE_CACHE_DIR": str(work / "cache")}
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    results = []
    for name, cache, profiler, decode_on in E2E_RUNS:
        if runs and name not in runs:
            continue
        job_name = f"gpu-e2e-{name}-{int(time.time())}"
        hp = {"arch": size["arch"], "weights": "none", "epochs": str(epochs), "batch-size": str(size["batch"]),
              "image-size": str(size["size"]), "lr": "0.001", "debug": "false", "data-cache": cache,
              "profiler": str(profiler).lower(), "decode-on": decode_on}
        # the runner's process backend, called from Python (the CLI's debugger commands need smdebug)
        code = ("import sys, json; from localsage.host import runner; "
                "r = runner.train(sys.argv[1], json.loads(sys.argv[2]), "
                "name=sys.argv[3], jobs_dir=sys.argv[4], echo=True); "
                "print(r['TrainingJobStatus'], r.get('FailureReason'))")
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, "-c", code, str(root), json.dumps(hp), job_name, str(jobs)],
                                  env=env, capture_output=True, text=True, timeout=job_timeout)
        except subprocess.TimeoutExpired as exc:  # a stuck job: the next run still gets its turn
            text = [x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (exc.stdout, exc.stderr)]
            proc = SimpleNamespace(returncode=f"timed out after {job_timeout} s", stdout=text[0], stderr=text[1])
        job = jobs / job_name
        # one file for all runs: the device tool brings back 8 files at most
        with open(out / "e2e-logs.txt", "a") as log:
            log.write(f"===== {name} (rc {proc.returncode})\n{proc.stdout[-20000:]}\n"
                      f"--- stderr ---\n{proc.stderr[-20000:]}\n")
        rows = [r for r in files.read_jsonl(job / "output/data/metrics.jsonl") if "images_per_sec" in r]
        waits = dataloader_waits(job / "output/profiler/steps.jsonl", math.ceil(n_train / size["batch"]))
        results.append({"run": name, "data-cache": cache, "profiler": profiler, "decode-on": decode_on,
                        "rc": proc.returncode,
                        "wall_s": round(time.time() - t0, 1), "train_images": n_train,
                        "epochs": [{"epoch": r["epoch"], "images_per_sec": round(r["images_per_sec"], 1),
                                    "dataloader_share": waits[i][0] if i < len(waits) else None,
                                    "first_step_wait_ms": waits[i][1] if i < len(waits) else None,
                                    "train_loss": r.get("train_loss")} for i, r in enumerate(rows)]})
        write(out, "e2e.json", results)
    return results


# ------------------------------------------------------------------ summary

def summarize(out: Path, loop: dict, e2e: list):
    rows = []
    for run in e2e:
        later = [e for e in run["epochs"] if e["epoch"] >= 2]
        if run["rc"] != 0 or not later:
            rows.append({"run": run["run"], "error": f"rc {run['rc']}, {len(later)} epochs after the first"})
            continue
        rates = [e["images_per_sec"] for e in later]
        resident = loop["profiler-on" if run["profiler"] else "runner"]["images_per_sec"]["median"]
        row = {"run": run["run"], "images_per_sec": spread(rates, 1), "resident_images_per_sec": resident,
               "ratio": round(statistics.median(rates) / resident, 3),
               "ratio_range": [round(min(rates) / resident, 3), round(max(rates) / resident, 3)]}
        shares = [e["dataloader_share"] for e in later if e["dataloader_share"] is not None]
        if shares:
            row["dataloader_share"] = {"median": statistics.median(shares), "max": max(shares)}
        row["goal_met"] = row["ratio"] >= 0.9 and (not shares or statistics.median(shares) < 0.05)
        rows.append(row)
    write(out, "summary.json", rows)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/localsage-gpu", help="photos, jobs and the decoded-image cache")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--tiny", action="store_true", help="resnet18 at 32 px, batch 8: the script's own check")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--photos", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--skip", default="", help="comma list of parts to skip: steps,loop,decode,e2e")
    p.add_argument("--job-timeout", type=float, help="seconds an e2e job may take (default: no limit)")
    p.add_argument("--runs", default="",
                   help="comma list of e2e runs (default: all): " + ",".join(r[0] for r in E2E_RUNS))
    a = p.parse_args()
    runs = set(filter(None, a.runs.split(",")))
    unknown = runs - {r[0] for r in E2E_RUNS}
    if unknown:
        p.error(f"--runs: unknown {sorted(unknown)}")
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    import numpy
    import torch
    import torchvision

    device = torch.device(a.device)
    size = TINY if a.tiny else FULL
    info = {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": numpy.__version__,
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "cpus": os.cpu_count(),
            "size": size}
    write(out, "device.json", info)
    skip = set(a.skip.split(","))
    for stale in ("e2e-logs.txt", "errors.txt"):  # both are appended to
        (out / stale).unlink(missing_ok=True)
    if "steps" not in skip and device.type == "cuda":
        part(out, "steps", steps_part, out, a.compile)
    loop = part(out, "loop", loop_part, out, work, device, size) if "loop" not in skip else None
    if "decode" not in skip:
        part(out, "decode", decode_part, out, work, device, size, a.photos, info)
    e2e = (part(out, "e2e", e2e_part, out, work, device, size, a.photos, a.epochs, runs, a.job_timeout)
           if "e2e" not in skip else None)
    if loop and e2e:
        part(out, "summary", summarize, out, loop, e2e)


def part(out: Path, name: str, fn, *args):
    """One part; a failure is written to errors.txt and the next part still runs (one GPU run a session)."""
    try:
        return fn(*args)
    except Exception:
        text = f"===== {name}\n{traceback.format_exc()}"
        print(text, file=sys.stderr, flush=True)
        with open(out / "errors.txt", "a") as f:
            f.write(text)
        return None


if __name__ == "__main__":
    main()
