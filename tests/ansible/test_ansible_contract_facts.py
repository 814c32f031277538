"""The orchestrator role sets the contract's fleet_orchestrator_colour from the node's local
fact (the colour that serves). An extra var outranks set_fact, so a user's
`-e fleet_orchestrator_colour=...` used to stay in force for the whole run: the edge was
pointed at a colour that does not serve, and in a hand-over at the one being stopped. The
role refuses such a run before it changes anything.

The real role runs in check mode against this machine (connection local), with its state
file under tmp_path and a Docker socket that does not exist: nothing on the machine is
touched, and the role reads the colour exactly as on a node."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ansible.ansible_support import ansible_env, explain, run
from tests.support import ROOT

PLAY = [{"name": "The orchestrator role alone", "hosts": "orchestrators", "gather_facts": False,
         "roles": [{"role": "onnxfleet.serving.orchestrator"}]}]  # fmt: skip
LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


def node(name: str, address: str) -> dict[str, str]:
    return {**LOCAL, "fleet_node": name, "fleet_private_address": address, "fleet_architecture": "amd64"}


HANDOVER = [{"name": "The orchestrator's hand-over alone", "hosts": "orchestrators", "gather_facts": False,
             "tasks": [{"name": "Hand over", "ansible.builtin.include_role": {
                 "name": "onnxfleet.serving.orchestrator", "tasks_from": "handover"}}]}]  # fmt: skip


def orchestrator_run(tmp_path: Path, serving: str, *extra: str, play: Any = PLAY) -> tuple[int, str]:
    """The orchestrator role (in check mode) on a node whose local fact says ``serving``."""
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text((ROOT / "inventory/group_vars/all.yml").read_text())
    hosts = {
        "orchestrators": {"hosts": {"orch": node("orchestrator", "127.0.0.1")}},
        "workers": {"hosts": {"w1": node("worker-1", "127.0.0.2")}},
    }
    inventory = {"all": {"children": {"onnxfleet": {"children": hosts}}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    fact = tmp_path / "onnxfleet_orchestrator.fact"
    fact.write_text(json.dumps({"colour": serving}) + "\n")
    proc = run(
        ["ansible-playbook", "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml"),
         *(["--check", "--diff"] if play is PLAY else []), "-e", f"__orchestrator_state_file={fact}", *extra],
        env=ansible_env(DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock"),
        timeout=300,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr if proc.returncode else explain(proc)


@pytest.mark.parametrize("serving", ["green"])
def test_the_run_follows_the_colour_the_node_serves(tmp_path: Path, serving: str) -> None:
    code, output = orchestrator_run(tmp_path, serving)
    assert code == 0, output
    assert "given as an extra var" not in output


@pytest.mark.parametrize(("serving", "given"), [("blue", "green"), ("green", "blue")])
def test_an_extra_var_colour_is_refused_before_anything_changes(
    tmp_path: Path, serving: str, given: str
) -> None:
    code, output = orchestrator_run(tmp_path, serving, "-e", f"fleet_orchestrator_colour={given}")
    assert code != 0, output
    assert f"fleet_orchestrator_colour is given as an extra var ({given})" in output, output
    assert f"serving - {serving}" in output, output
    # refused before the routing table, the containers or the colour's record
    assert "Template the routing table" not in output, output
    assert f'"colour": "{given}"' not in output, output


def test_a_hand_over_refuses_an_extra_var_colour_before_starting_the_other_colour(tmp_path: Path) -> None:
    """With the serving colour given by -e, the run's colour check passes, but the
    hand-over's set_fact to the other colour would not take: the edge would stay on the
    colour it then stops. (Not check mode: a hand-over never runs in check mode; the
    Docker socket does not exist, so any container task would fail otherwise.)"""
    code, output = orchestrator_run(tmp_path, "blue", "-e", "fleet_orchestrator_colour=blue", play=HANDOVER)
    assert code != 0, output
    assert "fleet_orchestrator_colour is given as an extra var (blue)" in output, output
    assert "Remove what an interrupted hand-over left" not in output, output


SWITCH = {
    "name": "Switch",
    "ansible.builtin.include_role": {"name": "onnxfleet.serving.edge", "tasks_from": "switch"},
}
AFTER = {"name": "After the switch", "ansible.builtin.debug": {"msg": "the play goes on"}}
EDGE_SWITCH = [
    {
        "name": "The edge's switch alone",
        "hosts": "orchestrators",
        "gather_facts": False,
        "tasks": [SWITCH, AFTER],
    }
]


def test_a_hand_over_before_the_edge_is_installed_leaves_the_switch_to_the_edge_role(tmp_path: Path) -> None:
    """A first site.yml stopped inside the orchestrator role has no HAProxy yet; the next
    run's hand-over must not fail on the missing /etc/haproxy (the edge role, later in the
    same run, points the new edge at the colour)."""
    missing = tmp_path / "no-haproxy-here"
    code, output = orchestrator_run(tmp_path, "blue", "-e", f"edge_config_dir={missing}", play=EDGE_SWITCH)
    assert code == 0, output
    assert "the play goes on" in output, output
    assert not missing.exists()
