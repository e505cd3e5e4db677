"""Hyperparameter tuning: one search-space definition, an Optuna study whose trials are training jobs,
and the same space as a SageMaker HyperparameterTuner.

Every trial is a real job through `runner.train` (any backend). Epoch metrics reach the study through the
runner's `on_metrics` callback while the job runs in its own process or container; when the pruner says
so the callback returns True and the runner stops the job (job: Stopped, trial: Pruned).

The study lives in Optuna storage: by default a journal file in <jobs>/tune-<study>/ (safe for several
processes on one machine), or any SQLAlchemy URL (postgresql://...) shared by workers on many machines.
The study's settings (data, space, fixed hyperparameters, objective, budget) are stored in the study, so
`--resume --study NAME` needs nothing else, and a second machine joining the study must agree with them.
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import math
import os
import socket
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from . import hyperparameters, metrics, runner

OBJECTIVES = {"valid_loss": "minimize", "valid_acc": "maximize"}
SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp")
PRUNERS = ("median", "successive-halving", "hyperband", "none")
# The seed project's SageMaker HPO space.
DEFAULT_SPACE = {
    "lr": {"type": "float", "min": 1e-3, "max": 1e-1, "scale": "log"},
    "batch-size": {"type": "categorical", "values": [32, 64, 128, 256]},
}
SETTINGS = {  # name: default; each can come from the YAML file or the command line (the command line wins)
    "data": None, "study": "tune", "storage": None, "trials": 10, "parallel": 1, "objective": "valid_loss",
    "sampler": "tpe", "pruner": "successive-halving", "seed": 0, "backend": "process", "image": None,
    "prune_startup_trials": 2, "prune_warmup_steps": 0, "gpus": None,
}
# Trial jobs record no debugger tensors unless the config's fixed hyperparameters ask for them: the
# hook's full save at step 0 is ~90 MB (resnet18) to ~200 MB (resnet50) per job, GBs per study, and a
# study judges trials by their metrics. best_hyperparameters.json does not carry this default.
TRIAL_DEFAULTS = {"debug": False}
STORED = ("space", "fixed", "objective", "enqueue")  # must agree between workers of one study
BEST_FILE = "best_hyperparameters.json"
GRID_POINTS = 5


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


def _check_value(name, value, where):
    try:
        return hyperparameters.SPEC[name].convert(str(value) if not isinstance(value, str) else value)
    except ValueError as exc:
        raise TuneError(f"search space: {name} {where} {value!r} is not a valid {name}: {exc}") from None


def parse_space(raw: dict) -> dict:
    """Validate the YAML form of the space; returns {name: Dim}. Errors name the parameter and the problem."""
    if not isinstance(raw, dict) or not raw:
        raise TuneError("search space: expected a mapping of hyperparameter name to its range")
    space = {}
    for name, spec in raw.items():
        name = str(name).replace("_", "-")
        if name not in hyperparameters.SPEC:
            raise TuneError(f"search space: unknown hyperparameter {name!r}; known: {', '.join(sorted(hyperparameters.SPEC))}")
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
            for v in values:
                _check_value(name, v, "value")
            space[name] = Dim(name, "categorical", values=tuple(values))
            continue
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
        expected = hyperparameters.SPEC[name].type
        if kind == "float" and expected is not float or kind == "int" and expected is not int:
            raise TuneError(f"search space: {name} is a {expected.__name__} hyperparameter; use type "
                            f"{'int' if expected is int else 'float' if expected is float else 'categorical'}")
        for v, where in ((int(low) if kind == "int" else low, "min"), (int(high) if kind == "int" else high, "max")):
            _check_value(name, v, where)
        space[name] = Dim(name, kind, low if kind == "float" else int(low), high if kind == "float" else int(high),
                          log=scale == "log")
    return space


@dataclass
class Tuning:
    """A validated tuning setup."""
    settings: dict
    space: dict
    fixed: dict
    enqueue: list = field(default_factory=list)

    def __getattr__(self, name):
        try:
            return self.__dict__["settings"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective]

    @property
    def study_dir(self) -> Path:
        return Path(self.settings["jobs_dir"]) / f"tune-{self.study}"

    def stored(self) -> dict:
        """The config in YAML form, kept in the study: --resume needs nothing else."""
        keep = ("trials", "objective", "sampler", "pruner", "seed", "prune_startup_trials", "prune_warmup_steps")
        return {**{k: self.settings[k] for k in keep}, "data": str(Path(self.data).resolve()) if self.data else None,
                "space": {n: _dim_yaml(d) for n, d in self.space.items()},
                "fixed": hyperparameters.to_strings(self.fixed), "enqueue": self.enqueue}


def _dim_yaml(dim: Dim) -> dict:
    if dim.kind == "categorical":
        return {"type": "categorical", "values": list(dim.values)}
    return {"type": dim.kind, "min": dim.low, "max": dim.high, "scale": "log" if dim.log else "linear"}


def load_yaml(path) -> dict:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise TuneError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise TuneError(f"{path}: expected a mapping at the top level")
    return raw


def build(raw: dict, overrides: dict | None = None, jobs_dir=None) -> Tuning:
    """Settings from a config mapping (YAML form) plus command-line overrides; validated before any trial."""
    raw = {str(k).replace("-", "_"): v for k, v in (raw or {}).items()}
    unknown = set(raw) - set(SETTINGS) - {"space", "fixed", "enqueue"}
    if unknown:
        raise TuneError(f"tune config: unknown key(s) {', '.join(sorted(unknown))}; "
                        f"known: space, fixed, enqueue, {', '.join(SETTINGS)}")
    settings = {**SETTINGS, **{k: v for k, v in raw.items() if k in SETTINGS}}
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    settings["jobs_dir"] = str(runner.jobs_root(jobs_dir))
    space = parse_space(raw.get("space") or DEFAULT_SPACE)
    fixed = {str(k).replace("_", "-"): v for k, v in (raw.get("fixed") or {}).items()}
    both = sorted(set(fixed) & set(space))
    if both:
        raise TuneError(f"tune config: {', '.join(both)} both fixed and searched; remove one")
    try:
        sample = {d.name: (d.values[0] if d.kind == "categorical" else d.low) for d in space.values()}
        hyperparameters.parse(hyperparameters.to_strings({**fixed, **sample}))
    except hyperparameters.HyperparameterError as exc:
        raise TuneError(f"fixed hyperparameters: {exc}") from None
    enqueue = raw.get("enqueue") or []
    for entry in enqueue:
        if not isinstance(entry, dict) or set(entry) - set(space):
            raise TuneError(f"enqueue: each entry maps searched hyperparameters to values; got {entry!r}")
    if settings["objective"] not in OBJECTIVES:
        raise TuneError(f"objective must be one of {', '.join(OBJECTIVES)}, got {settings['objective']!r}")
    if settings["sampler"] not in SAMPLERS:
        raise TuneError(f"sampler must be one of {', '.join(SAMPLERS)}, got {settings['sampler']!r}")
    if settings["pruner"] not in PRUNERS:
        raise TuneError(f"pruner must be one of {', '.join(PRUNERS)}, got {settings['pruner']!r}")
    for key, least in (("trials", 1), ("parallel", 1), ("prune_startup_trials", 0), ("prune_warmup_steps", 0)):
        if not isinstance(settings[key], int) or settings[key] < least:
            raise TuneError(f"{key} must be a whole number >= {least}, got {settings[key]!r}")
    if not str(settings["study"]).replace("-", "").replace("_", "").isalnum():
        raise TuneError(f"study name {settings['study']!r}: use letters, digits, - and _")
    return Tuning(settings, space, fixed, list(enqueue))


# ---------------------------------------------------------------- Optuna pieces

def make_sampler(t: Tuning):
    import optuna

    seed = t.seed
    if t.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if t.sampler == "grid":
        return optuna.samplers.GridSampler({n: d.grid() for n, d in t.space.items()}, seed=seed)
    if t.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if t.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    # constant_liar: running trials (in this process or on other machines) steer TPE away from their params
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(t: Tuning):
    import optuna

    if t.pruner == "none":
        return optuna.pruners.NopPruner()
    if t.pruner == "hyperband":
        epochs = int(t.fixed.get("epochs", hyperparameters.SPEC["epochs"].default)) if "epochs" not in t.space else "auto"
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if t.pruner == "successive-halving":
        # asynchronous successive halving: rungs at epochs r, 3r, 9r, ... (r = max(1, warm-up steps));
        # a trial goes on past a rung only while it is in the best third of the trials that reached it
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, t.prune_warmup_steps), reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=t.prune_startup_trials, n_warmup_steps=t.prune_warmup_steps)


def make_storage(t: Tuning):
    import optuna

    if t.storage and "://" in t.storage:
        return optuna.storages.RDBStorage(t.storage, engine_kwargs={"pool_pre_ping": True})
    path = Path(t.storage) if t.storage else t.study_dir / "journal.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


@contextlib.contextmanager
def creation_lock(t: Tuning, local: threading.Lock):
    """Serialize 'count the budget, then create a trial' across threads, processes and machines,
    so that workers sharing a study never exceed its trial budget."""
    with local:
        if t.storage and t.storage.startswith("postgresql"):
            import sqlalchemy

            engine = sqlalchemy.create_engine(t.storage, poolclass=sqlalchemy.pool.NullPool)
            key = zlib.crc32(f"localsage-tune:{t.study}".encode())
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            engine.dispose()
        else:
            t.study_dir.mkdir(parents=True, exist_ok=True)
            with open(t.study_dir / ".create.lock", "w") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)


def counted(trial) -> bool:
    """Does this trial use up the budget? Completed, pruned, running and crashed trials do; trials failed
    because the tuner stopped under them (stale, interrupted) do not, so --resume runs them again."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted")


