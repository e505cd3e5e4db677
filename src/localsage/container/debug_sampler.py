"""Profiler data: a system sampler thread and a per-step timer, both writing JSON lines.

Files in contract.profiler_dir (output/profiler/):
  system.jsonl  one line per sample (~every 0.5 s): {"t", "cpu": [per-core %], "cpu_total",
                "iowait", "mem_percent", "mem_used_mb", "gpu": [{"util", "mem_percent", "mem_used_mb"}]}
  steps.jsonl   one line per step: {"t", "mode", "step", "batch", "dataloader", "forward",
                "backward", "optimizer", "other", "total"} (seconds)
  job.json      {"start", "first_step", "end", "cores", "gpus", "workers", "batch_size",
                 "sampler_cpu_s", "sampler_wall_s"} (what the profiler rules need besides samples)
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import psutil

from localsage.core import files
from localsage.core.debug_names import PROFILE_JOB, PROFILE_STEPS, PROFILE_SYSTEM


def _nvml():
    """pynvml (package nvidia-ml-py) initialised, or None when there is no NVIDIA GPU/driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
        return pynvml
    except ImportError:
        try:
            import torch

            if torch.cuda.is_available():
                logging.getLogger("localsage.debugger").warning(
                    "GPU present but nvidia-ml-py (pynvml) is not installed: no GPU utilisation samples")
        except ImportError:
            pass
        return None
    except Exception:  # no driver, no device: CPU-only sampling
        return None


class SystemSampler(threading.Thread):
    """Samples per-core CPU, I/O wait, memory and (NVML) GPU utilisation/memory every `interval` s."""

    def __init__(self, out_dir, interval: float = 0.5):
        super().__init__(name="localsage-sampler", daemon=True)
        self.dir = Path(out_dir)
        self.interval = interval
        self._halt = threading.Event()
        self.cpu_seconds = 0.0  # this thread's own CPU time: the sampler's overhead
        self.wall_seconds = 0.0
        self.samples = 0
        self.nvml = _nvml()
        self.handles = []
        if self.nvml:
            self.handles = [self.nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.nvml.nvmlDeviceGetCount())]

    def sample(self) -> dict:
        per_core = psutil.cpu_percent(percpu=True)  # since the previous call: no blocking
        times = psutil.cpu_times_percent()
        mem = psutil.virtual_memory()
        row = {
            "t": round(time.time(), 3),
            "cpu": per_core,
            "cpu_total": round(sum(per_core) / max(1, len(per_core)), 1),
            "iowait": getattr(times, "iowait", 0.0),
            "mem_percent": mem.percent,
            "mem_used_mb": round((mem.total - mem.available) / 2**20, 1),
            "gpu": [],
        }
        for h in self.handles:
            util = self.nvml.nvmlDeviceGetUtilizationRates(h)
            info = self.nvml.nvmlDeviceGetMemoryInfo(h)
            row["gpu"].append({
                "util": float(util.gpu),
                "mem_percent": round(100.0 * info.used / max(1, info.total), 2),
                "mem_used_mb": round(info.used / 2**20, 1),
            })
        return row

    def run(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        start_wall, start_cpu = time.time(), time.thread_time()
        psutil.cpu_percent(percpu=True)
        psutil.cpu_times_percent()
        with open(self.dir / PROFILE_SYSTEM, "a", buffering=1) as f:
            while not self._halt.wait(self.interval):
                f.write(json.dumps(self.sample()) + "\n")
                self.samples += 1
                self.cpu_seconds = time.thread_time() - start_cpu
                self.wall_seconds = time.time() - start_wall

    def stop(self):
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)


class StepTimer:
    """Per-step time split. Use in the loop:

        for images, labels in timer.wrap(loader, "train"):   # time waiting for the batch = dataloader
            ...forward...;   timer.mark("forward")
            ...backward...;  timer.mark("backward")
            ...step...;      timer.mark("optimizer")
        # whatever runs after the last mark until the next batch is requested is "other"

    With `sync` (CUDA), each mark synchronises the device so GPU work lands in its own phase.
    """

    PHASES = ("dataloader", "forward", "backward", "optimizer")

    def __init__(self, out_dir, sync=None, enabled=True):
        self.enabled = enabled
        self.dir = Path(out_dir)
        self.sync = sync
        self.steps = {}
        self.first_step_time = None
        self._file = None
        self._row = None
        self._last = None

    def _open(self):
        if self._file is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.dir / PROFILE_STEPS, "a", buffering=1 << 16)
        return self._file

    def wrap(self, iterable, mode="train"):
        if not self.enabled:
            yield from iterable
            return
        it = iter(iterable)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            now = time.perf_counter()
            step = self.steps.get(mode, 0)
            self._row = {"t": round(time.time(), 4), "mode": mode, "step": step, "batch": _batch_size(item),
                         "dataloader": now - t0}
            self._last = now
            if self.first_step_time is None:
                self.first_step_time = time.time()
            yield item
            end = time.perf_counter()
            row = self._row
            row["total"] = end - t0
            row["other"] = max(0.0, end - self._last)
            for k in self.PHASES + ("total", "other"):
                if k in row:
                    row[k] = round(row[k], 6)
            self._open().write(json.dumps(row) + "\n")
            self.steps[mode] = step + 1

    def mark(self, phase: str):
        if not self.enabled or self._row is None:
            return
        if self.sync:
            self.sync()
        now = time.perf_counter()
        self._row[phase] = self._row.get(phase, 0.0) + (now - self._last)
        self._last = now

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def _batch_size(item):
    try:
        last = item[-1] if isinstance(item, (tuple, list)) else item
        return int(len(last))
    except Exception:
        return None


def write_job_info(out_dir, **info):
    """Merge `info` into profiler/job.json."""
    path = Path(out_dir) / PROFILE_JOB
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        current = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        current = {}
    current.update(info)
    files.atomic_write_json(path, current)
