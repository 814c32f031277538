#!/usr/bin/env bash
# make demo: from a fresh machine to a serving local fleet, then a real prediction.
#   1. make setup without the test-only parts (scripts/setup.sh --demo: no browser, no
#      haproxy or wrk on the controller, no Prometheus unpacked; quick when done)
#   2. ansible-playbook site.yml: 4 worker nodes x 2 model containers + the orchestrator
#      behind the edge (HAProxy, HTTPS + tokens),
#      as Docker-in-Docker containers on this machine (a re-run changes nothing)
#   3. the edge's HTTPS URL and a prediction you can repeat with curl (the fleet's CA,
#      its client token)
# Extra arguments go to ansible-playbook (e.g. scripts/demo.sh -e fleet_worker_count=2).
# Remove the fleet: ansible-playbook playbooks/teardown.yml
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --demo
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"

printf '\033[1m[demo]\033[0m ansible-playbook site.yml %s\n' "$*"
start=$(date +%s)
ansible-playbook site.yml "$@"
took=$(($(date +%s) - start))

# Where the edge's HTTPS port is published (fleet_published_port, default 8443), the
# fleet's CA and its client token (made once on the controller, under fleet_state_dir).
fleet="${ONNXFLEET_FLEET:-onnxfleet}"
node="$fleet-orchestrator"
published=$(docker port "$node" | head -1 | sed 's/.*-> //')
[ -n "$published" ] || { echo "demo: $node publishes no port (fleet_published_port empty?)" >&2; exit 1; }
url="https://$published"
state="${XDG_STATE_HOME:-$HOME/.local/state}/onnxfleet/$fleet"
ca="$state/tls/ca.pem"
token="$state/tokens/default"
body=$(.venv/bin/python -c '
import json, sys
card = json.load(open("app/models/digits.json"))
print(json.dumps({"inputs": card["example"]["inputs"]}, separators=(",", ":")))')
label=$(.venv/bin/python -c 'import json; print(json.load(open("app/models/digits.json"))["example"]["label"])')
auth="Authorization: Bearer \$(cat $token)"

printf '\n\033[1m[demo]\033[0m the fleet answers at %s (HTTPS, deployed in %ss)\n' "$url" "$took"
cat <<EOF
  status:      curl -s --cacert $ca -H "$auth" $url/status
  prediction:  curl -s --cacert $ca -H "$auth" -H 'Content-Type: application/json' -d '$body' $url/run_model
  load:        .venv/bin/onnxfleet load --url $url --cacert $ca --token-file $token -n 100 -c 5

An 8x8 image of a handwritten $label (grey levels 0..16, row by row) gives:
EOF
curl -sS --fail-with-body --cacert "$ca" -H "Authorization: Bearer $(cat "$token")" \
  -H 'Content-Type: application/json' -d "$body" -D - "$url/run_model" \
  | grep -iE '^(HTTP/|x-container|x-model-version|x-queue-wait-ms|\{)'
echo
