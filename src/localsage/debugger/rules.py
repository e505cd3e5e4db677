"""SageMaker Debugger and Profiler rules, run locally on a job's output (torch 2.x).

Every rule is a `smdebug.rules.rule.Rule` subclass run with `smdebug.rules.rule_invoker.invoke_rule`:
- debugger rules walk the global steps of the smdebug trial in output/tensors;
- profiler rules walk the datapoints of output/profiler (system.jsonl samples or steps.jsonl steps).
A rule that fires raises RuleEvaluationConditionMet; `evaluate` catches it, counts a violation and
resumes at the next step, so a verdict says how often and when a rule fired, not just whether.

Verdicts: output/rules/<Rule>.json = {rule, kind, status (IssuesFound | NoIssuesFound | NoData),
triggered, violations, datapoints, trigger_steps, details, parameters, description, recommendation}.

Parameters and defaults are AWS's documented ones (../shared/reference/debugger-rules.md);
every one can be overridden (`Overfit:ratio_threshold=0.2`). Where the local version differs or AWS
left the logic undocumented, the rule's docstring says so. Short jobs: profiler rules built for
hours of samples cap `patience` at 10 % and `window` at 50 % of the datapoints a job has.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np

from . import sampler
from .hook import LABELS_NAME, LOGITS_NAME, LOSS_NAME

log = logging.getLogger("localsage.debugger")

DEBUGGER_RULES = ("LossNotDecreasing", "Overfit", "Overtraining", "VanishingGradient", "ExplodingTensor",
                  "PoorWeightInitialization", "DeadRelu", "ClassImbalance", "WeightUpdateRatio", "AllZero")
PROFILER_RULES = ("LowGPUUtilization", "CPUBottleneck", "IOBottleneck", "GPUMemoryIncrease", "BatchSize",
                  "MaxInitializationTime", "StepOutlier", "Dataloader", "OverallSystemUsage")
ALL_RULES = DEBUGGER_RULES + PROFILER_RULES
MAX_TRIGGER_STEPS = 50


def _smd():
    from smdebug import modes
    from smdebug.exceptions import RuleEvaluationConditionMet
    from smdebug.rules.rule import Rule
    from smdebug.rules.rule_invoker import invoke_rule

    return Rule, invoke_rule, RuleEvaluationConditionMet, modes


Rule, invoke_rule, RuleEvaluationConditionMet, modes = _smd()


def scaled(value, n, fraction):
    """Short jobs: a patience/window of `value` datapoints capped at `fraction` of the n available."""
    return int(max(1, min(value, int(n * fraction)))) if n else int(value)


def _mean(a):
    a = np.asarray(a, dtype=np.float64)
    return float(a.mean()) if a.size else float("nan")


class LocalRule(Rule):
    """Shared parts: parameters (defaults + overrides), datapoint counting, details."""

    DEFAULTS: dict = {}
    KIND = "debugger"
    DESCRIPTION = ""
    RECOMMENDATION = ""

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, action_str="")
        unknown = set(params) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown parameter(s) {sorted(unknown)}; "
                             f"known: {sorted(self.DEFAULTS)}")
        self.params = {**self.DEFAULTS, **params}
        self.datapoints = 0
        self.messages = []
        self.has_data = True

    def note(self, step, text):
        if len(self.messages) < MAX_TRIGGER_STEPS:
            self.messages.append(f"step {step}: {text}")

    def steps(self):
        """(start_step, end_step) for invoke_rule."""
        steps = self.base_trial.steps() if self.base_trial is not None else []
        return (min(steps), max(steps) + 1) if steps else (0, 0)

    def finish(self):
        """Called after the last step; may return a message for a condition found only at the end."""
        return None


# ----------------------------------------------------------------------------- trial helpers
def _mode_of(trial, step):
    return trial.mode_modestep(step)


def _scalar(trial, name, step):
    """Mean of tensor `name` at global step, or None when not saved there."""
    try:
        return float(np.mean(trial.tensor(name).value(step)))
    except Exception:
        return None


def _loss_names(trial, use_collection=True):
    names = []
    if use_collection:
        try:
            names = list(trial.tensor_names(collection="losses"))
        except Exception:
            names = []
    if not names and LOSS_NAME in trial.tensor_names():
        names = [LOSS_NAME]
    return names


def _names(trial, collections=(), regex=None):
    found = set()
    for c in collections:
        try:
            found.update(trial.tensor_names(collection=c))
        except Exception:
            pass
    if regex:
        found.update(n for n in trial.tensor_names() if re.match(regex, n))
    return sorted(found)


def _mode_losses(trial, mode, names):
    """{mode_step: mean loss} over the loss tensors, for one mode."""
    out = {}
    for name in names:
        try:
            for s, v in trial.tensor(name).values(mode=mode).items():
                out.setdefault(s, []).append(float(np.mean(v)))
        except Exception:
            continue
    return {s: float(np.mean(v)) for s, v in sorted(out.items())}


# ----------------------------------------------------------------------------- debugger rules
class LossNotDecreasing(LocalRule):
    """Every `num_steps` steps of the chosen mode, the loss must have dropped by `diff_percent` % against
    the loss at the previous check (at least num_steps earlier). Mode: `mode` or, when empty, EVAL if it
    has two checks' worth of saved losses, else TRAIN, else GLOBAL (AWS's order).
    Local detail: the "loss at a step" is the mean of the losses saved in the last num_steps steps of
    that mode (the single saved loss when saving every >= num_steps steps, as AWS does) so dense saving
    does not turn minibatch noise into violations. A NaN/inf loss is a violation. A violation whose loss
    rose by more than increase_threshold_percent % is reported as "rising", otherwise as "flat"."""

    DEFAULTS = {"num_steps": 10, "diff_percent": 0.1, "increase_threshold_percent": 5.0, "mode": "",
                "use_losses_collection": True}
    DESCRIPTION = "Loss is not decreasing at the expected rate."
    RECOMMENDATION = "Check the learning rate (too high diverges, too low stalls), the data and labels, and the loss."

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        self.names = _loss_names(base_trial, self.params["use_losses_collection"])
        n = int(self.params["num_steps"])
        self.mode = None
        wanted = str(self.params["mode"]).upper()
        candidates = [getattr(modes, wanted)] if wanted else [modes.EVAL, modes.TRAIN, modes.GLOBAL]
        for m in candidates:
            losses = _mode_losses(base_trial, m, self.names)
            if len(losses) >= 2 and max(losses) - min(losses) >= n:
                self.mode, self.losses = m, losses
                break
        self.has_data = self.mode is not None
        self.last_check = None  # (mode_step, value)

    def _value_at(self, mode_step):
        n = int(self.params["num_steps"])
        window = [v for s, v in self.losses.items() if mode_step - n < s <= mode_step]
        return _mean(window)

    def invoke_at_step(self, step):
        if not self.has_data:
            return False
        mode, mode_step = _mode_of(self.base_trial, step)
        if mode != self.mode or mode_step not in self.losses:
            return False
        value = self._value_at(mode_step)
        if self.last_check is None:
            self.last_check = (mode_step, value)
            return False
        prev_step, prev = self.last_check
        if mode_step - prev_step < int(self.params["num_steps"]):
            return False
        self.last_check = (mode_step, value)
        self.datapoints += 1
        if not math.isfinite(value):
            self.note(step, f"{self.mode.name} loss is {value}")
            return True
        drop = 100.0 * (prev - value) / abs(prev) if prev else 0.0
        if drop < float(self.params["diff_percent"]):
            kind = "rising" if -drop > float(self.params["increase_threshold_percent"]) else "flat"
            self.note(step, f"{self.mode.name} loss {prev:.4g} (step {prev_step}) -> {value:.4g} ({kind}, {drop:+.2f} %)")
            return True
        return False


class Overfit(LocalRule):
    """After every evaluation pass (a run of consecutive EVAL steps), compare the mean EVAL loss of the
    pass with the mean TRAIN loss saved since the previous pass: fires when
    (eval - train) / train > ratio_threshold for `patience` consecutive passes, from start_step on.
    Local refinement (parameter only_when_not_improving, default true; false gives AWS's plain
    condition): a pass counts only when its EVAL loss is no better than the best earlier pass. A gap
    while validation loss still falls is an untrained model (e.g. BatchNorm running statistics after
    the first epoch give a huge EVAL loss), not overfitting."""

    DEFAULTS = {"start_step": 0, "patience": 1, "ratio_threshold": 0.1, "use_losses_collection": True,
                "only_when_not_improving": True}
    DESCRIPTION = "Validation loss is much higher than training loss: the model is overfitting."
    RECOMMENDATION = "Add augmentation or regularisation (weight decay, dropout), more data, or stop earlier."

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        self.names = _loss_names(base_trial, self.params["use_losses_collection"])
        self.all_steps = sorted(base_trial.steps())
        self.has_data = bool(_mode_losses(base_trial, modes.EVAL, self.names)) and bool(
            _mode_losses(base_trial, modes.TRAIN, self.names))
        self.train, self.eval, self.bad = [], [], 0
        self.best_eval = math.inf

    def _loss(self, step):
        values = [v for v in (_scalar(self.base_trial, n, step) for n in self.names) if v is not None]
        return _mean(values) if values else None

    def invoke_at_step(self, step):
        if not self.has_data or step < int(self.params["start_step"]):
            return False
        mode, _ = _mode_of(self.base_trial, step)
        loss = self._loss(step)
        if loss is None:
            return False
        if mode == modes.TRAIN:
            if self.eval:
                self.train, self.eval = [], []
            self.train.append(loss)
            return False
        if mode != modes.EVAL:
            return False
        self.eval.append(loss)
        i = self.all_steps.index(step)
        nxt = self.all_steps[i + 1] if i + 1 < len(self.all_steps) else None
        if nxt is not None and _mode_of(self.base_trial, nxt)[0] == modes.EVAL:
            return False  # the pass is not over yet
        if not self.train:
            return False
        self.datapoints += 1
        tr, ev = _mean(self.train), _mean(self.eval)
        ratio = (ev - tr) / tr if tr > 0 else (math.inf if ev > tr else 0.0)
        improving = ev < self.best_eval
        self.best_eval = min(self.best_eval, ev)
        if (ratio > float(self.params["ratio_threshold"]) or not math.isfinite(ev)) and not (
                improving and self.params["only_when_not_improving"]):
            self.bad += 1
        else:
            self.bad = 0
        if self.bad >= int(self.params["patience"]):
            self.note(step, f"EVAL loss {ev:.4g} vs TRAIN loss {tr:.4g}: ratio {ratio:.3g} > {self.params['ratio_threshold']}")
            return True
        return False


class Overtraining(LocalRule):
    """AWS does not document the exact logic; defined here as: keep the best TRAIN loss (over saved
    TRAIN steps) and the best EVAL loss (mean of each evaluation pass); a loss "improves" when it drops
    below best - delta. Fires when TRAIN has not improved for patience_train saved TRAIN steps AND the
    validation loss has not improved for patience_validation evaluation passes: training goes on
    without learning anything that generalises."""

    DEFAULTS = {"patience_train": 5, "patience_validation": 10, "delta": 0.01}
    DESCRIPTION = "Training and validation losses stopped improving: further training is wasted."
    RECOMMENDATION = "Stop earlier (early stopping via the `patience` hyperparameter) or change the learning rate schedule."

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        self.names = _loss_names(base_trial)
        self.all_steps = sorted(base_trial.steps())
        self.has_data = bool(_mode_losses(base_trial, modes.TRAIN, self.names))
        self.best_train, self.since_train = math.inf, 0
        self.best_eval, self.since_eval = math.inf, 0
        self.eval = []

    def invoke_at_step(self, step):
        if not self.has_data:
            return False
        mode, _ = _mode_of(self.base_trial, step)
        values = [v for v in (_scalar(self.base_trial, n, step) for n in self.names) if v is not None]
        if not values:
            return False
        loss, delta = _mean(values), float(self.params["delta"])
        if mode == modes.TRAIN:
            self.datapoints += 1
            if loss < self.best_train - delta:
                self.best_train, self.since_train = loss, 0
            else:
                self.since_train += 1
            return False
        if mode != modes.EVAL:
            return False
        self.eval.append(loss)
        i = self.all_steps.index(step)
        nxt = self.all_steps[i + 1] if i + 1 < len(self.all_steps) else None
        if nxt is not None and _mode_of(self.base_trial, nxt)[0] == modes.EVAL:
            return False
        ev, self.eval = _mean(self.eval), []
        if ev < self.best_eval - delta:
            self.best_eval, self.since_eval = ev, 0
        else:
            self.since_eval += 1
        if self.since_train >= int(self.params["patience_train"]) and self.since_eval >= int(self.params["patience_validation"]):
            self.note(step, f"no TRAIN improvement for {self.since_train} saved steps and no EVAL improvement for {self.since_eval} passes")
            return True
        return False


class VanishingGradient(LocalRule):
    """Fires at a step where mean(|gradient|) of any saved gradient tensor is below `threshold`."""

    DEFAULTS = {"threshold": 1e-7}
    DESCRIPTION = "Gradients became so small that the weights stop changing."
    RECOMMENDATION = "Check initialisation, normalisation layers, activation functions and the learning rate; use residual connections."

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        self.names = _names(base_trial, ("gradients",), r"^gradient")
        self.has_data = bool(self.names)

    def invoke_at_step(self, step):
        fired = []
        for name in self.names:
            try:
                g = self.base_trial.tensor(name).value(step)
            except Exception:
                continue
            self.datapoints += 1
            m = float(np.mean(np.abs(g)))
            if m < float(self.params["threshold"]):
                fired.append(f"{name} mean|g|={m:.3g}")
        if fired:
            self.note(step, f"{len(fired)} gradient tensors below {self.params['threshold']}: " + ", ".join(fired[:3]))
        return bool(fired)


class TensorScanRule(LocalRule):
    """A rule that checks every tensor of `collection_names` / `tensor_regex` at each step: a subclass
    says which tensor is bad (`is_bad`) and how to name the finding (`FINDING`)."""

    DTYPE = None
    FINDING = ""

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        colls = [c.strip() for c in str(self.params["collection_names"]).split(",") if c.strip()]
        self.names = _names(base_trial, colls, self.params["tensor_regex"] or None)
        self.has_data = bool(self.names)

    def is_bad(self, v) -> bool:
        raise NotImplementedError

    def invoke_at_step(self, step):
        bad = []
        for name in self.names:
            try:
                v = np.asarray(self.base_trial.tensor(name).value(step), dtype=self.DTYPE)
            except Exception:
                continue
            self.datapoints += 1
            if self.is_bad(v):
                bad.append(name)
        if bad:
            self.note(step, f"{len(bad)} {self.FINDING}: " + ", ".join(bad[:3]))
        return bool(bad)


class ExplodingTensor(TensorScanRule):
    """Fires at a step where a saved tensor (collections/tensor_regex; by default losses, weights, biases,
    gradients) holds a NaN, or an infinity unless only_nan."""

    DEFAULTS = {"only_nan": False, "collection_names": "losses,weights,biases,gradients", "tensor_regex": ""}
    DESCRIPTION = "A tensor holds NaN or infinite values."
    RECOMMENDATION = "Lower the learning rate, clip gradients, check the data for NaNs and use a numerically stable loss."
    DTYPE = np.float64
    FINDING = "tensors with NaN/inf"

    def is_bad(self, v) -> bool:
        return bool(np.isnan(v).any() or (not self.params["only_nan"] and np.isinf(v).any()))


class PoorWeightInitialization(LocalRule):
    """At the first saved step with ReLU inputs: fires when the ratio of the largest to the smallest
    per-layer variance of the activation inputs exceeds `threshold`, or when a gradient tensor's
    5th–95th percentile range is narrower than `distribution_range`. Also fires when the TRAIN loss of
    the first `steps` steps has not dropped over the last `patience` saved losses of that span."""

    DEFAULTS = {"activation_inputs_regex": ".*relu_input", "threshold": 10.0, "distribution_range": 0.001,
                "patience": 5, "steps": 10}
    DESCRIPTION = "The initial weights give badly scaled activations or gradients, or the loss does not start to converge."
    RECOMMENDATION = "Use a standard initialisation (Kaiming/Xavier) or pretrained weights; add normalisation layers."

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        rx = self.params["activation_inputs_regex"]
        self.acts = [n for n in base_trial.tensor_names() if re.match(rx, n)]
        self.grads = _names(base_trial, ("gradients",), r"^gradient")
        self.has_data = bool(self.acts or self.grads)
        self.done = False

    def invoke_at_step(self, step):
        if self.done:
            return False
        variances, problems = {}, []
        for name in self.acts:
            try:
                variances[name] = float(np.var(self.base_trial.tensor(name).value(step)))
            except Exception:
                continue
        narrow = []
        for name in self.grads:
            try:
                g = np.asarray(self.base_trial.tensor(name).value(step), dtype=np.float64)
            except Exception:
                continue
            if g.size > 1 and np.percentile(g, 95) - np.percentile(g, 5) < float(self.params["distribution_range"]):
                narrow.append(name)
        if not variances and not narrow and not self.grads:
            return False
        self.done = True
        self.datapoints += 1
        positive = [v for v in variances.values() if v > 0]
        if positive and max(positive) / min(positive) > float(self.params["threshold"]):
            problems.append(f"activation-input variance ratio {max(positive) / min(positive):.3g} > {self.params['threshold']}")
        if narrow and len(narrow) == len(self.grads):
            problems.append(f"all {len(narrow)} gradient distributions narrower than {self.params['distribution_range']}")
        if problems:
            self.note(step, "; ".join(problems))
        return bool(problems)

    def finish(self):
        losses = _mode_losses(self.base_trial, modes.TRAIN, _loss_names(self.base_trial))
        early = [v for s, v in losses.items() if s < int(self.params["steps"])]
        p = int(self.params["patience"])
        if len(early) > p:
            self.datapoints += 1
            if min(early[-p:]) >= early[0]:
                return f"TRAIN loss did not drop in the first {self.params['steps']} steps ({early[0]:.4g} -> {early[-1]:.4g})"
        return None


class DeadRelu(LocalRule):
    """For each saved ReLU output: a unit (one element position across the batch) is dead when it is
    active (> 0) for less than threshold_inactivity % of the samples; fires when more than
    threshold_layer % of a layer's units are dead."""

    DEFAULTS = {"tensor_regex": ".*relu_output", "threshold_inactivity": 1.0, "threshold_layer": 50.0}
    DESCRIPTION = "Many ReLU units never activate (dead ReLUs)."
    RECOMMENDATION = "Lower the learning rate, check initialisation, or use LeakyReLU."

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        self.names = [n for n in base_trial.tensor_names() if re.match(self.params["tensor_regex"], n)]
        self.has_data = bool(self.names)

    def invoke_at_step(self, step):
        dead_layers = []
        for name in self.names:
            try:
                a = np.asarray(self.base_trial.tensor(name).value(step))
            except Exception:
                continue
            if a.ndim < 2:
                continue
            self.datapoints += 1
            activity = 100.0 * (a > 0).mean(axis=0)
            dead = 100.0 * float((activity < float(self.params["threshold_inactivity"])).mean())
            if dead > float(self.params["threshold_layer"]):
                dead_layers.append(f"{name} {dead:.0f}% dead")
        if dead_layers:
            self.note(step, ", ".join(dead_layers[:3]))
        return bool(dead_layers)


