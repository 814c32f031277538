#!/usr/bin/env bash
# A Debian package cache for the local fleet's nodes: apt-cacher-ng on this machine, so
# that the nodes (and every molecule scenario) download each package from the mirror
# once, not once per node. It listens only on the Docker bridge's address (host-gateway),
# which the node containers reach as host.docker.internal and nothing outside this
# machine does; the node image asks for it before each download and goes to the mirror
# directly when it does not answer (roles/local_fleet/files/node). Never used on EC2.
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# The address Docker calls host-gateway (the nodes' host.docker.internal): the default
# bridge's own address on this machine.
bridge=$(docker network inspect bridge -f '{{ index .Options "com.docker.network.bridge.name" }}')
gateway=$(ip -4 -o addr show dev "${bridge:-docker0}" | awk '{ sub("/.*", "", $4); print $4; exit }')
[ -n "$gateway" ] || { echo "[setup] no address on ${bridge:-docker0}: no package cache for the nodes" >&2; exit 0; }
conf=/etc/apt-cacher-ng/zz-onnxfleet.conf
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Only the Docker bridge reaches the cache; Debian's archive and its security updates are
# fetched from deb.debian.org (the package's defaults, ftp.debian.org and
# security.debian.org first, may not be reachable from this machine).
want="# written by onnxfleet's scripts/apt-cache.sh
BindAddress: $gateway
Port: 3142
Remap-debrep: file:deb_mirror*.gz /debian ; $mirror/
Remap-secdeb: security.debian.org security.debian.org/debian-security deb.debian.org/debian-security /debian-security ; ${mirror%/debian}/debian-security/"

# Written before the package is installed, so that its first start already listens there.
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
    as_root mkdir -p /etc/apt-cacher-ng
    printf '%s\n' "$want" | as_root tee "$conf" >/dev/null
    restart=1
fi
if ! dpkg -s apt-cacher-ng >/dev/null 2>&1; then
    echo "[setup] installing apt-cacher-ng (the local nodes' package cache)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        apt-cacher-ng >.cache/apt-cacher-ng.log 2>&1 || { tail -20 .cache/apt-cacher-ng.log; exit 1; }
fi

answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$gateway/3142" 2>/dev/null; }
if [ "${restart:-0}" = 1 ] || ! answers; then
    as_root service apt-cacher-ng restart >/dev/null 2>&1 || true
fi
for _ in $(seq 20); do answers && exit 0; sleep 0.5; done
echo "[setup] apt-cacher-ng does not answer on $gateway:3142 (the nodes will use the mirror directly)" >&2
