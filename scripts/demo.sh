#!/usr/bin/env bash
# make demo: from a fresh machine to a serving local fleet, then a real prediction.
#   1. make setup (venv, Docker engine, base image, wheelhouse; quick when done)
#   2. ansible-playbook site.yml: 4 worker nodes x 2 model containers + the orchestrator,
#      as Docker-in-Docker containers on this machine (a re-run changes nothing)
#   3. the orchestrator's URL and a prediction you can repeat with curl
# Extra arguments go to ansible-playbook (e.g. scripts/demo.sh -e fleet_worker_count=2).
# Remove the fleet: ansible-playbook playbooks/teardown.yml
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"

printf '\033[1m[demo]\033[0m ansible-playbook site.yml %s\n' "$*"
start=$(date +%s)
ansible-playbook site.yml "$@"
took=$(($(date +%s) - start))

# Where the orchestrator node's port is published (fleet_published_port, default 8080).
node="${ONNXFLEET_FLEET:-onnxfleet}-orchestrator"
published=$(docker port "$node" | head -1 | sed 's/.*-> //')
[ -n "$published" ] || { echo "demo: $node publishes no port (fleet_published_port empty?)" >&2; exit 1; }
url="http://$published"
body=$(.venv/bin/python -c '
import json, sys
card = json.load(open("app/models/digits.json"))
print(json.dumps({"inputs": card["example"]["inputs"]}, separators=(",", ":")))')
label=$(.venv/bin/python -c 'import json; print(json.load(open("app/models/digits.json"))["example"]["label"])')

printf '\n\033[1m[demo]\033[0m the fleet answers at %s (deployed in %ss)\n' "$url" "$took"
cat <<EOF
  status:      curl -s $url/status
  dashboard:   $url/
  prediction:  curl -s -H 'Content-Type: application/json' -d '$body' $url/run_model

An 8x8 image of a handwritten $label (grey levels 0..16, row by row) gives:
EOF
.venv/bin/python - "$url/run_model" "$body" <<'PY'
import sys, urllib.request
request = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(),
                                 headers={"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=30) as response:
    print(response.status, response.reason)
    for name in ("X-Container", "X-Model-Version", "X-Queue-Wait-Ms"):
        print(f"{name}: {response.headers.get(name)}")
    print(response.read().decode())
PY
