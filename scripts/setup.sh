#!/usr/bin/env bash
# make setup: everything the controller needs, idempotent and quick when already done.
#   1. system packages (docker.io, debootstrap, haproxy, chromium, wrk) where missing
#   2. a running Docker engine (starts Debian's dockerd where none answers), and the
#      local nodes' package cache (apt-cacher-ng on the Docker bridge)
#   3. the controller venv .venv/ (Python >= 3.12) with pinned dependencies
#   4. the collection link so `onnxfleet.serving.*` resolves from this checkout
#   5. the base image (official python slim, or one built from Debian packages offline)
#   6. the wheelhouse the images install from (no network during docker build)
#   7. Debian's Prometheus and promtool, unpacked in .cache/prometheus for the tests
# `scripts/setup.sh --demo` (make demo) leaves out what only the tests and benchmarks use:
# haproxy, chromium and wrk on the controller, and step 7.
set -euo pipefail
demo=false
[ "${1:-}" = --demo ] && demo=true
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/.cache
mkdir -p "$CACHE"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- 1. system packages -------------------------------------------------------------
need_pkgs=()
pkgs=(docker.io debootstrap)
$demo || pkgs+=(haproxy chromium wrk)
for pkg in "${pkgs[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing Debian packages: ${need_pkgs[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need_pkgs[@]}" >"$CACHE/apt.log" 2>&1 || { tail -20 "$CACHE/apt.log"; exit 1; }
fi

# --- 2. Docker engine, package cache ------------------------------------------------
scripts/start-dockerd.sh
scripts/apt-cache.sh

# --- 3. controller venv -------------------------------------------------------------
find_python() {
    local candidates=(python3.13 python3.12 python3)
    local root
    if command -v pyenv >/dev/null 2>&1 && root=$(pyenv root 2>/dev/null); then
        for v in "$root"/versions/3.13* "$root"/versions/3.12*; do
            [ -x "$v/bin/python" ] && candidates+=("$v/bin/python")
        done
    fi
    for py in "${candidates[@]}"; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

lock=requirements/controller.txt
want=$(cat "$lock" app/pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
    py=$(find_python) || {
        echo "setup: the controller needs Python >= 3.12 (ansible-core 2.21 requires it)." >&2
        echo "       install python3.12 (or pyenv install 3.12) and re-run make setup." >&2
        exit 1
    }
    log "creating .venv with $py"
    rm -rf .venv
    "$py" -m venv .venv
fi
if [ "$(cat .venv/.installed 2>/dev/null)" != "$want" ]; then
    log "installing pinned controller dependencies ($lock)"
    .venv/bin/python -m pip install -q --disable-pip-version-check -U pip >/dev/null
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$lock" 2>&1 |
        grep -v "^WARNING: Location" || true
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e app 2>&1 |
        grep -v "^WARNING: Location" || true
    .venv/bin/python -m pip check
    echo "$want" >.venv/.installed
fi

# --- 4. collection link -------------------------------------------------------------
# ansible.cfg puts .collections first on collections_path; the bundled amazon.aws and
# community.docker come from the ansible package itself.
link=.collections/ansible_collections/onnxfleet/serving
if [ "$(readlink "$link" 2>/dev/null)" != "$ROOT" ]; then
    mkdir -p "$(dirname "$link")"
    ln -sfn "$ROOT" "$link"
fi

# --- 5. base image ------------------------------------------------------------------
scripts/base-image.sh

# --- 6. wheelhouse ------------------------------------------------------------------
scripts/wheelhouse.sh

# --- 7. Prometheus for the tests -----------------------------------------------------
# The tests run Debian's prometheus and promtool (what roles/prometheus installs on the
# orchestrator node) against processes on loopback. Unpacked, not installed: the package
# would start a server on this machine's every address.
prom=.cache/prometheus
if ! $demo && [ ! -x "$prom/usr/bin/promtool" ]; then
    log "unpacking Debian's prometheus package into $prom"
    deb=$(ls /var/cache/apt/archives/prometheus_*.deb 2>/dev/null | tail -1 || true)
    if [ -z "$deb" ]; then
        # (no package lists yet on a fresh machine: fetch them once, then try again)
        (cd .cache && apt-get download prometheus >apt-prometheus.log 2>&1) ||
            { as_root apt-get update -qq && (cd .cache && apt-get download prometheus >apt-prometheus.log 2>&1); } || {
            tail -5 .cache/apt-prometheus.log
            exit 1
        }
        deb=$(ls .cache/prometheus_*.deb | tail -1)
    fi
    rm -rf "$prom" && dpkg-deb -x "$deb" "$prom"
fi

log "ready: $(.venv/bin/python --version), $(docker version --format 'Docker Engine {{.Server.Version}}')"
