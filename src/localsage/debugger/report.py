"""`localsage report JOB`: one self-contained HTML file (+ the same plots as PNGs) in the job's output.

output/report/report.html, output/report/*.png. Plots are matplotlib PNGs embedded as base64 data
URIs: the page opens offline, no scripts, no CDN. Sections: job summary, loss TRAIN vs EVAL (from
the smdebug trial), accuracy per epoch (output/data/metrics.jsonl), rules table, system usage
timelines and table, step-time breakdown and histogram with outliers marked, data-loader findings.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import time
from pathlib import Path

import numpy as np

from localsage.core import debug_names, files
from localsage.core.debug_names import LOSS_NAME
from localsage.debugger.rules.profile import Profile, step_outliers, system_stats
from localsage.debugger.rules.reading import ordered, reading
from localsage.debugger.rules.verdicts import layout, read_verdicts, run_rules

log = logging.getLogger("localsage.debugger")

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}\
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}.IssuesFound{background:#fde2e1}.NoIssuesFound{background:#e3f6e5}.NoData{color:#888}
img{max-width:100%;border:1px solid #eee}.muted{color:#777;font-size:.9em}
"""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Page:
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.parts = []
        self.images = []

    def h(self, level, text, id=None):
        attr = f' id="{id}"' if id else ""
        self.parts.append(f"<h{level}{attr}>{html.escape(text)}</h{level}>")

    def p(self, text, cls=None):
        c = f' class="{cls}"' if cls else ""
        self.parts.append(f"<p{c}>{html.escape(text)}</p>")

    def table(self, header, rows, id=None, row_classes=None):
        attr = f' id="{id}"' if id else ""
        out = [f"<table{attr}><thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
               + "</tr></thead><tbody>"]
        for i, row in enumerate(rows):
            cls = f' class="{row_classes[i]}"' if row_classes else ""
            out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
        out.append("</tbody></table>")
        self.parts.append("".join(out))

    def figure(self, fig, name, alt):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        _plt().close(fig)
        data = buf.getvalue()
        (self.out_dir / f"{name}.png").write_bytes(data)
        self.images.append(name)
        b64 = base64.b64encode(data).decode()
        self.parts.append(f'<img id="plot-{name}" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">')

    def render(self, title):
        return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
                + "\n".join(self.parts) + "</body></html>\n")


def _read_json(path, default=None):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return default


