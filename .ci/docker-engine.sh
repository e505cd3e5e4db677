#!/usr/bin/env bash
# Make a docker engine available on this machine (idempotent).
#  - installs Debian's docker.io, docker-compose and debootstrap if any is missing
#  - starts dockerd in the background (log: $DOCKERD_LOG) unless an engine already answers
#  - waits until `docker info` works
# Needs root for the install/start steps; does nothing when an engine is already up.
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
WAIT_S=${DOCKER_WAIT_S:-60}

if docker info >/dev/null 2>&1 && command -v docker-compose >/dev/null && command -v debootstrap >/dev/null; then
    exit 0
fi

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    echo "docker-engine: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # other engineers may be using apt at the same time: wait for the lock instead of failing
    apt_opts=(-o DPkg::Lock::Timeout=600 -qq)
    apt-get "${apt_opts[@]}" update
    apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    if ! pgrep -x dockerd >/dev/null; then
        echo "docker-engine: starting dockerd (log: $DOCKERD_LOG)" >&2
        nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    for _ in $(seq "$WAIT_S"); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        echo "docker-engine: dockerd did not come up within ${WAIT_S}s; last log lines:" >&2
        tail -n 20 "$DOCKERD_LOG" >&2 || true
        exit 1
    fi
fi
echo "docker-engine: $(docker version --format 'engine {{.Server.Version}}')" >&2
