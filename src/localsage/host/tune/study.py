"""Optuna pieces of a study: sampler, pruner and storage factories, the budget lock, the stored config.

The study lives in Optuna storage: by default a journal file in <jobs>/tune-<study>/ (safe for several
processes on one machine), or any SQLAlchemy URL (postgresql://...) shared by workers on many machines.
Storage URLs are never printed with their password (settings.safe_url)."""
from __future__ import annotations

import contextlib
import fcntl
import re
import threading
import zlib
from pathlib import Path

from localsage.core import hyperparameters
from localsage.host.tune.settings import Tuning, build, safe_url
from localsage.host.tune.space import TuneError


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
        if t.script or "epochs" in t.space:
            max_resource = "auto"
        else:
            max_resource = int(t.fixed.get("epochs", hyperparameters.SPEC["epochs"].default))
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource, reduction_factor=3)
    if t.pruner == "successive-halving":
        # asynchronous successive halving: rungs at steps r, 3r, 9r, ... (r = max(1, warm-up steps));
        # a trial goes on past a rung only while it is in the best third of the trials that reached it
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, t.prune_warmup_steps), reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=t.prune_startup_trials, n_warmup_steps=t.prune_warmup_steps)


def _password(url: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password
    except Exception:
        found = re.search(r"//[^/:@]*:([^@/]*)@", url)
        return found.group(1) if found else None


def scrub(text: str, url: str | None) -> str:
    """An error message with the storage URL's password taken out."""
    if not url:
        return text
    text = str(text).replace(url, safe_url(url))
    secret = _password(url)
    return text.replace(secret, "***") if secret else text


@contextlib.contextmanager
def storage_errors(t: Tuning):
    """Storage failures (bad URL, server down, wrong database) as a TuneError without the password."""
    try:
        yield
    except (TuneError, KeyError):  # KeyError: no such study (the caller says so)
        raise
    except Exception as exc:
        if not t.storage or "://" not in t.storage:
            raise
        raise TuneError(f"storage {safe_url(t.storage)}: {type(exc).__name__}: "
                        f"{scrub(str(exc).splitlines()[0] if str(exc) else '', t.storage)}") from None


def make_storage(t: Tuning):
    import optuna

    if t.storage and "://" in t.storage:
        with storage_errors(t):
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

            with storage_errors(t):
                engine = sqlalchemy.create_engine(t.storage, poolclass=sqlalchemy.pool.NullPool)
                conn = engine.connect()
            key = zlib.crc32(f"localsage-tune:{t.study}".encode())
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            finally:
                conn.close()
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


def stored_config(study_name: str, storage=None, jobs_dir=None) -> dict:
    """--resume: the config a study was started with (YAML form), read from the study itself."""
    import optuna

    t = build({}, {"study": study_name, "storage": storage}, jobs_dir)
    if not t.storage and not (t.study_dir / "journal.log").exists():
        raise TuneError(f"no study {study_name!r} to resume in {t.study_dir}")
    try:
        with storage_errors(t):
            stored = optuna.load_study(study_name=study_name, storage=make_storage(t)).user_attrs.get("config")
    except KeyError:
        raise TuneError(f"no study {study_name!r} in {t.storage_label} to resume") from None
    if not stored:
        raise TuneError(f"study {study_name!r} was not started by localsage tune: no stored settings")
    return stored
