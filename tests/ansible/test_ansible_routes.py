"""The orchestrator role's routing-table template, rendered by real Ansible from an
inventory alone, and read back by the orchestrator's own parser."""

from __future__ import annotations

import json
from pathlib import Path

from onnxfleet.orchestrator.routes import load_table
from tests.ansible.ansible_support import explain, run
from tests.support import ROOT

INVENTORY = """
workers:
  hosts:
    fleet-worker-2: {fleet_node: worker-2, fleet_private_address: 10.0.1.12,
                     model_worker_containers: 3, model_worker_base_port: 6000}
    fleet-worker-1: {fleet_node: worker-1, fleet_private_address: 10.0.1.11}
gpu:
  hosts:
    fleet-gpu-1: {fleet_node: gpu-1, fleet_private_address: 10.0.2.5, model_worker_max_concurrency: 4}
orchestrators:
  hosts:
    fleet-orchestrator: {fleet_node: orchestrator, fleet_private_address: 10.0.0.5}
"""

PLAYBOOK = """
- hosts: orchestrators
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
  tasks:
    - name: Render with the template's own defaults (group workers, 2 containers from 5000)
      ansible.builtin.template:
        src: {template}
        dest: {out}/defaults.json
        mode: "0644"
    - name: Render for another group, with health settings and a queue bound
      ansible.builtin.template:
        src: {template}
        dest: {out}/gpu.json
        mode: "0644"
      vars:
        orchestrator_worker_group: gpu
        orchestrator_queue_max_length: 5
        orchestrator_queue_timeout_s: 2.5
        orchestrator_health: {{interval_s: 2, fall: 3}}
"""


def test_routing_table_comes_from_the_inventory(tmp_path: Path) -> None:
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    (tmp_path / "render.yml").write_text(
        PLAYBOOK.format(template=ROOT / "roles/orchestrator/templates/routes.json.j2", out=tmp_path)
    )
    proc = run(["ansible-playbook", "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "render.yml")])
    assert proc.returncode == 0, explain(proc)

    table = json.loads((tmp_path / "defaults.json").read_text())
    assert table == {
        "containers": [
            {"name": "worker-1/0", "url": "http://10.0.1.11:5000", "node": "worker-1", "max_concurrency": 1},
            {"name": "worker-1/1", "url": "http://10.0.1.11:5001", "node": "worker-1", "max_concurrency": 1},
            {"name": "worker-2/0", "url": "http://10.0.1.12:6000", "node": "worker-2", "max_concurrency": 1},
            {"name": "worker-2/1", "url": "http://10.0.1.12:6001", "node": "worker-2", "max_concurrency": 1},
            {"name": "worker-2/2", "url": "http://10.0.1.12:6002", "node": "worker-2", "max_concurrency": 1},
        ],
        "queue": {"max_length": 1000, "timeout_s": 30},
    }
    gpu = json.loads((tmp_path / "gpu.json").read_text())
    assert gpu == {
        "containers": [
            {"name": "gpu-1/0", "url": "http://10.0.2.5:5000", "node": "gpu-1", "max_concurrency": 4},
            {"name": "gpu-1/1", "url": "http://10.0.2.5:5001", "node": "gpu-1", "max_concurrency": 4},
        ],
        "queue": {"max_length": 5, "timeout_s": 2.5},
        "health": {"interval_s": 2, "fall": 3},
    }

    # The orchestrator itself accepts both (it rejects unknown fields and bad URLs).
    assert [c.port for c in load_table(tmp_path / "defaults.json").containers] == [
        5000,
        5001,
        6000,
        6001,
        6002,
    ]
    parsed = load_table(tmp_path / "gpu.json")
    assert (parsed.queue.max_length, parsed.health.fall, parsed.health.interval_s) == (5, 3, 2.0)
