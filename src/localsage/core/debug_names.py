"""Facts the hook (container side) and the rules/report share, importable without numpy, smdebug or
torch: tensor names, the debugger hyperparameters, the profiler's file names. The rules themselves
(names, kinds, which a job enables) are their classes: localsage/debugger/rules/registry.py.
"""
from __future__ import annotations

from localsage.core import hyperparameters

# smdebug's names for what the hook registers (nn.CrossEntropyLoss's output and inputs)
LOSS_NAME = "CrossEntropyLoss_output_0"
LOGITS_NAME = "CrossEntropyLoss_input_0"
LABELS_NAME = "CrossEntropyLoss_input_1"

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


# the profiler's files in output/profiler/ (container/debug_sampler.py writes them, the rules read them)
PROFILE_SYSTEM = "system.jsonl"
PROFILE_STEPS = "steps.jsonl"
PROFILE_JOB = "job.json"
