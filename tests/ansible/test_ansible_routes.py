"""The routing table: built by the collection's filter from the fleet contract alone, and
read back by the orchestrator's own parser. Then the orchestrator role's one-line
template, rendered by real Ansible in a play of no role at all, from an inventory with
the collection's group_vars/all.yml: the fleet-wide values are visible in hostvars of
every host, and a node's own host variables win."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.onnxfleet.serving.plugins.filter.fleet import natural_sort, routing_table

from onnxfleet.orchestrator.routes import parse_table
from tests.ansible.ansible_support import explain, run
from tests.support import ROOT

QUEUE = {"max_length": 1000, "timeout_s": 30}
HOSTVARS: dict[str, dict[str, Any]] = {
    "fleet-worker-10": {"fleet_node": "worker-10", "fleet_private_address": "10.0.1.20"},
    "fleet-worker-2": {
        "fleet_node": "worker-2",
        "fleet_private_address": "10.0.1.12",
        "fleet_worker_containers": 3,
        "fleet_worker_base_port": "6000",
    },
    "fleet-worker-1": {
        "fleet_node": "worker-1",
        "fleet_private_address": "10.0.1.11",
        "fleet_worker_max_concurrency": 4,
    },
}


def table(hosts: list[str], **extra: Any) -> dict[str, Any]:
    shape = {"containers": 2, "base_port": 5000, "max_concurrency": 1, "queue": QUEUE}
    return routing_table(hosts, HOSTVARS, **(shape | extra))  # type: ignore[no-any-return]


def test_every_node_gives_its_containers_in_natural_order_and_its_own_values_win() -> None:
    built = table(["fleet-worker-10", "fleet-worker-2", "fleet-worker-1"])
    assert [(c["name"], c["url"], c["max_concurrency"]) for c in built["containers"]] == [
        ("worker-1/0", "http://10.0.1.11:5000", 4),
        ("worker-1/1", "http://10.0.1.11:5001", 4),
        ("worker-2/0", "http://10.0.1.12:6000", 1),
        ("worker-2/1", "http://10.0.1.12:6001", 1),
        ("worker-2/2", "http://10.0.1.12:6002", 1),
        ("worker-10/0", "http://10.0.1.20:5000", 1),
        ("worker-10/1", "http://10.0.1.20:5001", 1),
    ]
    assert {c["node"] for c in built["containers"]} == {"worker-1", "worker-2", "worker-10"}
    assert built["queue"] == QUEUE
    assert "health" not in built


def test_the_orchestrator_accepts_what_the_filter_builds() -> None:
    built = table(
        ["fleet-worker-2", "fleet-worker-1"],
        queue={"max_length": 5, "timeout_s": 2.5},
        health={"interval_s": 2, "fall": 3},
    )
    parsed = parse_table(json.loads(json.dumps(built)), "filter")
    assert [(c.name, c.host, c.port, c.max_concurrency) for c in parsed.containers] == [
        ("worker-1/0", "10.0.1.11", 5000, 4),
        ("worker-1/1", "10.0.1.11", 5001, 4),
        ("worker-2/0", "10.0.1.12", 6000, 1),
        ("worker-2/1", "10.0.1.12", 6001, 1),
        ("worker-2/2", "10.0.1.12", 6002, 1),
    ]
    assert (parsed.queue.max_length, parsed.queue.timeout_s) == (5, 2.5)
    assert (parsed.health.interval_s, parsed.health.fall) == (2.0, 3)


CARD = json.loads((ROOT / "app" / "models" / "digits.json").read_text())
BATCHING = {"enabled": True, "max_batch_size": 16, "max_delay_ms": 2}


def test_batching_on_puts_the_cards_signature_and_the_settings_in_the_table() -> None:
    built = table(["fleet-worker-1"], batching=BATCHING, card=CARD)
    assert built["model"] == {
        "name": "digits",
        "batch": True,
        "inputs": CARD["inputs"],
        "outputs": CARD["outputs"],
    }
    assert built["batching"] == {"max_batch_size": 16, "max_delay_ms": 2}
    parsed = parse_table(json.loads(json.dumps(built)), "filter")
    assert parsed.model is not None
    assert parsed.model.name == "digits"
    assert parsed.model.signature.batch
    assert parsed.batching is not None
    assert (parsed.batching.max_batch_size, parsed.batching.max_delay_s) == (16, 0.002)


def test_batching_off_leaves_model_and_batching_out() -> None:
    built = table(["fleet-worker-1"], batching=BATCHING | {"enabled": False}, card=CARD)
    assert set(built) == {"containers", "queue"}
    parsed = parse_table(built, "filter")
    assert (parsed.model, parsed.batching) == (None, None)


def test_a_card_without_batch_gives_a_model_that_does_not_batch() -> None:
    card = {key: value for key, value in CARD.items() if key != "batch"}
    built = table(["fleet-worker-1"], batching=BATCHING, card=card)
    assert built["model"]["batch"] is False
    assert parse_table(built, "filter").model.signature.batch is False  # type: ignore[union-attr]


def test_batching_without_the_cards_signature_says_what_is_missing() -> None:
    with pytest.raises(
        AnsibleFilterError, match=r"the card has no inputs, outputs .*fleet_batching\.enabled: false"
    ):
        table(["fleet-worker-1"], batching=BATCHING, card={"name": "digits"})


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"fleet_private_address": "10.0.0.1"}, "h has no fleet_node"),
        ({"fleet_node": "worker-9"}, "h has no fleet_private_address"),
        (
            {"fleet_node": "worker-9", "fleet_private_address": "10.0.0.9", "fleet_worker_containers": "0"},
            "h: fleet_worker_containers must be an integer >= 1",
        ),
        (
            {"fleet_node": "worker-9", "fleet_private_address": "10.0.0.9", "fleet_worker_base_port": "x"},
            "h: fleet_worker_base_port must be an integer >= 1",
        ),
    ],
)
def test_a_node_outside_the_contract_is_named(variables: dict[str, Any], message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        routing_table(["h"], {"h": variables}, containers=2, base_port=5000, max_concurrency=1, queue=QUEUE)


def test_natural_sort_puts_worker_2_before_worker_10() -> None:
    names = ["f-worker-10", "f-worker-2", "f-orchestrator", "f-worker-1", "f-worker-11"]
    assert natural_sort(names) == ["f-orchestrator", "f-worker-1", "f-worker-2", "f-worker-10", "f-worker-11"]


INVENTORY = """
workers:
  hosts:
    fleet-worker-10: {fleet_node: worker-10, fleet_private_address: 10.0.1.20}
    fleet-worker-2: {fleet_node: worker-2, fleet_private_address: 10.0.1.12,
                     fleet_worker_containers: 3, fleet_worker_base_port: 6000}
