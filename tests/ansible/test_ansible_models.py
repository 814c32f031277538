"""fleet_models (docs/models.md): the filter that normalizes and places the fleet's models,
on real Ansible objects (an inventory parsed by Ansible, its HostVars with the
collection's group_vars/all.yml); then site.yml and rollout.yml against a fleet with no
nodes, each bad entry stopping them before anything is made."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.vars.hostvars import HostVars
from ansible.vars.manager import VariableManager
from ansible_collections.onnxfleet.serving.plugins.filter.models import (
    fleet_model_plan,
    fleet_models,
    routing_table_v2,
)

from onnxfleet.orchestrator.routes import parse_table
from tests.ansible.ansible_support import ansible_env, explain, run, state_dir
from tests.support import ROOT

DIGITS = ROOT / "app" / "models" / "digits.onnx"
CARD = json.loads((ROOT / "app" / "models" / "digits.json").read_text())
QUEUE = {"max_length": 1000, "timeout_s": 30}
BATCHING = {"enabled": True, "max_batch_size": 32, "max_delay_ms": 0}
SHA = "ab" * 32

INVENTORY = """
workers:
  hosts:
    f-worker-10: {fleet_node: worker-10, fleet_private_address: 10.0.1.20}
    f-worker-2: {fleet_node: worker-2, fleet_private_address: 10.0.1.12, fleet_node_cpus: 2,
                 fleet_worker_base_port: 6000}
    f-worker-1: {fleet_node: worker-1, fleet_private_address: 10.0.1.11, fleet_worker_containers: 3}
fast:
  hosts:
    f-worker-10:
    f-worker-1:
orchestrators:
  hosts:
    f-orchestrator: {fleet_node: orchestrator, fleet_private_address: 10.0.0.5}
