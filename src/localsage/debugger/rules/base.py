"""What every rule shares: smdebug's Rule base, parameters (defaults, overrides, short-job scaling),
the NoData reason, findings, and the helpers that read a trial.

Short jobs: SageMaker's defaults assume thousands of saved steps. A rule whose window, patience or
minimum number of points is larger than what the job saved scales it down (`scale`), records
"param: default -> used (why)" in the verdict's `scaled`, and never touches a parameter the user set.
A rule with too little data says NoData and why (`no_data`), e.g. "3 TRAIN loss points, needs 5:
save more often with debug-train-interval".
"""
from __future__ import annotations

import logging
import re

import numpy as np
from smdebug import modes
from smdebug.rules.rule import Rule

from localsage.core.debug_names import LOSS_NAME

log = logging.getLogger("localsage.debugger")
MAX_TRIGGER_STEPS = 50


def mean(a):
    a = np.asarray(a, dtype=np.float64)
    return float(a.mean()) if a.size else float("nan")


def fmt(x) -> str:
    """A loss-like number, short: 1.79, 6.2e+05, nan."""
    return f"{x:.3g}"


class LocalRule(Rule):
    """Shared parts: parameters (defaults + overrides + scaling), datapoints, findings, NoData reason.

    A rule is declared once, by its class: the class name is the rule's name, and registry.RULES lists
    the class. KIND debugger | profiler; DESCRIPTION and RECOMMENDATION as in AWS's rules table; ACTION
    the few words `reading` puts after the evidence ("lower the learning rate"); LABEL the finding's name
    in the reading ("Diverged"); ORDER its place there, causes before their symptoms (lower first);
    ACTIVATIONS when it needs the (large) ReLU activations saved, which rules=default leaves off."""

    DEFAULTS: dict = {}
    KIND = "debugger"
    DESCRIPTION = ""
    RECOMMENDATION = ""
    ACTION = ""
    LABEL = ""
    ORDER = 1000
    ACTIVATIONS = False

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, action_str="")
        unknown = set(params) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown parameter(s) {sorted(unknown)}; "
                             f"known: {sorted(self.DEFAULTS)}")
        self.user_params = set(params)
        self.params = {**self.DEFAULTS, **params}
        self.scaled = {}
        self.datapoints = 0
        self.messages = []
        self.evidence = None
        self.has_data = True
        self.why_no_data = None

    # ---- short jobs
    def scale(self, key, value, why):
        """Use `value` for parameter `key` unless the user set it or it is not smaller; returns the value used."""
        default = self.params[key]
        if key in self.user_params:
            return default
        value = type(default)(value)
        if value < default:
            self.params[key] = value
            self.scaled[key] = f"{default} -> {value} ({why})"
        return self.params[key]

    def no_data(self, reason):
        """Too little data to judge: the verdict is NoData with this reason."""
        self.has_data = False
        self.why_no_data = reason
        return False

    def data_if(self, ok, reason):
        """has data when `ok`, else NoData for `reason`."""
        self.has_data, self.why_no_data = (True, None) if ok else (False, reason)

    # ---- findings
    def note(self, step, text):
        if len(self.messages) < MAX_TRIGGER_STEPS:
            self.messages.append(f"step {step}: {text}")
        if self.evidence is None:
            self.evidence = f"step {step}: {text}"

    def steps(self):
        """(start_step, end_step) for invoke_rule."""
        steps = self.base_trial.steps() if self.base_trial is not None else []
        return (min(steps), max(steps) + 1) if steps else (0, 0)

    def finish(self):
        """Called after the last step; may return a message for a condition found only at the end."""
        return None


class EmptyTrial:
    """Stands in for a trial where there is none: profiler rules, and debugger rules without tensors."""

    logger = log

    def steps(self, *a, **k):
        return []

    def tensor_names(self, *a, **k):
        return []

    def tensor(self, name):
        raise KeyError(name)

    def mode_modestep(self, step):
        return modes.GLOBAL, step


# ----------------------------------------------------------------------------- trial helpers
def mode_of(trial, step):
    return trial.mode_modestep(step)


def scalar(trial, name, step):
    """Mean of tensor `name` at global step, or None when not saved there."""
    try:
        return float(np.mean(trial.tensor(name).value(step)))
    except Exception:
        return None


def loss_names(trial, use_collection=True):
    found = []
    if use_collection:
        try:
            found = list(trial.tensor_names(collection="losses"))
        except Exception:
            found = []
    if not found and LOSS_NAME in trial.tensor_names():
        found = [LOSS_NAME]
    return found


def names(trial, collections=(), regex=None):
    found = set()
    for c in collections:
        try:
            found.update(trial.tensor_names(collection=c))
        except Exception:
            pass
    if regex:
        found.update(n for n in trial.tensor_names() if re.match(regex, n))
    return sorted(found)


def mode_losses(trial, mode, loss_tensor_names):
    """{mode_step: mean loss} over the loss tensors, for one mode."""
    out = {}
    for name in loss_tensor_names:
        try:
            for s, v in trial.tensor(name).values(mode=mode).items():
                out.setdefault(s, []).append(float(np.mean(v)))
        except Exception:
            continue
    return {s: float(np.mean(v)) for s, v in sorted(out.items())}