orchestrators:
  hosts:
    fleet-orchestrator: {fleet_node: orchestrator, fleet_private_address: 10.0.0.5}
"""

PLAYBOOK = """
- hosts: orchestrators
  connection: local
  gather_facts: false
  tasks:
    - name: Check every host sees the fleet-wide values (group_vars/all.yml), and its own
      ansible.builtin.assert:
        that:
          - hostvars['fleet-worker-10'].fleet_worker_containers == 2
          - hostvars['fleet-worker-2'].fleet_worker_containers == 3
          - fleet_worker_containers == 2
    - name: Take the orchestrator role's variables
      ansible.builtin.include_vars:
        file: "{role}/{{{{ item }}}}/main.yml"
      loop: [defaults, vars]
    - name: Render its template
      ansible.builtin.template:
        src: "{role}/templates/routes.json.j2"
        dest: "{out}/routes.json"
        mode: "0644"
"""


def test_the_role_template_renders_from_an_inventory_alone(tmp_path: Path) -> None:
    """The one-line template with the orchestrator role's variables: worker-10 gets the
    fleet-wide 2 containers, worker-2 its own 3 from port 6000; batching is on
    (the fleet-wide default) with the card of fleet_model_file."""
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    (tmp_path / "group_vars").mkdir()
    shutil.copy(ROOT / "inventory" / "group_vars" / "all.yml", tmp_path / "group_vars" / "all.yml")
    playbook = tmp_path / "render.yml"
    playbook.write_text(PLAYBOOK.format(role=ROOT / "roles" / "orchestrator", out=tmp_path))
    model = ["-e", f"fleet_model_file={ROOT / 'app' / 'models' / 'digits.onnx'}"]
    proc = run(["ansible-playbook", "-i", str(tmp_path / "inventory.yml"), *model, str(playbook)])
    assert proc.returncode == 0, explain(proc)
    rendered = json.loads((tmp_path / "routes.json").read_text())
    assert [c["url"] for c in rendered["containers"]] == [
        "http://10.0.1.12:6000",
        "http://10.0.1.12:6001",
        "http://10.0.1.12:6002",
        "http://10.0.1.20:5000",
        "http://10.0.1.20:5001",
    ]
    assert rendered["queue"] == QUEUE
    assert rendered["batching"] == {"max_batch_size": 32, "max_delay_ms": 0}
    assert rendered["model"]["name"] == CARD["name"]
    parsed = parse_table(rendered, "rendered")
    assert len(parsed.containers) == 5
    assert parsed.model is not None
    assert parsed.model.signature.batch


def render(tmp_path: Path, *extra: str) -> str:
    """The orchestrator role's template rendered by ansible-playbook from INVENTORY."""
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    (tmp_path / "group_vars").mkdir(exist_ok=True)
    shutil.copy(ROOT / "inventory" / "group_vars" / "all.yml", tmp_path / "group_vars" / "all.yml")
    playbook = tmp_path / "render.yml"
    playbook.write_text(PLAYBOOK.format(role=ROOT / "roles" / "orchestrator", out=tmp_path))
    model = ["-e", f"fleet_model_file={ROOT / 'app' / 'models' / 'digits.onnx'}"]
    proc = run(["ansible-playbook", "-i", str(tmp_path / "inventory.yml"), *model, *extra, str(playbook)])
    assert proc.returncode == 0, explain(proc)
    return (tmp_path / "routes.json").read_text()


