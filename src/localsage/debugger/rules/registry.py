"""The rules, stated once: a rule is its class (its name, kind, label, place in the reading) plus one entry
in RULES, whose order is the order rules run and verdicts are listed. The name lists and which rules a
job enables are derived from the classes here."""
from __future__ import annotations

from localsage.core.debug_names import HYPERPARAMETERS
from localsage.debugger.rules import activations, losses, profiler, tensors

RULES = (
    losses.LossNotDecreasing, losses.LossDiverging, losses.Overfit, losses.Overtraining,
    tensors.VanishingGradient, tensors.ExplodingTensor, activations.PoorWeightInitialization, activations.DeadRelu,
    activations.ClassImbalance, tensors.WeightUpdateRatio, tensors.AllZero,
    profiler.LowGPUUtilization, profiler.CPUBottleneck, profiler.IOBottleneck, profiler.GPUMemoryIncrease,
    profiler.BatchSize, profiler.MaxInitializationTime, profiler.StepOutlier, profiler.Dataloader,
    profiler.OverallSystemUsage)
REGISTRY = {cls.__name__: cls for cls in RULES}
ALL_RULES = tuple(REGISTRY)
DEBUGGER_RULES = tuple(name for name, cls in REGISTRY.items() if cls.KIND == "debugger")
PROFILER_RULES = tuple(name for name, cls in REGISTRY.items() if cls.KIND == "profiler")
ACTIVATION_RULES = tuple(name for name, cls in REGISTRY.items() if cls.ACTIVATIONS)  # off in rules=default


def rule_class(name):
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown rule {name!r}; known: {', '.join(ALL_RULES)}") from None


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
