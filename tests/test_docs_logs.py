"""docs/operations.md "Logs" says where each service's log is on its node: the names,
label, log target and Docker log settings it gives are the ones the roles use."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.support import ROOT


def logs_section() -> str:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "\n## Logs\n" in text, "docs/operations.md has no Logs section"
    return text.split("\n## Logs\n", 1)[1].split("\n## ", 1)[0]


def defaults(role: str) -> dict[str, object]:
    loaded = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_the_container_names_are_the_roles() -> None:
    section = logs_section()
    orchestrator = defaults("orchestrator")["orchestrator_container_name"]
    worker = defaults("model_worker")["model_worker_container_prefix"]
    assert f"{orchestrator}-blue" in section
    assert f"{worker}-<n>" in section
    assert f"docker logs {worker}-0" in section


def test_the_label_the_command_filters_on_is_on_both_containers() -> None:
    match = re.search(r"--filter label=([\w.]+)", logs_section())
    assert match, "the command does not select the containers by label"
    for tasks in ["roles/orchestrator/tasks/container.yml", "roles/model_worker/tasks/containers.yml"]:
        text = (ROOT / tasks).read_text(encoding="utf-8")
        assert re.search(rf"^\s+{re.escape(match.group(1))}: \w+", text, re.MULTILINE), tasks


@pytest.mark.parametrize(
    ("claim", "holds"),
    [
        ("`edge_log` is `/dev/log`", lambda: str(defaults("edge")["edge_log"]).startswith("/dev/log ")),
        ("no rsyslog is installed", lambda: "rsyslog" not in defaults("edge")["edge_packages"]),
        (
            "Docker's `json-file` log",
            lambda: defaults("docker_engine")["docker_engine_daemon_options"]["log-driver"] == "json-file",
        ),
        (
            "10 MB \u00d7 3",
            lambda: (
                defaults("docker_engine")["docker_engine_daemon_options"]["log-opts"]
                == {"max-size": "10m", "max-file": "3"}
            ),
        ),
    ],
)
def test_a_claim_of_the_section_is_what_the_roles_do(claim: str, holds: object) -> None:
    assert claim in logs_section()
    assert callable(holds)
    assert holds(), claim
