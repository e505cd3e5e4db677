"""A request's DebugRuleConfigurations and ProfilerRuleConfigurations, run by localsage's own rules
(localsage.debugger.rules) under their SageMaker names and parameters, after the job and before it is marked
Completed, so DescribeTrainingJob's DebugRuleEvaluationStatuses/ProfilerRuleEvaluationStatuses carry the
verdict as soon as the job has ended (SageMaker runs a processing job per rule; here they run in the server).

`rule_to_invoke` names the rule (what `Rule.sagemaker(rule_configs.loss_not_decreasing())` sends); the other
RuleParameters are the rule's parameters, typed by its defaults. Parameters localsage's rule does not have
(SageMaker's `start_step`, `tensor_regex`, ...) are not applied and the status details say so. `ProfilerReport`
runs every profiler rule. A rule localsage does not have (a custom rule, an XGBoost one) ends `Error` with the
reason; a verdict of NoData (nothing saved to judge) is SageMaker's `NoIssuesFound` with the reason."""
from __future__ import annotations

import hashlib
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

LOG = logging.getLogger("localsage.api")
PROFILER_REPORT = "ProfilerReport"
DETAILS_LIMIT = 1000
KINDS = {"DebugRuleConfigurations": "DebugRuleEvaluationStatuses",
         "ProfilerRuleConfigurations": "ProfilerRuleEvaluationStatuses"}


@dataclass
class RuleSpec:
    config_name: str  # RuleConfigurationName
    statuses_key: str  # DebugRuleEvaluationStatuses or ProfilerRuleEvaluationStatuses
    rules: list = field(default_factory=list)  # localsage rule names it runs
    params: dict = field(default_factory=dict)  # {rule: {param: typed value}}
    ignored: list = field(default_factory=list)  # parameters localsage's rule does not have
    error: str | None = None  # why it cannot run (a custom rule, a bad value)
    s3_output: str | None = None


def specs_of(request: dict) -> list[RuleSpec]:
    """Every rule configuration of the request, in order (debugger ones first)."""
    specs = []
    for key, statuses_key in KINDS.items():
        for config in request.get(key) or []:
            specs.append(_spec(config, statuses_key))
    return specs


def _spec(config: dict, statuses_key: str) -> RuleSpec:
    from localsage.debugger.rules.registry import ALL_RULES, PROFILER_RULES
    from localsage.debugger.rules.verdicts import parse_overrides

    params = {str(k): str(v) for k, v in (config.get("RuleParameters") or {}).items()}
    name = params.pop("rule_to_invoke", None) or config["RuleConfigurationName"]
    spec = RuleSpec(config["RuleConfigurationName"], statuses_key, s3_output=config.get("S3OutputPath"))
    if name == PROFILER_REPORT:
        spec.rules = list(PROFILER_RULES)
    elif name in ALL_RULES:
        spec.rules = [name]
    else:
        spec.error = (f"localsage runs SageMaker's built-in debugger and profiler rules ({', '.join(ALL_RULES)}, "
                      f"{PROFILER_REPORT}); {name!r} is not one of them, so it was not evaluated")
        return spec
    defaults = _defaults()
    for key, value in params.items():
        # ProfilerReport's parameters are <Rule>_<param> (e.g. CPUBottleneck_threshold)
        rule, _, param = key.partition("_") if name == PROFILER_REPORT else (name, "", key)
        if rule not in spec.rules or param not in defaults.get(rule, {}):
            spec.ignored.append(key)
            continue
        try:
            typed = parse_overrides([f"{rule}:{param}={value.replace(',', ' ')}"])[rule][param]
            spec.params.setdefault(rule, {})[param] = typed
        except ValueError:
            spec.error = f"rule parameter {key}={value!r}: expected a {type(defaults[rule][param]).__name__}"
    return spec


def _defaults() -> dict:
    from localsage.debugger.rules.registry import REGISTRY

    return {name: dict(cls.DEFAULTS) for name, cls in REGISTRY.items()}


def evaluation_arn(api, job_name: str, config_name: str) -> str:
    digest = hashlib.sha1(f"{job_name}/{config_name}".encode()).hexdigest()[:8]
    return api.arn("processing-job", f"{job_name[:30].rstrip('-')}-{config_name[:20].rstrip('-')}-{digest}")


def initial_statuses(api, job_name: str, specs: list[RuleSpec]) -> dict:
    """{DebugRuleEvaluationStatuses: [...], ProfilerRuleEvaluationStatuses: [...]}, every rule InProgress."""
    now = time.time()
    out: dict = {}
    for spec in specs:
        out.setdefault(spec.statuses_key, []).append({
            "RuleConfigurationName": spec.config_name,
            "RuleEvaluationJobArn": evaluation_arn(api, job_name, spec.config_name),
            "RuleEvaluationStatus": "InProgress", "LastModifiedTime": now})
    return out


def _details(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= DETAILS_LIMIT else text[:DETAILS_LIMIT - 3] + "..."


def evaluate(job_dir, specs: list[RuleSpec]) -> dict:
    """Run every spec's rules on the job's output; {config name: (RuleEvaluationStatus, StatusDetails,
    verdicts)}. A rule that raises is that configuration's Error, never the job's."""
    results = {}
    for spec in specs:
        if spec.error:
            results[spec.config_name] = ("Error", _details(spec.error), [])
            continue
        try:
            results[spec.config_name] = _run(Path(job_dir), spec)
        except Exception as exc:
            LOG.error("rule %s failed:\n%s", spec.config_name, traceback.format_exc())
            results[spec.config_name] = ("Error", _details(f"the rule failed: {type(exc).__name__}: {exc}"), [])
    return results


def _run(job_dir: Path, spec: RuleSpec):
    from localsage.debugger.rules.verdicts import run_rules

    verdicts = run_rules(job_dir, overrides=spec.params, only=spec.rules, write=True)
    fired = [v for v in verdicts if v["status"] == "IssuesFound"]
    judged = [v for v in verdicts if v["status"] != "NoData"]
    notes = []
    if fired:
        status = "IssuesFound"
        notes += [f"{v['rule']}: {v['violations']} violation(s): {v.get('evidence') or ''}".strip() for v in fired]
    else:
        status = "NoIssuesFound"
        if not judged:
            notes += [f"NoData: {v['rule']}: {v.get('evidence') or 'nothing saved to judge'}" for v in verdicts[:3]]
        else:
            notes.append(f"{len(judged)} rule(s) judged, no issue found")
    if spec.ignored:
        notes.append(f"parameters localsage's rule does not have, not applied: {', '.join(sorted(spec.ignored))}")
    return status, _details("; ".join(notes)), verdicts


def final_statuses(previous: dict, results: dict) -> dict:
    """The statuses after evaluation (results from `evaluate`), same order and ARNs as before."""
    now = time.time()
    out = {}
    for key, statuses in previous.items():
        out[key] = []
        for status in statuses:
            status = dict(status)
            verdict = results.get(status["RuleConfigurationName"])
            if verdict:
                status["RuleEvaluationStatus"], status["StatusDetails"] = verdict[0], verdict[1]
            status["LastModifiedTime"] = now
            out[key].append(status)
    return out


def stopped_statuses(previous: dict, reason: str) -> dict:
    """Every rule still InProgress: Stopped (the job never produced anything to judge)."""
    now = time.time()
    out = {}
    for key, statuses in previous.items():
        out[key] = [dict(s, RuleEvaluationStatus="Stopped", StatusDetails=_details(reason), LastModifiedTime=now)
                    if s.get("RuleEvaluationStatus") == "InProgress" else s for s in statuses]
    return out