def slot_env(slot: int, parallel: int, gpus: list, fixed: dict, cores: int) -> tuple[dict, dict]:
    """Resources of one parallel worker: a GPU each (round robin) or an equal share of the CPU threads."""
    if gpus:
        return {"CUDA_VISIBLE_DEVICES": str(gpus[slot % len(gpus)])}, {}
    hp = {} if "threads" in fixed else {"threads": max(1, cores // parallel)}
    return {}, hp


def visible_gpus(setting) -> list:
    if setting:
        return [g for g in str(setting).split(",") if g.strip()]
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale(study, log=print) -> list:
    """Running trials whose tuner process (on this host) is gone: mark them Failed (not counted in the
    budget) and their jobs Failed in the registry. Running trials of live tuners or other hosts stay."""
    from optuna.trial import TrialState

    failed = []
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker and worker.get("host") != host:
            log(f"trial {trial.number} runs on {worker.get('host')}; left alone")
            continue
        if worker and _alive(int(worker["pid"])):
            continue
        who = f"pid {worker['pid']} on {host}" if worker else "unknown"
        reason = f"stale: the tuner ({who}) stopped while trial {trial.number} ran"
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study._storage.set_trial_user_attr(trial._trial_id, "failure_reason", reason)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        job_dir = trial.user_attrs.get("job_dir")
        if job_dir and (Path(job_dir) / runner.RECORD).exists():
            record = runner.read_record(job_dir)
            if record.get("TrainingJobStatus") == "InProgress":
                record.update(TrainingJobStatus="Failed", SecondaryStatus="Failed", FailureReason=reason)
                runner.write_record(Path(job_dir), record)
        failed.append(trial.number)
        log(f"trial {trial.number}: {reason}; marked Failed")
    return failed


class Study:
    """An Optuna study whose trials are training jobs."""

    def __init__(self, t: Tuning, resume=False, echo=True, log=print):
        import optuna

        self.t, self.echo, self.log = t, echo, log
        self.direction = t.direction
        self._local = threading.Lock()
        with creation_lock(t, self._local):
            self.study = optuna.create_study(study_name=t.study, storage=make_storage(t), sampler=make_sampler(t),
                                             pruner=make_pruner(t), direction=self.direction, load_if_exists=True)
            stored = self.study.user_attrs.get("config")
            if stored is None:
                self.study.set_user_attr("config", t.stored())
                for params in t.enqueue:
                    self.study.enqueue_trial(params, skip_if_exists=True)
        if stored is not None:
            mine = t.stored()
            differ = [k for k in STORED if stored.get(k) != mine.get(k)]
            if differ:
                raise TuneError(f"study {t.study!r} exists with a different {', '.join(differ)}; use another --study "
                                f"name or the same settings (--resume alone reuses the stored ones)")
            # the seed makes a new study reproducible; a worker joining or resuming it must not replay the
            # creator's random draws (it would repeat the same params), so it draws its own
            self.study.sampler.reseed_rng()
        if resume:
            fail_stale(self.study, log)
        self.halt = threading.Event()
        self.running = set()  # stop events of the running jobs
        self.gpus = visible_gpus(t.gpus) if t.backend in ("process", "docker") else []

    # one trial = one job
    def run_trial(self, trial, params: dict, slot: int):
        from optuna.trial import TrialState

        t = self.t
        env, extra = slot_env(slot, t.parallel, self.gpus, t.fixed, os.cpu_count() or 1)
        hp = {**TRIAL_DEFAULTS, **t.fixed, **params, **extra}
        name = runner.job_name(f"{t.study}-t{trial.number:03d}")
        job_dir = Path(t.jobs_dir).resolve() / name
        trial.set_user_attr("job_name", name)
        trial.set_user_attr("job_dir", str(job_dir))
        pruned = []
        last_epoch = int(hyperparameters.parse(hyperparameters.to_strings(hp))["epochs"])

        def on_metrics(values):
            value = values.get(t.objective)
            if value is None:
                return False
            trial.report(value, values["epoch"])
            # after the last epoch there is nothing left to save: the trial completes
            if values["epoch"] < last_epoch and trial.should_prune():
                pruned.append(values["epoch"])
                return True
            return False

        stop = threading.Event()
        self.running.add(stop)
        try:
            record = runner.train(t.data, hp, backend=t.backend, name=name, jobs_dir=t.jobs_dir, image=t.image,
                                  on_metrics=on_metrics, env=env, stop=stop, echo=self.echo,
                                  tags={"tune-study": t.study, "tune-trial": str(trial.number)})
        finally:
            self.running.discard(stop)
        status = record["TrainingJobStatus"]
        final = {m["MetricName"]: m["Value"] for m in record.get("FinalMetricDataList", [])}
        trial.set_user_attr("job_status", status)
        trial.set_user_attr("epochs_run", record.get("EpochsCompleted", 0))
        trial.set_user_attr("duration_s", record.get("TrainingTimeInSeconds"))
        for key in ("valid_acc", "valid_loss"):
            if key in final:
                trial.set_user_attr(key, final[key])
        if status == "Stopped" and pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
            return "Pruned"
        value = final.get(t.objective)
        if status == "Completed" and value is not None and math.isfinite(value):
            self.study.tell(trial, value)
            return "Complete"
        reason = record.get("FailureReason") or record.get("StopReason") or f"job {status} without a finite {t.objective}"
        trial.set_user_attr("failure_reason", reason)
        if status == "Stopped":
            trial.set_user_attr("interrupted", True)
        self.study.tell(trial, state=TrialState.FAIL)
        self.log(f"trial {trial.number} failed: {reason}")
        return "Fail"

    def next_trial(self):
        with creation_lock(self.t, self._local):
            used = sum(counted(tr) for tr in self.study.get_trials(deepcopy=False))
            if used >= self.t.trials or self.halt.is_set():
                return None
            trial = self.study.ask()
            trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})  # for --resume
            # sampled under the lock: the sampler's random draws go to trials in trial order
            params = {name: dim.suggest(trial) for name, dim in self.t.space.items()}
            return trial, params

    def worker(self, slot: int):
        while not self.halt.is_set():
            asked = self.next_trial()
            if asked is None:
                return
            trial, params = asked
            try:
                state = self.run_trial(trial, params, slot)
            except BaseException as exc:  # never leave a trial RUNNING because of the tuner's own error
                from optuna.trial import TrialState

                trial.set_user_attr("failure_reason", f"tuner error: {type(exc).__name__}: {exc}")
                trial.set_user_attr("interrupted", True)
                self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            self.log(f"trial {trial.number}: {state}")

    def run(self):
        threads = [threading.Thread(target=self.worker, args=(slot,), name=f"tune-worker-{slot}", daemon=True)
                   for slot in range(self.t.parallel)]
        for th in threads:
            th.start()
        try:
            while any(th.is_alive() for th in threads):
                for th in threads:
                    th.join(0.5)
        except KeyboardInterrupt:
            self.log("interrupted: stopping the running trials (resume with --resume)")
            self.halt.set()
            for stop in list(self.running):
                stop.set()
            for th in threads:
                th.join()
        return self.study


