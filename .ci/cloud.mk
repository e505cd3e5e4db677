# Cloud targets, included by the Makefile (`include .ci/cloud.mk`). See README.md, "Run in the cloud".
# make push [IMAGE=localsage:latest] [ECR_REPO=localsage] [AWS_REGION=eu-west-1] [PUSH_TAG=<git sha>]
IMAGE ?= localsage:latest
ECR_REPO ?= localsage
AWS_REGION ?=
PUSH_TAG ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)

.PHONY: push
push: install image ## build IMAGE, create the ECR repo if absent, log in, push as ECR_REPO:<git sha> and :latest
	$(BIN)/localsage push --image $(IMAGE) --repository $(ECR_REPO) --tag $(PUSH_TAG) --tag latest \
		$(if $(AWS_REGION),--region $(AWS_REGION))
