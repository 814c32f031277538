"""The modules and the filter that replace the roles' repeated YAML, run by ansible on this
machine: local_fact (a node's record in /etc/ansible/facts.d, read and written, check and
diff mode), container_logs (a real container's last lines, and the rescue's failure that
quotes them), docker_engine_up (the check-mode probe of the node's engine, against the real
engine and a socket that does not exist) and the container_hardening filter."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.onnxfleet.serving.plugins.filter.containers import container_hardening

from tests.ansible.ansible_support import ansible_env, run
from tests.support import ROOT


def module(
    name: str, *flags: str, env: dict[str, str] | None = None, **arguments: Any
) -> tuple[int, dict[str, Any], str]:
    """(exit code, the module's result, the whole output) of one module run on localhost."""
    call = ["-m", f"onnxfleet.serving.{name}"] + (["-a", json.dumps(arguments)] if arguments else [])
    proc = run(
        ["ansible", "localhost", "-i", "localhost,", "-c", "local", *flags, *call],
        env=ansible_env(ANSIBLE_CALLBACK_RESULT_FORMAT="json", **(env or {})),
    )
    output = proc.stdout + proc.stderr
    assert "=>" in proc.stdout, output
    return proc.returncode, json.loads(proc.stdout.split("=>", 1)[1]), output


# --- local_fact


def test_a_missing_fact_reads_as_an_empty_object(tmp_path: Path) -> None:
    code, result, output = module("local_fact", path=str(tmp_path / "facts.d" / "none.fact"))
    assert code == 0, output
    assert (result["changed"], result["exists"], result["value"]) == (False, False, {})


def test_a_fact_is_written_as_to_nice_json_once_then_read_back(tmp_path: Path) -> None:
    path = tmp_path / "facts.d" / "onnxfleet_model.fact"
    value = {"version": "2", "file": "digits.onnx", "previous": "1"}
    code, result, output = module("local_fact", path=str(path), value=value, mode="0644")
    assert code == 0, output
    assert (result["changed"], result["exists"], result["value"]) == (True, False, value)
    # byte for byte what `value | to_nice_json` + "\n" wrote before: a re-run changes nothing
    assert path.read_text() == json.dumps(value, indent=4, sort_keys=True, separators=(",", ": ")) + "\n"
    assert path.stat().st_mode & 0o777 == 0o644
    code, result, output = module(
        "local_fact", path=str(path), value=dict(reversed(value.items())), mode="0644"
    )
    assert code == 0, output
    assert result["changed"] is False
    code, result, output = module("local_fact", path=str(path))
    assert (code, result["exists"], result["value"]) == (0, True, value), output


def test_check_mode_tells_the_change_and_its_diff_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "onnxfleet_orchestrator.fact"
    path.write_text('{\n    "colour": "blue"\n}\n')
    code, result, output = module(
        "local_fact", "--check", "--diff", path=str(path), value={"colour": "green"}
    )
    assert code == 0, output
    assert (result["changed"], result["value"]) == (True, {"colour": "green"})
    assert '-    "colour": "blue"' in output, output
    assert '+    "colour": "green"' in output, output
    assert path.read_text() == '{\n    "colour": "blue"\n}\n'


@pytest.mark.parametrize(("text", "says"), [("not json", "the file is not JSON"), ("[1, 2]", "holds a list")])
def test_a_fact_that_is_not_an_object_fails_naming_the_file(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad.fact"
    path.write_text(text)
    code, result, output = module("local_fact", path=str(path))
    assert code != 0, output
    assert result["msg"].startswith(f"{path}: expected a JSON object"), output
    assert says in result["msg"], output


# --- container_logs


@pytest.fixture(scope="module")
def chatty(onnxfleet_image: dict[str, str]) -> Iterator[str]:
    """A stopped container that wrote out-1..out-5 to its output, then err-1 to its errors.
    The engine copies the two streams separately: without the pause, a loaded machine (CI)
    once logged err-1 before the out- lines."""
    name = f"worker-role-test-logs-{uuid.uuid4().hex[:8]}"
    script = (
        "import sys, time\nfor i in range(1, 6): print(f'out-{i}')\n"
        "sys.stdout.flush()\ntime.sleep(2)\nprint('err-1', file=sys.stderr)"
    )
    subprocess.run(
        ["docker", "run", "--name", name, "--entrypoint", "python3", onnxfleet_image["image"], "-c", script],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def test_the_last_lines_of_a_container(chatty: str) -> None:
    code, result, output = module("container_logs", names=[chatty], lines=3)
    assert code == 0, output
    assert result["changed"] is False
    assert result["logs"] == {chatty: ["out-4", "out-5", "err-1"]}


def test_a_missing_container_gives_dockers_error_without_failing(chatty: str) -> None:
    missing = chatty + "-missing"
    code, result, output = module("container_logs", names=[chatty, missing], lines=1)
    assert code == 0, output
    assert result["logs"][chatty] == ["err-1"]
    assert re.search("no such container", " ".join(result["logs"][missing]), re.IGNORECASE), output


def test_with_fail_msg_it_fails_quoting_the_lines(chatty: str) -> None:
    code, result, output = module(
        "container_logs", "--check", names=[chatty], lines=2, fail_msg="not ready after 5s."
    )
    assert code != 0, output
    assert result["msg"] == f"not ready after 5s. Last log lines: {chatty}: ['out-5', 'err-1']", output


# --- docker_engine_up


def test_in_check_mode_the_engine_is_asked(tmp_path: Path) -> None:
    code, result, output = module("docker_engine_up", "--check")
    assert code == 0, output
    assert (result["up"], result["asked"]) == (True, True)
    absent = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    code, result, output = module("docker_engine_up", "--check", env=absent)
    assert code == 0, output
    assert (result["up"], result["asked"]) == (False, True)
    assert "no-engine.sock" in result["reason"], output


def test_a_real_run_does_not_ask(tmp_path: Path) -> None:
    code, result, output = module(
        "docker_engine_up", env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    )
    assert code == 0, output
    assert (result["up"], result["asked"]) == (True, False)


# --- container_hardening


def test_the_hardening_options() -> None:
    assert container_hardening("10001:10001") == {
        "user": "10001:10001",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opts": ["no-new-privileges"],
        "tmpfs": ["/tmp"],
    }
    assert "tmpfs" not in container_hardening("10001", tmpfs=[])


@pytest.mark.parametrize(
    ("user", "tmpfs", "says"),
    [("0:0", ["/tmp"], "non-root user"), ("root", ["/tmp"], "non-root user"), ("", ["/tmp"], "non-root user"),
     ("10001", "/tmp", "list of absolute paths"), ("10001", ["tmp"], "list of absolute paths")],
)  # fmt: skip
def test_a_root_user_or_bad_tmpfs_is_refused(user: str, tmpfs: Any, says: str) -> None:
    with pytest.raises(AnsibleFilterError, match=says):
        container_hardening(user, tmpfs=tmpfs)


# --- the roles


REPEATS = {
    "a container's log read with docker logs": r"docker, logs|docker logs",
    "a check-mode probe with docker_host_info": (
        r"docker_host_info:\n(\s+register:.*\n)?\s+(failed_when: false\n\s+)?when: ansible_check_mode"
    ),
    "a local fact read or written by slurp/copy": (
        r"(slurp|copy):\n(\s+\w+:.*\n){0,3}?\s+(src|dest):.*(state_file|facts\.d)"
    ),
    "container hardening written out": r"cap_drop:|security_opts:",
}


@pytest.mark.parametrize("what", REPEATS)
def test_the_roles_leave_each_repeat_to_its_module_or_filter(what: str) -> None:
    found = [
        f"{path.relative_to(ROOT)}"
        for path in sorted((ROOT / "roles").glob("*/tasks/*.yml"))
        if path.parts[-3] != "local_fleet" and re.search(REPEATS[what], path.read_text())
    ]
    assert found == [], f"{what} in {found}"