# ---------------------------------------------------------------- results

def trial_rows(study) -> list:
    rows = []
    for tr in study.get_trials(deepcopy=False):
        ua = tr.user_attrs
        rows.append({
            "number": tr.number, "state": tr.state.name, "value": tr.value,
            **{f"param:{k}": v for k, v in tr.params.items()},
            "epochs_run": ua.get("epochs_run"), "duration_s": ua.get("duration_s"), "job": ua.get("job_name"),
            "failure_reason": ua.get("failure_reason", ""),
        })
    return rows


def best_hyperparameters(t: Tuning, study) -> dict:
    return hyperparameters.to_strings({**t.fixed, **study.best_trial.params})


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
    path.write_text("<!doctype html><html><head><meta charset='utf-8'><title>study "
                    f"{study.study_name}</title></head><body>{''.join(parts)}</body></html>")
    return path


def report(t: Tuning, study, log=print) -> dict:
    """Print the best trial and the trials table; write best_hyperparameters.json, trials.csv, plots.html."""
    from optuna.trial import TrialState

    folder = t.study_dir
    folder.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(folder / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    shown = [c for c in columns if c != "failure_reason"]
    table = [[("" if r.get(c) is None else f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r[c])) for c in shown]
             for r in rows]
    widths = [max(len(x) for x in col) for col in zip(shown, *table)] if rows else []
    for line in [shown, *table]:
        log("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip())
    counts = {s.name: sum(r["state"] == s.name for r in rows) for s in TrialState}
    result = {"study": t.study, "trials": {k: v for k, v in counts.items() if v}, "folder": str(folder)}
    if counts["COMPLETE"]:
        best = study.best_trial
        hp = best_hyperparameters(t, study)
        (folder / BEST_FILE).write_text(json.dumps(hp, indent=2) + "\n")
        log(f"best trial {best.number}: {t.objective}={best.value:.6g} params={json.dumps(best.params)} "
            f"job={best.user_attrs.get('job_name')}")
        log(f"best hyperparameters -> {folder / BEST_FILE}  (localsage train --hp-file {folder / BEST_FILE})")
        result.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                      best_file=str(folder / BEST_FILE))
    else:
        log("no trial completed: no best hyperparameters")
    plots = save_plots(study, folder, log)
    if plots:
        log(f"plots -> {plots}")
        result["plots"] = str(plots)
    return result


