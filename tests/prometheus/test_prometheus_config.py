"""prometheus.yml: the collection's filter on a model placement plan (labels, the admin
token, what it refuses), then the role's templates rendered by real Ansible from an
inventory alone and accepted by promtool."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible_collections.onnxfleet.serving.plugins.filter.models import fleet_model_plan
from ansible_collections.onnxfleet.serving.plugins.filter.prometheus import prometheus_config

from tests.ansible.ansible_support import explain, run
from tests.prometheus.prom_support import promtool
from tests.support import ROOT

DIGITS = ROOT / "app" / "models" / "digits.onnx"
HOSTVARS: dict[str, dict[str, Any]] = {
    "fleet-worker-2": {"fleet_node": "worker-2", "fleet_private_address": "10.0.1.12"},
    "fleet-worker-1": {
        "fleet_node": "worker-1",
        "fleet_private_address": "10.0.1.11",
        "fleet_worker_base_port": 6000,
    },
}
TWO_MODELS = [
    {"name": "digits", "path": str(DIGITS), "default": True},
    {"name": "small", "path": str(DIGITS), "version": "2", "containers": 1, "nodes": 1},
]


def plan(models: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return fleet_model_plan(  # type: ignore[no-any-return]
        ["fleet-worker-2", "fleet-worker-1"],
        HOSTVARS,
        models=models or [{"name": "digits", "path": str(DIGITS), "default": True}],
        containers=2,
        base_port=5000,
        max_concurrency=1,
        model_file="" if models else str(DIGITS),
        node_cpus=4,
    )


def config(built_plan: dict[str, Any], **extra: Any) -> dict[str, Any]:
    given = {"node": "orchestrator", "edge_metrics_port": 9101, "admin_url": "http://127.0.0.1:9000"}
    return prometheus_config(built_plan, **(given | extra))  # type: ignore[no-any-return]


def jobs(built: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in built["scrape_configs"]}


def test_one_target_per_container_labelled_with_its_node_container_and_model() -> None:
    built = jobs(config(plan(TWO_MODELS)))
    assert list(built) == ["edge", "orchestrator", "worker"]
    assert [(g["targets"], g["labels"]) for g in built["worker"]["static_configs"]] == [
        (["10.0.1.11:6000"], {"node": "worker-1", "container": "worker-1/0", "model": "digits"}),
        (["10.0.1.11:6001"], {"node": "worker-1", "container": "worker-1/1", "model": "digits"}),
        (["10.0.1.11:6002"], {"node": "worker-1", "container": "worker-1/small/0", "model": "small"}),
        (["10.0.1.12:5000"], {"node": "worker-2", "container": "worker-2/0", "model": "digits"}),
        (["10.0.1.12:5001"], {"node": "worker-2", "container": "worker-2/1", "model": "digits"}),
    ]
    assert built["edge"]["static_configs"] == [
        {"targets": ["127.0.0.1:9101"], "labels": {"node": "orchestrator"}}
    ]


def test_the_orchestrator_is_scraped_on_the_admin_url_with_the_token_file() -> None:
    built = config(plan(), admin_url="https://127.0.0.1:9443/private/", admin_token_file="/etc/prometheus/t")
    job = jobs(built)["orchestrator"]
    assert (job["scheme"], job["metrics_path"]) == ("https", "/private/metrics")
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9443"], "labels": {"node": "orchestrator"}}]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/etc/prometheus/t"}
    assert "authorization" not in jobs(config(plan()))["orchestrator"]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"edge_metrics_port": 0}, "edge_metrics_port: expected a TCP port from 1 to 65535, got 0"),
        ({"edge_metrics_port": "x"}, "edge_metrics_port: expected a TCP port"),
        ({"admin_url": "127.0.0.1:9000"}, "admin_url: expected an http:// or https:// URL"),
        ({"scrape_interval": "15"}, "scrape_interval: expected a duration such as 15s"),
        ({"evaluation_interval": "soon"}, "evaluation_interval: expected a duration"),
    ],
)
def test_bad_settings_are_refused_with_what_was_expected(extra: dict[str, Any], says: str) -> None:
    with pytest.raises(AnsibleFilterError, match=says):
        config(plan(), **extra)


def test_a_plan_of_nodes_without_addresses_is_refused() -> None:
    counted = fleet_model_plan(
        [],
        {},
        models=[{"name": "digits", "path": str(DIGITS), "default": True}],
        worker_count=1,
        containers=1,
        base_port=5000,
        max_concurrency=1,
        model_file=str(DIGITS),
    )
    with pytest.raises(AnsibleFilterError, match="worker-1 has no fleet_private_address"):
        config(counted)
    with pytest.raises(AnsibleFilterError, match="expected a model_placement plan"):
        config(["fleet-worker-1"])  # type: ignore[arg-type]


INVENTORY = """
workers:
  hosts:
    fleet-worker-1: {fleet_node: worker-1, fleet_private_address: 10.0.1.11}
    fleet-worker-2: {fleet_node: worker-2, fleet_private_address: 10.0.1.12, fleet_worker_containers: 3}
