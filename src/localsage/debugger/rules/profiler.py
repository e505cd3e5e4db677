"""SageMaker's profiler rules over output/profiler: a rule's `step` is a datapoint index (a system
sample or a training step). Short jobs: rules built for hours of samples cap `patience` at 10 %
and `window` at 50 % of the datapoints a job has (never over a parameter the user set)."""
from __future__ import annotations

import numpy as np
from smdebug.exceptions import RuleEvaluationConditionMet

from localsage.debugger.rules.base import EmptyTrial, LocalRule
from localsage.debugger.rules.profile import Profile, step_outliers, system_stats


class ProfilerRule(LocalRule):
    """A profiler rule: `step` is a datapoint index (a system sample or a training step), not a
    tensor step, so `invoke` does not wait on an smdebug trial."""

    KIND = "profiler"
    NEEDS_GPU = False

    def __init__(self, profile: Profile, **params):
        super().__init__(EmptyTrial(), **params)
        self.profile = profile
        n = len(profile.system)
        if not n:
            self.no_data("no system samples in output/profiler (profiler=false, or the job ended at once)")
        elif self.NEEDS_GPU and not profile.gpus:
            self.no_data("no GPU in the system samples: this rule needs one")
        for key, fraction in (("patience", 0.1), ("window", 0.5)):
            if n and key in self.params:
                self.scale(key, max(1, int(n * fraction)), f"{n} system samples")

    def invoke(self, step):
        if self.invoke_at_step(step):
            raise RuleEvaluationConditionMet(self.rule_name, step)

    def steps(self):
        return (0, len(self.profile.system)) if self.has_data else (0, 0)


class LowGPUUtilization(ProfilerRule):
    """Per GPU, over the last `window` samples: p95 < threshold_p95 (under-used) or p95 > threshold_p95
    with p5 < threshold_p5 (fluctuating), from sample `patience` on."""

    DEFAULTS = {"threshold_p95": 70.0, "threshold_p5": 10.0, "window": 500, "patience": 1000}
    NEEDS_GPU = True
    DESCRIPTION = "GPU utilisation is low or fluctuating."
    RECOMMENDATION = ("Find bottlenecks (data loading, CPU pre-processing), avoid blocking calls, "
                      "increase the batch size.")

    def invoke_at_step(self, i):
        patience, window = int(self.params["patience"]), int(self.params["window"])
        if i < max(patience, window) or (i - max(patience, window)) % window:
            return False
        fired = []
        for g in range(self.profile.gpus):
            util = self.profile.gpu("util", g)[i - window:i]
            if not util.size:
                continue
            self.datapoints += 1
            p95, p5 = np.percentile(util, 95), np.percentile(util, 5)
            if p95 < self.params["threshold_p95"]:
                fired.append(f"gpu{g} p95 {p95:.0f}% < {self.params['threshold_p95']}% (under-used)")
            elif p5 < self.params["threshold_p5"]:
                fired.append(f"gpu{g} p95 {p95:.0f}% but p5 {p5:.0f}% (fluctuating)")
        if fired:
            self.note(i, ", ".join(fired))
        return bool(fired)


class CPUBottleneck(ProfilerRule):
    """Fires when more than `threshold` % of the samples after `patience` have some GPU below
    gpu_threshold % while some CPU core is above cpu_threshold %. Needs a GPU."""

    DEFAULTS = {"threshold": 50.0, "gpu_threshold": 10.0, "cpu_threshold": 90.0, "patience": 1000}
    NEEDS_GPU = True
    DESCRIPTION = "The CPU is busy while the GPU waits."
    RECOMMENDATION = "Use more data-loader workers, prefetch, or move pre-processing to the GPU."

    def __init__(self, profile, **params):
        super().__init__(profile, **params)
        self.hits = 0

    def bottleneck(self, row):
        gpu_low = any(g["util"] < self.params["gpu_threshold"] for g in row.get("gpu") or [])
        return gpu_low and max(row.get("cpu") or [0]) > self.params["cpu_threshold"]

    def invoke_at_step(self, i):
        if i < int(self.params["patience"]):
            return False
        self.datapoints += 1
        self.hits += int(self.bottleneck(self.profile.system[i]))
        return False

    def finish(self):
        if self.datapoints and 100.0 * self.hits / self.datapoints > self.params["threshold"]:
            return (f"{100.0 * self.hits / self.datapoints:.0f}% of {self.datapoints} samples "
                    f"(> {self.params['threshold']}%)")
        return None


