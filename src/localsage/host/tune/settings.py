"""A tuning setup: the YAML file's keys and the command line's options, validated before any trial."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from localsage.core import hyperparameters
from localsage.host import records
from localsage.host.tune.space import DEFAULT_SPACE, TuneError, default_space_note, parse_space, parse_space_entries

OBJECTIVES = {"valid_loss": "minimize", "valid_acc": "maximize"}  # the built-in trainer's objectives
OBJECTIVE_TYPES = ("minimize", "maximize")
SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp")
PRUNERS = ("median", "successive-halving", "hyperband", "none")
STORAGE_ENV = "LOCALSAGE_TUNE_STORAGE"  # the storage URL when --storage is not given (keeps passwords off argv)
SETTINGS = {  # name: default; each can come from the YAML file or the command line (the command line wins)
    "data": None, "study": "tune", "storage": None, "trials": 10, "parallel": 1, "objective": "valid_loss",
    "objective_type": None, "sampler": "tpe", "pruner": "successive-halving", "seed": 0, "backend": "process",
    "image": None, "prune_startup_trials": 2, "prune_warmup_steps": 0, "gpus": None,
    "entry_point": None, "source_dir": None, "metric_definitions": None,
    "max_run": None,  # seconds a trial's job may run (SageMaker's MaxRuntimeInSeconds); None: no limit locally
}
# Trial jobs of the built-in trainer record no debugger tensors unless the config's fixed hyperparameters
# ask for them: the hook's full save at step 0 is large for every trial (docs/performance.md), and a study
# judges trials by their metrics. best_hyperparameters.json does not carry this default.
TRIAL_DEFAULTS = {"debug": False}
# must agree between workers of one study (keys absent from older studies compare as None)
STORED = ("space", "fixed", "objective", "enqueue", "entry_point", "metric_definitions")
BEST_FILE = "best_hyperparameters.json"


def safe_url(url) -> str:
    """A storage URL fit to print: the password replaced by ***."""
    url = str(url)
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can read: mask anything between user: and @
        return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)


@dataclass
class Tuning:
    """A validated tuning setup."""
    settings: dict
    space: dict
    fixed: dict
    enqueue: list = field(default_factory=list)
    default_space: bool = False  # no space was given: the study searches DEFAULT_SPACE

    def __getattr__(self, name):
        try:
            return self.__dict__["settings"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def script(self) -> bool:
        """Script mode: the trials run the user's entry point, not the built-in trainer."""
        return bool(self.settings.get("entry_point"))

    @property
    def space_note(self) -> str | None:
        """The log line saying that the study searches the default space and how to change it."""
        return default_space_note(self.space, self.script) if self.default_space else None

    @property
    def direction(self) -> str:
        return self.settings["objective_type"] or OBJECTIVES[self.objective]

    @property
    def study_dir(self) -> Path:
        return Path(self.settings["jobs_dir"]) / f"tune-{self.study}"

    @property
    def storage_label(self) -> str:
        return safe_url(self.storage) if self.storage else str(self.study_dir / "journal.log")

    def trial_hyperparameters(self, params: dict) -> dict:
        """What a trial's job gets: for the built-in trainer its trial defaults under the fixed values."""
        return {**({} if self.script else TRIAL_DEFAULTS), **self.fixed, **params}

    def stored(self) -> dict:
        """The config in YAML form, kept in the study: --resume needs nothing else."""
        keep = ("trials", "sampler", "pruner", "seed", "prune_startup_trials", "prune_warmup_steps", "max_run")
        out = {**{k: self.settings[k] for k in keep}, "data": str(Path(self.data).resolve()) if self.data else None,
               "objective": self.objective, "space": {n: d.to_yaml() for n, d in self.space.items()},
               "fixed": hyperparameters.to_strings(self.fixed), "enqueue": self.enqueue}
        if self.script:  # a script's metric: the name alone does not say which way is better
            out["objective"] = {"metric": self.objective, "type": self.settings["objective_type"]}
        if self.script:  # absent for the built-in trainer: studies made before script mode compare equal
            out.update(entry_point=self.entry_point, source_dir=self.source_dir,
                       metric_definitions=self.metric_definitions)
        return out