class ClassImbalance(LocalRule):
    """Labels and predictions are the loss module's inputs (labels_regex / predictions_regex), saved in
    TRAIN mode. Fires when, over all saved samples, the most frequent class has more than
    threshold_imbalance times the samples of the least frequent one (classes counted from the logits'
    width, so an unseen class counts 0), or when in the last `samples` samples a class's mispredicted
    fraction exceeds threshold_misprediction (checked once, at the end, so the random predictions of
    the first steps do not count). Logits are argmax-ed when 2-D whatever `argmax` says."""

    DEFAULTS = {"threshold_imbalance": 10.0, "threshold_misprediction": 0.7, "samples": 500, "argmax": False,
                "labels_regex": LABELS_NAME, "predictions_regex": LOGITS_NAME}
    DESCRIPTION = "Classes are imbalanced in the training data, or some classes are mostly mispredicted."
    RECOMMENDATION = "Rebalance the data (oversample, class weights in the loss) or collect more samples of the rare classes."

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        names = base_trial.tensor_names()
        self.label_names = [n for n in names if re.fullmatch(self.params["labels_regex"], n)]
        self.pred_names = [n for n in names if re.fullmatch(self.params["predictions_regex"], n)]
        self.has_data = bool(self.label_names)
        self.labels, self.preds, self.num_classes = [], [], 0

    def invoke_at_step(self, step):
        mode, _ = _mode_of(self.base_trial, step)
        if mode != modes.TRAIN:
            return False
        for ln, pn in zip(self.label_names, self.pred_names or [None] * len(self.label_names)):
            try:
                y = np.asarray(self.base_trial.tensor(ln).value(step)).reshape(-1).astype(np.int64)
            except Exception:
                continue
            self.labels.extend(y.tolist())
            self.datapoints += 1
            if pn is None:
                continue
            try:
                p = np.asarray(self.base_trial.tensor(pn).value(step))
            except Exception:
                continue
            if p.ndim == 2:
                self.num_classes = max(self.num_classes, p.shape[1])
                p = p.argmax(axis=1)
            self.preds.extend(p.reshape(-1).astype(np.int64).tolist())
        return False

    def finish(self):
        if not self.labels:
            return None
        labels = np.asarray(self.labels)
        k = max(self.num_classes, int(labels.max()) + 1)
        counts = np.bincount(labels, minlength=k)
        problems = []
        if counts.max() > float(self.params["threshold_imbalance"]) * counts.min():
            problems.append(f"class {int(counts.argmax())} has {int(counts.max())} samples, class {int(counts.argmin())} "
                            f"{int(counts.min())} (> {self.params['threshold_imbalance']}x)")
        if len(self.preds) == len(self.labels):
            n = int(self.params["samples"])
            y, p = labels[-n:], np.asarray(self.preds[-n:])
            for c in range(k):
                sel = y == c
                if sel.sum() and float((p[sel] != c).mean()) > float(self.params["threshold_misprediction"]):
                    problems.append(f"class {c}: {100 * float((p[sel] != c).mean()):.0f}% of {int(sel.sum())} samples mispredicted")
        self.counts = counts.tolist()
        return "; ".join(problems) if problems else None


