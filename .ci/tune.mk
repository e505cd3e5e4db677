# Tuning targets (issue 5). Included by the Makefile; uses its BIN, DATA, JOBS, BACKEND, IMAGE.
#   make tune DATA=data/demo TRIALS=20 PARALLEL=2            a study of training jobs (Optuna)
#   make tune STUDY=dogs RESUME=1                            continue a study to its budget
#   make tune TUNE_CONFIG=tune.yaml STORAGE=postgresql://user:pw@host/db STUDY=dogs   (run on every machine)
#   make tune BACKEND=sagemaker TUNE_ARGS=--dry-run          print the SageMaker HPO request
# STORAGE reaches localsage through $LOCALSAGE_TUNE_STORAGE, so make never echoes a password.
TRIALS ?=
PARALLEL ?=
STUDY ?= tune
TUNE_CONFIG ?=
STORAGE ?=
RESUME ?=
TUNE_ARGS ?=
DASHBOARD_PORT ?= 8081

.PHONY: tune tune-dashboard bench-tune

tune tune-dashboard: export LOCALSAGE_TUNE_STORAGE := $(or $(STORAGE),$(LOCALSAGE_TUNE_STORAGE))

# the demo set is generated when DATA is the default data/demo; any other DATA must exist
tune: install $(if $(RESUME),,$(if $(filter data/demo,$(DATA)),$(DATA)/train)) ## tune on DATA: TRIALS= PARALLEL= STUDY=tune TUNE_CONFIG=tune.yaml STORAGE=url RESUME=1 TUNE_ARGS=
	$(BIN)/localsage tune $(if $(RESUME),--resume,--data $(DATA)) --study $(STUDY) --jobs-dir $(JOBS) --backend $(BACKEND) \
		$(if $(TRIALS),--trials $(TRIALS)) $(if $(PARALLEL),--parallel $(PARALLEL)) $(if $(TUNE_CONFIG),--config $(TUNE_CONFIG)) \
		$(if $(IMAGE),--image $(IMAGE)) $(TUNE_ARGS)

tune-dashboard: install ## optuna-dashboard on STUDY's storage (STORAGE url or the study's journal file)
	$(BIN)/optuna-dashboard "$${LOCALSAGE_TUNE_STORAGE:-$(JOBS)/tune-$(STUDY)/journal.log}" --host 127.0.0.1 --port $(DASHBOARD_PORT)

bench-tune: install ## tuning benchmark: epochs and best accuracy with pruning vs without
	$(BIN)/python bench/tune.py
