"""A CreateHyperParameterTuningJob request as an Optuna study: the inverse of localsage.host.tune.sagemaker,
which builds that request from a `localsage tune` setup, so what `localsage tune --backend sagemaker --dry-run`
prints runs here with the same space and budget.

    ParameterRanges          -> localsage.host.tune.space.Dim (Optuna distributions, grids); ScalingType
                                Linear/Logarithmic as given, ReverseLogarithmic searches 1 - x on a log scale,
                                Auto is logarithmic when 0 < min and max/min >= 100, else linear
    Strategy                 -> sampler: Bayesian and Hyperband TPE, Random random, Grid every grid point once
                                (categorical values; a numeric range gives localsage tune's grid points)
    TrainingJobEarlyStopping -> pruner: Auto the median rule (SageMaker's: a job worse than the median of the
                                completed jobs at the same step stops), Hyperband Optuna's Hyperband; either
                                also stops a job whose objective is NaN or infinite
    ResourceLimits, TuningJobCompletionCriteria -> the budget and when to stop early
    WarmStartConfig          -> the parents' finished trials added to the new study (IdenticalDataAndAlgorithm:
                                with their per-step values, so the pruner compares against them too)

Pure: no server state here (api/tuning.py runs the study)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from localsage.api.errors import validation
from localsage.core import hyperparameters, metrics
from localsage.host.tune.space import Dim

STRATEGIES = ("Bayesian", "Random", "Grid", "Hyperband")
SCALINGS = ("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")
WARM_TYPES = ("IdenticalDataAndAlgorithm", "TransferLearning")
BUILTIN_METRICS = metrics.NAMES[1:] + metrics.FINAL_NAMES  # what the built-in trainer reports without definitions
MAX_JOBS = 500  # SageMaker's ceiling of training jobs per tuning job
PRUNE_STARTUP_TRIALS = 2  # completed trials before the median rule compares (localsage tune's default too)
AUTO_LOG_RATIO = 100.0  # Auto scaling: logarithmic across at least two decades
CONFIG = "HyperParameterTuningJobConfig"
DEFINITION = "TrainingJobDefinition"
# members of a HyperParameterTrainingJobDefinition that a trial's CreateTrainingJob takes as they are
PASSED = ("RoleArn", "InputDataConfig", "VpcConfig", "OutputDataConfig", "StoppingCondition", "EnableNetworkIsolation",
          "EnableInterContainerTrafficEncryption", "EnableManagedSpotTraining", "RetryStrategy", "Environment")


@dataclass(frozen=True)
class Range:
    """One searched hyperparameter: a Dim over Optuna's internal values and the strings SageMaker passes."""
    dim: Dim
    reverse: bool = False  # ReverseLogarithmic: the Dim searches 1 - x on a log scale

    @property
    def name(self) -> str:
        return self.dim.name

    def text(self, internal) -> str:
        if self.dim.kind == "categorical":
            return str(internal)
        if self.dim.kind == "int":
            return str(int(internal))
        return repr(float(1.0 - internal if self.reverse else internal))

    def internal(self, text):
        """A value as SageMaker spells it -> this range's Optuna value; None when it is not in the range."""
        if self.dim.kind == "categorical":
            return text if text in self.dim.values else None
        try:
            value = float(text)
        except (TypeError, ValueError):
            return None
        if self.dim.kind == "int":
            value = int(value) if value == int(value) else math.nan
        elif self.reverse:
            value = 1.0 - value
        return value if self.dim.low <= value <= self.dim.high else None

    def suggest(self, trial) -> str:
        return self.text(self.dim.suggest(trial))

    def grid(self) -> list:
        return self.dim.grid()


@dataclass
class Plan:
    """A validated tuning request, as the runner needs it."""
    name: str
    ranges: list
    strategy: str
    objective: str
    direction: str  # minimize | maximize
    budget: int
    parallel: int
    pruning: str  # median | hyperband | none
    script: bool  # the trials run a user's program (sagemaker_program), not the built-in trainer
    seed: int | None = None
    hyperband: tuple = (1, "auto")
    target: float | None = None
    not_improving: int | None = None
    max_runtime: int | None = None
    warm_type: str | None = None
    parents: list = field(default_factory=list)

    def better(self, a: float, b: float | None) -> bool:
        return b is None or (a < b if self.direction == "minimize" else a > b)

    def reached(self, value: float) -> bool:
        """TuningJobCompletionCriteria.TargetObjectiveMetricValue reached."""
        if self.target is None:
            return False
        return value <= self.target if self.direction == "minimize" else value >= self.target


