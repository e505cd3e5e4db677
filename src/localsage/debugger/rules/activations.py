"""Rules on what the network computes: PoorWeightInitialization, DeadRelu (ReLU activations) and
ClassImbalance (the loss module's labels and logits)."""
from __future__ import annotations

import re

import numpy as np
from smdebug import modes

from localsage.core.debug_names import LABELS_NAME, LOGITS_NAME
from localsage.debugger.rules.base import LocalRule, fmt, loss_names, mode_losses, mode_of, names
from localsage.debugger.rules.tensors import NO_GRADIENTS

NO_RELU = ("no ReLU activations saved ({rx}): the built-in trainer saves them with rules=all or when `rules` "
           "names DeadRelu/PoorWeightInitialization; a script's hook needs collection relu_activations")


class PoorWeightInitialization(LocalRule):
    """At the first saved step with ReLU inputs: fires when the ratio of the largest to the smallest
    per-layer variance of the activation inputs exceeds `threshold`, or when every gradient tensor's
    5th–95th percentile range is narrower than `distribution_range`. Also fires when the TRAIN loss of
    the first `steps` steps has not dropped over the last `patience` saved losses of that span."""

    LABEL = "Poor weight initialisation"
    ORDER = 40
    ACTIVATIONS = True
    DEFAULTS = {"activation_inputs_regex": ".*relu_input", "threshold": 10.0, "distribution_range": 0.001,
                "patience": 5, "steps": 10}
    DESCRIPTION = ("The initial weights give badly scaled activations or gradients, "
                   "or the loss does not start to converge.")
    RECOMMENDATION = "Use a standard initialisation (Kaiming/Xavier) or pretrained weights; add normalisation layers."
    ACTION = "use a standard initialisation (Kaiming/Xavier) or pretrained weights"

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        rx = self.params["activation_inputs_regex"]
        self.acts = [n for n in base_trial.tensor_names() if re.match(rx, n)]
        self.grads = names(base_trial, ("gradients",), r"^gradient")
        if not (self.acts or self.grads):
            self.no_data(NO_RELU.format(rx=f"/{rx}/") + "; " + NO_GRADIENTS)
        self.done = False
        self.symptom = False  # True when only the loss check fired (a flat/rising start has many causes)

    def invoke_at_step(self, step):
        if self.done:
            return False
        variances, problems = {}, []
        for name in self.acts:
            try:
                variances[name] = float(np.var(self.base_trial.tensor(name).value(step)))
            except Exception:
                continue
        narrow, seen = [], 0
        for name in self.grads:
            try:
                g = np.asarray(self.base_trial.tensor(name).value(step), dtype=np.float64)
            except Exception:
                continue
            seen += 1
            if g.size > 1 and np.percentile(g, 95) - np.percentile(g, 5) < float(self.params["distribution_range"]):
                narrow.append(name)
        if not variances and not seen:
            return False
        self.done = True
        self.datapoints += 1
        positive = {k: v for k, v in variances.items() if v > 0}
        if positive and max(positive.values()) / min(positive.values()) > float(self.params["threshold"]):
            hi, lo = max(positive, key=positive.get), min(positive, key=positive.get)
            problems.append(f"activation-input variance ratio {positive[hi] / positive[lo]:.3g} "
                            f"> {self.params['threshold']} ({hi} {positive[hi]:.3g} vs {lo} {positive[lo]:.3g})")
        if variances and not positive:
            problems.append(f"all {len(variances)} activation inputs are constant (variance 0)")
        if narrow and len(narrow) == seen:
            problems.append(f"all {len(narrow)} gradient distributions narrower than "
                            f"{self.params['distribution_range']}")
        if problems:
            self.note(step, "; ".join(problems))
        return bool(problems)

    def finish(self):
        losses = mode_losses(self.base_trial, modes.TRAIN, loss_names(self.base_trial))
        early = [v for s, v in losses.items() if s < int(self.params["steps"])]
        p = int(self.params["patience"])
        if len(early) > p:
            self.datapoints += 1
            if min(early[-p:]) >= early[0]:
                self.symptom = not self.messages
                return (f"TRAIN loss did not drop in the first {self.params['steps']} steps "
                        f"({fmt(early[0])} -> {fmt(early[-1])})")
        return None


