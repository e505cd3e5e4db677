"""The one search-space definition: YAML form -> Dim, and each Dim as Optuna distribution, SageMaker
parameter range and grid. Built-in trainer spaces are checked against its hyperparameters; script-mode
spaces keep the names as the script spells them and are checked for shape only. A space comes from the
config's `space:`, from `--space NAME={...}` entries (which override the config's, name by name), or,
when neither gives one, is DEFAULT_SPACE."""
from __future__ import annotations

import math
from dataclasses import dataclass

from localsage.core import hyperparameters

# The seed project's SageMaker HPO space, under the names its script took: the space of any study that
# gives none (the built-in trainer's and a script's alike).
DEFAULT_SPACE = {
    "lr": {"type": "float", "min": 1e-3, "max": 1e-1, "scale": "log"},
    "batch-size": {"type": "categorical", "values": [32, 64, 128, 256]},
}
GRID_POINTS = 5
SPACE_SYNTAX = "NAME={type: float|int, min: A, max: B, scale: linear|log} or NAME={values: [A, B, ...]}"


class TuneError(ValueError):
    pass


@dataclass(frozen=True)
class Dim:
    """One searched hyperparameter."""
    name: str
    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: tuple = ()

    def distribution(self):
        from optuna import distributions as d

        if self.kind == "categorical":
            return d.CategoricalDistribution(list(self.values))
        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log)
        return d.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def suggest(self, trial):
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def sagemaker(self):
        from sagemaker.tuner import CategoricalParameter, ContinuousParameter, IntegerParameter

        scaling = "Logarithmic" if self.log else "Linear"
        if self.kind == "categorical":
            return CategoricalParameter([str(v) for v in self.values])
        if self.kind == "int":
            return IntegerParameter(int(self.low), int(self.high), scaling_type=scaling)
        return ContinuousParameter(float(self.low), float(self.high), scaling_type=scaling)

    def grid(self) -> list:
        if self.kind == "categorical":
            return list(self.values)
        if self.kind == "int" and self.high - self.low < 20:
            return list(range(int(self.low), int(self.high) + 1))
        if self.log:
            ratio = (self.high / self.low) ** (1 / (GRID_POINTS - 1))
            points = [self.low * ratio ** i for i in range(GRID_POINTS)]
        else:
            points = [self.low + (self.high - self.low) * i / (GRID_POINTS - 1) for i in range(GRID_POINTS)]
        return sorted({int(round(p)) for p in points}) if self.kind == "int" else [float(f"{p:.6g}") for p in points]

    def first(self):
        """A value inside the range (for checking fixed + searched hyperparameters together)."""
        return self.values[0] if self.kind == "categorical" else self.low

    def describe(self) -> str:
        """One line for a person: `lr float 0.001..0.1 log`, `batch-size one of 32, 64`."""
        if self.kind == "categorical":
            return f"{self.name} one of {', '.join(map(str, self.values))}"
        return f"{self.name} {self.kind} {self.low:g}..{self.high:g}{' log' if self.log else ''}"

    def entry(self, name: str | None = None) -> str:
        """This range as a --space entry (NAME=YAML flow mapping), under another name if given."""
        import yaml

        flow = yaml.safe_dump(self.to_yaml(), default_flow_style=True, sort_keys=False, width=10**6).strip()
        return f"{name or self.name}={flow}"

    def to_yaml(self) -> dict:
        if self.kind == "categorical":
            return {"type": "categorical", "values": list(self.values)}
        return {"type": self.kind, "min": self.low, "max": self.high, "scale": "log" if self.log else "linear"}


def _check_value(name, value, where):
    try:
        return hyperparameters.SPEC[name].convert(str(value) if not isinstance(value, str) else value)
    except ValueError as exc:
        raise TuneError(f"search space: {name} {where} {value!r} is not a valid {name}: {exc}") from None


def parse_space(raw: dict, script: bool = False) -> dict:
    """Validate the YAML form of the space; returns {name: Dim}. Errors name the parameter and the problem.

    script=True: the names are a user script's (kept as spelled, not checked against the built-in trainer's)."""
    if not isinstance(raw, dict) or not raw:
        raise TuneError("search space: expected a mapping of hyperparameter name to its range")
    space = {}
    for name, spec in raw.items():
        name = str(name) if script else str(name).replace("_", "-")
        if not script and name not in hyperparameters.SPEC:
            raise TuneError(f"search space: unknown hyperparameter {name!r}; "
                            f"known: {', '.join(sorted(hyperparameters.SPEC))}")
        if script and (not name or name.startswith("sagemaker_") or name == "_tuning_objective_metric"):
            raise TuneError(f"search space: {name!r} is a reserved SageMaker hyperparameter name")
        space[name] = _parse_dim(name, spec, script)
    return space