def _number(text, field_name: str, whole: bool) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise validation(field_name, f"Member must be a number (got {str(text)[:40]!r})") from None
    if not math.isfinite(value) or (whole and value != int(value)):
        raise validation(field_name, f"Member must be a finite {'whole ' if whole else ''}number (got {text!r})")
    return value


def _numeric(item: dict, where: str, kind: str) -> Range:
    name, whole = item["Name"], kind == "int"
    low, high = _number(item["MinValue"], f"{where}.MinValue", whole), _number(item["MaxValue"], f"{where}.MaxValue",
                                                                                whole)
    if low >= high:
        raise validation(f"{where}.MinValue", f"MinValue ({item['MinValue']}) must be less than MaxValue "
                                              f"({item['MaxValue']}) for {name}")
    scaling = item.get("ScalingType") or "Auto"
    if scaling not in SCALINGS:
        raise validation(f"{where}.ScalingType", f"Member must satisfy enum value set: [{', '.join(SCALINGS)}]")
    if scaling == "ReverseLogarithmic":
        if whole or not 0 <= low < high < 1:
            raise validation(f"{where}.ScalingType", f"ReverseLogarithmic works only for continuous ranges within "
                                                     f"0 <= x < 1 ({name}: {low:g}..{high:g})")
        return Range(Dim(name, "float", 1.0 - high, 1.0 - low, log=True), reverse=True)
    if scaling == "Logarithmic" and low <= 0:
        raise validation(f"{where}.ScalingType", f"Logarithmic scaling works only for ranges that have only values "
                                                 f"greater than 0 ({name}: {low:g}..{high:g})")
    log = scaling == "Logarithmic" or (scaling == "Auto" and low > 0 and high / low >= AUTO_LOG_RATIO)
    return Range(Dim(name, kind, int(low) if whole else low, int(high) if whole else high, log=log))


def parse_ranges(ranges: dict | None, static: dict, where: str = f"{CONFIG}.ParameterRanges") -> list:
    """ParameterRanges -> [Range], each name once, none of them static or reserved."""
    out, seen = [], set()
    for key, kind in (("ContinuousParameterRanges", "float"), ("IntegerParameterRanges", "int"),
                      ("CategoricalParameterRanges", "categorical")):
        for i, item in enumerate((ranges or {}).get(key) or [], 1):
            at, name = f"{where}.{key}.{i}", item["Name"]
            if not name or name in seen:
                raise validation(f"{at}.Name", f"hyperparameter names must be unique and non-empty (got {name!r})")
            if hyperparameters.is_reserved(name) or name == hyperparameters.TUNING_OBJECTIVE_KEY:
                raise validation(f"{at}.Name", f"{name} is reserved by SageMaker and cannot be tuned")
            if name in static:
                raise validation(f"{at}.Name", f"The hyperparameter {name} is both static and tunable; remove it from "
                                               "StaticHyperParameters or from the ranges")
            seen.add(name)
            if kind != "categorical":
                out.append(_numeric(item, at, kind))
                continue
            values = [str(v) for v in item["Values"]]
            if len(set(values)) != len(values):
                raise validation(f"{at}.Values", f"duplicate values for {name}: {values}")
            out.append(Range(Dim(name, "categorical", values=tuple(values))))
    if not out:
        raise validation(where, "give at least one parameter range to search")
    return out


def grid_size(ranges: list) -> int:
    return math.prod(len(r.grid()) for r in ranges)


