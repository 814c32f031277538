#!/usr/bin/env bash
# The base image every onnxfleet image builds FROM.
# Users with a registry get the official python:3.11-slim-bookworm. Where no registry
# answers, build an equivalent (Debian 12, python3 3.11, venv, CA certificates) from
# Debian's packages with debootstrap and tag it onnxfleet/base:bookworm. It is rebuilt
# only when this script changes (its hash is a label on the image).
set -euo pipefail
cd "$(dirname "$0")/.."
OFFICIAL=${ONNXFLEET_BASE_IMAGE:-python:3.11-slim-bookworm}
FALLBACK=onnxfleet/base:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$OFFICIAL" >/dev/null 2>&1; then exit 0; fi
if timeout 60 docker pull -q "$OFFICIAL" >/dev/null 2>&1; then
    echo "[setup] pulled $OFFICIAL"
    exit 0
fi

want=$(sha256sum "$0" | cut -c1-16)
have=$(docker image inspect -f '{{ index .Config.Labels "onnxfleet.build" }}' "$FALLBACK" 2>/dev/null || true)
[ "$have" = "$want" ] && exit 0

echo "[setup] no registry answers for $OFFICIAL: building $FALLBACK with debootstrap (~1 min)"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
rootfs=$(mktemp -d)
trap 'as_root rm -rf "$rootfs"' EXIT
as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >.cache/debootstrap.log 2>&1 ||
    { tail -20 .cache/debootstrap.log >&2; exit 1; }
as_root rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
# Same apt behaviour as Debian's official images: no docs, no recommends.
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' |
    as_root tee "$rootfs"/etc/apt/apt.conf.d/90onnxfleet >/dev/null
as_root tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL onnxfleet.build=$want" \
    --change 'CMD ["python3"]' \
    - "$FALLBACK" >/dev/null
echo "[setup] built $FALLBACK ($(docker image inspect -f '{{.Size}}' "$FALLBACK" | numfmt --to=iec))"
