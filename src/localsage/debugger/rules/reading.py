"""What the verdicts say, for a person: the order (fired first, the cause before its symptoms), a
one-line reading of the job, and the text table the CLI prints. Works on verdict dicts alone
(fresh or read from output/rules), imports neither numpy nor smdebug."""
from __future__ import annotations

from localsage.core.debug_names import ALL_RULES

# The cause before its symptoms: a diverged job also shows a flat/rising loss, mispredicted classes
# and huge weight updates; a zero init also gives vanishing gradients and a flat loss. A verdict
# marked `symptom` (all-zero gradients only; a poor start of the loss only) ranks after the others.
CAUSE_ORDER = ("LossDiverging", "ExplodingTensor", "AllZero", "PoorWeightInitialization", "DeadRelu",
               "VanishingGradient", "WeightUpdateRatio", "ClassImbalance", "Overfit", "Overtraining",
               "LossNotDecreasing")
LABELS = {
    "LossDiverging": "Diverged", "ExplodingTensor": "NaN/inf in the tensors", "AllZero": "All-zero tensors",
    "PoorWeightInitialization": "Poor weight initialisation", "VanishingGradient": "Vanishing gradients",
    "DeadRelu": "Dead ReLUs", "WeightUpdateRatio": "Weight updates out of scale", "ClassImbalance": "Class imbalance",
    "Overfit": "Overfitting", "Overtraining": "Overtraining", "LossNotDecreasing": "Loss not decreasing",
}
EVIDENCE_WIDTH = 110


def _rank(v):
    status = {"IssuesFound": 0, "NoIssuesFound": 1, "NoData": 2}.get(v.get("status"), 3)
    kind = 0 if v.get("kind") == "debugger" else 1
    name = v["rule"]
    cause = CAUSE_ORDER.index(name) if name in CAUSE_ORDER else len(CAUSE_ORDER)
    return (status, kind, bool(v.get("symptom")), cause, ALL_RULES.index(name) if name in ALL_RULES else 99)


def ordered(verdicts) -> list[dict]:
    """Fired first (debugger rules, cause before symptoms, then profiler rules), then clean, then NoData."""
    return sorted(verdicts, key=_rank)


def _at(evidence: str, width=160) -> str:
    evidence = (evidence or "").removeprefix("end: ")
    if len(evidence) > width:
        evidence = evidence[:width - 3] + "..."
    return "at " + evidence if evidence.startswith("step ") else evidence


def reading(verdicts) -> str:
    """One line naming the cause first: "Diverged at step 1: TRAIN loss 1.79 (step 0) -> 6.2e+05
    (x3.5e+05): lower the learning rate. Also fired (symptoms): LossNotDecreasing, ClassImbalance."."""
    verdicts = ordered(verdicts)
    fired = [v for v in verdicts if v.get("triggered") and v.get("kind") == "debugger"]
    machine = [v["rule"] for v in verdicts if v.get("triggered") and v.get("kind") != "debugger"]
    nodata = [v["rule"] for v in verdicts if v.get("status") == "NoData" and v.get("kind") == "debugger"]
    if fired:
        cause = fired[0]
        text = f"{LABELS.get(cause['rule'], cause['rule'])} ({cause['rule']}) {_at(cause.get('evidence'))}"
        if cause.get("action"):
            text += f": {cause['action']}"
        text += "."
        if len(fired) > 1:
            text += " Also fired (symptoms): " + ", ".join(v["rule"] for v in fired[1:]) + "."
    else:
        checked = sum(1 for v in verdicts if v.get("kind") == "debugger" and v.get("status") == "NoIssuesFound")
        text = f"No training issue found by the {checked} debugger rules with data."
        if nodata:
            text += f" Too little data for: {', '.join(nodata)}."
    if machine:
        text += " Machine: " + ", ".join(machine) + "."
    return text


def table(verdicts, with_reading=True) -> str:
    """The reading, then one row per rule: fired first with their evidence, NoData with its reason."""
    rows = [("RULE", "STATUS", "VIOLATIONS", "DATAPOINTS", "EVIDENCE / WHY", "RECOMMENDATION")]
    for v in ordered(verdicts):
        why = v.get("evidence") or (v["details"][0] if v.get("details") and v["triggered"] else "")
        if len(why) > EVIDENCE_WIDTH:
            why = why[:EVIDENCE_WIDTH - 3] + "..."
        rows.append((v["rule"], v["status"], str(v["violations"]), str(v["datapoints"]), why,
                     v["recommendation"] if v["triggered"] else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)).rstrip() + ("  " + r[5] if r[5] else "")
             for r in rows]
    return "\n".join(([f"Reading: {reading(verdicts)}", ""] if with_reading else []) + lines)
