# One image for SageMaker-style training (`docker run IMAGE train`) and hosting (`docker run IMAGE serve`).
#
#   make wheelhouse image     # pip installs from the host-made wheelhouse, served on loopback during the
#                             # build (.ci/build-image.sh): no network beyond this machine, no wheel layer
#   docker build -t localsage:latest .    # elsewhere, with an index: the same pins from PyPI
#
# BASE_IMAGE must provide python3.11 with the venv module (Debian bookworm userland). For GPUs on
# real SageMaker/EC2 any such image works (the torch wheels bundle CUDA); see README.
# Written for the classic builder (no BuildKit features).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE}
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      org.opencontainers.image.title=localsage
ENV PYTHONUNBUFFERED=1 \
    LOCALSAGE_SERVE_DIR=/opt/program/serve \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SAGEMAKER_SUPPRESS_V2_WARNING=1 \
    LANG=C.UTF-8 \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# TorchServe needs a JRE; the local base image already has one, a plain python image gets Debian's.
RUN command -v java >/dev/null \
 || (apt-get update \
     && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
     && rm -rf /var/lib/apt/lists/*)

# Dependencies first: code changes below do not reinstall them. WHEELS_URL (set by make image): a
# find-links page of wheels, and no index; unset: pip's configured index.
ARG WHEELS_URL=
COPY requirements.txt /tmp/build/requirements.txt
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install ${WHEELS_URL:+--no-index --find-links "$WHEELS_URL"} \
        -r /tmp/build/requirements.txt "setuptools>=61" wheel \
 && /opt/venv/bin/pip check \
 && rm -rf /tmp/build

# The project itself (only src/, serve/ and the packaging files; see .dockerignore).
WORKDIR /opt/program
# README.md is optional here (the wildcard copies it when present)
COPY pyproject.toml README.m[d] /opt/program/
COPY src/ /opt/program/src/
COPY serve/ /opt/program/serve/
RUN pip install --no-deps --no-build-isolation /opt/program \
 && rm -rf /opt/program/build /opt/program/src/*.egg-info \
 && if [ -f /opt/program/serve/serve ]; then \
        chmod +x /opt/program/serve/serve && ln -s /opt/program/serve/serve /usr/local/bin/serve; \
    else \
        printf '#!/bin/sh\necho "serve: not implemented in this image yet (serve/serve is missing)" >&2\nexit 1\n' \
            >/usr/local/bin/serve && chmod +x /usr/local/bin/serve; \
    fi \
 && command -v train && command -v serve

# smdebug's hook config for programs nobody gave one (SDK v3 runs the entry script itself, never
# `train`): /etc/localsage/debughookconfig.json, generated from contract.py, and a .pth in the venv
# that points SMDEBUG_CONFIG_FILE_PATH at it only when the job has no config of its own (outside
# /opt/ml/input, which both SDKs bind-mount). See src/localsage/container/smdebug_default.py.
RUN python3 -m localsage.container.smdebug_default

# SageMaker runs `docker run IMAGE train` or `docker run IMAGE serve`: no ENTRYPOINT, so the argument
# is the program and runs as PID 1 (exec form, no shell in between: SIGTERM reaches Python).
EXPOSE 8080
CMD ["train"]