class IOBottleneck(CPUBottleneck):
    """As CPUBottleneck, with I/O wait above io_threshold % instead of a busy CPU core."""

    DEFAULTS = {"threshold": 50.0, "gpu_threshold": 10.0, "io_threshold": 50.0, "patience": 1000}
    DESCRIPTION = "The GPU waits while the CPU waits for I/O."
    RECOMMENDATION = "Prefetch data, use binary formats (RecordIO, WebDataset shards), or faster storage."

    def bottleneck(self, row):
        gpu_low = any(g["util"] < self.params["gpu_threshold"] for g in row.get("gpu") or [])
        return gpu_low and float(row.get("iowait") or 0) > self.params["io_threshold"]


class GPUMemoryIncrease(ProfilerRule):
    """Per GPU: mean memory use of the last `window` samples minus the mean of the window before
    exceeds `increase` percentage points, from sample `patience` on."""

    DEFAULTS = {"increase": 5.0, "window": 10, "patience": 1000}
    NEEDS_GPU = True
    DESCRIPTION = "GPU memory use keeps growing."
    RECOMMENDATION = ("Look for tensors kept across steps (e.g. accumulating losses without .item()); "
                      "choose a larger instance.")

    def invoke_at_step(self, i):
        window = int(self.params["window"])
        if i < max(int(self.params["patience"]), 2 * window) or i % window:
            return False
        fired = []
        for g in range(self.profile.gpus):
            mem = self.profile.gpu("mem_percent", g)
            if len(mem) < i:
                continue
            self.datapoints += 1
            rise = float(mem[i - window:i].mean() - mem[i - 2 * window:i - window].mean())
            if rise > self.params["increase"]:
                fired.append(f"gpu{g} memory +{rise:.1f} points")
        if fired:
            self.note(i, ", ".join(fired))
        return bool(fired)


class BatchSize(ProfilerRule):
    """Over the last `window` samples, CPU p95, GPU p95 and GPU-memory p95 are all below their
    thresholds: the instance is under-used. Needs a GPU."""

    DEFAULTS = {"cpu_threshold_p95": 70.0, "gpu_threshold_p95": 70.0, "gpu_memory_threshold_p95": 70.0,
                "patience": 1000, "window": 500}
    NEEDS_GPU = True
    DESCRIPTION = "The batch is too small to use the instance."
    RECOMMENDATION = "Use a larger batch size, or a smaller instance."

    def invoke_at_step(self, i):
        patience, window = int(self.params["patience"]), int(self.params["window"])
        if i < max(patience, window) or (i - max(patience, window)) % window:
            return False
        rows = self.profile.system[i - window:i]
        cpu = np.percentile([r["cpu_total"] for r in rows], 95)
        self.datapoints += 1
        for g in range(self.profile.gpus):
            util = np.percentile([r["gpu"][g]["util"] for r in rows], 95)
            mem = np.percentile([r["gpu"][g]["mem_percent"] for r in rows], 95)
            if (cpu < self.params["cpu_threshold_p95"] and util < self.params["gpu_threshold_p95"]
                    and mem < self.params["gpu_memory_threshold_p95"]):
                self.note(i, f"cpu p95 {cpu:.0f}%, gpu{g} p95 {util:.0f}%, gpu{g} memory p95 {mem:.0f}%")
                return True
        return False


class MaxInitializationTime(ProfilerRule):
    """Fires when the first training step started more than `threshold` minutes after the job started
    (or never started in a job that ran that long)."""

    DEFAULTS = {"threshold": 20.0}
    DESCRIPTION = "Initialisation (data download, model setup) takes too long."
    RECOMMENDATION = "Use FastFile/Pipe input mode or smaller data, and cache pretrained weights in the image."

    def __init__(self, profile, **params):
        super().__init__(profile, **params)
        self.data_if("start" in profile.job, "no profiler/job.json with the job's start time")

    def steps(self):
        return (0, 1) if self.has_data else (0, 0)

    def invoke_at_step(self, i):
        job = self.profile.job
        self.datapoints += 1
        first = job.get("first_step")
        waited = (first if first else job.get("end", job["start"])) - job["start"]
        if waited > 60.0 * self.params["threshold"]:
            self.note(i, f"{'first step after' if first else 'no step after'} {waited / 60:.1f} min")
            return True
        return False


