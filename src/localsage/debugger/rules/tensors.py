"""Rules on saved weights, biases and gradients: VanishingGradient, ExplodingTensor, AllZero,
WeightUpdateRatio."""
from __future__ import annotations

import numpy as np
from smdebug import modes

from localsage.debugger.rules.base import LocalRule, mode_of, names

NO_GRADIENTS = ("no gradient tensors saved (collection `gradients`): include it in the hook's collections "
                "(built-in trainer: saved every debug-tensor-interval TRAIN steps)")


def collection_reason(collections, regex=""):
    what = ", ".join(f"`{c}`" for c in collections) + (f" or /{regex}/" if regex else "")
    return (f"no tensors of {what} saved: include the collection(s) in the hook "
            "(built-in trainer: debug-tensor-interval)")


class VanishingGradient(LocalRule):
    """Fires at a step where mean(|gradient|) of any saved gradient tensor is below `threshold`."""

    LABEL = "Vanishing gradients"
    ORDER = 60
    DEFAULTS = {"threshold": 1e-7}
    DESCRIPTION = "Gradients became so small that the weights stop changing."
    RECOMMENDATION = ("Check initialisation, normalisation layers, activation functions and the learning rate; "
                      "use residual connections.")
    ACTION = "use ReLU-family activations, normalisation layers or residual connections; check the initialisation"

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        self.names = names(base_trial, ("gradients",), r"^gradient")
        if not self.names:
            self.no_data(NO_GRADIENTS)

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
            self.note(step, f"{len(fired)} of {len(self.names)} gradient tensors below {self.params['threshold']}: "
                      + ", ".join(fired[:3]))
        return bool(fired)


class TensorScanRule(LocalRule):
    """A rule that checks every tensor of `collection_names` / `tensor_regex` at each step: a subclass
    says which tensor is bad (`is_bad`) and how to name the finding (`FINDING`)."""

    DTYPE = None
    FINDING = ""

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        colls = [c.strip() for c in str(self.params["collection_names"]).split(",") if c.strip()]
        self.names = names(base_trial, colls, self.params["tensor_regex"] or None)
        self.found = set()
        if not self.names:
            self.no_data(collection_reason(colls, self.params["tensor_regex"]))

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
            self.found.update(bad)
        return bool(bad)


class ExplodingTensor(TensorScanRule):
    """Fires at a step where a saved tensor (collections/tensor_regex; by default losses, weights, biases,
    gradients) holds a NaN, or an infinity unless only_nan."""

    LABEL = "NaN/inf in the tensors"
    ORDER = 20
    DEFAULTS = {"only_nan": False, "collection_names": "losses,weights,biases,gradients", "tensor_regex": ""}
    DESCRIPTION = "A tensor holds NaN or infinite values."
    RECOMMENDATION = ("Lower the learning rate, clip gradients, check the data for NaNs "
                      "and use a numerically stable loss.")
    ACTION = "lower the learning rate or clip gradients"
    DTYPE = np.float64
    FINDING = "tensors with NaN/inf"

    def is_bad(self, v) -> bool:
        return bool(np.isnan(v).any() or (not self.params["only_nan"] and np.isinf(v).any()))


class AllZero(TensorScanRule):
    """Fires at a step where a saved tensor (collection_names / tensor_regex) is at least threshold % zeros."""

    LABEL = "All-zero tensors"
    ORDER = 30
    DEFAULTS = {"threshold": 100.0, "collection_names": "weights,gradients", "tensor_regex": ""}
    DESCRIPTION = "Tensors are all zeros."
    RECOMMENDATION = "Check initialisation, frozen or disconnected layers, and that the inputs are not blank."
    ACTION = "check the initialisation and for disconnected layers"
    FINDING = "tensors all zero"

    @property
    def symptom(self):
        """Only gradients were zero: the effect of something upstream (dead units, a zero init), not the cause."""
        return bool(self.found) and all(n.startswith("gradient") for n in self.found)

    def is_bad(self, v) -> bool:
        return bool(v.size and 100.0 * float((v == 0).mean()) >= float(self.params["threshold"]))


class WeightUpdateRatio(LocalRule):
    """Between two consecutive saved TRAIN steps of a weight: ratio = ||w_t - w_prev|| / (||w_prev|| + epsilon);
    fires when a ratio is above large_threshold or below small_threshold. Needs weights saved at 2 steps."""

    LABEL = "Weight updates out of scale"
    ORDER = 70
    DEFAULTS = {"large_threshold": 10.0, "small_threshold": 1e-8, "epsilon": 1e-9}
    DESCRIPTION = "Weight updates are too large (unstable) or too small (not learning) relative to the weights."
    RECOMMENDATION = "Tune the learning rate; check for frozen layers or a broken optimizer setup."
    ACTION = "tune the learning rate; check for frozen layers or a broken optimizer"

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        self.names = names(base_trial, ("weights",))
        self.prev = {}
        if not self.names:
            self.no_data(collection_reason(["weights"]))
            return
        saved = set()
        for name in self.names[:1]:
            try:
                saved = set(base_trial.tensor(name).steps(mode=modes.TRAIN)) or set(base_trial.tensor(name).steps())
            except Exception:
                pass
        if len(saved) < 2:
            self.no_data(f"weights saved at {len(saved)} TRAIN step(s), needs 2: "
                         "save more often with debug-tensor-interval")

    def invoke_at_step(self, step):
        mode, _ = mode_of(self.base_trial, step)
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
            side = ("small" if all(float(b.rsplit(" ", 1)[1]) < float(self.params["small_threshold"]) for b in bad)
                    else "large")
            self.note(step, f"{len(bad)} of {len(self.names)} weights with update ratio too {side}: "
                      + ", ".join(bad[:3]))
        return bool(bad)