orchestrators:
  hosts:
    fleet-orchestrator: {fleet_node: orchestrator, fleet_private_address: 10.0.0.5}
"""

PLAYBOOK = """
- hosts: orchestrators
  connection: local
  gather_facts: false
  tasks:
    - name: Take the prometheus role's variables
      ansible.builtin.include_vars:
        file: "{role}/{{{{ item }}}}/main.yml"
      loop: [defaults, vars]
    - name: Render its templates as the role does
      ansible.builtin.template:
        src: "{role}/templates/{{{{ item.src }}}}"
        dest: "{out}/{{{{ item.dest }}}}"
        mode: "0644"
      loop:
        - {{src: onnxfleet.rules.yml.j2, dest: onnxfleet.rules.yml}}
        - {{src: prometheus.yml.j2, dest: prometheus.yml}}
        - {{src: prometheus.default.j2, dest: default}}
"""


def test_the_role_templates_render_from_an_inventory_and_promtool_accepts_them(tmp_path: Path) -> None:
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    (tmp_path / "group_vars").mkdir()
    shutil.copy(ROOT / "inventory" / "group_vars" / "all.yml", tmp_path / "group_vars" / "all.yml")
    playbook = tmp_path / "render.yml"
    out = tmp_path / "etc"
    out.mkdir()
    playbook.write_text(PLAYBOOK.format(role=ROOT / "roles" / "prometheus", out=out))
    given = ["-e", f"fleet_model_file={DIGITS}", "-e", f"prometheus_config_dir={out}"]
    proc = run(["ansible-playbook", "-i", str(tmp_path / "inventory.yml"), *given, str(playbook)])
    assert proc.returncode == 0, explain(proc)
    (out / "onnxfleet-admin-token").write_text("a-token\n")  # the copy the role makes (promtool checks it)
    checked = promtool("check", "config", out / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    rendered = jobs(yaml.safe_load((out / "prometheus.yml").read_text()))
    assert rendered["edge"]["static_configs"][0]["targets"] == ["127.0.0.1:9101"]
    assert rendered["orchestrator"]["authorization"]["credentials_file"] == str(out / "onnxfleet-admin-token")
    assert [g["targets"][0] for g in rendered["worker"]["static_configs"]] == [
        "10.0.1.11:5000",
        "10.0.1.11:5001",
        "10.0.1.12:5000",
        "10.0.1.12:5001",
        "10.0.1.12:5002",
    ]
    assert {g["labels"]["node"] for g in rendered["worker"]["static_configs"]} == {"worker-1", "worker-2"}
    args = (out / "default").read_text()
    assert "--web.listen-address=127.0.0.1:9090" in args
    assert f"--config.file={out / 'prometheus.yml'}" in args
