"""Rule name -> class, stated once (the names alone, cheap to import, are in ..constants)."""
from __future__ import annotations

from localsage.core.debug_names import ALL_RULES
from localsage.debugger.rules.activations import ClassImbalance, DeadRelu, PoorWeightInitialization
from localsage.debugger.rules.losses import LossDiverging, LossNotDecreasing, Overfit, Overtraining
from localsage.debugger.rules.profiler import (
    BatchSize,
    CPUBottleneck,
    Dataloader,
    GPUMemoryIncrease,
    IOBottleneck,
    LowGPUUtilization,
    MaxInitializationTime,
    OverallSystemUsage,
    StepOutlier,
)
from localsage.debugger.rules.tensors import AllZero, ExplodingTensor, VanishingGradient, WeightUpdateRatio

REGISTRY = {cls.__name__: cls for cls in (
    LossNotDecreasing, LossDiverging, Overfit, Overtraining, VanishingGradient, ExplodingTensor,
    PoorWeightInitialization, DeadRelu, ClassImbalance, WeightUpdateRatio, AllZero,
    LowGPUUtilization, CPUBottleneck, IOBottleneck, GPUMemoryIncrease, BatchSize, MaxInitializationTime,
    StepOutlier, Dataloader, OverallSystemUsage)}
assert tuple(REGISTRY) == ALL_RULES, "constants.ALL_RULES and the registry must name the same rules in the same order"


def rule_class(name):
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown rule {name!r}; known: {', '.join(ALL_RULES)}") from None
