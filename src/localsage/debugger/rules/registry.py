"""Rule name -> class, stated once (the names alone, cheap to import, are in ..constants)."""
from __future__ import annotations

from ..constants import ALL_RULES
from .activations import ClassImbalance, DeadRelu, PoorWeightInitialization
from .losses import LossDiverging, LossNotDecreasing, Overfit, Overtraining
from .profiler import (
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
from .tensors import AllZero, ExplodingTensor, VanishingGradient, WeightUpdateRatio

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
