"""What the verdicts say, for a person: the order (fired first, the cause before its symptoms), a
one-line reading of the job, and the text table the CLI prints. Works on verdict dicts alone (fresh or
read from output/rules); each rule's label and place in the reading are its class's LABEL and ORDER."""
from __future__ import annotations

from localsage.debugger.rules.base import LocalRule
from localsage.debugger.rules.registry import ALL_RULES, REGISTRY

EVIDENCE_WIDTH = 110


def _rank(v):
    """Fired first, debugger rules before profiler rules, a verdict marked `symptom` (all-zero gradients only; a
    poor start of the loss only) after the others, then the rule's ORDER: the cause before its symptoms (a
    diverged job also shows a flat/rising loss, mispredicted classes and huge weight updates; a zero init also
    gives vanishing gradients and a flat loss)."""
    status = {"IssuesFound": 0, "NoIssuesFound": 1, "NoData": 2}.get(v.get("status"), 3)
    kind = 0 if v.get("kind") == "debugger" else 1
    name = v["rule"]
    cause = REGISTRY.get(name, LocalRule).ORDER
    return (status, kind, bool(v.get("symptom")), cause, ALL_RULES.index(name) if name in ALL_RULES else 99)


def _label(name) -> str:
    return getattr(REGISTRY.get(name), "LABEL", "") or name


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
        text = f"{_label(cause['rule'])} ({cause['rule']}) {_at(cause.get('evidence'))}"
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