"""


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> tuple[HostVars, dict[str, list[str]]]:
    """HostVars and groups of a real inventory with the collection's group_vars/all.yml."""
    where = tmp_path_factory.mktemp("inventory")
    (where / "inventory.yml").write_text(INVENTORY)
    (where / "group_vars").mkdir()
    shutil.copy(ROOT / "inventory" / "group_vars" / "all.yml", where / "group_vars" / "all.yml")
    loader = DataLoader()
    manager = InventoryManager(loader=loader, sources=[str(where / "inventory.yml")])
    hostvars = HostVars(
        inventory=manager, variable_manager=VariableManager(loader=loader, inventory=manager), loader=loader
    )
    groups = {name: [h.name for h in group.get_hosts()] for name, group in manager.groups.items()}
    return hostvars, groups


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A second and third model on the controller: iris (its own card, no batch), and
    ranker (no card)."""
    (tmp_path / "iris.onnx").write_bytes(b"iris")
    card = {
        "name": "iris",
        "version": "3",
        "batch": False,
        "inputs": CARD["inputs"],
        "outputs": CARD["outputs"],
    }
    (tmp_path / "iris.json").write_text(json.dumps(card))
    (tmp_path / "ranker.onnx").write_bytes(b"ranker")
    return tmp_path


def plan(
    inventory: tuple[HostVars, dict[str, list[str]]], entries: list[dict[str, Any]], **extra: Any
) -> Any:
    hostvars, groups = inventory
    shape = {
        "containers": 2,
        "base_port": 5000,
        "max_concurrency": 1,
        "batching": BATCHING,
        "controller_cpus": 8,
    }
    return fleet_model_plan(
        groups["workers"],
        hostvars,
        models=entries,
        groups=groups,
        demo_model=str(DIGITS),
        **(shape | extra),
    )


def hashlib_prefix(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def three(models: Path) -> list[dict[str, Any]]:
    return [
        {"name": "digits", "path": str(DIGITS)},
        {
            "name": "iris",
            "path": str(models / "iris.onnx"),
            "containers": 1,
            "nodes": "fast",
            "default": True,
        },
        {"name": "ranker", "path": str(models / "ranker.onnx"), "nodes": 1, "max_concurrency": 4},
    ]


def test_the_default_is_todays_single_model(inventory: tuple[HostVars, dict[str, list[str]]]) -> None:
    hostvars, _ = inventory
    default = hostvars["f-worker-1"]["fleet_models"]
    built = plan(inventory, default)
    assert [(m["name"], m["path"], m["version"], m["default"]) for m in built["models"]] == [
        ("digits", str(DIGITS), CARD["version"], True)
    ]
    assert built["models"][0]["sha256"] == CARD["sha256"]
    assert built["models"][0]["card"] == str(DIGITS.with_suffix(".json"))
    assert built["models"][0]["batching"] == BATCHING
    # today's names and ports; a node's own fleet_worker_* win
    assert [(n["node"], m["container_names"], m["ports"]) for n in built["nodes"] for m in n["models"]] == [
        ("worker-1", ["worker-1/0", "worker-1/1", "worker-1/2"], [5000, 5001, 5002]),
        ("worker-2", ["worker-2/0", "worker-2/1"], [6000, 6001]),
        ("worker-10", ["worker-10/0", "worker-10/1"], [5000, 5001]),
    ]


def test_a_model_file_names_the_default_model(tmp_path: Path) -> None:
    (tmp_path / "ranker.onnx").write_bytes(b"ranker")
    loader = DataLoader()
    model = tmp_path / "ranker.onnx"
    (tmp_path / "inventory.yml").write_text("workers:\n  hosts:\n    h: {fleet_model_file: %s}\n" % model)
    (tmp_path / "group_vars").mkdir()
    shutil.copy(ROOT / "inventory" / "group_vars" / "all.yml", tmp_path / "group_vars" / "all.yml")
    manager = InventoryManager(loader=loader, sources=[str(tmp_path / "inventory.yml")])
    hostvars = HostVars(
        inventory=manager, variable_manager=VariableManager(loader=loader, inventory=manager), loader=loader
    )
    found = fleet_models(
        hostvars["h"]["fleet_models"], batching=BATCHING, model_file=str(tmp_path / "ranker.onnx")
    )
    # no card: no signature, so no batching; the version is the file's sha256 prefix
    assert [(m["name"], m["version"], m["batching"]["enabled"]) for m in found] == [
        ("ranker", hashlib_prefix(tmp_path / "ranker.onnx"), False)
    ]


def test_three_models_are_placed_in_list_order_on_the_nodes_asked_for(
    inventory: tuple[HostVars, dict[str, list[str]]], models: Path
) -> None:
    built = plan(inventory, three(models))
    assert built["default"] == "iris"
    assert [(m["name"], m["version"], m["nodes"]) for m in built["models"]] == [
        ("digits", "1", "all"),
        ("iris", "3", "fast"),
        ("ranker", hashlib_prefix(models / "ranker.onnx"), 1),
    ]
    placed = {
        n["node"]: [(m["name"], m["container_names"], m["ports"], m["max_concurrency"]) for m in n["models"]]
        for n in built["nodes"]
    }
    assert placed == {
        "worker-1": [
            ("digits", ["worker-1/0", "worker-1/1", "worker-1/2"], [5000, 5001, 5002], 1),
            ("iris", ["worker-1/iris/0"], [5003], 1),
            (
                "ranker",
                ["worker-1/ranker/0", "worker-1/ranker/1", "worker-1/ranker/2"],
                [5004, 5005, 5006],
                4,
            ),
        ],
        "worker-2": [("digits", ["worker-2/0", "worker-2/1"], [6000, 6001], 1)],
        "worker-10": [
            ("digits", ["worker-10/0", "worker-10/1"], [5000, 5001], 1),
            ("iris", ["worker-10/iris/0"], [5002], 1),
        ],
    }


def test_the_v2_table_lists_every_model_and_the_orchestrators_parser_reads_its_containers(
    inventory: tuple[HostVars, dict[str, list[str]]], models: Path
) -> None:
    table = routing_table_v2(plan(inventory, three(models)), queue=QUEUE, health={"interval_s": 1})
    assert set(table) == {"queue", "health", "models"}
    digits, iris, ranker = table["models"]
    assert (digits["name"], "default" in digits, iris["default"], "default" in ranker) == (
        "digits",
        False,
        True,
        False,
    )
    assert [c["url"] for c in iris["containers"]] == ["http://10.0.1.11:5003", "http://10.0.1.20:5002"]
    assert digits["signature"] == {"batch": True, "inputs": CARD["inputs"], "outputs": CARD["outputs"]}
    assert digits["batching"] == {"max_batch_size": 32, "max_delay_ms": 0}
    # iris's card says no batch: its signature, batching settings as asked; ranker has no card
    assert iris["signature"]["batch"] is False
    assert "signature" not in ranker
    assert "batching" not in ranker
    names = [c["name"] for m in table["models"] for c in m["containers"]]
    assert len(names) == len(set(names)) == 3 + 2 + 2 + 2 + 3
    # The orchestrator of this branch reads version 1 only; its container entries are the
    # same shape in version 2, so each model's list must pass as a version-1 table.
    for model in table["models"]:
        parsed = parse_table({"containers": model["containers"], "queue": QUEUE}, model["name"])
        assert len(parsed.containers) == len(model["containers"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({1: {"name": None}}, r"entry 1: name: expected a model name \(required\)"),
        ({1: {"path": None}}, r"entry 1 \(iris\): path: expected the model's file"),
        ({1: {"name": "-iris"}}, r"entry 1 \(-iris\): name: expected a name matching"),
        ({2: {"name": "iris"}}, r"entry 2 \(iris\): name: expected a name no other model has \(entry 1"),
        ({0: {"default": True}}, r"entry 1 \(iris\): default: expected at most one default model \(entry 0"),
        (
            {1: {"nodes": "gpu"}},
            r"entry 1 \(iris\): nodes: expected .*\(groups: fast, orchestrators, workers",
        ),
        ({1: {"nodes": "orchestrators"}}, r"entry 1 \(iris\): nodes: expected at least one worker node"),
        (
            {2: {"nodes": 4}},
            r"entry 2 \(ranker\): nodes: expected a count of at most 3 \(the worker nodes\), got 4",
        ),
        (
            {2: {"path": "https://example.com/r.onnx"}},
            r"entry 2 \(ranker\): sha256: expected the file's sha256",
        ),
        (
            {2: {"path": "ftp://example.com/r.onnx"}},
            r"entry 2 \(ranker\): path: expected an absolute local path",
        ),
        ({2: {"path": "http://example.com/r.onnx", "sha256": SHA}}, r"entry 2 \(ranker\): path: expected"),
        ({2: {"path": "s3://bucket"}}, r"entry 2 \(ranker\): path: expected s3://bucket/key"),
        ({2: {"path": "models/r.onnx"}}, r"entry 2 \(ranker\): path: expected an absolute path"),
        ({2: {"path": "/nowhere/r.onnx"}}, r"entry 2 \(ranker\): path: expected an existing file"),
        ({2: {"path": "s3://b/r.onnx"}}, r"entry 2 \(ranker\): version: expected a version"),
        ({1: {"containers": 0}}, r"entry 1 \(iris\): containers: expected an integer >= 1, got 0"),
        ({1: {"containers": True}}, r"entry 1 \(iris\): containers: expected an integer >= 1"),
        ({1: {"replicas": 2}}, r"entry 1 \(iris\): keys: expected only name, path"),
        ({2: {"batching": {"enabled": True}}}, r"entry 2 \(ranker\): batching: enabled needs the model card"),
        (
            {1: {"batching": {"max_delay_ms": 5000}}},
            r"entry 1 \(iris\): batching.max_delay_ms: expected a number",
        ),
        # worker-2 has 2 CPUs (its own fleet_node_cpus): 2 x 2 containers at most
        (
            {1: {"nodes": "all", "containers": 3}},
            r"worker-2: 5 containers \(digits 2, iris 3\) are more than its 2",
        ),
    ],
)
def test_a_bad_entry_is_named_with_its_field_and_what_was_expected(
    inventory: tuple[HostVars, dict[str, list[str]]], models: Path, change: dict[int, Any], message: str
) -> None:
    entries = three(models)
    for index, fields in change.items():
        entries[index] = {k: v for k, v in (entries[index] | fields).items() if v is not None}
    with pytest.raises(AnsibleFilterError, match=message):
        plan(inventory, entries)


def test_https_with_a_sha256_and_s3_with_a_version_are_sources(
    inventory: tuple[HostVars, dict[str, list[str]]], models: Path
) -> None:
    entries = three(models)
    entries[1] |= {"path": "https://models.example.com/iris.onnx", "sha256": SHA, "version": "7"}
    entries[2] |= {"path": "s3://bucket/ranker.onnx", "version": "2"}
    built = plan(inventory, entries)
    assert [(m["source"], m["version"], m["sha256"]) for m in built["models"]] == [
        ("local", "1", CARD["sha256"]),
        ("https", "7", SHA),
        ("s3", "2", ""),
    ]


def test_the_cpu_rule_uses_the_controllers_cpus_for_local_nodes(
    inventory: tuple[HostVars, dict[str, list[str]]], models: Path
) -> None:
    entries = three(models)
    entries[2]["containers"] = 1
    assert plan(inventory, entries, controller_cpus=3)["nodes"][0]["cpus"] == 3
    with pytest.raises(AnsibleFilterError, match=r"worker-1: 5 containers .* more than its 2 CPUs allow"):
        plan(inventory, entries, controller_cpus=2)
    # unknown CPUs (AWS before its nodes exist): not checked
    assert plan(inventory, entries, controller_cpus=None, provider="aws")["nodes"][0]["cpus"] is None


def test_before_provisioning_the_nodes_are_planned_from_the_count(models: Path) -> None:
    entries = three(models)[:2]
    entries[1]["nodes"] = 2
    built = fleet_model_plan(
        [],
        {},
        models=entries,
        worker_count=3,
        containers=2,
        base_port=5000,
        max_concurrency=1,
        batching=BATCHING,
        controller_cpus=2,
    )
    assert [(n["node"], [m["name"] for m in n["models"]]) for n in built["nodes"]] == [
        ("worker-1", ["digits", "iris"]),
        ("worker-2", ["digits", "iris"]),
        ("worker-3", ["digits"]),
    ]
    with pytest.raises(AnsibleFilterError, match="more than its 1 CPUs allow"):
        fleet_model_plan(
            [], {}, models=entries, worker_count=3, containers=2, base_port=5000, max_concurrency=1,
            batching=BATCHING, controller_cpus=1,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"path": "/elsewhere/x.onnx"}, r"with one model, the workers serve fleet_model_file"),
        ({"containers": 3}, r"containers: with one model, set fleet_worker_containers instead"),
        ({"batching": {"enabled": False}}, r"batching: with one model, set fleet_batching instead"),
        ({"nodes": 2}, r'nodes: expected "all"'),
    ],
)
def test_one_model_asks_only_for_what_the_single_model_workers_deploy(
    inventory: tuple[HostVars, dict[str, list[str]]], entry: dict[str, Any], message: str, tmp_path: Path
) -> None:
    (tmp_path / "x.onnx").write_bytes(b"x")
    model = {"name": "digits", "path": str(DIGITS)} | entry
    if model["path"] == "/elsewhere/x.onnx":
        model["path"] = str(tmp_path / "x.onnx")
    with pytest.raises(AnsibleFilterError, match=message):
        plan(inventory, [model])


def test_a_model_file_no_model_uses_says_what_to_write(
    inventory: tuple[HostVars, dict[str, list[str]]], models: Path
) -> None:
    with pytest.raises(
        AnsibleFilterError, match=r"fleet_model_file \(/x.onnx\) is the path of no model.*leave"
    ):
        plan(inventory, three(models), model_file="/x.onnx")


# --- the playbooks, against a fleet with no nodes --------------------------------------

FLEET = "fleet-models-nonodes"


def labelled(kind: str) -> str:
    args = ["docker", kind, "ls", "-q", "--filter", f"label=onnxfleet.fleet={FLEET}"]
    if kind == "container":
        args.insert(3, "-a")
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def bad_files(models: Path) -> list[tuple[str, list[dict[str, Any]], str]]:
    good = three(models)
    return [
        ("no-path", [good[0], {"name": "iris"}], r"entry 1 \(iris\): path: expected the model's file"),
        ("twice", [good[0], good[1], good[1]], r"entry 2 \(iris\): name: expected a name no other model"),
        ("group", [good[0], good[1] | {"nodes": "gpu"}], r"entry 1 \(iris\): nodes: expected"),
        (
            "count",
            [good[0], good[2] | {"nodes": 9}],
            r"entry 1 \(ranker\): nodes: expected a count of at most 4",
        ),
        ("https", [good[0], {"name": "r", "path": "https://h/r.onnx"}], r"entry 1 \(r\): sha256: expected"),
        ("cpus", [good[0], good[2] | {"containers": 99}], r"worker-1: 101 containers .* more than its"),
    ]


def test_site_yml_stops_on_each_bad_entry_before_anything_is_made(tmp_path: Path, models: Path) -> None:
    env = ansible_env(ONNXFLEET_FLEET=FLEET)
    cases = bad_files(models)
    for name, entries, _ in cases:
        (tmp_path / f"{name}.yml").write_text(yaml.safe_dump({"fleet_models": entries}))
    # (three at once: each run mostly starts Python and reads the inventory)
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = pool.map(
            lambda name: run(
                ["ansible-playbook", "site.yml", "-e", f"@{tmp_path / name}.yml"], env=env, timeout=180
            ),
            [name for name, _, _ in cases],
        )
        for (name, _, message), proc in zip(cases, runs, strict=True):
            assert proc.returncode != 0, explain(proc)
            assert re.search(message, proc.stdout), f"{name}: {explain(proc)}"
            # the first play failed: no other play ran
            assert "PLAY [Provision the nodes]" not in proc.stdout, name
    assert (labelled("container"), labelled("volume"), labelled("network")) == ("", "", "")
    assert not state_dir(FLEET).exists()


def test_the_models_playbook_shows_the_placement_of_the_default_and_of_three_models(
    tmp_path: Path, models: Path
) -> None:
    env = ansible_env(ONNXFLEET_FLEET=FLEET)
    proc = run(["ansible-playbook", "playbooks/models.yml"], env=env, timeout=120)
    assert proc.returncode == 0, explain(proc)
    for number in range(1, 5):  # fleet_worker_count 4, today's ports
        assert f"- 'worker-{number}: digits on 5000-5001'" in proc.stdout, explain(proc)
    extra = tmp_path / "models.yml"
    entries = three(models)
    entries[1]["nodes"] = 2
    # 4 containers on worker-1: a node of 2 CPUs allows 4
    entries[2]["containers"] = 1
    extra.write_text(yaml.safe_dump({"fleet_models": entries, "fleet_node_cpus": 2}))
    proc = run(["ansible-playbook", "playbooks/models.yml", "-e", f"@{extra}"], env=env, timeout=120)
    assert proc.returncode == 0, explain(proc)
    assert "- 'worker-1: digits on 5000-5001, iris on 5002, ranker on 5003'" in proc.stdout, explain(proc)
    assert "- 'worker-2: digits on 5000-5001, iris on 5002'" in proc.stdout, explain(proc)
    assert "- 'worker-4: digits on 5000-5001'" in proc.stdout, explain(proc)


def test_rollout_and_rollback_check_the_model_named(tmp_path: Path, models: Path) -> None:
    env = ansible_env(ONNXFLEET_FLEET=FLEET)
    extra = tmp_path / "models.yml"
    extra.write_text(yaml.safe_dump({"fleet_models": three(models)}))
    for playbook in ("playbooks/rollout.yml", "playbooks/rollback.yml"):
        proc = run(
            ["ansible-playbook", playbook, "-e", f"@{extra}", "-e", "model=resnet"], env=env, timeout=120
        )
        assert proc.returncode != 0, explain(proc)
        assert "model resnet is not one of the fleet's models: digits, iris, ranker" in proc.stdout, explain(
            proc
        )
        # a model it serves (rollout), or none: the default (rollback); on to the (here
        # empty) worker plays
        named, expected = (["-e", "model=ranker"], "ranker") if "rollout" in playbook else ([], "iris")
        proc = run(["ansible-playbook", playbook, "-e", f"@{extra}", *named], env=env, timeout=120)
        assert proc.returncode == 0, explain(proc)
        assert f"msg: {playbook.split('/')[1][:-4]} of model {expected}\n" in proc.stdout, explain(proc)
    assert labelled("container") == ""