def plan(name: str, request: dict) -> Plan:
    """The request's tuning setup, or a ValidationException naming the field, as the service answers."""
    config, definition = request[CONFIG], request.get(DEFINITION)
    if request.get("TrainingJobDefinitions"):
        raise validation("TrainingJobDefinitions", "localsage runs one TrainingJobDefinition per tuning job; "
                                                   "give TrainingJobDefinition")
    if not definition:
        raise validation(DEFINITION, "Member must not be null")
    if request.get("Autotune"):
        raise validation("Autotune", "Autotune is not supported by localsage; give Strategy, ParameterRanges and "
                                     "ResourceLimits")
    static = definition.get("StaticHyperParameters") or {}
    objective = config.get("HyperParameterTuningJobObjective")
    if not objective:
        raise validation(f"{CONFIG}.HyperParameterTuningJobObjective", "Member must not be null")
    metric, kind = objective["MetricName"], objective["Type"]
    if kind not in ("Minimize", "Maximize"):
        raise validation(f"{CONFIG}.HyperParameterTuningJobObjective.Type", "Member must satisfy enum value set: "
                                                                           "[Maximize, Minimize]")
    script = hyperparameters.PROGRAM_KEY in static
    defined = [d["Name"] for d in definition["AlgorithmSpecification"].get("MetricDefinitions") or []]
    if metric not in defined and (script or metric not in BUILTIN_METRICS):
        raise validation(f"{DEFINITION}.AlgorithmSpecification.MetricDefinitions",
                         f"The objective metric {metric!r} is not defined in the MetricDefinitions "
                         f"({', '.join(defined) or 'none'})")
    strategy = config["Strategy"]
    if strategy not in STRATEGIES:
        raise validation(f"{CONFIG}.Strategy", f"Member must satisfy enum value set: [{', '.join(STRATEGIES)}]")
    stopping = config.get("TrainingJobEarlyStoppingType") or "Off"
    if stopping not in ("Off", "Auto"):
        raise validation(f"{CONFIG}.TrainingJobEarlyStoppingType", "Member must satisfy enum value set: [Off, Auto]")
    if strategy == "Hyperband" and stopping == "Auto":
        raise validation(f"{CONFIG}.TrainingJobEarlyStoppingType", "Because the Hyperband strategy has its own "
                                                                   "early stopping, TrainingJobEarlyStoppingType "
                                                                   "must be Off to use Hyperband")
    if (config.get("ParameterRanges") or {}).get("AutoParameters"):
        raise validation(f"{CONFIG}.ParameterRanges.AutoParameters", "AutoParameters (Autotune) is not supported by "
                                                                      "localsage; give the ranges")
    ranges = parse_ranges(config.get("ParameterRanges"), static)
    limits, criteria = config["ResourceLimits"], config.get("TuningJobCompletionCriteria") or {}
    budget = limits.get("MaxNumberOfTrainingJobs")
    if strategy == "Grid":
        budget = min(budget or MAX_JOBS, grid_size(ranges))
    elif budget is None and (criteria or limits.get("MaxRuntimeInSeconds")):
        budget = MAX_JOBS
    elif budget is None:
        raise validation(f"{CONFIG}.ResourceLimits.MaxNumberOfTrainingJobs", f"Member must not be null for the "
                                                                             f"{strategy} strategy")
    if budget > MAX_JOBS:
        raise validation(f"{CONFIG}.ResourceLimits.MaxNumberOfTrainingJobs", f"at most {MAX_JOBS} training jobs")
    band = ((config.get("StrategyConfig") or {}).get("HyperbandStrategyConfig") or {})
    warm = request.get("WarmStartConfig") or {}
    warm_type = warm.get("WarmStartType")
    if warm and warm_type not in WARM_TYPES:
        raise validation("WarmStartConfig.WarmStartType", f"Member must satisfy enum value set: "
                                                          f"[{', '.join(WARM_TYPES)}]")
    parents = [p.get("HyperParameterTuningJobName") for p in warm.get("ParentHyperParameterTuningJobs") or []]
    if None in parents or len(set(parents)) != len(parents):
        raise validation("WarmStartConfig.ParentHyperParameterTuningJobs", "name each parent tuning job once")
    return Plan(name=name, ranges=ranges, strategy=strategy, objective=metric, direction=kind.lower(),
                budget=budget, parallel=min(limits["MaxParallelTrainingJobs"], budget),
                pruning="hyperband" if strategy == "Hyperband" else "median" if stopping == "Auto" else "none",
                script=script, seed=config.get("RandomSeed"),
                hyperband=(band.get("MinResource") or 1, band.get("MaxResource") or "auto"),
                target=criteria.get("TargetObjectiveMetricValue"),
                not_improving=(criteria.get("BestObjectiveNotImproving") or {}).get(
                    "MaxNumberOfTrainingJobsNotImproving"),
                max_runtime=limits.get("MaxRuntimeInSeconds"), warm_type=warm_type, parents=parents)


