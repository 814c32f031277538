"""onnxfleet.serving.orchestrator_admin, the admin-API call of the orchestrator role's reload
handler and of model_worker's drain/ready, run by ansible against a real orchestrator on
loopback (its admin listener, its token file) in front of a sim backend: it returns the
answer on 200, fails naming the status and body otherwise, reads the token itself (it is
never in the output) and sends nothing in check mode."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ansible.ansible_support import ansible_env, run
from tests.orchestrator.orch_support import SimFleet, orchestrator, routes, status
from tests.support import free_port

TOKEN = "adm1n-t0ken-for-the-test"


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Any]]:
    """(the admin listener's URL, the admin token file, the orchestrator service)."""
    workdir = tmp_path_factory.mktemp("orchestrator_admin")
    token_file = workdir / "admin-token"
    token_file.write_text(TOKEN + "\n")
    sim = SimFleet(size=2, service_ms=5)
    table = routes(workdir / "routes.json", [("n1/0", sim.url(0), "n1"), ("n2/0", sim.url(1), "n2")])
    port = free_port()
    with (
        sim.service,
        orchestrator(
            table, "--admin-bind", f"127.0.0.1:{port}", "--admin-token-file", str(token_file)
        ) as orch,
    ):
        yield f"http://127.0.0.1:{port}", token_file, orch


def orchestrator_admin(*flags: str, **arguments: Any) -> tuple[int, dict[str, Any], str]:
    """(exit code, the module's result, the whole output)."""
    module = ["-m", "onnxfleet.serving.orchestrator_admin", "-a", json.dumps(arguments)]
    proc = run(
        ["ansible", "localhost", "-c", "local", *flags, *module],
        env=ansible_env(ANSIBLE_CALLBACK_RESULT_FORMAT="json"),
    )
    output = proc.stdout + proc.stderr
    assert "=>" in proc.stdout, output
    return proc.returncode, json.loads(proc.stdout.split("=>", 1)[1]), output


def state(orch: Any, name: str) -> str:
    return next(c["state"] for c in status(orch)["containers"] if c["name"] == name)


def test_drain_then_ready_return_the_answer(admin: tuple[str, Path, Any]) -> None:
    url, token_file, orch = admin
    code, result, output = orchestrator_admin(
        url=url, action="drain", token_file=str(token_file), body={"node": "n1", "wait": True, "timeout_s": 5}
    )
    assert code == 0, output
    assert (result["changed"], result["status"]) == (True, 200)
    assert result["json"]["containers"] == ["n1/0"]
    assert result["json"]["in_flight"] == 0
    assert state(orch, "n1/0") == "draining"
    assert state(orch, "n2/0") != "draining"
    body = {"node": "n1"}
    code, result, output = orchestrator_admin(url=url, action="ready", token_file=str(token_file), body=body)
    assert code == 0, output
    assert result["json"]["containers"] == ["n1/0"]
    assert state(orch, "n1/0") != "draining"


def test_reload_without_a_body(admin: tuple[str, Path, Any]) -> None:
    url, token_file, _ = admin
    code, result, output = orchestrator_admin(url=url + "/", action="reload", token_file=str(token_file))
    assert code == 0, output
    assert result["status"] == 200


def test_a_refused_call_fails_naming_status_and_body_and_never_the_token(
    admin: tuple[str, Path, Any], tmp_path: Path
) -> None:
    url, token_file, orch = admin
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    code, result, _ = orchestrator_admin(url=url, action="drain", token_file=str(wrong), body={"node": "n2"})
    assert code != 0
    assert result["status"] == 401
    assert result["msg"].startswith(f"POST {url}/admin/drain answered 401: {{"), result["msg"]
    assert state(orch, "n2/0") != "draining"
    # a bad body: the orchestrator's own 400, passed on
    code, result, output = orchestrator_admin(url=url, action="drain", token_file=str(token_file), body={})
    assert code != 0
    assert result["status"] == 400, result
    assert f"POST {url}/admin/drain answered 400" in result["msg"]
    assert TOKEN not in output


def test_a_missing_token_file_or_a_closed_port_is_a_clear_failure(
    admin: tuple[str, Path, Any], tmp_path: Path
) -> None:
    url, token_file, _ = admin
    code, result, _ = orchestrator_admin(url=url, action="reload", token_file=str(tmp_path / "none"))
    assert code != 0
    assert result["msg"].startswith(f"cannot read the admin token in {tmp_path / 'none'}"), result
    closed = f"http://127.0.0.1:{free_port()}"
    code, result, _ = orchestrator_admin(url=closed, action="reload", token_file=str(token_file))
    assert code != 0
    assert result["msg"].startswith(f"POST {closed}/admin/reload failed: "), result
    assert "refused" in result["msg"].lower()


def test_check_mode_sends_nothing(admin: tuple[str, Path, Any]) -> None:
    url, token_file, orch = admin
    arguments = {"url": url, "action": "drain", "token_file": str(token_file), "body": {"node": "n2"}}
    code, result, output = orchestrator_admin("--check", **arguments)
    assert code == 0, output
    assert result["changed"] is True
    assert "status" not in result
    assert state(orch, "n2/0") != "draining"
