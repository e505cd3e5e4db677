#!/usr/bin/env bash
# Build the project image from the host-made wheelhouse without putting the wheelhouse into the build:
# wheelhouse/ is served on 127.0.0.1 (.ci/wheel-server.py) while `docker build --network host` runs,
# so pip installs the dependencies straight into the image's one dependency layer. No 3 GB build
# context to send, no 3 GB wheel layer and no second copy of the 6 GB venv out of a build stage; the
# build reaches nothing but this machine's loopback (pip runs with --no-index).
#   .ci/build-image.sh IMAGE [BASE_IMAGE]
set -euo pipefail
image=$1
base=${2:-}
python=${DOCKER_PYTHON:-python3}

urlfile=$(mktemp)
"$python" .ci/wheel-server.py wheelhouse >"$urlfile" &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$urlfile"' EXIT
url=
for _ in $(seq 100); do
    url=$(head -n 1 "$urlfile")
    [ -n "$url" ] && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
done
[ -n "$url" ] || { echo "build-image: the wheel server did not start" >&2; exit 1; }
echo "build-image: wheelhouse served at $url for the build" >&2
DOCKER_BUILDKIT=0 docker build --network host --build-arg WHEELS_URL="$url" \
    ${base:+--build-arg BASE_IMAGE="$base"} -t "$image" .
