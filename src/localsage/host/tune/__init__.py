"""Hyperparameter tuning: one search-space definition, an Optuna study whose trials are training jobs,
and the same space as a SageMaker HyperparameterTuner.

    space       Dim, parse_space, parse_space_entries (--space): the YAML space -> Optuna distributions,
                SageMaker ranges, grids; DEFAULT_SPACE when none is given
    settings    Tuning, build, load_yaml: the validated setup (tune.yaml keys + command-line options)
    study       sampler/pruner/storage factories, the budget lock, the stored config (--resume)
    trial       one trial = one job: name, resources, metrics to the pruner, the outcome
    workers     Study: the worker pool, heartbeats, stale-trial recovery, SIGTERM; run()
    preflight   what every trial shares, checked once before the first
    results     trial rows, best hyperparameters, trials.csv, plots.html
    sagemaker   the HyperparameterTuner request (through localsage.host.cloud's Estimator)

Importing this package imports neither optuna nor torch (they load when a study or a check runs).
"""
from localsage.core import hyperparameters  # noqa: F401 - tune.hyperparameters.to_strings, as before the split
from localsage.host.tune.results import best_hyperparameters, report, save_plots, table, trial_rows  # noqa: F401
from localsage.host.tune.sagemaker import (  # noqa: F401
    dry_run_calls,
    dry_run_request,
    sagemaker_tuner,
    start_sagemaker,
    validate_request,
)
from localsage.host.tune.settings import (
    BEST_FILE,
    OBJECTIVE_TYPES,
    OBJECTIVES,
    PRUNERS,
    SAMPLERS,
    SETTINGS,
    STORAGE_ENV,
    STORED,
    TRIAL_DEFAULTS,
    Tuning,
    build,
    load_yaml,
    parse_metric_definitions,
    safe_url,
)
from localsage.host.tune.space import (
    DEFAULT_SPACE,
    GRID_POINTS,
    SPACE_SYNTAX,
    Dim,
    TuneError,
    describe_space,
    parse_space,
    parse_space_entries,
)
from localsage.host.tune.study import counted, creation_lock, make_pruner, make_sampler, make_storage, stored_config  # noqa: F401
from localsage.host.tune.trial import slot_env, trial_job_name  # noqa: F401
from localsage.host.tune.workers import HEARTBEAT_ENV, Study, fail_stale, run, visible_gpus  # noqa: F401
