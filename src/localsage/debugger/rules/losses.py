"""Rules on the loss curve: LossNotDecreasing, LossDiverging (ours), Overfit, Overtraining."""
from __future__ import annotations

import math

from smdebug import modes

from localsage.debugger.rules.base import LocalRule, fmt, loss_names, mean, mode_losses, mode_of, scalar

MIN_LOSS_POINTS = 5
MIN_PASSES = 3
NO_LOSSES = ("no loss tensors saved (collection `losses`, e.g. CrossEntropyLoss_output_0): "
             "register the loss module with the hook (hook.register_loss)")


def loss_series(trial, use_collection=True):
    """[(global_step, mode, loss)] in step order, over the saved loss tensors."""
    found = loss_names(trial, use_collection)
    out = []
    for step in sorted(trial.steps()) if found else []:
        values = [v for v in (scalar(trial, n, step) for n in found) if v is not None]
        if values:
            out.append((step, mode_of(trial, step)[0], mean(values)))
    return found, out


def passes(series):
    """Evaluation passes (runs of consecutive EVAL points): [(last_step, [train losses since the
    previous pass], [eval losses of the pass])]."""
    out, train, ev, last = [], [], [], None
    for step, mode, loss in series:
        if mode == modes.EVAL:
            ev.append(loss)
            last = step
            continue
        if ev:
            out.append((last, train, ev))
            train, ev = [], []
        if mode == modes.TRAIN:
            train.append(loss)
    if ev:
        out.append((last, train, ev))
    return out