class WeightUpdateRatio(LocalRule):
    """Between two consecutive saved TRAIN steps of a weight: ratio = ||w_t - w_prev|| / (||w_prev|| + epsilon);
    fires when a ratio is above large_threshold or below small_threshold."""

    DEFAULTS = {"large_threshold": 10.0, "small_threshold": 1e-8, "epsilon": 1e-9}
    DESCRIPTION = "Weight updates are too large (unstable) or too small (not learning) relative to the weights."
    RECOMMENDATION = "Tune the learning rate; check for frozen layers or a broken optimizer setup."

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        self.names = _names(base_trial, ("weights",))
        self.has_data = bool(self.names)
        self.prev = {}

    def invoke_at_step(self, step):
        mode, _ = _mode_of(self.base_trial, step)
        if mode not in (modes.TRAIN, modes.GLOBAL):
            return False
        bad = []
        for name in self.names:
            try:
                w = np.asarray(self.base_trial.tensor(name).value(step), dtype=np.float64)
            except Exception:
                continue
            prev = self.prev.get(name)
            self.prev[name] = w
            if prev is None or prev.shape != w.shape:
                continue
            self.datapoints += 1
            ratio = float(np.linalg.norm(w - prev) / (np.linalg.norm(prev) + float(self.params["epsilon"])))
            if not (float(self.params["small_threshold"]) <= ratio <= float(self.params["large_threshold"])):
                bad.append(f"{name} ratio {ratio:.3g}")
        if bad:
            self.note(step, ", ".join(bad[:3]))
        return bool(bad)


