"""smdebug hook setup for the training loop (torch 2.x, smdebug 1.0.34).

What is saved (out_dir = contract.tensors_dir = output/tensors, smdebug's SageMaker default):
- `losses` (CrossEntropyLoss_output_0) and `labels_predictions` (the loss module's inputs:
  CrossEntropyLoss_input_0 = logits, CrossEntropyLoss_input_1 = labels, used by ClassImbalance)
  at every one of the first DENSE_STEPS (50) TRAIN steps, then every `debug-train-interval` TRAIN
  steps, and every `debug-eval-interval` EVAL/PREDICT steps (a short job has a loss curve; a long
  one pays a scalar save every few steps);
- `weights`, `biases`, `gradients` and, when DeadRelu or PoorWeightInitialization is enabled,
  `relu_activations` (`.*relu_input_.*`, `.*relu_output_.*`) every `debug-tensor-interval` TRAIN
  steps (default 500, SageMaker's save_interval: full tensors are large)
  (never in EVAL: nothing changes there).
When SageMaker provides input/config/debughookconfig.json (contract.debughookconfig) that config wins:
its save intervals and collections are used unchanged; only LocalPath is pinned to tensors_dir.

smdebug quirks handled here (facts from smdebug 1.0.34's source):
- a step is one forward of the registered model (forward_pre_hook); gradients are saved by
  per-parameter hooks during backward of that step;
- errors inside smdebug are swallowed and saving is disabled for the rest of the job when the
  hook's configuration is smdebug's default one (losses only), e.g. numpy 2's removed
  `ndarray.tostring`. `Verifier` checks the files of the first saved step exist and raises
  DebuggerWriteError (debug-strict=true) or logs an error (false) otherwise;
- each event file is written by a background thread; an OSError there (a full disk) kills the thread
  and smdebug's next flush waits forever on its queue. `_fail_instead_of_waiting` makes put/flush
  raise WriterThreadDied once the thread is gone, so the job fails (or smdebug disables itself);
- the hook refuses an out_dir whose previous run ended (training_job_end.ts): a re-run of the same
  job folder moves the old tensors aside to tensors.<n>.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from localsage.core.debug_names import DENSE_STEPS, debugger_hp

log = logging.getLogger("localsage.debugger")


class DebuggerWriteError(RuntimeError):
    """smdebug was asked to save tensors and wrote nothing."""


class WriterThreadDied(OSError):
    """smdebug's event-writer thread is gone (its own traceback, e.g. ENOSPC, is above)."""


def _fail_instead_of_waiting():
    """Patch smdebug's EventFileWriter (once) so that a dead writer thread raises instead of blocking."""
    import queue

    from smdebug.core.tfevent import event_file_writer as efw

    if getattr(efw.EventFileWriter, "_localsage_guarded", False):
        return

    def check(self):
        if not self._worker.is_alive():
            raise WriterThreadDied(f"smdebug's writer thread for {self._path} died (see its traceback above: "
                                   "a full disk?); the event file is incomplete")

    def write_event(self, event):
        while True:
            check(self)
            try:
                return self._event_queue.put(event, timeout=0.5)
            except queue.Full:
                continue

    def flush(self):  # Queue.join, waking every 0.5 s to see whether the thread is still there
        q = self._event_queue
        with q.all_tasks_done:
            while q.unfinished_tasks:
                check(self)
                q.all_tasks_done.wait(0.5)
        self._ev_writer.flush()

    efw.EventFileWriter.write_event = write_event
    efw.EventFileWriter.flush = flush
    efw.EventFileWriter._localsage_guarded = True


def _quiet_smdebug():
    # smdebug logs every registered parameter at INFO; keep the job log readable
    os.environ.setdefault("SMDEBUG_LOG_LEVEL", "warning")
    logging.getLogger("smdebug").setLevel(logging.WARNING)


def _move_aside(out_dir: Path):
    if out_dir.exists() and any(out_dir.iterdir()):
        n = 1
        while out_dir.with_name(f"{out_dir.name}.{n}").exists():
            n += 1
        out_dir.rename(out_dir.with_name(f"{out_dir.name}.{n}"))
        log.warning("tensors of a previous run moved to %s", out_dir.with_name(f"{out_dir.name}.{n}"))


