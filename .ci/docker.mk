# Container targets; included by the top-level Makefile (`include .ci/docker.mk`).
#   make wheelhouse    host-side wheels for every pinned requirement (image builds need no network)
#   make base-image    localsage-base:bookworm from debootstrap (no registry needed)
#   make image         build $(IMAGE); a no-op when nothing it is built from changed
#   make train-local   build the image if needed, then train the demo job in a container
IMAGE ?= localsage:latest
# Python 3.11 (the image's version) whose pip builds the wheelhouse
DOCKER_PYTHON ?= $(or $(wildcard .venv/bin/python),python3)
LOCAL_BASE_IMAGE ?= localsage-base:bookworm
# Base for the image: the locally built one when it exists (no registry here), else the Dockerfile default.
BASE_IMAGE ?= $(shell docker image inspect $(LOCAL_BASE_IMAGE) >/dev/null 2>&1 && echo $(LOCAL_BASE_IMAGE))
# one image build at a time on this machine (a cold build writes a 6 GB layer)
DOCKER_BUILD = flock /tmp/localsage-docker-build.lock env DOCKER_PYTHON=$(DOCKER_PYTHON) .ci/build-image.sh

WHEELHOUSE_STAMP = wheelhouse/.stamp
IMAGE_STAMP = build/image-$(subst :,_,$(subst /,_,$(IMAGE))).stamp
IMAGE_INPUTS = Dockerfile .dockerignore .ci/build-image.sh requirements.txt pyproject.toml $(wildcard README.md) \
	$(shell find src serve -type f -not -name '*.pyc' -not -path '*/__pycache__/*' 2>/dev/null)

# The stamp holds the image id; forget it when the image is gone or was rebuilt elsewhere.
ifneq ($(wildcard $(IMAGE_STAMP)),)
ifneq ($(shell docker image inspect -f '{{.Id}}' $(IMAGE) 2>/dev/null),$(shell cat $(IMAGE_STAMP)))
$(shell rm -f $(IMAGE_STAMP))
endif
endif

.PHONY: wheelhouse base-image image docker-engine

wheelhouse: $(WHEELHOUSE_STAMP) ## wheels for requirements.txt in wheelhouse/ (image builds need no network)
$(WHEELHOUSE_STAMP): requirements.txt
	@$(DOCKER_PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "wheelhouse: need Python 3.11 (the image has 3.11), got " + sys.version)'
	mkdir -p wheelhouse
	$(DOCKER_PYTHON) -m pip wheel -q -r requirements.txt "setuptools>=61" wheel -w wheelhouse
	touch $@

docker-engine: ## install and start a docker engine if none runs (root)
	.ci/docker-engine.sh

base-image: ## build localsage-base:bookworm with debootstrap (no registry needed)
	BASE_IMAGE=$(LOCAL_BASE_IMAGE) .ci/base-image.sh

image: $(IMAGE_STAMP) ## build IMAGE (default localsage:latest); no-op when nothing changed
$(IMAGE_STAMP): $(IMAGE_INPUTS) $(WHEELHOUSE_STAMP)
	mkdir -p build serve
	$(DOCKER_BUILD) $(IMAGE) $(BASE_IMAGE)
	docker image inspect -f '{{.Id}}' $(IMAGE) > $@

# `make train-local BACKEND=docker|sagemaker-local` builds the image first (needs BACKEND set before
# this file is included). The docker backend requests GPUs itself when the host has them.
ifneq ($(filter docker sagemaker-local,$(BACKEND)),)
train-local: image
endif