def test_one_model_renders_todays_table_byte_for_byte(tmp_path: Path) -> None:
    """The default fleet_models (one model) leaves routes.json exactly as the single-model
    filter writes it: the version-1 table, unchanged for the orchestrators that read it."""
    hostvars = {
        "fleet-worker-10": {"fleet_node": "worker-10", "fleet_private_address": "10.0.1.20"},
        "fleet-worker-2": {
            "fleet_node": "worker-2",
            "fleet_private_address": "10.0.1.12",
            "fleet_worker_containers": 3,
            "fleet_worker_base_port": 6000,
        },
    }
    expected = routing_table(
        ["fleet-worker-10", "fleet-worker-2"],
        hostvars,
        containers=2,
        base_port=5000,
        max_concurrency=1,
        queue=QUEUE,
        batching={"enabled": True, "max_batch_size": 32, "max_delay_ms": 0},
        card=CARD,
    )
    assert render(tmp_path) == json.dumps(expected, indent=2, sort_keys=True) + "\n"


def test_two_models_render_the_version_2_table(tmp_path: Path) -> None:
    (tmp_path / "iris.onnx").write_bytes(b"iris")
    digits = ROOT / "app" / "models" / "digits.onnx"
    models = {
        "fleet_model_file": "",
        "fleet_models": [
            {"name": "digits", "path": str(digits)},
            {"name": "iris", "path": str(tmp_path / "iris.onnx"), "version": "2", "containers": 1},
        ],
    }
    (tmp_path / "models.json").write_text(json.dumps(models))
    rendered = json.loads(render(tmp_path, "-e", f"@{tmp_path / 'models.json'}"))
    assert set(rendered) == {"queue", "models"}
    digits_entry, iris = rendered["models"]
    assert [c["name"] for c in digits_entry["containers"]] == [
        "worker-2/0",
        "worker-2/1",
        "worker-2/2",
        "worker-10/0",
        "worker-10/1",
    ]
    assert digits_entry["default"] is True
    assert digits_entry["signature"]["inputs"] == CARD["inputs"]
    assert digits_entry["batching"] == {"max_batch_size": 32, "max_delay_ms": 0}
    # iris takes the ports after digits' on each node; no card: no signature, no batching
    assert [(c["name"], c["url"]) for c in iris["containers"]] == [
        ("worker-2/iris/0", "http://10.0.1.12:6003"),
        ("worker-10/iris/0", "http://10.0.1.20:5002"),
    ]
    assert set(iris) == {"name", "containers"}
