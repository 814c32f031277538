#!/usr/bin/env bash
# Make sure a Docker engine answers. Where none runs (CI, a fresh machine without
# systemd), start Debian's dockerd in the background; its log goes to .cache/dockerd.log.
set -euo pipefail
cd "$(dirname "$0")/.."
docker info >/dev/null 2>&1 && exit 0

if ! command -v dockerd >/dev/null 2>&1; then
    echo "start-dockerd: dockerd not found; install Debian's docker.io (make setup does)" >&2
    exit 1
fi
mkdir -p .cache
echo "[setup] starting dockerd (log: .cache/dockerd.log)"
if [ "$(id -u)" = 0 ]; then
    setsid nohup dockerd >.cache/dockerd.log 2>&1 </dev/null &
else
    sudo -b sh -c "setsid nohup dockerd >'$PWD/.cache/dockerd.log' 2>&1 </dev/null"
fi
for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && exit 0
    sleep 0.5
done
echo "start-dockerd: dockerd did not answer within 30 s; see .cache/dockerd.log" >&2
tail -20 .cache/dockerd.log >&2
exit 1