class AllZero(TensorScanRule):
    """Fires at a step where a saved tensor (collection_names / tensor_regex) is at least threshold % zeros."""

    DEFAULTS = {"threshold": 100.0, "collection_names": "weights,gradients", "tensor_regex": ""}
    DESCRIPTION = "Tensors are all zeros."
    RECOMMENDATION = "Check initialisation, frozen or disconnected layers, and that the inputs are not blank."
    FINDING = "tensors all zero"

    def is_bad(self, v) -> bool:
        return bool(v.size and 100.0 * float((v == 0).mean()) >= float(self.params["threshold"]))


# ----------------------------------------------------------------------------- profiler rules
class Profile:
    """What the profiler wrote: system samples, step timings, job facts."""

    def __init__(self, profiler_dir):
        d = Path(profiler_dir)
        self.system = sampler.read_jsonl(d / sampler.SYSTEM)
        self.steps = sampler.read_jsonl(d / sampler.STEPS)
        self.job = json.loads((d / sampler.JOB).read_text()) if (d / sampler.JOB).exists() else {}
        self.gpus = max((len(r.get("gpu") or []) for r in self.system), default=0)

    def gpu(self, key, i):
        return np.array([r["gpu"][i][key] for r in self.system if len(r.get("gpu") or []) > i], dtype=float)

    def train_steps(self):
        return [s for s in self.steps if s.get("mode", "train") == "train"]