def static_hyperparameters(definition: dict, objective: str) -> dict:
    """What every trial gets besides its searched values: the static ones and, as SageMaker adds it,
    `_tuning_objective_metric` (taken out again before a program sees its hyperparameters)."""
    return {**(definition.get("StaticHyperParameters") or {}), hyperparameters.TUNING_OBJECTIVE_KEY: objective}


def trial_request(definition: dict, name: str, hps: dict, tags: list | None = None) -> dict:
    """The CreateTrainingJob request of one trial: the definition's members, its hyperparameters, a
    ResourceConfig from HyperParameterTuningResourceConfig when that is what the definition has, and a
    checkpoint folder of its own (trials must not resume each other's checkpoints)."""
    spec = definition["AlgorithmSpecification"]
    request = {"TrainingJobName": name, "HyperParameters": dict(hps),
               "AlgorithmSpecification": {k: spec[k] for k in ("TrainingImage", "AlgorithmName", "TrainingInputMode",
                                                               "MetricDefinitions") if spec.get(k) is not None}}
    request.update({k: definition[k] for k in PASSED if definition.get(k) is not None})
    resources = definition.get("ResourceConfig")
    if not resources:
        tuning = dict(definition.get("HyperParameterTuningResourceConfig") or {})
        first = (tuning.pop("InstanceConfigs", None) or [{}])[0]
        resources = {"InstanceCount": 1, "VolumeSizeInGB": 30,
                     **{k: v for k, v in tuning.items() if k in ("InstanceType", "InstanceCount", "VolumeSizeInGB",
                                                                 "VolumeKmsKeyId")}, **first}
    request["ResourceConfig"] = resources
    checkpoint = definition.get("CheckpointConfig")
    if checkpoint:
        request["CheckpointConfig"] = {**checkpoint, "S3Uri": f"{checkpoint['S3Uri'].rstrip('/')}/{name}"}
    if tags:
        request["Tags"] = list(tags)
    return request


def epochs_of(hps: dict) -> int | None:
    """The built-in trainer's epoch count for these hyperparameters (None when they do not parse)."""
    try:
        return int(hyperparameters.parse(hps)["epochs"])
    except (hyperparameters.HyperparameterError, ValueError, KeyError):
        return None


# -- a trial's outcome, and what Describe derives from the trials -------------------------------------------------
def objective_point(point: dict, objective: str, ordinal: int) -> tuple:
    """(value, step) of the objective in a job's metrics callback: the built-in trainer's epoch values
    ({"epoch", "valid_loss", ...}; the step is the epoch) or a scraped point ({"name", "value", "ordinal"})."""
    if "epoch" in point:
        value = point.get(objective)
        return (None, None) if value is None else (float(value), int(point["epoch"]))
    if point.get("name") != objective:
        return None, None
    return float(point["value"]), int(point.get("ordinal") or ordinal)


def outcome(p: Plan, described: dict, values: list, pruned: bool) -> tuple:
    """(Optuna state: COMPLETE | PRUNED | FAIL, the objective value or None, the summary's new fields, the failure
    reason or None) of a trial whose training job ended as `described`; values: what it reported."""
    status = described["TrainingJobStatus"]
    final = {m["MetricName"]: m["Value"] for m in described.get("FinalMetricDataList") or []}
    value = values[-1] if values else final.get(p.objective)
    value = value if value is not None and math.isfinite(value) else None
    summary = {"TrainingJobStatus": status, "ObjectiveStatus": "Succeeded" if value is not None else "Failed"}
    summary.update({k: described[k] for k in ("TrainingStartTime", "TrainingEndTime") if described.get(k)})
    if value is not None:
        summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
            "Type": p.direction.capitalize(), "MetricName": p.objective, "Value": value}
    if status == "Stopped" and pruned:
        return "PRUNED", value, summary, None
    if status == "Completed" and value is not None:
        return "COMPLETE", value, summary, None
    reason = described.get("FailureReason") or (
        f"the job ended {status} without a finite {p.objective}" if status == "Completed"
        else described.get("StopReason") or f"the job ended {status}")
    if status != "Completed":
        summary["FailureReason"] = str(reason)[:1024]
    return "FAIL", value, summary, reason


