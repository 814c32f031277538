#!/usr/bin/env bash
# Wheels for the images' Python (CPython 3.11, manylinux, this machine's architecture),
# downloaded on the controller so `docker build` needs no network (pip inside a
# container cannot reach PyPI here). Refreshed only when app/requirements.lock changes.
set -euo pipefail
cd "$(dirname "$0")/.."
lock=app/requirements.lock
dest=app/.wheelhouse
want=$(sha256sum "$lock" | cut -c1-16)
[ "$(cat "$dest/.lock" 2>/dev/null)" = "$want" ] && exit 0

arch=$(uname -m)
echo "[setup] downloading the image wheelhouse for cp311/$arch"
rm -rf "$dest" && mkdir -p "$dest"
platforms=()
for tag in manylinux2014 manylinux_2_17 manylinux_2_27 manylinux_2_28 manylinux1 manylinux_2_5; do
    platforms+=(--platform "${tag}_${arch}")
done
.venv/bin/python -m pip download -q --disable-pip-version-check -d "$dest" \
    --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    "${platforms[@]}" -r "$lock" 2>&1 | grep -v "^WARNING: Location" || true
# every pinned requirement must have arrived
missing=0
while read -r req; do
    norm=$(echo "${req%%==*}-${req#*==}-" | tr 'A-Z.-' 'a-z__')
    ls "$dest" | tr 'A-Z.-' 'a-z__' | grep -q "^${norm}" || { echo "wheelhouse: missing $req" >&2; missing=1; }
done < <(grep -E '^[A-Za-z0-9_.-]+==' "$lock")
[ $missing = 0 ] || exit 1
echo "$want" >"$dest/.lock"