class LossNotDecreasing(LocalRule):
    """Every `num_steps` steps of the chosen mode, the loss must have dropped by `diff_percent` %
    against the previous check. The loss "at a check" is the mean of the losses saved in the last
    num_steps steps of that mode (the single saved loss when saving every >= num_steps steps, as AWS
    does), so dense saving does not turn minibatch noise into violations; the first check is the
    first saved loss (the model as initialised). A NaN/inf loss is a violation. A violation whose
    loss rose by more than increase_threshold_percent % is "rising", otherwise "flat".
    Local differences: mode order TRAIN, EVAL, GLOBAL when `mode` is empty (AWS tries EVAL first;
    jobs here evaluate once per epoch, so EVAL has a handful of points where TRAIN has dozens, and
    the EVAL trend is Overfit/Overtraining's concern). Short jobs: num_steps scales to a quarter of
    the saved span (at least 4 checks); fewer than 5 points in every mode is NoData."""

    LABEL = "Loss not decreasing"
    ORDER = 110
    DEFAULTS = {"num_steps": 10, "diff_percent": 0.1, "increase_threshold_percent": 5.0, "mode": "",
                "use_losses_collection": True}
    DESCRIPTION = "Loss is not decreasing at the expected rate."
    RECOMMENDATION = "Check the learning rate (too high diverges, too low stalls), the data and labels, and the loss."
    ACTION = "check the learning rate (too low stalls, too high diverges)"

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        self.names = loss_names(base_trial, self.params["use_losses_collection"])
        self.mode, self.losses, self.last_check = None, {}, None
        if not self.names:
            self.no_data(NO_LOSSES)
            return
        wanted = str(self.params["mode"]).upper()
        candidates = [getattr(modes, wanted)] if wanted else [modes.TRAIN, modes.EVAL, modes.GLOBAL]
        counts = {}
        for m in candidates:
            if m == modes.GLOBAL and not wanted and any(counts.values()):
                break  # GLOBAL is for trials without modes (a script that never called set_mode)
            losses = mode_losses(base_trial, m, self.names)
            counts[m] = len(losses)
            if len(losses) >= MIN_LOSS_POINTS:
                self.mode, self.losses = m, losses
                break
        if self.mode is None:
            m = next((k for k, c in counts.items() if c), candidates[0])
            self.no_data(f"{counts[m]} {m.name} loss points, needs {MIN_LOSS_POINTS}: save more often with "
                         f"debug-train-interval" + (" (or mode=TRAIN)" if wanted and wanted != "TRAIN" else ""))
            return
        steps = list(self.losses)
        span = steps[-1] - steps[0]
        n = self.scale("num_steps", max(1, span // 4),
                       f"{len(steps)} {self.mode.name} loss points over {span + 1} steps")
        if span < n:
            self.no_data(f"{self.mode.name} losses span {span + 1} steps, num_steps={n} needs {n + 1}")

    def _value_at(self, mode_step):
        n = int(self.params["num_steps"])
        return mean([v for s, v in self.losses.items() if mode_step - n < s <= mode_step])

    def invoke_at_step(self, step):
        if not self.has_data:
            return False
        mode, mode_step = mode_of(self.base_trial, step)
        if mode != self.mode or mode_step not in self.losses:
            return False
        if self.last_check is None:
            self.last_check = (mode_step, self.losses[mode_step])
            return False
        prev_step, prev = self.last_check
        if mode_step - prev_step < int(self.params["num_steps"]):
            return False
        value = self._value_at(mode_step)
        self.last_check = (mode_step, value)
        self.datapoints += 1
        if not math.isfinite(value):
            self.note(step, f"{self.mode.name} loss is {value}")
            return True
        drop = 100.0 * (prev - value) / abs(prev) if prev else 0.0
        if drop < float(self.params["diff_percent"]):
            kind = "rising" if -drop > float(self.params["increase_threshold_percent"]) else "flat"
            self.note(step, f"{self.mode.name} loss {fmt(prev)} (step {prev_step}) -> {fmt(value)} "
                            f"({kind}, {drop:+.3g} %)")
            return True
        return False


class LossDiverging(LocalRule):
    """Ours (SageMaker's ExplodingTensor sees only NaN/inf; a diverged job's losses can stay finite at
    10^3-10^17): fires at each saved step of `mode` whose loss is more than `factor` times the first
    saved loss of that mode (the loss of the model as initialised: ln(classes) for a fresh
    classifier), or not finite. Needs 2 saved losses. Mode: `mode`, or TRAIN (GLOBAL in a trial
    without modes)."""

    LABEL = "Diverged"
    ORDER = 10
    DEFAULTS = {"factor": 10.0, "mode": "", "use_losses_collection": True}
    DESCRIPTION = "The loss grew far above its starting value: training diverged."
    RECOMMENDATION = "Lower the learning rate (try 10x lower), add warm-up or gradient clipping; check the optimizer."
    ACTION = "lower the learning rate"

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        self.names = loss_names(base_trial, self.params["use_losses_collection"])
        wanted = str(self.params["mode"]).upper()
        self.mode = getattr(modes, wanted or "TRAIN")
        self.losses = mode_losses(base_trial, self.mode, self.names) if self.names else {}
        if not wanted and not self.losses and self.names:  # a trial without modes
            self.mode, self.losses = modes.GLOBAL, mode_losses(base_trial, modes.GLOBAL, self.names)
        self.peak, self.first_fired, self.first_nonfinite = None, None, None
        if not self.names:
            self.no_data(NO_LOSSES)
        elif len(self.losses) < 2:
            self.no_data(f"{len(self.losses)} {self.mode.name} loss points, needs 2: "
                         "save more often with debug-train-interval")
        else:
            self.first_step, self.first = next(iter(self.losses.items()))

    def invoke_at_step(self, step):
        if not self.has_data:
            return False
        mode, mode_step = mode_of(self.base_trial, step)
        if mode != self.mode or mode_step not in self.losses or mode_step == self.first_step:
            return False
        self.datapoints += 1
        value = self.losses[mode_step]
        limit = float(self.params["factor"]) * abs(self.first)
        if math.isfinite(value) and value <= limit:
            return False
        if not math.isfinite(value):
            self.first_nonfinite = self.first_nonfinite or (step, value)
        elif self.peak is None or value > self.peak[1]:
            self.peak = (step, value)
        if self.first_fired is None:
            self.first_fired = step
        ratio = f" (x{value / self.first:.2g})" if math.isfinite(value) and self.first else ""
        self.note(step, f"{self.mode.name} loss {fmt(self.first)} (step {self.first_step}) -> {fmt(value)}{ratio}")
        return True

    def finish(self):
        if self.peak is not None and self.peak[0] != self.first_fired:
            self.evidence += f"; peak {fmt(self.peak[1])} at step {self.peak[0]}"
        if self.first_nonfinite is not None and self.first_nonfinite[0] != self.first_fired:
            self.evidence += f"; {self.first_nonfinite[1]} from step {self.first_nonfinite[0]}"
        return None


class Overfit(LocalRule):
    """After every evaluation pass (a run of consecutive EVAL steps), compare the mean EVAL loss of the
    pass with the mean TRAIN loss saved since the previous pass: fires when
    (eval - train) / train > ratio_threshold for `patience` consecutive passes, from start_step on.
    Local refinement (parameter only_when_not_improving, default true; false gives AWS's plain
    condition): a pass counts only when its EVAL loss is no better than the best earlier pass. A gap
    while validation loss still falls is an untrained model (e.g. BatchNorm running statistics after
    the first epoch give a huge EVAL loss), not overfitting."""

    LABEL = "Overfitting"
    ORDER = 90
    DEFAULTS = {"start_step": 0, "patience": 1, "ratio_threshold": 0.1, "use_losses_collection": True,
                "only_when_not_improving": True}
    DESCRIPTION = "Validation loss is much higher than training loss: the model is overfitting."
    RECOMMENDATION = "Add augmentation or regularisation (weight decay, dropout), more data, or stop earlier."
    ACTION = "add augmentation/regularisation or more data, or stop earlier"

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        self.names, series = loss_series(base_trial, self.params["use_losses_collection"])
        self.passes = {p[0]: p for p in passes(series) if p[1]}
        self.bad, self.best_eval = 0, math.inf
        if not self.names:
            self.no_data(NO_LOSSES)
        elif not any(m == modes.EVAL for _, m, _ in series):
            self.no_data("no EVAL losses saved: give the job a valid channel "
                         "(saved every debug-eval-interval EVAL steps; "
                         "script mode: hook.set_mode(smd.modes.EVAL) around evaluation)")
        elif not self.passes:
            self.no_data("no evaluation pass follows saved TRAIN losses: save more often with debug-train-interval")

    def invoke_at_step(self, step):
        if not self.has_data or step < int(self.params["start_step"]) or step not in self.passes:
            return False
        _, train, ev_losses = self.passes[step]
        self.datapoints += 1
        tr, ev = mean(train), mean(ev_losses)
        ratio = (ev - tr) / tr if tr > 0 else (math.inf if ev > tr else 0.0)
        improving = ev < self.best_eval
        self.best_eval = min(self.best_eval, ev)
        if (ratio > float(self.params["ratio_threshold"]) or not math.isfinite(ev)) and not (
                improving and self.params["only_when_not_improving"]):
            self.bad += 1
        else:
            self.bad = 0
        if self.bad >= int(self.params["patience"]):
            self.note(step, f"EVAL loss {fmt(ev)} vs TRAIN loss {fmt(tr)}: "
                            f"ratio {ratio:.3g} > {self.params['ratio_threshold']}")
            return True
        return False


class Overtraining(LocalRule):
    """AWS does not document the exact logic; defined here as: keep the best TRAIN loss (over saved
    TRAIN steps) and the best EVAL loss (mean of each evaluation pass); a loss "improves" when it drops
    below best - delta. Fires when TRAIN has not improved for patience_train saved TRAIN steps AND the
    validation loss has not improved for patience_validation evaluation passes: training goes on
    without learning anything that generalises. Local condition (min_learned_percent): the mean of the
    last quarter of the TRAIN losses so far must be at least that % below the mean of the first
    quarter; a model that never learned is
    LossNotDecreasing's finding, not overtraining. Short jobs: patience_validation scales to half the
    passes (at least 2), patience_train to a quarter of the saved TRAIN steps (at least 2); fewer
    than 3 evaluation passes is NoData."""

    LABEL = "Overtraining"
    ORDER = 100
    DEFAULTS = {"patience_train": 5, "patience_validation": 10, "delta": 0.01, "min_learned_percent": 10.0}
    DESCRIPTION = "Training and validation losses stopped improving: further training is wasted."
    RECOMMENDATION = ("Stop earlier (early stopping via the `patience` hyperparameter) "
                      "or change the learning rate schedule.")
    ACTION = "stop earlier (hyperparameter patience)"

    def __init__(self, base_trial, **params):
        super().__init__(base_trial, **params)
        self.names, self.series = loss_series(base_trial)
        self.ends = {p[0] for p in passes(self.series)}
        self.values = {s: (m, v) for s, m, v in self.series}
        self.best_train, self.since_train = math.inf, 0
        self.best_eval, self.since_eval = math.inf, 0
        self.eval, self.train = [], []
        n_train = sum(1 for _, m, _ in self.series if m == modes.TRAIN)
        if not self.names:
            self.no_data(NO_LOSSES)
        elif len(self.ends) < MIN_PASSES:
            self.no_data(f"{len(self.ends)} evaluation passes with saved EVAL losses, needs {MIN_PASSES}")
        elif not n_train:
            self.no_data("no TRAIN losses saved")
        else:
            self.scale("patience_validation", max(2, len(self.ends) // 2), f"{len(self.ends)} evaluation passes")
            self.scale("patience_train", max(2, n_train // 4), f"{n_train} saved TRAIN losses")

    def invoke_at_step(self, step):
        if not self.has_data or step not in self.values:
            return False
        mode, loss = self.values[step]
        delta = float(self.params["delta"])
        if mode == modes.TRAIN:
            self.datapoints += 1
            self.train.append(loss)
            if loss < self.best_train - delta:
                self.best_train, self.since_train = loss, 0
            else:
                self.since_train += 1
            return False
        if mode != modes.EVAL:
            return False
        self.eval.append(loss)
        if step not in self.ends:
            return False
        ev, self.eval = mean(self.eval), []
        if ev < self.best_eval - delta:
            self.best_eval, self.since_eval = ev, 0
        else:
            self.since_eval += 1
        k = max(1, len(self.train) // 4)
        learned = bool(self.train) and mean(self.train[-k:]) < mean(self.train[:k]) * (
            1 - float(self.params["min_learned_percent"]) / 100)
        if learned and self.since_train >= int(self.params["patience_train"]) and \
                self.since_eval >= int(self.params["patience_validation"]):
            self.note(step, f"no TRAIN improvement for {self.since_train} saved steps and no EVAL improvement "
                            f"for {self.since_eval} passes (best EVAL loss {fmt(self.best_eval)})")
            return True
        return False