class ProfilerRule(LocalRule):
    """A profiler rule: `step` is a datapoint index (a system sample or a training step), not a
    tensor step, so `invoke` does not wait on an smdebug trial."""

    KIND = "profiler"
    NEEDS_GPU = False

    def __init__(self, profile: Profile, **params):
        super().__init__(_EmptyTrial(), **params)
        self.profile = profile
        self.has_data = bool(profile.system) and (profile.gpus > 0 or not self.NEEDS_GPU)

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
    RECOMMENDATION = "Find bottlenecks (data loading, CPU pre-processing), avoid blocking calls, increase the batch size."

    def invoke_at_step(self, i):
        n = len(self.profile.system)
        patience, window = scaled(self.params["patience"], n, 0.1), scaled(self.params["window"], n, 0.5)
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
        n = len(self.profile.system)
        if i < scaled(self.params["patience"], n, 0.1):
            return False
        self.datapoints += 1
        self.hits += int(self.bottleneck(self.profile.system[i]))
        return False

    def finish(self):
        if self.datapoints and 100.0 * self.hits / self.datapoints > self.params["threshold"]:
            return f"{100.0 * self.hits / self.datapoints:.0f}% of {self.datapoints} samples (> {self.params['threshold']}%)"
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
    RECOMMENDATION = "Look for tensors kept across steps (e.g. accumulating losses without .item()); choose a larger instance."

    def invoke_at_step(self, i):
        n = len(self.profile.system)
        window = scaled(self.params["window"], n, 0.5)
        if i < max(scaled(self.params["patience"], n, 0.1), 2 * window) or i % window:
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
        n = len(self.profile.system)
        patience, window = scaled(self.params["patience"], n, 0.1), scaled(self.params["window"], n, 0.5)
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
        self.has_data = "start" in profile.job

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
        self.rows = [s for s in profile.steps if s.get("mode") == self.params["mode"] and s.get("step", 0) > 0]
        self.has_data = len(self.rows) >= 3
        if self.has_data:
            t = np.array([r["total"] for r in self.rows])
            self.limit = float(t.mean() + float(self.params["stddev"]) * t.std())
        self.outliers = []

    def steps(self):
        return (0, len(self.rows)) if self.has_data else (0, 0)

    def invoke_at_step(self, i):
        self.datapoints += 1
        if self.rows[i]["total"] > self.limit:
            self.outliers.append(self.rows[i]["step"])
        return False

    def finish(self):
        allowed = max(1, min(int(self.params["n_outliers"]), len(self.rows) // 10))
        if len(self.outliers) > allowed:
            return f"{len(self.outliers)} steps slower than {self.limit:.3f}s (> {allowed} allowed): steps {self.outliers[:10]}"
        return None


class Dataloader(ProfilerRule):
    """Fires when the data-loader workers are fewer than min_threshold % or more than max_threshold % of
    the cores. Local extension (AWS's report showed it, its rule did not check it): also fires when the
    share of the training step time spent waiting for the next batch exceeds wait_threshold %."""

    DEFAULTS = {"min_threshold": 70.0, "max_threshold": 200.0, "wait_threshold": 50.0}
    DESCRIPTION = "Data loading is badly configured or dominates the step time."
    RECOMMENDATION = "Change the number of data-loader workers (hyperparameter `workers`), prefetch, or make __getitem__ cheaper."

    def __init__(self, profile, **params):
        super().__init__(profile, **params)
        self.rows = [s for s in profile.train_steps() if s.get("total")]
        self.has_data = "workers" in profile.job or bool(self.rows)

    def steps(self):
        return (0, 1) if self.has_data else (0, 0)

    def invoke_at_step(self, i):
        problems = []
        job = self.profile.job
        if "workers" in job and job.get("cores"):
            self.datapoints += 1
            pct = 100.0 * job["workers"] / job["cores"]
            if pct < self.params["min_threshold"]:
                problems.append(f"{job['workers']} workers for {job['cores']} cores ({pct:.0f}% < {self.params['min_threshold']}%)")
            elif pct > self.params["max_threshold"]:
                problems.append(f"{job['workers']} workers for {job['cores']} cores ({pct:.0f}% > {self.params['max_threshold']}%)")
        if self.rows:
            self.datapoints += len(self.rows)
            share = 100.0 * sum(r.get("dataloader", 0.0) for r in self.rows) / sum(r["total"] for r in self.rows)
            self.wait_share = round(share, 2)
            if share > self.params["wait_threshold"]:
                problems.append(f"{share:.0f}% of the training step time waits for data (> {self.params['wait_threshold']}%)")
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


# ----------------------------------------------------------------------------- running
def _convert(text, default):
    if isinstance(default, bool):
        return str(text).strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(float(text))
    if isinstance(default, float):
        return float(text)
    return str(text)


def parse_overrides(specs) -> dict:
    """["Overfit:ratio_threshold=0.2", ...] -> {"Overfit": {"ratio_threshold": 0.2}} (typed by the defaults)."""
    out = {}
    for spec in specs or []:
        name, _, rest = spec.partition(":")
        name = name.strip()
        if name not in ALL_RULES:
            raise ValueError(f"unknown rule {name!r}; known: {', '.join(ALL_RULES)}")
        cls = globals()[name]
        out.setdefault(name, {})
        for pair in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or key.strip() not in cls.DEFAULTS:
                raise ValueError(f"{name}: bad parameter {pair!r}; known: {', '.join(cls.DEFAULTS)}")
            out[name][key.strip()] = _convert(value.strip(), cls.DEFAULTS[key.strip()])
    return out


def output_dir_of(path) -> Path:
    """A job folder (jobs/<name>, containing output/) or an output folder itself."""
    path = Path(path)
    if (path / "output").is_dir():
        return path / "output"
    return path


def evaluate(rule) -> dict:
    """Run one rule over all its steps with invoke_rule; every RuleEvaluationConditionMet is a violation."""
    start, end = rule.steps()
    fired = []
    if rule.has_data:
        while start < end:
            try:
                invoke_rule(rule, start_step=start, end_step=end, raise_eval_cond=True)
                break
            except RuleEvaluationConditionMet as exc:
                fired.append(int(exc.step))
                start = int(exc.step) + 1
        extra = rule.finish()
        if extra:
            fired.append(end - 1 if end else 0)
            rule.messages.append(("end: " if rule.KIND == "debugger" else "") + extra)
    triggered = bool(fired)
    status = "IssuesFound" if triggered else ("NoIssuesFound" if rule.has_data and rule.datapoints else "NoData")
    verdict = {
        "rule": rule.rule_name, "kind": rule.KIND, "status": status, "triggered": triggered,
        "violations": len(fired), "datapoints": rule.datapoints, "trigger_steps": fired[:MAX_TRIGGER_STEPS],
        "details": rule.messages, "parameters": rule.params, "description": rule.DESCRIPTION,
        "recommendation": rule.RECOMMENDATION,
    }
    for extra in ("stats", "counts", "wait_share"):
        if hasattr(rule, extra):
            verdict[extra] = getattr(rule, extra)
    return verdict


def run_rules(job_or_output_dir, overrides=None, only=None, write=True) -> list[dict]:
    """Evaluate the rules on a finished (or running) job; write output/rules/<Rule>.json; return the verdicts.

    overrides: {"Rule": {"param": value}} or ["Rule:param=value", ...]; only: rule names (default all)."""
    out = output_dir_of(job_or_output_dir)
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(overrides)
    overrides = overrides or {}
    names = list(only) if only else list(ALL_RULES)
    tensors = out / "tensors"
    trial = None
    if any(n in DEBUGGER_RULES for n in names) and (tensors / "index").is_dir():
        from smdebug.trials import create_trial

        logging.getLogger("smdebug").setLevel(logging.WARNING)
        trial = create_trial(str(tensors))
    profile = Profile(out / "profiler")
    verdicts = []
    for name in names:
        cls = globals()[name]
        params = overrides.get(name, {})
        if name in DEBUGGER_RULES:
            if trial is None or not trial.steps():
                cls(_EmptyTrial(), **params)  # validates the overrides
                verdict = {"rule": name, "kind": "debugger", "status": "NoData", "triggered": False, "violations": 0,
                           "datapoints": 0, "trigger_steps": [], "details": [f"no smdebug tensors in {tensors}"],
                           "parameters": {**cls.DEFAULTS, **params}, "description": cls.DESCRIPTION,
                           "recommendation": cls.RECOMMENDATION}
            else:
                verdict = evaluate(cls(trial, **params))
        else:
            verdict = evaluate(cls(profile, **params))
        verdicts.append(verdict)
    if write:
        rules_dir = out / "rules"
        rules_dir.mkdir(parents=True, exist_ok=True)
        for v in verdicts:
            (rules_dir / f"{v['rule']}.json").write_text(json.dumps(v, indent=2, default=_json_default))
    return verdicts


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


class _EmptyTrial:
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


def read_verdicts(job_or_output_dir) -> list[dict]:
    d = output_dir_of(job_or_output_dir) / "rules"
    order = {n: i for i, n in enumerate(ALL_RULES)}
    found = [json.loads(p.read_text()) for p in d.glob("*.json")] if d.is_dir() else []
    return sorted(found, key=lambda v: order.get(v["rule"], 99))


def table(verdicts) -> str:
    rows = [("RULE", "STATUS", "VIOLATIONS", "DATAPOINTS", "WHEN / WHY", "RECOMMENDATION")]
    for v in verdicts:
        why = v["details"][0] if v["details"] else ""
        rows.append((v["rule"], v["status"], str(v["violations"]), str(v["datapoints"]), why[:70],
                     v["recommendation"] if v["triggered"] else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + ("  " + r[5] if r[5] else "") for r in rows)
