"""SageMaker Debugger and Profiler rules, run locally on a job's output (torch 2.x).

Every rule is a `smdebug.rules.rule.Rule` subclass run with `smdebug.rules.rule_invoker.invoke_rule`:
debugger rules walk the global steps of the smdebug trial in output/tensors; profiler rules walk the
datapoints of output/profiler. A rule that fires raises RuleEvaluationConditionMet; `evaluate`
catches it, counts a violation and resumes at the next step, so a verdict says how often and when a
rule fired, not just whether. Parameters and defaults are AWS's documented ones
(shared/reference/debugger-rules.md), every one can be overridden (`Overfit:ratio_threshold=0.2`);
where the local version differs or AWS left the logic undocumented, the rule's docstring says so.

Modules: base (Rule base, scaling, trial helpers), losses, tensors, activations (debugger rules),
profile + profiler (profiler data and rules), registry (name -> class), verdicts (run, overrides,
output/rules I/O), reading (order, one-line reading, table). The rule names (`ALL_RULES`...) and
`table`/`reading` import neither numpy nor smdebug; everything else loads on first use.
"""
from __future__ import annotations

import importlib

from localsage.core.debug_names import ACTIVATION_RULES, ALL_RULES, DEBUGGER_RULES, PROFILER_RULES  # noqa: F401
from localsage.debugger.rules.reading import ordered, reading, table  # noqa: F401

_LAZY = {
    "run_rules": "verdicts", "evaluate": "verdicts", "parse_overrides": "verdicts", "read_verdicts": "verdicts",
    "output_dir_of": "verdicts", "layout": "verdicts", "Profile": "profile", "system_stats": "profile",
    "step_outliers": "profile", "REGISTRY": "registry", "rule_class": "registry", "LocalRule": "base",
    "EmptyTrial": "base",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None and name in ALL_RULES:
        module = "registry"
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(ALL_RULES))
