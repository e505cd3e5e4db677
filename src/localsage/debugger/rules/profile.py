"""The profiler's data as the rules and the report read it: system samples, step timings, job facts;
per-metric statistics; the one step-outlier definition both StepOutlier and the report use."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from localsage.core import debug_names, files


class Profile:
    """What the profiler wrote: system samples, step timings, job facts."""

    def __init__(self, profiler_dir):
        d = Path(profiler_dir)
        self.system = files.read_jsonl(d / debug_names.PROFILE_SYSTEM)
        self.steps = files.read_jsonl(d / debug_names.PROFILE_STEPS)
        job = d / debug_names.PROFILE_JOB
        self.job = json.loads(job.read_text()) if job.exists() else {}
        self.gpus = max((len(r.get("gpu") or []) for r in self.system), default=0)

    def gpu(self, key, i):
        return np.array([r["gpu"][i][key] for r in self.system if len(r.get("gpu") or []) > i], dtype=float)

    def train_steps(self):
        return [s for s in self.steps if s.get("mode", "train") == "train"]


def step_outliers(rows, stddev=3.0):
    """Steps slower than mean + stddev * std of `rows` (steps.jsonl rows of one mode), the first
    step of the mode (the warm-up) left out of the statistics and of the outliers.
    Returns (limit seconds, [outlier rows]); limit None when fewer than 3 steps remain."""
    body = [r for r in rows if r.get("step", 0) > 0 and r.get("total") is not None]
    if len(body) < 3:
        return None, []
    t = np.array([r["total"] for r in body], dtype=float)
    limit = float(t.mean() + float(stddev) * t.std())
    return limit, [r for r in body if r["total"] > limit]


def system_stats(profile) -> dict:
    series = {
        "cpu_total": [r["cpu_total"] for r in profile.system],
        "cpu_max_core": [max(r["cpu"] or [0]) for r in profile.system],
        "iowait": [r.get("iowait", 0) for r in profile.system],
        "mem_percent": [r["mem_percent"] for r in profile.system],
    }
    for g in range(profile.gpus):
        series[f"gpu{g}_util"] = profile.gpu("util", g).tolist()
        series[f"gpu{g}_mem_percent"] = profile.gpu("mem_percent", g).tolist()
    out = {}
    for k, v in series.items():
        if v:
            a = np.asarray(v, dtype=float)
            out[k] = {q: round(float(f(a)), 2) for q, f in (
                ("max", np.max), ("p99", lambda x: np.percentile(x, 99)), ("p95", lambda x: np.percentile(x, 95)),
                ("p50", np.median), ("min", np.min))}
    return out
