"""Debugger/profiler overhead, measured side by side in one run.

Three identical models train on the same batches, their steps interleaved (B, A, C, B, A, C, ...)
so load from other processes hits all of them alike:
  B  no hook (baseline)
  A  smdebug hook at the default intervals (losses + labels/predictions at each of the first
     DENSE_STEPS steps, then every debug-train-interval steps; weights/biases/gradients every
     debug-tensor-interval steps)
  C  the same hook saving weights/biases/gradients every 5 steps: measures what one full-tensor save costs
The system sampler runs for the whole benchmark; its own thread CPU time over wall time is its overhead.

Hook overhead at the defaults (after the dense start), from the median paired ratios A/B and C/B
over the steps after DENSE_STEPS:
  (unsaved - 1) + (loss-save - unsaved) / debug-train-interval + (C saved - C unsaved) / debug-tensor-interval
and, for the dense start (a loss save every step), the median A/B - 1 over steps 1..DENSE_STEPS-1.
Targets: hook <= 5 % of step time, sampler <= 1 % CPU.

    PYTHONPATH=src python bench/debugger.py [--steps 110] [--arch resnet18] [--size 64] [--batch 32]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from localsage.container import debug_hook as hook_mod, debug_sampler  # noqa: E402 - after the sys.path insert
from localsage.core import procs  # noqa: E402 - after the sys.path insert
from localsage.core.contract import Contract  # noqa: E402 - after the sys.path insert
from localsage.core.debug_names import DENSE_STEPS, HYPERPARAMETERS  # noqa: E402 - after the sys.path insert


def contract(root: Path) -> Contract:
    return Contract(root=root, output_dir=root / "output", output_data_dir=root / "output" / "data")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=110)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tmp = Path(tempfile.mkdtemp(prefix="bench-debugger-"))
    hp = dict(HYPERPARAMETERS)

    def make(hooked, tensor_interval=None):
        torch.manual_seed(0)
        net = torchvision.models.get_model(args.arch, num_classes=args.classes, weights=None).to(device)
        crit = torch.nn.CrossEntropyLoss()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        hook = None
        if hooked:
            h = {**hp, "debug-tensor-interval": tensor_interval or hp["debug-tensor-interval"]}
            hook = hook_mod.create(net, crit, contract(tmp / f"t{tensor_interval or 'default'}"), h)
            hook_mod.set_mode(hook, "train")
        return net, crit, opt, hook

    runs = {"B": make(False), "A": make(True), "C": make(True, 5)}
    times = {k: [] for k in runs}
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch, 3, args.size, args.size, generator=g),
                torch.randint(0, args.classes, (args.batch,), generator=g)) for _ in range(4)]

    sam = debug_sampler.SystemSampler(tmp / "profiler")
    sam.start()
    # step timer cost, in isolation: wrap + 3 marks per step
    timer = debug_sampler.StepTimer(tmp / "timer")
    t0 = time.perf_counter()
    for _ in timer.wrap(range(20000), "train"):
        timer.mark("forward"); timer.mark("backward"); timer.mark("optimizer")
    timer_us = (time.perf_counter() - t0) / 20000 * 1e6
    timer.close()

    wall0 = time.time()
    for i in range(args.steps):
        x, y = batches[i % len(batches)]
        x, y = x.to(device), y.to(device)
        for k, (net, crit, opt, _) in runs.items():
            sync()
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            crit(net(x), y).backward()
            opt.step()
            sync()
            times[k].append(time.perf_counter() - t)
    wall = time.time() - wall0
    for k, (_, _, _, hook) in runs.items():
        hook_mod.close(hook)
    sam.stop()

    # paired ratios (same batch, back to back) are robust to load from other processes
    skip = 1  # step 0: warm-up for all, plus a full save for A and C
    ti, te = hp["debug-train-interval"], hp["debug-tensor-interval"]
    idx = range(max(skip, DENSE_STEPS), args.steps)
    dense_idx = range(skip, min(DENSE_STEPS, args.steps))
    ratio = lambda k, sel: statistics.median([times[k][i] / times["B"][i] for i in idx if sel(i)] or [float("nan")])
    r_plain = ratio("A", lambda i: i % ti != 0)          # hook registered, nothing saved
    r_light = ratio("A", lambda i: i % ti == 0)          # losses + labels/predictions saved
    full_save = ratio("C", lambda i: i % 5 == 0) - ratio("C", lambda i: i % 5 != 0)  # weights+biases+gradients
    hook_overhead = (r_plain - 1) + (r_light - r_plain) / ti + full_save / te
    dense = statistics.median([times["A"][i] / times["B"][i] for i in dense_idx] or [float("nan")]) - 1
    mean = {k: statistics.mean(v[skip:]) for k, v in times.items()}
    med = {k: statistics.median(v[skip:]) for k, v in times.items()}
    cores = procs.cores()
    sampler_core = sam.cpu_seconds / max(sam.wall_seconds, 1e-9)
    result = {
        "device": str(device), "arch": args.arch, "image_size": args.size, "batch": args.batch, "steps": args.steps,
        "intervals": {k: hp[k] for k in ("debug-train-interval", "debug-tensor-interval")},
        "baseline_step_s": {"mean": round(mean["B"], 4), "median": round(med["B"], 4)},
        "hooked_step_s": {"mean": round(mean["A"], 4), "median": round(med["A"], 4)},
        "ratio_unsaved_step": round(r_plain, 4), "ratio_loss_save_step": round(r_light, 4),
        "full_tensor_save_in_steps": round(full_save, 3),
        "hook_overhead_at_defaults_pct": round(100 * hook_overhead, 2),
        "hook_overhead_dense_start_pct": round(100 * dense, 2),
        "sampler_cpu_pct_of_one_core": round(100 * sampler_core, 3),
        "sampler_cpu_pct_of_machine": round(100 * sampler_core / cores, 3),
        "sampler_samples": sam.samples, "wall_s": round(wall, 1),
        "step_timer_us_per_step": round(timer_us, 2),
        "bytes_per_full_save": (sum(p.stat().st_size for p in (tmp / "t5").rglob("*.tfevents"))
                                // len(range(0, args.steps, 5))),
    }
    print(json.dumps(result, indent=2))
    print(f"hook overhead at default intervals: {result['hook_overhead_at_defaults_pct']} % of step time "
          f"(target <= 5 %); "
          f"first {DENSE_STEPS} steps (a loss save each): {result['hook_overhead_dense_start_pct']} %")
    print(f"sampler: {result['sampler_cpu_pct_of_one_core']} % of one core, "
          f"{result['sampler_cpu_pct_of_machine']} % of the machine's {cores} cores (target <= 1 %)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