def load_yaml(path) -> dict:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise TuneError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise TuneError(f"{path}: {exc.strerror}") from None
    if not isinstance(raw, dict):
        raise TuneError(f"{path}: expected a mapping at the top level")
    return raw


def parse_metric_definitions(raw) -> list:
    """SageMaker's [{"Name", "Regex"}] (or a {name: regex} mapping, or "NAME=REGEX" strings), checked."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        raw = [{"Name": k, "Regex": v} for k, v in raw.items()]
    if not isinstance(raw, list):
        raise TuneError("metric_definitions: expected a list of {Name, Regex}")
    out = []
    for item in raw:
        if isinstance(item, str):
            name, sep, regex = item.partition("=")
            if not sep:
                raise TuneError(f"metric definition {item!r}: expected NAME=REGEX")
            item = {"Name": name.strip(), "Regex": regex}
        if not isinstance(item, dict) or set(item) != {"Name", "Regex"} or not str(item["Name"]).strip():
            raise TuneError(f"metric definition {item!r}: expected {{Name: ..., Regex: ...}}")
        try:
            groups = re.compile(item["Regex"]).groups
        except re.error as exc:
            raise TuneError(f"metric definition {item['Name']}: bad regex {item['Regex']!r}: {exc}") from None
        if groups < 1:
            raise TuneError(f"metric definition {item['Name']}: the regex needs a group capturing the value")
        out.append({"Name": str(item["Name"]).strip(), "Regex": str(item["Regex"])})
    names = [d["Name"] for d in out]
    if len(set(names)) != len(names):
        raise TuneError(f"metric definitions: duplicate names {names}")
    return out


def _objective(raw, settings: dict) -> None:
    """`objective: valid_loss` or `objective: {metric: test_loss, type: minimize}` into two settings."""
    if isinstance(raw, dict):
        extra = set(raw) - {"metric", "type"}
        if extra or "metric" not in raw:
            raise TuneError(f"objective: expected a name or {{metric: NAME, type: minimize|maximize}}, got {raw!r}")
        settings["objective"] = raw["metric"]
        if raw.get("type") is not None and settings.get("objective_type") is None:
            settings["objective_type"] = raw["type"]
    elif raw is not None:
        settings["objective"] = raw


def _script_paths(settings: dict) -> None:
    entry = Path(str(settings["entry_point"]))
    source = settings["source_dir"]
    if source is None:  # --entry-point path/to/train.py: its folder is the source dir, as the SDK does
        source, entry = entry.parent, Path(entry.name)
    source = Path(str(source)).resolve()
    if not source.is_dir():
        raise TuneError(f"source dir not found: {source}")
    if entry.is_absolute() or ".." in entry.parts:
        raise TuneError(f"entry point {entry}: give it relative to the source dir {source}")
    if not (source / entry).is_file():
        raise TuneError(f"entry point {entry} not found in the source dir {source}")
    settings["entry_point"], settings["source_dir"] = str(entry), str(source)


def build(raw: dict, overrides: dict | None = None, jobs_dir=None) -> Tuning:
    """Settings from a config mapping (YAML form) plus command-line overrides; validated before any trial.
    overrides["space"]: `--space NAME={...}` entries, each replacing or adding that name of the config's space;
    with no space from either, the study searches DEFAULT_SPACE."""
    raw = {str(k).replace("-", "_"): v for k, v in (raw or {}).items()}
    unknown = set(raw) - set(SETTINGS) - {"space", "fixed", "enqueue"}
    if unknown:
        raise TuneError(f"tune config: unknown key(s) {', '.join(sorted(unknown))}; "
                        f"known: space, fixed, enqueue, {', '.join(SETTINGS)}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    space_entries = overrides.pop("space", None)
    settings = {**SETTINGS, **{k: v for k, v in raw.items() if k in SETTINGS and k != "objective"}}
    settings.update({k: v for k, v in overrides.items() if k != "objective"})
    _objective(overrides.get("objective", raw.get("objective")), settings)
    if not settings["storage"] and os.environ.get(STORAGE_ENV):
        settings["storage"] = os.environ[STORAGE_ENV]
    settings["jobs_dir"] = str(records.jobs_root(jobs_dir))
    script = bool(settings["entry_point"])
    if script:
        _script_paths(settings)
    elif settings["source_dir"]:
        raise TuneError("source_dir needs entry_point (the script to run)")
    settings["metric_definitions"] = parse_metric_definitions(settings["metric_definitions"]) or None
    configured = raw.get("space") or {}
    if not isinstance(configured, dict):
        parse_space(configured, script=script)  # raises: the config's space is not a mapping
    given = {**configured, **parse_space_entries(space_entries, script=script)}
    space = parse_space(given or DEFAULT_SPACE, script=script)
    # the built-in trainer's names take - for _; the toolkit's reserved keys (sagemaker_*) stay as SageMaker spells them
    fixed = {(str(k) if script or hyperparameters.is_reserved(k) else str(k).replace("_", "-")): v
             for k, v in (raw.get("fixed") or {}).items()}
    try:
        hyperparameters.processes_per_host(fixed, 0)
    except hyperparameters.HyperparameterError as exc:
        raise TuneError(f"fixed hyperparameters: {exc}") from None
    both = sorted(set(fixed) & set(space))
    if both and not given:
        raise TuneError(f"tune config: {', '.join(both)} both fixed and searched (no space was given, so the default: "
                        f"{', '.join(space)}); give a space without it (--space NAME={{...}} or space: in --config)")
    if both:
        raise TuneError(f"tune config: {', '.join(both)} both fixed and searched; remove one")
    if not script:
        try:
            sample = {d.name: d.first() for d in space.values()}
            hyperparameters.parse(hyperparameters.to_strings({**fixed, **sample}))
        except hyperparameters.HyperparameterError as exc:
            raise TuneError(f"fixed hyperparameters: {exc}") from None
    enqueue = raw.get("enqueue") or []
    for entry in enqueue:
        if not isinstance(entry, dict) or set(entry) - set(space):
            raise TuneError(f"enqueue: each entry maps searched hyperparameters to values; got {entry!r}")
    _check_objective(settings, script)
    if settings["sampler"] not in SAMPLERS:
        raise TuneError(f"sampler must be one of {', '.join(SAMPLERS)}, got {settings['sampler']!r}")
    if settings["pruner"] not in PRUNERS:
        raise TuneError(f"pruner must be one of {', '.join(PRUNERS)}, got {settings['pruner']!r}")
    for key, least in (("trials", 1), ("parallel", 1), ("prune_startup_trials", 0), ("prune_warmup_steps", 0),
                       ("max_run", 1)):
        value = settings[key]
        if key == "max_run" and value is None:  # the one optional count: no limit
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise TuneError(f"{key} must be a whole number >= {least}, got {value!r}")
    if not str(settings["study"]).replace("-", "").replace("_", "").isalnum():
        raise TuneError(f"study name {settings['study']!r}: use letters, digits, - and _")
    return Tuning(settings, space, fixed, list(enqueue), default_space=not given)


def _check_objective(settings: dict, script: bool) -> None:
    kind = settings["objective_type"]
    if kind is not None:
        kind = str(kind).lower()
        if kind not in OBJECTIVE_TYPES:
            raise TuneError(f"objective type must be minimize or maximize, got {settings['objective_type']!r}")
        settings["objective_type"] = kind
    name = settings["objective"]
    if not script:
        if settings["metric_definitions"]:
            raise TuneError("metric_definitions apply to script mode (entry_point); the built-in trainer's "
                            f"metrics are {', '.join(OBJECTIVES)}")
        if name not in OBJECTIVES:
            raise TuneError(f"objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
        if kind is not None and kind != OBJECTIVES[name]:
            raise TuneError(f"objective {name} is {OBJECTIVES[name]}d, not {kind}d")
        return
    names = [d["Name"] for d in settings["metric_definitions"] or []]
    if not names:
        raise TuneError("script mode needs metric definitions (--metric-definition NAME=REGEX) to read the "
                        "objective from the script's log")
    if name not in names:
        raise TuneError(f"objective {name!r} is not one of the metric definitions ({', '.join(names)}); "
                        f"pass --objective NAME")
    if kind is None:
        raise TuneError(f"objective {name!r}: say whether to minimize or maximize it (--objective-type, or "
                        "objective: {metric: NAME, type: minimize|maximize})")
