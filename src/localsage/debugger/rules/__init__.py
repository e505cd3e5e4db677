"""SageMaker Debugger and Profiler rules, run locally on a job's output (torch 2.x).

Every rule is a `smdebug.rules.rule.Rule` subclass run with `smdebug.rules.rule_invoker.invoke_rule`:
debugger rules walk the global steps of the smdebug trial in output/tensors; profiler rules walk the
datapoints of output/profiler. A rule that fires raises RuleEvaluationConditionMet; `evaluate`
catches it, counts a violation and resumes at the next step, so a verdict says how often and when a
rule fired, not just whether. Parameters and defaults are AWS's documented ones
(shared/reference/debugger-rules.md), every one can be overridden (`Overfit:ratio_threshold=0.2`);
where the local version differs or AWS left the logic undocumented, the rule's docstring says so.

Modules: base (Rule base, scaling, trial helpers), losses, tensors, activations (debugger rules),
profile + profiler (profiler data and rules), registry (the rules in order, their names, which a job
enables), verdicts (run, overrides, output/rules I/O), reading (order, one-line reading, table).
Adding a rule: its class in one of the rule modules (name, KIND, LABEL, ORDER, DEFAULTS, texts) and
its entry in registry.RULES.
"""
