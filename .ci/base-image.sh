#!/usr/bin/env bash
# Build the local base image (default localsage-base:bookworm) without any container registry:
# debootstrap a minimal Debian bookworm, add python3 (3.11, matches the cp311 wheels), python3-venv,
# a headless JRE (TorchServe needs java) and CA certificates, then `docker import` the tree.
# Idempotent: does nothing when the image already exists. Needs root and a running engine.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-localsage-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,openjdk-17-jre-headless,ca-certificates

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "base-image: $BASE_IMAGE exists" >&2
    exit 0
fi

rootfs=$(mktemp -d /var/tmp/localsage-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "base-image: debootstrap $SUITE from $MIRROR into $rootfs" >&2
start=$(date +%s)
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"
# keep the image small: no apt lists/caches, docs or man pages
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/var/cache/apt/*.bin
tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    - "$BASE_IMAGE" >/dev/null
echo "base-image: built $BASE_IMAGE in $(( $(date +%s) - start ))s" >&2