def run(t: Tuning, resume=False, echo=True, log=print) -> dict:
    if not t.data:
        raise TuneError("--data is required for a new study")
    if not Path(t.data).is_dir():
        raise TuneError(f"data folder not found: {t.data}")
    s = Study(t, resume=resume, echo=echo, log=log)
    study = s.run()
    return report(t, study, log)


def stored_config(study_name: str, storage=None, jobs_dir=None) -> dict:
    """--resume: the config a study was started with (YAML form), read from the study itself."""
    import optuna

    t = build({}, {"study": study_name, "storage": storage}, jobs_dir)
    if not t.storage and not (t.study_dir / "journal.log").exists():
        raise TuneError(f"no study {study_name!r} to resume in {t.study_dir}")
    try:
        stored = optuna.load_study(study_name=study_name, storage=make_storage(t)).user_attrs.get("config")
    except KeyError:
        raise TuneError(f"no study {study_name!r} in {t.storage or t.study_dir} to resume") from None
    if not stored:
        raise TuneError(f"study {study_name!r} was not started by localsage tune: no stored settings")
    return stored


# ---------------------------------------------------------------- SageMaker HPO

def sagemaker_tuner(t: Tuning, session=None, image=None, role=None, instance_type="ml.g4dn.xlarge",
                    output_path=None, max_parallel=None):
    """The same space, objective and budget as a sagemaker.tuner.HyperparameterTuner."""
    from sagemaker.estimator import Estimator
    from sagemaker.tuner import HyperparameterTuner

    estimator = Estimator(image_uri=image, role=role, instance_count=1, instance_type=instance_type,
                          output_path=output_path, sagemaker_session=session,
                          hyperparameters=hyperparameters.to_strings(t.fixed),
                          metric_definitions=metrics.METRIC_DEFINITIONS)
    strategy = {"random": "Random", "grid": "Grid"}.get(t.sampler, "Bayesian")
    return HyperparameterTuner(
        estimator, objective_metric_name=t.objective,
        hyperparameter_ranges={n: d.sagemaker() for n, d in t.space.items()},
        metric_definitions=metrics.METRIC_DEFINITIONS,
        objective_type="Minimize" if t.direction == "minimize" else "Maximize",
        strategy=strategy, max_jobs=None if strategy == "Grid" else t.trials,
        max_parallel_jobs=max_parallel or t.parallel, base_tuning_job_name=t.study[:20],
        early_stopping_type="Off" if t.pruner == "none" else "Auto")