class StepOutlier(ProfilerRule):
    """Training steps slower than mean + stddev * std (the first step of each mode, the warm-up, is left
    out); fires when there are more than n_outliers of them. Short jobs: n_outliers is capped at
    10 % of the steps (at least 1)."""

    DEFAULTS = {"stddev": 3.0, "n_outliers": 10, "mode": "train"}
    DESCRIPTION = "Some steps take much longer than the others."
    RECOMMENDATION = "Look for CPU or I/O stalls near the outlier steps (checkpointing, evaluation, data loading)."

    def __init__(self, profile, **params):
        super().__init__(profile, **params)
        rows = [s for s in profile.steps if s.get("mode") == self.params["mode"]]
        self.limit, self.outliers = step_outliers(rows, self.params["stddev"])
        self.rows = [r for r in rows if r.get("step", 0) > 0]
        self.data_if(self.limit is not None,
                     f"{len(self.rows)} timed {self.params['mode']} steps after the first, needs 3")
        if self.has_data:
            self.scale("n_outliers", max(1, len(self.rows) // 10), f"{len(self.rows)} timed steps")

    def steps(self):
        return (0, 1) if self.has_data else (0, 0)

    def invoke_at_step(self, i):
        self.datapoints = len(self.rows)
        return False

    def finish(self):
        allowed = int(self.params["n_outliers"])
        if len(self.outliers) > allowed:
            slow = [r["step"] for r in self.outliers]
            return f"{len(slow)} steps slower than {self.limit:.3f}s (> {allowed} allowed): steps {slow[:10]}"
        return None


class Dataloader(ProfilerRule):
    """Fires when the data-loader workers are fewer than min_threshold % or more than max_threshold % of
    the cores. Local extension (AWS's report showed it, its rule did not check it): also fires when the
    share of the training step time spent waiting for the next batch exceeds wait_threshold %."""

    DEFAULTS = {"min_threshold": 70.0, "max_threshold": 200.0, "wait_threshold": 50.0}
    DESCRIPTION = "Data loading is badly configured or dominates the step time."
    RECOMMENDATION = ("Change the number of data-loader workers (hyperparameter `workers`), prefetch, "
                      "or make __getitem__ cheaper.")

    def __init__(self, profile, **params):
        super().__init__(profile, **params)
        self.rows = [s for s in profile.train_steps() if s.get("total")]
        self.data_if(profile.job.get("workers") is not None or bool(self.rows),
                     "no profiler/job.json and no timed training steps")

    def steps(self):
        return (0, 1) if self.has_data else (0, 0)

    def invoke_at_step(self, i):
        problems = []
        job = self.profile.job
        if job.get("workers") is not None and job.get("cores"):
            self.datapoints += 1
            pct = 100.0 * job["workers"] / job["cores"]
            if pct < self.params["min_threshold"]:
                problems.append(f"{job['workers']} workers for {job['cores']} cores "
                                f"({pct:.0f}% < {self.params['min_threshold']}%)")
            elif pct > self.params["max_threshold"]:
                problems.append(f"{job['workers']} workers for {job['cores']} cores "
                                f"({pct:.0f}% > {self.params['max_threshold']}%)")
        if self.rows:
            self.datapoints += len(self.rows)
            share = 100.0 * sum(r.get("dataloader", 0.0) for r in self.rows) / sum(r["total"] for r in self.rows)
            self.wait_share = round(share, 2)
            if share > self.params["wait_threshold"]:
                problems.append(f"{share:.0f}% of the training step time waits for data "
                                f"(> {self.params['wait_threshold']}%)")
        if problems:
            self.note(i, "; ".join(problems))
        return bool(problems)


class OverallSystemUsage(ProfilerRule):
    """Never fires: max/p99/p95/p50/min of every system metric, for the report."""

    DEFAULTS = {}
    DESCRIPTION = "System usage statistics."
    RECOMMENDATION = "None: informational."

    def steps(self):
        return (0, 1) if self.has_data else (0, 0)

    def invoke_at_step(self, i):
        self.datapoints = len(self.profile.system)
        self.stats = system_stats(self.profile)
        return False
