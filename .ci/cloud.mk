# Cloud targets, included by the Makefile (`include .ci/cloud.mk`). See README.md, "Run in the cloud".
# make push [IMAGE=localsage:latest] [ECR_REPO=localsage] [AWS_REGION=eu-west-1] [PUSH_TAG=<git sha>]
# make test-cloud                  the cloud tests, offline (moto and botocore stubs; nothing reaches AWS)
IMAGE ?= localsage:latest
ECR_REPO ?= localsage
AWS_REGION ?=
PUSH_TAG ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)

.PHONY: push test-cloud
push: install image ## build IMAGE, create the ECR repo if absent, log in, push as ECR_REPO:<git sha> and :latest
	$(BIN)/localsage push --image $(IMAGE) --repository $(ECR_REPO) --tag $(PUSH_TAG) --tag latest \
		$(if $(AWS_REGION),--region $(AWS_REGION))

test-cloud: install ## the cloud tests (ECR, S3, training jobs, script mode, endpoints) against mocked AWS
	$(BIN)/python -m pytest -q tests/test_cloud.py $(PYTEST_ARGS)