def dry_run_request(t: Tuning, image=None, role=None, s3_data=None, output_path=None,
                    instance_type="ml.g4dn.xlarge", region=None) -> dict:
    """The CreateHyperParameterTuningJob request the SDK would send, built through cloud.dry_run's
    session (placeholder credentials, telemetry off, no EC2-metadata lookup; nothing leaves the machine)."""
    from . import cloud

    with cloud.dry_run(region) as (session, calls):
        tuner = sagemaker_tuner(
            t, session=session, role=cloud.role_arn(role), instance_type=instance_type,
            image=image or cloud.ecr_image_uri(cloud.ACCOUNT_PLACEHOLDER, session.boto_region_name),
            output_path=output_path or "s3://localsage-dry-run/output")
        tuner.fit({"training": s3_data or "s3://localsage-dry-run/data"}, wait=False)
    return next(c["request"] for c in calls if c["operation"] == "CreateHyperParameterTuningJob")


def validate_request(request: dict):
    """botocore's own parameter validation against the SageMaker service model (offline)."""
    import botocore.session
    from botocore.validate import validate_parameters

    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(request, model.operation_model("CreateHyperParameterTuningJob").input_shape)


def start_sagemaker(t: Tuning, s3_data: str, role=None, region=None, instance_type="ml.g4dn.xlarge",
                    output_path=None) -> str:
    """Start the study as a SageMaker HPO job (no wait); returns the tuning job's name."""
    from . import cloud

    if not (t.image and s3_data):
        raise TuneError("--backend sagemaker needs --image and --s3-data (or --dry-run)")
    try:
        boto_session = cloud.aws_session(region)
        role = cloud.role_arn(role, boto_session)
    except cloud.CloudError as exc:
        raise TuneError(str(exc)) from None
    tuner = sagemaker_tuner(t, session=cloud.sagemaker_session(boto_session), image=t.image, role=role,
                            instance_type=instance_type, output_path=output_path)
    tuner.fit({"training": s3_data}, wait=False)
    return tuner.latest_tuning_job.name
