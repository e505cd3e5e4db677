"""Facts the hook (container side) and the rules/report (host side) share, importable without numpy,
smdebug or torch: tensor names, the rule names, the debugger hyperparameters and which rules a job
enables. Both sides import this module; neither imports the other.
"""
from __future__ import annotations

from localsage.core import hyperparameters

# smdebug's names for what the hook registers (nn.CrossEntropyLoss's output and inputs)
LOSS_NAME = "CrossEntropyLoss_output_0"
LOGITS_NAME = "CrossEntropyLoss_input_0"
LABELS_NAME = "CrossEntropyLoss_input_1"

DEBUGGER_RULES = ("LossNotDecreasing", "LossDiverging", "Overfit", "Overtraining", "VanishingGradient",
                  "ExplodingTensor", "PoorWeightInitialization", "DeadRelu", "ClassImbalance",
                  "WeightUpdateRatio", "AllZero")
PROFILER_RULES = ("LowGPUUtilization", "CPUBottleneck", "IOBottleneck", "GPUMemoryIncrease", "BatchSize",
                  "MaxInitializationTime", "StepOutlier", "Dataloader", "OverallSystemUsage")
ALL_RULES = DEBUGGER_RULES + PROFILER_RULES
# rules that need the (large) ReLU activations saved: off in rules=default
ACTIVATION_RULES = ("DeadRelu", "PoorWeightInitialization")

# The hyperparameters the debugger reads; their defaults and meaning live in localsage/core/hyperparameters.py.
HYPERPARAMETER_NAMES = ("debug", "debug-train-interval", "debug-eval-interval", "debug-tensor-interval",
                        "debug-strict", "rules", "rules-at-end", "profiler")
HYPERPARAMETERS = {name: hyperparameters.SPEC[name].default for name in HYPERPARAMETER_NAMES}

# Short jobs: losses and labels/predictions are saved at every one of the first DENSE_STEPS TRAIN
# steps (then every debug-train-interval), so a job of a few dozen steps has a loss curve.
DENSE_STEPS = 50


def debugger_hp(hp) -> dict:
    """The debugger hyperparameters of `hp`, defaults filled in."""
    return {**HYPERPARAMETERS, **{k: v for k, v in (hp or {}).items() if k in HYPERPARAMETERS}}


def enabled_rules(hp) -> list[str]:
    """The rules a job's `rules` hyperparameter enables: default | all | none | a comma list."""
    spec = str((hp or {}).get("rules", HYPERPARAMETERS["rules"])).strip()
    if spec.lower() in ("", "default"):
        return [r for r in ALL_RULES if r not in ACTIVATION_RULES]
    if spec.lower() == "all":
        return list(ALL_RULES)
    if spec.lower() == "none":
        return []
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in ALL_RULES]
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; known: {', '.join(ALL_RULES)}")
    return names

# the profiler's files in output/profiler/ (container/debug_sampler.py writes them, the rules read them)
PROFILE_SYSTEM = "system.jsonl"
PROFILE_STEPS = "steps.jsonl"
PROFILE_JOB = "job.json"