def pruned_empty(value):
    """A structure with its empty members left out (sagemaker-core's pydantic rejects some empty ones)."""
    if isinstance(value, dict):
        out = {k: pruned_empty(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [pruned_empty(v) for v in value]
    return value


def counters(trials) -> tuple[dict, dict]:
    """(TrainingJobStatusCounters, ObjectiveStatusCounters) of the trials' summaries."""
    jobs = {"Completed": 0, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 0, "Stopped": 0}
    objective = {"Succeeded": 0, "Pending": 0, "Failed": 0}
    for s in trials:
        status = s["TrainingJobStatus"]
        jobs["NonRetryableError" if status == "Failed" else status if status in jobs else "InProgress"] += 1
        objective[s.get("ObjectiveStatus") or "Pending"] += 1
    return jobs, objective


def best_of(summaries, direction: str) -> dict | None:
    """The completed job with the best objective (BestTrainingJob), or None."""
    done = [s for s in summaries if s and s.get("TrainingJobStatus") == "Completed"
            and s.get("FinalHyperParameterTuningJobObjectiveMetric")]
    sign = 1 if direction == "minimize" else -1
    return min(done, key=lambda s: sign * s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"], default=None)


# -- Optuna ------------------------------------------------------------------------------------------------------
def make_sampler(p: Plan):
    import optuna

    if p.strategy == "Random":
        return optuna.samplers.RandomSampler(seed=p.seed)
    if p.strategy == "Grid":
        class Grid(optuna.samplers.GridSampler):
            def after_trial(self, study, trial, state, values):
                """Optuna's stops the study when the grid is used up, which only optimize() allows: here the
                budget is the grid's size."""

        return Grid({r.name: r.grid() for r in p.ranges}, seed=p.seed)
    # constant_liar: the running trials steer TPE away from their params (MaxParallelTrainingJobs > 1)
    return optuna.samplers.TPESampler(seed=p.seed, constant_liar=True)


def make_pruner(p: Plan):
    import optuna

    if p.pruning == "none":
        return optuna.pruners.NopPruner()
    if p.pruning == "hyperband":
        inner = optuna.pruners.HyperbandPruner(min_resource=p.hyperband[0], max_resource=p.hyperband[1],
                                               reduction_factor=3)
    else:
        inner = optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS, n_warmup_steps=0)

    class Diverged(optuna.pruners.BasePruner):
        """The inner rule, and at once for a NaN or infinite objective: such a job cannot become the best."""

        def prune(self, study, trial) -> bool:
            step = trial.last_step
            if step is not None and not math.isfinite(trial.intermediate_values[step]):
                return True
            return inner.prune(study, trial)

    return Diverged()


def storage(path):
    """The study's Optuna storage: a journal file (the server's folder keeps it across restarts)."""
    import optuna

    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def inherited(parent: str, trials: list, p: Plan) -> list:
    """A parent study's finished trials as trials of the new study: params mapped through the new ranges (by the
    strings SageMaker passed, so a changed scaling or range still maps; a value outside a range is left out).
    IdenticalDataAndAlgorithm keeps pruned trials and every per-step value; TransferLearning only completed
    trials' final values (other data: the steps do not compare)."""
    from optuna.trial import TrialState, create_trial

    identical = p.warm_type == "IdenticalDataAndAlgorithm"
    out = []
    for t in trials:
        if t.state != TrialState.COMPLETE and not (identical and t.state == TrialState.PRUNED):
            continue
        hps = t.user_attrs.get("hyperparameters") or {}
        params, dists = {}, {}
        for r in p.ranges:
            value = r.internal(hps.get(r.name))
            if value is not None:
                params[r.name], dists[r.name] = value, r.dim.distribution()
        out.append(create_trial(state=t.state, value=t.value if t.state == TrialState.COMPLETE else None,
                                params=params, distributions=dists,
                                intermediate_values=dict(t.intermediate_values) if identical else None,
                                user_attrs={**t.user_attrs, "warm_start_parent": t.user_attrs.get(
                                    "warm_start_parent", parent)}))
    return out