def parse_space_entries(entries, script: bool = False) -> dict:
    """`--space NAME={...}` entries (NAME=YAML flow mapping, repeatable) -> the YAML form {name: spec}, each
    checked by parse_space; an error names the entry it is about."""
    import yaml

    out = {}
    for entry in entries or ():
        name, sep, text = str(entry).partition("=")
        name = name.strip()
        if not sep or not name:
            raise TuneError(f"--space {entry!r}: expected {SPACE_SYNTAX}")
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TuneError(f"--space {entry!r}: not valid YAML ({problem}); expected {SPACE_SYNTAX}") from None
        if not isinstance(spec, dict):
            raise TuneError(f"--space {entry!r}: expected {SPACE_SYNTAX}")
        if name in out:
            raise TuneError(f"--space {entry!r}: {name} is given twice")
        try:
            parse_space({name: spec}, script=script)
        except TuneError as exc:
            raise TuneError(f"--space {entry!r}: {exc}") from None
        out[name] = spec
    return out


def describe_space(space: dict) -> str:
    """A space for a person, one line: `lr float 0.001..0.1 log; batch-size one of 32, 64`."""
    return "; ".join(d.describe() for d in space.values())


def default_space_note(space: dict, script: bool = False) -> str:
    """The log line of a study that searches DEFAULT_SPACE because it was given none."""
    passed = f", passed to the script as {' '.join('--' + n + ' VALUE' for n in space)}" if script else ""
    return (f"search space: none given, so the default ({describe_space(space)}{passed}); "
            f"change it with --space {SPACE_SYNTAX} (repeatable) or space: in --config")


def _parse_dim(name: str, spec, script: bool) -> Dim:
    if not isinstance(spec, dict):
        raise TuneError(f"search space: {name}: expected a mapping with type and min/max or values")
    kind = spec.get("type") or ("categorical" if "values" in spec else None)
    extra = set(spec) - {"type", "min", "max", "scale", "values"}
    if extra:
        raise TuneError(f"search space: {name}: unknown key(s) {', '.join(sorted(extra))}")
    if kind == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise TuneError(f"search space: {name}: categorical needs a non-empty list of values")
        if len(set(map(str, values))) != len(values):
            raise TuneError(f"search space: {name}: duplicate values {values}")
        if not script:
            for v in values:
                _check_value(name, v, "value")
        return Dim(name, "categorical", values=tuple(values))
    if kind not in ("float", "int"):
        raise TuneError(f"search space: {name}: type must be float, int or categorical, got {kind!r}")
    if "min" not in spec or "max" not in spec:
        raise TuneError(f"search space: {name}: {kind} needs min and max")
    scale = spec.get("scale", "linear")
    if scale not in ("linear", "log"):
        raise TuneError(f"search space: {name}: scale must be linear or log, got {scale!r}")
    try:
        low, high = float(spec["min"]), float(spec["max"])
    except (TypeError, ValueError):
        raise TuneError(f"search space: {name}: min and max must be numbers") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise TuneError(f"search space: {name}: min and max must be finite")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise TuneError(f"search space: {name}: int range needs whole numbers, got {spec['min']}..{spec['max']}")
    if low >= high:
        raise TuneError(f"search space: {name}: min ({spec['min']}) must be less than max ({spec['max']})")
    if scale == "log" and low <= 0:
        raise TuneError(f"search space: {name}: log scale needs min > 0, got {spec['min']}")
    if not script:
        expected = hyperparameters.SPEC[name].type
        if kind == "float" and expected is not float or kind == "int" and expected is not int:
            raise TuneError(f"search space: {name} is a {expected.__name__} hyperparameter; use type "
                            f"{'int' if expected is int else 'float' if expected is float else 'categorical'}")
        for v, where in ((int(low) if kind == "int" else low, "min"), (int(high) if kind == "int" else high, "max")):
            _check_value(name, v, where)
    if kind == "int":
        return Dim(name, kind, int(low), int(high), log=scale == "log")
    return Dim(name, kind, low, high, log=scale == "log")
