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
    sagemaker   the HyperparameterTuner request (around localsage.host.cloud.training's Estimator)

Import each name from its module (`from localsage.host.tune.settings import build`); this package
re-exports nothing. Importing a module here imports neither optuna nor torch (they load when a study or a
check runs).
"""