def _fmt_time(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def _losses(tensors_dir: Path):
    """{mode name: {mode_step: loss}} from the smdebug trial."""
    if not (tensors_dir / "index").is_dir():
        return {}
    from smdebug import modes
    from smdebug.trials import create_trial

    logging.getLogger("smdebug").setLevel(logging.WARNING)
    trial = create_trial(str(tensors_dir))
    if LOSS_NAME not in trial.tensor_names():
        return {}
    t = trial.tensor(LOSS_NAME)
    out = {}
    for m in (modes.TRAIN, modes.EVAL):
        try:
            vals = t.values(mode=m)
        except Exception:
            continue
        if vals:
            out[m.name] = {s: float(np.mean(v)) for s, v in sorted(vals.items())}
    return out


def build(job_or_output_dir, run_rules_if_missing=True) -> Path:
    """Write output/report/report.html (+ PNGs) for a job; returns the HTML path."""
    paths = layout(job_or_output_dir)
    out = paths.output_dir
    job_dir = out.parent
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    page = Page(report_dir)
    record = _read_json(job_dir / "job.json", {}) or {}
    summary = _read_json(paths.summary_file, {}) or {}
    pjob = _read_json(paths.profiler_dir / debug_names.PROFILE_JOB, {}) or {}
    name = record.get("TrainingJobName") or job_dir.name
    page.h(1, f"Debugger and profiler report: {name}")

    # ---- job summary
    page.h(2, "Job summary", id="summary")
    init, train, fin = summary.get("init_time"), summary.get("train_time"), summary.get("finalize_time")
    total = sum(x for x in (init, train, fin) if x) or None
    rows = [
        ("status", record.get("TrainingJobStatus", "-")),
        ("start", _fmt_time(pjob.get("start"))),
        ("end", _fmt_time(pjob.get("end"))),
        ("first training step", _fmt_time(pjob.get("first_step"))),
    ]
    for label, v in (("initialisation", init), ("training", train), ("finalisation", fin)):
        if v is not None:
            rows.append((f"{label} time", f"{v:.1f} s ({100 * v / total:.0f} %)" if total else f"{v:.1f} s"))
    hps = record.get("HyperParameters") or summary.get("hyperparameters") or {}
    for k in ("arch", "batch-size", "epochs", "lr", "workers", "image-size"):
        if k in hps:
            rows.append((k, hps[k]))
    rows.append(("cores / GPUs / data-loader workers",
                 f"{pjob.get('cores', '-')} / {pjob.get('gpus', '-')} / {pjob.get('workers', '-')}"))
    page.table(("item", "value"), rows, id="summary-table")

    # ---- losses
    page.h(2, "Loss: TRAIN vs EVAL (smdebug CrossEntropyLoss_output_0)", id="loss")
    losses = _losses(paths.tensors_dir)
    if losses:
        fig, ax = plt.subplots(figsize=(8, 3.6))
        for mode, vals in losses.items():
            ax.plot(list(vals), list(vals.values()), marker=".", label=mode)
        ax.set_xlabel("step (per mode)"); ax.set_ylabel("loss"); ax.legend(); ax.grid(alpha=.3)
        finite = [v for vals in losses.values() for v in vals.values() if np.isfinite(v) and v > 0]
        if finite and max(finite) / min(finite) > 100:
            ax.set_yscale("log")
        ax.set_title("CrossEntropyLoss_output_0")
        page.figure(fig, "loss", "loss TRAIN vs EVAL")
    else:
        page.p("No smdebug tensors (debug=false, or the job saved none).", "muted")

    # ---- accuracy per epoch
    metrics = [r for r in files.read_jsonl(paths.metrics_file) if "epoch" in r]
    page.h(2, "Accuracy and loss per epoch", id="accuracy")
    if metrics:
        fig, ax = plt.subplots(figsize=(8, 3.2))
        ep = [r["epoch"] for r in metrics]
        for key in ("train_acc", "valid_acc"):
            ax.plot(ep, [r.get(key) for r in metrics], marker="o", label=key)
        ax.set_xlabel("epoch"); ax.set_ylabel("accuracy"); ax.set_ylim(0, 1.02); ax.legend(); ax.grid(alpha=.3)
        page.figure(fig, "accuracy", "accuracy per epoch")
        page.table(("epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "epoch_time"),
                   [(r["epoch"], *(f"{r.get(k, float('nan')):.4g}"
                                   for k in ("train_loss", "train_acc", "valid_loss", "valid_acc", "epoch_time")))
                    for r in metrics])
    else:
        page.p("No output/data/metrics.jsonl.", "muted")

    # ---- rules
    verdicts = read_verdicts(out)
    if not verdicts and run_rules_if_missing:
        verdicts = run_rules(out)
    page.h(2, "Rules", id="rules")
    page.parts.append(f'<p id="rules-reading"><strong>{html.escape(reading(verdicts))}</strong></p>')
    shown = ordered(verdicts)  # fired first, the cause before its symptoms
    page.table(("rule", "status", "violations", "datapoints", "evidence / why", "recommendation", "parameters"),
               [(v["rule"], v["status"], v["violations"], v["datapoints"],
                 v.get("evidence") or "; ".join(v["details"][:2]), v["recommendation"] if v["triggered"] else "",
                 ", ".join(f"{k}={p}" for k, p in v["parameters"].items())
                 + "".join(f" ({k} scaled {why})" for k, why in (v.get("scaled") or {}).items())) for v in shown],
               id="rules-table", row_classes=[v["status"] for v in shown])

    # ---- system usage
    profile = Profile(paths.profiler_dir)
    page.h(2, "System utilisation", id="system")
    if profile.system:
        t0 = profile.system[0]["t"]
        t = [r["t"] - t0 for r in profile.system]
        panels = 2 + (1 if profile.gpus else 0)
        fig, axes = plt.subplots(panels, 1, figsize=(8, 2.2 * panels), sharex=True)
        cpu = np.array([r["cpu"] for r in profile.system if r.get("cpu")], dtype=float)
        for c in range(cpu.shape[1] if cpu.ndim == 2 else 0):
            axes[0].plot(t[:len(cpu)], cpu[:, c], lw=.7, label=f"cpu{c}")
        axes[0].plot(t, [r.get("iowait", 0) for r in profile.system], lw=1, color="k", label="iowait")
        axes[0].set_ylabel("CPU %"); axes[0].legend(fontsize=7, ncol=4)
        axes[1].plot(t, [r["mem_percent"] for r in profile.system]); axes[1].set_ylabel("memory %")
        if profile.gpus:
            for g in range(profile.gpus):
                axes[2].plot(t, profile.gpu("util", g), label=f"gpu{g} util")
                axes[2].plot(t, profile.gpu("mem_percent", g), ls="--", label=f"gpu{g} memory")
            axes[2].set_ylabel("GPU %"); axes[2].legend(fontsize=7)
        axes[-1].set_xlabel("seconds since the first sample")
        page.figure(fig, "system", "system utilisation timeline")
        stats = system_stats(profile)
        page.table(("metric", "max", "p99", "p95", "p50", "min"),
                   [(k, v["max"], v["p99"], v["p95"], v["p50"], v["min"]) for k, v in stats.items()], id="system-table")
    else:
        page.p("No system samples (profiler=false).", "muted")

    # ---- steps
    page.h(2, "Step time breakdown", id="steps")
    train_steps = [s for s in profile.steps if s.get("mode") == "train"]
    if train_steps:
        phases = ("dataloader", "forward", "backward", "optimizer", "other")
        sums = {p: sum(s.get(p, 0.0) for s in train_steps) for p in phases}
        total_t = sum(sums.values()) or 1.0
        page.table(("phase", "total s", "share", "median per step s"),
                   [(p, f"{sums[p]:.2f}", f"{100 * sums[p] / total_t:.1f} %",
                     f"{np.median([s.get(p, 0.0) for s in train_steps]):.4f}") for p in phases], id="step-breakdown")
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
        x = np.arange(len(train_steps))
        bottom = np.zeros(len(train_steps))
        for p in phases:
            v = np.array([s.get(p, 0.0) for s in train_steps])
            ax1.bar(x, v, bottom=bottom, width=1.0, label=p)
            bottom += v
        ax1.set_xlabel("train step"); ax1.set_ylabel("seconds"); ax1.legend(fontsize=7); ax1.set_title("per step")
        totals = np.array([s["total"] for s in train_steps])
        limit, slow = step_outliers(train_steps)  # the StepOutlier rule's definition
        ax2.hist(totals, bins=min(40, max(5, len(totals) // 3)))
        if limit is not None:
            ax2.axvline(limit, color="r", ls="--", label="mean + 3 std")
        for r in slow:
            ax2.axvline(r["total"], color="r", lw=.6)
        ax2.set_xlabel("step time (s)"); ax2.set_title(f"histogram, {len(slow)} outliers")
        if limit is not None:
            ax2.legend(fontsize=7)
        page.figure(fig, "steps", "step time breakdown and histogram")
        if slow:
            page.p(f"Outlier steps (slower than {limit:.3f} s): {[r['step'] for r in slow][:20]}")
        batches = [s["batch"] for s in train_steps if s.get("batch")]
        findings = [(f"batch size: median {int(np.median(batches))} (max {max(batches)})" if batches
                     else "batch size: -"),
                    f"data-loader workers: {pjob.get('workers', '-')} for {pjob.get('cores', '-')} cores",
                    f"waiting for data: {100 * sums['dataloader'] / total_t:.1f} % of training step time"]
        for v in verdicts:
            if v["rule"] in ("Dataloader", "BatchSize") and v["triggered"]:
                findings.append(f"{v['rule']}: {'; '.join(v['details'][:2])}. {v['recommendation']}")
        page.h(3, "Batch size and data loader", id="dataloader")
        page.parts.append("<ul id=\"dataloader-findings\">" + "".join(f"<li>{html.escape(f)}</li>" for f in findings)
                          + "</ul>")
    else:
        page.p("No step timings (profiler=false).", "muted")

    page.p(f"Generated {_fmt_time(time.time())} by localsage from {out}.", "muted")
    path = report_dir / "report.html"
    path.write_text(page.render(f"localsage report: {name}"))
    return path
