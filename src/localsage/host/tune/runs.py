"""A study as one MLflow parent run; each trial's job run (the runner's, logged once) is its child.

At the end every child is tagged with its trial's number and state (COMPLETE, PRUNED, FAIL) and the best
trial's run with `localsage.best_trial=true`; the parent gets the best value and parameters. A resumed study
keeps its parent run (its id is in the Optuna study's user attributes).
"""
from __future__ import annotations

import json
from pathlib import Path

from localsage.host import tracking

PARENT_ATTR = "mlflow_parent_run"


class StudyRun:
    def __init__(self, t, study):
        self.t, self.study = t, study
        self.uri = tracking.tracking_uri(t.jobs_dir)
        self.run = None
        if not self.uri:
            return
        known = study.user_attrs.get(PARENT_ATTR) or {}
        if known.get("uri") == tracking.redact(self.uri) and known.get("run_id"):
            self.run = tracking.Run(self.uri, jobs_dir=t.jobs_dir, run_id=known["run_id"], label=f"study {t.study}")
            self.run.submit(lambda mlflow: mlflow.update_run(self.run.run_id, status="RUNNING"))
            return
        self.run = tracking.Run(self.uri, jobs_dir=t.jobs_dir, label=f"study {t.study}")
        stored = t.stored()
        params = {"objective": t.objective, "direction": t.direction, "trials": t.trials, "parallel": t.parallel,
                  "backend": t.backend, "space": json.dumps(stored["space"], sort_keys=True),
                  **{f"fixed.{k}": v for k, v in t.fixed.items()}}
        self.run.start(t.study, params, {tracking.TAG + "study": t.study, tracking.TAG + "kind": "study",
                                         tracking.TAG + "entry_point": t.entry_point or "built-in"})
        run_id = self.run.wait_started()
        if run_id:
            study.set_user_attr(PARENT_ATTR, {"uri": tracking.redact(self.uri), "run_id": run_id})

    def parent_id(self) -> str | None:
        return self.run.wait_started() if self.run is not None else None

    def close(self, interrupted=None, error=None) -> None:
        if self.run is None:
            return
        trials = self.study.get_trials(deepcopy=False)
        complete = [tr for tr in trials if tr.state.name == "COMPLETE"]
        best = self.study.best_trial if complete else None
        children = {}
        for tr in trials:
            found = tracking.read_run_file(Path(tr.user_attrs.get("job_dir", ""))) if tr.user_attrs.get(
                "job_dir") else None
            if found and found.get("run_id"):
                children[found["run_id"]] = {
                    tracking.TAG + "trial_state": tr.state.name,
                    tracking.TAG + "best_trial": str(best is not None and tr.number == best.number).lower()}

        def tag_children(mlflow):
            for run_id, tags in children.items():
                for key, value in tags.items():
                    mlflow.set_tag(run_id, key, value)

        self.run.submit(tag_children)
        if best is not None:
            self.run.log_metrics({f"best_{self.t.objective}": best.value}, step=best.number)
            self.run.set_tags({tracking.TAG + "best_trial": best.number,
                               **{f"{tracking.TAG}best.{k}": v for k, v in best.params.items()}})
        counts = {}
        for tr in trials:
            counts[tr.state.name] = counts.get(tr.state.name, 0) + 1
        self.run.set_tags({f"{tracking.TAG}trials.{k.lower()}": v for k, v in counts.items()})
        self.run.terminate("Stopped" if interrupted else "Failed" if error else "Completed")
        self.run.close(tracking.TIMEOUT_S * 6)