def create(model, loss_module, contract, hp):
    """An smdebug Hook registered on `model` and the loss module(s), or None when hp['debug'] is false.

    loss_module: one nn loss module or a list (e.g. the train criterion and the eval criterion:
    both are CrossEntropyLoss, so both write CrossEntropyLoss_output_0, in their own mode).
    """
    hp = debugger_hp(hp)
    if not hp["debug"]:
        return None
    _quiet_smdebug()
    import smdebug.pytorch as smd
    _fail_instead_of_waiting()
    from smdebug import modes
    from smdebug.core.save_config import SaveConfig, SaveConfigMode

    from localsage.debugger.rules.registry import ACTIVATION_RULES, enabled_rules

    out_dir = Path(contract.tensors_dir)
    _move_aside(out_dir)
    if contract.debughookconfig:
        cfg = dict(contract.debughookconfig)
        cfg["LocalPath"] = str(out_dir)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(cfg, f)
        try:
            hook = smd.Hook.create_from_json_file(f.name)
        finally:
            os.unlink(f.name)
        log.info("smdebug hook from debughookconfig.json -> %s", out_dir)
    else:
        never = SaveConfigMode(save_interval=1, start_step=0, end_step=0)
        train_every, eval_every = hp["debug-train-interval"], hp["debug-eval-interval"]
        tensor_every = hp["debug-tensor-interval"]
        dense = list(range(DENSE_STEPS)) if train_every > 1 else None
        light = SaveConfig(mode_save_configs={
            modes.TRAIN: SaveConfigMode(save_interval=train_every, save_steps=dense),
            modes.EVAL: SaveConfigMode(save_interval=eval_every),
            modes.PREDICT: SaveConfigMode(save_interval=eval_every),
            modes.GLOBAL: SaveConfigMode(save_interval=train_every, save_steps=dense),
        })
        heavy = SaveConfig(mode_save_configs={
            modes.TRAIN: SaveConfigMode(save_interval=tensor_every),
            modes.EVAL: never, modes.PREDICT: never,
            modes.GLOBAL: SaveConfigMode(save_interval=tensor_every),
        })
        collections = ["losses", "labels_predictions", "weights", "biases", "gradients"]
        activations = any(r in enabled_rules(hp) for r in ACTIVATION_RULES)
        if activations:
            collections.append("relu_activations")
        hook = smd.Hook(out_dir=str(out_dir), save_config=light, include_collections=collections)
        hook.get_collection("labels_predictions").include(["CrossEntropyLoss_input_"])
        for name in ("weights", "biases", "gradients"):
            hook.get_collection(name).save_config = heavy
        if activations:
            c = hook.get_collection("relu_activations")
            c.include([r".*relu_input_", r".*relu_output_"])
            c.save_config = heavy
        hook.get_collection("losses").save_config = light
        hook.get_collection("labels_predictions").save_config = light
        log.info("smdebug hook -> %s (train every %d after the first %d, eval every %d, tensors every %d steps%s)",
                 out_dir, train_every, DENSE_STEPS, eval_every, tensor_every,
                 ", with ReLU activations" if activations else "")
    hook.register_module(model)
    for loss in loss_module if isinstance(loss_module, (list, tuple)) else [loss_module]:
        hook.register_loss(loss)
    Verifier(hook, strict=hp["debug-strict"]).attach(model)
    return hook


def disabled_by_smdebug() -> bool:
    """True once smdebug's error handling agent has switched saving off."""
    from smdebug.core.utils import error_handling_agent

    return bool(error_handling_agent.disable_smdebug)


def written_steps(out_dir) -> list[int]:
    """Global steps with an index file on disk (what a trial will find)."""
    steps = []
    for p in Path(out_dir).glob("index/*/*.json"):
        try:
            steps.append(int(p.name.split("_")[0]))
        except ValueError:
            pass
    return sorted(steps)


class Verifier:
    """Checks, at the start of the second forward (the first saved step's writer is closed by then)
    and again at close, that smdebug really wrote the first saved step."""

    def __init__(self, hook, strict=True):
        self.hook = hook
        self.strict = strict
        self.forwards = 0
        self.checked = False
        self.handle = None

    def attach(self, model):
        # registered after smdebug's own forward_pre_hook, so it runs after the writer is closed
        self.handle = model.register_forward_pre_hook(self._pre)
        self.hook._localsage_verifier = self

    def _pre(self, module, inputs):
        self.forwards += 1
        if self.forwards >= 2 and not self.checked:
            self.check()

    def check(self):
        self.checked = True
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        problem = None
        out_dir = self.hook.out_dir if self.hook is not None else None
        if disabled_by_smdebug():
            problem = "smdebug hit an error and disabled itself (see the smdebug traceback above)"
        elif out_dir and not written_steps(out_dir):
            problem = f"no tensors were written to {out_dir} after the first saved step"
        if problem is None:
            log.info("smdebug: tensors verified in %s", out_dir)
            return True
        message = f"debugger: {problem}. Set debug=false to train without tensors."
        if self.strict:
            raise DebuggerWriteError(message)
        log.error("%s (continuing: debug-strict=false)", message)
        return False


def close(hook):
    """Close the hook (flushes the last step) and verify, if it was never verified during the run."""
    if hook is None:
        return
    hook.close()
    verifier = getattr(hook, "_localsage_verifier", None)
    if verifier is not None and not verifier.checked and verifier.forwards > 0:
        verifier.check()


def set_mode(hook, mode: str):
    """mode: train | eval | predict."""
    if hook is None:
        return
    from smdebug import modes

    hook.set_mode({"train": modes.TRAIN, "eval": modes.EVAL, "predict": modes.PREDICT}[mode])
