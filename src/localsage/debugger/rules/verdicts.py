"""Running rules on a job and their verdicts on disk: override parsing, evaluation, output/rules/*.json.

Verdict: {rule, kind, status (IssuesFound | NoIssuesFound | NoData), triggered, violations,
datapoints, trigger_steps, evidence (the first finding: step and values, or why NoData), details,
parameters (as used), scaled ({param: "default -> used (why)"} for short jobs), description,
recommendation, action}.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from smdebug.exceptions import RuleEvaluationConditionMet
from smdebug.rules.rule_invoker import invoke_rule

from localsage.core.contract import Contract
from localsage.debugger.rules.base import MAX_TRIGGER_STEPS, EmptyTrial
from localsage.debugger.rules.profile import Profile
from localsage.debugger.rules.registry import ALL_RULES, DEBUGGER_RULES, rule_class


def _convert(text, default):
    if isinstance(default, bool):
        return str(text).strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(float(text))
    if isinstance(default, float):
        return float(text)
    return str(text)


def parse_overrides(specs) -> dict:
    """["Overfit:ratio_threshold=0.2", ...] -> {"Overfit": {"ratio_threshold": 0.2}} (typed by the defaults)."""
    out = {}
    for spec in specs or []:
        name, _, rest = spec.partition(":")
        name = name.strip()
        cls = rule_class(name)
        out.setdefault(name, {})
        for pair in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or key.strip() not in cls.DEFAULTS:
                raise ValueError(f"{name}: bad parameter {pair!r}; known: {', '.join(cls.DEFAULTS)}")
            out[name][key.strip()] = _convert(value.strip(), cls.DEFAULTS[key.strip()])
    return out


def output_dir_of(path) -> Path:
    """A job folder (jobs/<name>, containing output/) or an output folder itself."""
    path = Path(path)
    if (path / "output").is_dir():
        return path / "output"
    return path


def layout(job_or_output_dir) -> Contract:
    """The job's contract paths (tensors_dir, profiler_dir, rules_dir, metrics_file...) from its output folder."""
    out = output_dir_of(job_or_output_dir)
    return Contract(root=out.parent, output_dir=out, output_data_dir=out / "data")


def _verdict(rule_name, cls, kind, status, fired, datapoints, details, params, evidence, scaled=None):
    return {"rule": rule_name, "kind": kind, "status": status, "triggered": bool(fired), "violations": len(fired),
            "datapoints": datapoints, "trigger_steps": fired[:MAX_TRIGGER_STEPS], "evidence": evidence,
            "details": details, "parameters": params, "scaled": scaled or {}, "description": cls.DESCRIPTION,
            "recommendation": cls.RECOMMENDATION, "action": cls.ACTION}


def evaluate(rule) -> dict:
    """Run one rule over all its steps with invoke_rule; every RuleEvaluationConditionMet is a violation."""
    start, end = rule.steps()
    fired = []
    if rule.has_data:
        while start < end:
            try:
                invoke_rule(rule, start_step=start, end_step=end, raise_eval_cond=True)
                break
            except RuleEvaluationConditionMet as exc:
                fired.append(int(exc.step))
                start = int(exc.step) + 1
        extra = rule.finish()
        if extra:
            fired.append(end - 1 if end else 0)
            extra = ("end: " if rule.KIND == "debugger" else "") + extra
            rule.messages.append(extra)
            rule.evidence = rule.evidence or extra
    if fired:
        status = "IssuesFound"
    elif rule.has_data and rule.datapoints:
        status = "NoIssuesFound"
    else:
        status = "NoData"
        rule.evidence = rule.why_no_data or "the rule found no datapoints in what the job saved"
        rule.messages = rule.messages or [rule.evidence]
    verdict = _verdict(rule.rule_name, type(rule), rule.KIND, status, fired, rule.datapoints, rule.messages,
                       rule.params, rule.evidence if (fired or status == "NoData") else None, rule.scaled)
    verdict["symptom"] = bool(fired) and bool(getattr(rule, "symptom", False))
    for extra in ("stats", "counts", "wait_share"):
        if hasattr(rule, extra):
            verdict[extra] = getattr(rule, extra)
    return verdict


def run_rules(job_or_output_dir, overrides=None, only=None, write=True) -> list[dict]:
    """Evaluate the rules on a finished (or running) job; write output/rules/<Rule>.json; return the verdicts.

    overrides: {"Rule": {"param": value}} or ["Rule:param=value", ...]; only: rule names (default all)."""
    paths = layout(job_or_output_dir)
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(overrides)
    overrides = overrides or {}
    names = list(only) if only else list(ALL_RULES)
    classes = {n: rule_class(n) for n in names}
    tensors = paths.tensors_dir
    trial = None
    if any(n in DEBUGGER_RULES for n in names) and (tensors / "index").is_dir():
        from smdebug.trials import create_trial

        logging.getLogger("smdebug").setLevel(logging.WARNING)
        trial = create_trial(str(tensors))
    profile = Profile(paths.profiler_dir)
    verdicts = []
    for name in names:
        cls, params = classes[name], overrides.get(name, {})
        if name in DEBUGGER_RULES:
            if trial is None or not trial.steps():
                cls(EmptyTrial(), **params)  # validates the overrides
                why = f"no smdebug tensors in {tensors} (debug=false, or the job's hook saved none)"
                verdict = _verdict(name, cls, "debugger", "NoData", [], 0, [why], {**cls.DEFAULTS, **params}, why)
            else:
                verdict = evaluate(cls(trial, **params))
        else:
            verdict = evaluate(cls(profile, **params))
        verdicts.append(verdict)
    if write:
        paths.rules_dir.mkdir(parents=True, exist_ok=True)
        for v in verdicts:
            (paths.rules_dir / f"{v['rule']}.json").write_text(json.dumps(v, indent=2, default=_json_default))
    return verdicts


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


def read_verdicts(job_or_output_dir) -> list[dict]:
    d = layout(job_or_output_dir).rules_dir
    order = {n: i for i, n in enumerate(ALL_RULES)}
    found = [json.loads(p.read_text()) for p in d.glob("*.json")] if d.is_dir() else []
    return sorted(found, key=lambda v: order.get(v["rule"], 99))