class DeadRelu(LocalRule):
    """For each saved ReLU output: a unit (one element position across the batch) is dead when it is
    active (> 0) for less than threshold_inactivity % of the samples; fires when more than
    threshold_layer % of a layer's units are dead."""

    LABEL = "Dead ReLUs"
    ORDER = 50
    ACTIVATIONS = True
    DEFAULTS = {"tensor_regex": ".*relu_output", "threshold_inactivity": 1.0, "threshold_layer": 50.0}
    DESCRIPTION = "Many ReLU units never activate (dead ReLUs)."
    RECOMMENDATION = "Lower the learning rate, check initialisation (biases), or use LeakyReLU."
    ACTION = "check the initialisation (biases) and the learning rate, or use LeakyReLU"

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        rx = self.params["tensor_regex"]
        self.names = [n for n in base_trial.tensor_names() if re.match(rx, n)]
        if not self.names:
            self.no_data(NO_RELU.format(rx=f"/{rx}/"))

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
            self.note(step, f"{len(dead_layers)} of {len(self.names)} ReLU layers: " + ", ".join(dead_layers[:3]))
        return bool(dead_layers)


class ClassImbalance(LocalRule):
    """Labels and predictions are the loss module's inputs (labels_regex / predictions_regex), saved in
    TRAIN mode. Fires when, over all saved samples, the most frequent class has more than
    threshold_imbalance times the samples of the least frequent one (classes counted from the logits'
    width, so an unseen class counts 0), or when in the last `samples` samples a class's mispredicted
    fraction exceeds threshold_misprediction (checked once, at the end, so the random predictions of
    the first steps do not count; short jobs: `samples` scales to the last third of the saved samples).
    Logits are argmax-ed when 2-D whatever `argmax` says.
    Local refinement (only_when_others_learned, default true; false gives AWS's plain condition): a
    mispredicted class counts only while the other classes together are mispredicted at most
    1 - threshold_misprediction of the time. A model at chance (e.g. a diverged one) mispredicts
    every class: that is not a class problem."""

    LABEL = "Class imbalance"
    ORDER = 80
    DEFAULTS = {"threshold_imbalance": 10.0, "threshold_misprediction": 0.7, "samples": 500, "argmax": False,
                "labels_regex": LABELS_NAME, "predictions_regex": LOGITS_NAME, "only_when_others_learned": True}
    DESCRIPTION = "Classes are imbalanced in the training data, or some classes are mostly mispredicted."
    RECOMMENDATION = ("Rebalance the data (oversample, class weights in the loss) "
                      "or collect more samples of the rare classes.")
    ACTION = "rebalance the data (oversample or class weights)"

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        found = base_trial.tensor_names()
        self.label_names = [n for n in found if re.fullmatch(self.params["labels_regex"], n)]
        self.pred_names = [n for n in found if re.fullmatch(self.params["predictions_regex"], n)]
        if not self.label_names:
            self.no_data(f"no labels saved (/{self.params['labels_regex']}/): include collection labels_predictions "
                         "(the loss module's inputs) in the hook")
        self.labels, self.preds, self.num_classes = [], [], 0

    def invoke_at_step(self, step):
        mode, _ = mode_of(self.base_trial, step)
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
            problems.append(f"class {int(counts.argmax())} has {int(counts.max())} samples, "
                            f"class {int(counts.argmin())} {int(counts.min())} "
                            f"(> {self.params['threshold_imbalance']}x)")
        if len(self.preds) == len(self.labels):
            n = self.scale("samples", max(1, len(labels) // 3), f"{len(labels)} saved TRAIN samples: the last third")
            y, p = labels[-n:], np.asarray(self.preds[-n:])
            limit = float(self.params["threshold_misprediction"])
            for c in range(k):
                sel = y == c
                if not sel.sum():
                    continue
                wrong = float((p[sel] != c).mean())
                others = float((p[~sel] != y[~sel]).mean()) if (~sel).sum() else 0.0
                if wrong > limit and (others <= 1 - limit or not self.params["only_when_others_learned"]):
                    problems.append(f"class {c}: {100 * wrong:.0f}% of {int(sel.sum())} samples mispredicted "
                                    f"(other classes {100 * others:.0f}%)")
        self.counts = counts.tolist()
        return "; ".join(problems) if problems else None
