"""A study's results: trial rows, the best hyperparameters, trials.csv and plots.html. Nothing here prints
a table: `report` returns the rows, and the command line prints them with its one table printer."""
from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

from localsage.core import hyperparameters
from localsage.host.tune.settings import BEST_FILE, Tuning


def trial_rows(study) -> list:
    rows = []
    for tr in study.get_trials(deepcopy=False):
        ua = tr.user_attrs
        rows.append({
            "number": tr.number, "state": tr.state.name, "value": tr.value,
            **{f"param:{k}": v for k, v in tr.params.items()},
            **({"metric_points": ua["metric_points"]} if "metric_points" in ua
               else {"epochs_run": ua.get("epochs_run")}),
            "duration_s": ua.get("duration_s"), "job": ua.get("job_name"),
            "failure_reason": ua.get("failure_reason", ""),
        })
    return rows


def best_hyperparameters(t: Tuning, study) -> dict:
    return hyperparameters.to_strings({**t.fixed, **study.best_trial.params})


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_plots(study, folder: Path, log=print) -> Path | None:
    """Optimization history, intermediate values, parallel coordinates and parameter importances in one
    self-contained HTML page (plotly.js inline: it opens offline)."""
    from optuna import visualization as vis

    parts = []
    for title, plot in (("Optimization history", vis.plot_optimization_history),
                        ("Intermediate values", vis.plot_intermediate_values),
                        ("Parallel coordinates", vis.plot_parallel_coordinate),
                        ("Parameter importances", vis.plot_param_importances)):
        try:
            fig = plot(study)
        except Exception as exc:  # e.g. importances need two completed trials with different params
            log(f"plot {title!r} skipped: {exc}")
            continue
        fig.update_layout(title=title)
        parts.append(fig.to_html(full_html=False, include_plotlyjs=not parts))
    if not parts:
        return None
    path = folder / "plots.html"
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>study "
            f"{study.study_name}</title></head><body>{''.join(parts)}</body></html>")
    _write_atomic(path, lambda f: f.write(page))
    return path


def table(rows: list) -> tuple[list, list]:
    """(header, rows of strings) of the trials table; the failure reasons stay in trials.csv."""
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "failure_reason"]
    cells = [["" if r.get(c) is None else f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r[c]) for c in columns]
             for r in rows]
    return columns, cells


def report(t: Tuning, study, log=print) -> dict:
    """Write best_hyperparameters.json, trials.csv and plots.html; return the summary, the trials table
    (`header`, `rows`) and the summary `lines` for the caller to print."""
    from optuna.trial import TrialState

    folder = t.study_dir
    folder.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def write_csv(f):
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)

    _write_atomic(folder / "trials.csv", write_csv)
    header, cells = table(rows)
    counts = {s.name: sum(r["state"] == s.name for r in rows) for s in TrialState}
    result = {"study": t.study, "trials": {k: v for k, v in counts.items() if v}, "folder": str(folder),
              "header": header, "rows": cells, "lines": []}
    lines = result["lines"]
    if counts["COMPLETE"]:
        best = study.best_trial
        hp = best_hyperparameters(t, study)
        _write_atomic(folder / BEST_FILE, lambda f: f.write(json.dumps(hp, indent=2) + "\n"))
        lines.append(f"best trial {best.number}: {t.objective}={best.value:.6g} params={json.dumps(best.params)} "
                     f"job={best.user_attrs.get('job_name')}")
        hint = "" if t.script else f"  (localsage train --hp-file {folder / BEST_FILE})"
        lines.append(f"best hyperparameters -> {folder / BEST_FILE}{hint}")
        result.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                      best_file=str(folder / BEST_FILE))
    else:
        lines.append("no trial completed: no best hyperparameters (trials.csv has each failure reason)")
    plots = save_plots(study, folder, log)
    if plots:
        lines.append(f"plots -> {plots}")
        result["plots"] = str(plots)
    return result
