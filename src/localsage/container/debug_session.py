"""Debugger and profiler: smdebug tensors, a system sampler and step timer, SageMaker's rules run
locally, and an HTML report.

The training loop uses one object:

    dbg = debugger.attach(contract, hp, model, [criterion, eval_criterion], workers=n, start=t0)
    dbg.mode("train")                                   # / "eval" / "predict"  (smdebug modes)
    for images, labels in dbg.timer.wrap(batches, "train"):
        ...; dbg.timer.mark("forward"); ...; dbg.timer.mark("backward"); ...; dbg.timer.mark("optimizer")
    dbg.close()                                         # flush + verify tensors, stop sampler, rules-at-end

With debug=false and profiler=false it does nothing (hook None, timer disabled).
"""
from __future__ import annotations

import logging
import time

from localsage.core import procs
from localsage.core.debug_names import debugger_hp

log = logging.getLogger("localsage.debugger")


class Session:
    def __init__(self, contract, hp, model, loss_modules, workers=None, start=None, batch_size=None):
        from localsage.container import (  # here, so `import localsage.debugger` stays cheap
            debug_hook as hook_mod,
            debug_sampler as sampler_mod,
        )

        self._hook_mod, self._sampler_mod = hook_mod, sampler_mod
        hp = debugger_hp(hp)
        self.contract, self.hp = contract, hp
        self.hook = hook_mod.create(model, loss_modules, contract, hp)
        profiling = bool(hp["profiler"])
        sync = None
        try:
            import torch

            param = next(model.parameters(), None)
            if profiling and param is not None and param.is_cuda:
                sync = torch.cuda.synchronize
        except Exception:
            pass
        self.timer = sampler_mod.StepTimer(contract.profiler_dir, sync=sync, enabled=profiling)
        self.sampler = None
        if profiling:
            self.sampler = sampler_mod.SystemSampler(contract.profiler_dir)
            self.sampler.start()
            sampler_mod.write_job_info(
                contract.profiler_dir, start=start or time.time(), cores=procs.cores(),
                gpus=len(self.sampler.handles), workers=workers, batch_size=batch_size)

    def mode(self, name: str):
        self._hook_mod.set_mode(self.hook, name)

    def close(self, run_rules=None, failed=False):
        """Flush and verify tensors, stop the sampler, and (rules-at-end) write rule verdicts.

        failed: the job is already failing or stopping: problems here are logged, not raised, and
        no rules run."""
        hook_mod, sampler_mod = self._hook_mod, self._sampler_mod
        try:
            hook_mod.close(self.hook)
        except Exception as exc:
            if not failed:
                raise
            log.error("debugger: closing the smdebug hook failed: %s", exc)
        finally:
            self.timer.close()
            if self.sampler is not None:
                self.sampler.stop()
                sampler_mod.write_job_info(
                    self.contract.profiler_dir, first_step=self.timer.first_step_time, end=time.time(),
                    sampler_cpu_s=round(self.sampler.cpu_seconds, 4),
                    sampler_wall_s=round(self.sampler.wall_seconds, 3), samples=self.sampler.samples)
        if not failed and (run_rules if run_rules is not None else self.hp["rules-at-end"]):
            from localsage.debugger.rules.reading import reading
            from localsage.debugger.rules.registry import enabled_rules
            from localsage.debugger.rules.verdicts import run_rules as evaluate

            verdicts = evaluate(self.contract.output_dir, only=enabled_rules(self.hp))
            fired = [v["rule"] for v in verdicts if v["triggered"]]
            log.info("rules evaluated in the job: %d, issues found by: %s", len(verdicts), ", ".join(fired) or "none")
            log.info("debugger reading: %s", reading(verdicts))


def attach(contract, hp, model, loss_modules, workers=None, start=None, batch_size=None) -> Session:
    return Session(contract, hp, model, loss_modules, workers=workers, start=start, batch_size=batch_size)
