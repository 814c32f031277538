"""The orchestrator's side of the front door: listeners, client tokens, state that outlives a
process, the dispatch lease, the v2 routes."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from onnxfleet.orchestrator.tokens import TokensError, digest, load_tokens
from tests.orchestrator.inproc import in_process
from tests.orchestrator.orch_support import (
    SimFleet,
    call,
    container_state,
    routes,
    status,
    tokens_file,
    wait_for,
)

ADMIN = {"Authorization": "Bearer adm-secret"}
ALICE = {"Authorization": "Bearer alice-secret"}


def test_the_admin_api_has_its_own_listener(
    sim: SimFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONNXFLEET_ADMIN_TOKEN", "adm-secret")
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    tokens = tokens_file(tmp_path / "tokens", alice="alice-secret")
    with in_process(table, "--admin-bind", "x", "--api-tokens-file", str(tokens)) as orch:
        assert orch.admin_url != orch.url
        # the API listener: no admin API at all; the fleet's state only with a token
        for path in ("/admin/reload", "/admin/drain", "/admin/ready"):
            code, _, body = call(orch.url + path, "POST", {"node": "a"}, ADMIN)
            assert (code, body["code"]) == (404, "not_found"), path
        for path in ("/status", "/metrics", "/"):
            code, headers, body = call(orch.url + path)
            assert (code, body["code"], headers["WWW-Authenticate"]) == (401, "unauthorized", "Bearer")
            assert call(orch.url + path, headers=ALICE)[0] == 200
            assert call(orch.url + path, headers=ADMIN)[0] == 200
        assert call(orch.url + "/healthz")[0] == 200
        assert call(orch.url + "/v2/health/live")[0] == 200
        assert call(orch.url + "/v2/health/ready")[0] == 200
        # the admin listener: the state without a token, the admin API with the admin token
        for path in ("/status", "/metrics", "/", "/healthz", "/readyz"):
            assert call(orch.admin_url + path)[0] == 200, path
        assert call(orch.admin_url + "/admin/reload", "POST")[0] == 401
        assert call(orch.admin_url + "/admin/reload", "POST", headers=ALICE)[0] == 401
        assert call(orch.admin_url + "/admin/reload", "POST", headers=ADMIN)[0] == 200
        assert call(orch.admin_url + "/run_model", "POST", {}, ALICE)[0] == 404  # no inference there


def test_client_tokens_are_hashed_and_reloaded_without_a_restart(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    tokens = tokens_file(tmp_path / "tokens", alice="alice-secret")
    assert "alice-secret" not in tokens.read_text()
    with in_process(table, "--api-tokens-file", str(tokens)) as orch:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "alice-secret"}):
            code, got, body = call(orch.url + "/run_model", "POST", {}, headers)
            assert (code, body["code"], got["WWW-Authenticate"]) == (401, "unauthorized", "Bearer")
        assert call(orch.url + "/jobs", "POST", {})[0] == 401
        assert call(orch.url + "/v2/models/m", headers={})[0] == 401
        code, _, body = call(orch.url + "/run_model", "POST", {}, ALICE)
        assert code == 200
        assert body["authorization"] is False  # the client's credentials stay here
        access = [r for r in orch.records.records if r.name == "onnxfleet.orchestrator.access"]
        assert access[-1].__dict__["client"] == "alice"
        # revoke alice, add bob: the file changes, a reload applies it
        tokens_file(tokens, bob="bob-secret")
        code, _, body = call(orch.url + "/admin/reload", "POST")
        assert (code, body["api_tokens"]) == (200, 1)
        assert call(orch.url + "/run_model", "POST", {}, ALICE)[0] == 401
        assert call(orch.url + "/run_model", "POST", {}, {"Authorization": "Bearer bob-secret"})[0] == 200
        # a broken file is refused and the current tokens are kept
        tokens.write_text("bob sha256:nothex\n")
        code, _, body = call(orch.url + "/admin/reload", "POST")
        assert (code, body["code"]) == (400, "bad_routing_table")
        assert f"{tokens}:1: expected '<name> sha256:<64 hex digits>'" in body["error"]
        assert call(orch.url + "/run_model", "POST", {}, {"Authorization": "Bearer bob-secret"})[0] == 200


def test_the_tokens_file_format(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# comment\n\n  ci {digest('t1')}  \nops {digest(b't2')}\n")
    assert load_tokens(path) == {
        bytes.fromhex(digest("t1")[7:]): "ci",
        bytes.fromhex(digest("t2")[7:]): "ops",
    }
    for bad in ("ci", f"ci {digest('t')} extra", "ci sha256:" + "a" * 63, "ci md5:" + "a" * 64):
        path.write_text(bad + "\n")
        with pytest.raises(TokensError, match=f"{path}:1: expected"):
            load_tokens(path)
    with pytest.raises(TokensError, match="cannot read the tokens file"):
        load_tokens(tmp_path / "missing")


def test_a_raw_token_from_the_environment_works_for_development(
    sim: SimFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONNXFLEET_API_TOKEN", "dev")
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table) as orch:
        assert call(orch.url + "/run_model", "POST", {})[0] == 401
        assert call(orch.url + "/run_model", "POST", {}, {"Authorization": "Bearer dev"})[0] == 200
        assert call(orch.url + "/status")[0] == 401  # a token exists: the fleet's state needs it
        assert call(orch.url + "/status", headers={"Authorization": "Bearer dev"})[0] == 200


def test_with_only_an_admin_token_the_fleet_s_state_is_as_open_as_the_api(
    sim: SimFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the Ansible role sets up (an admin token, no client tokens): inference and the
    fleet's state open, the admin API not."""
    monkeypatch.setenv("ONNXFLEET_ADMIN_TOKEN", "adm-secret")
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table) as orch:
        assert call(orch.url + "/run_model", "POST", {})[0] == 200
        for path in ("/status", "/metrics", "/"):
            assert call(orch.url + path)[0] == 200, path
        assert call(orch.url + "/admin/reload", "POST")[0] == 401
        assert call(orch.url + "/admin/reload", "POST", headers=ADMIN)[0] == 200


def test_model_metadata_and_v2_routes_are_forwarded(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")])
    with in_process(table) as orch:
        for path in (
            "/v2",
            "/v2/models/digits",
            "/v2/models/digits/ready",
            "/v2/models/digits/versions/2/ready",
        ):
            code, headers, body = call(orch.url + path)
            assert (code, body["method"], body["path"], headers["X-Container"]) == (200, "GET", path, "a/0")
        code, _, body = call(orch.url + "/v2/models/digits/versions/2/infer", "POST", {})
        assert (code, body["path"]) == (200, "/v2/models/digits/versions/2/infer")
        code, headers, body = call(orch.url + "/v2/models/digits", "HEAD", timeout=3)
        assert (code, body, headers["X-Container"]) == (200, "", "a/0")
        assert sim.stats(0)["max_in_flight"] == 1


def test_drain_flags_survive_a_restart(sim: SimFleet, tmp_path: Path) -> None:
    table = routes(
        tmp_path / "routes.json",
        [("a/0", sim.url(0), "a"), ("a/1", sim.url(1), "a"), ("b/0", sim.url(2), "b")],
    )
    state = tmp_path / "state"
    state.mkdir()
    with in_process(table, "--state-dir", str(state)) as orch:
        assert call(orch.url + "/admin/drain", "POST", {"node": "a"})[0] == 200
        assert call(orch.url + "/admin/drain", "POST", {"container": "b/0"})[0] == 200
        assert call(orch.url + "/admin/ready", "POST", {"container": "a/1"})[0] == 200
    assert json.loads((state / "state.json").read_text()) == {
        "draining": {"nodes": [], "containers": ["a/0", "b/0"]}
    }
    with in_process(table, "--state-dir", str(state), wait_ready=False) as orch:
        states = {c["name"]: c["state"] for c in status(orch)["containers"]}
        assert states["a/0"] == states["b/0"] == "draining"
        wait_for(lambda: container_state(orch, "a/1")["state"] == "ready", what="a/1 ready")
        assert call(orch.url + "/admin/drain", "POST", {"node": "b"})[0] == 200
        # a container that joins a drained node drains from the start
        routes(table, [("a/0", sim.url(0), "a"), ("b/0", sim.url(2), "b"), ("b/1", sim.url(3), "b")])
        assert call(orch.url + "/admin/reload", "POST")[0] == 200
        assert container_state(orch, "b/1")["state"] == "draining"
        assert call(orch.url + "/admin/ready", "POST", {"node": "b"})[0] == 200
        assert call(orch.url + "/admin/ready", "POST", {"node": "a"})[0] == 200
    assert json.loads((state / "state.json").read_text()) == {"draining": {"nodes": [], "containers": []}}


def test_a_standby_queues_until_it_holds_the_dispatch_lease(sim: SimFleet, tmp_path: Path) -> None:
    """Two processes on one state directory (a blue/green hand-over): the second queues
    (ready, not dispatching) until the first ends; no container ever gets more than its
    slots; nothing is lost."""
    sim.mode(0, "ok", service_ms=30)
    sim.mode(1, "ok", service_ms=30)
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a"), ("b/0", sim.url(1), "b")])
    state = tmp_path / "state"
    state.mkdir()
    results: list = []
    with (
        in_process(table, "--state-dir", str(state)) as blue,
        in_process(table, "--state-dir", str(state)) as green,
    ):
        view = status(green)
        assert (view["ready"], view["dispatching"]) == (True, False)
        assert call(green.url + "/readyz")[0] == 200
        switched = threading.Event()  # the edge sends new requests to green from then on

        def client(i: int) -> tuple:
            return call((green if switched.is_set() else blue).url + "/run_model", "POST", {"i": i})

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client, i) for i in range(40)]
            wait_for(lambda: status(blue)["queue"]["depth"] >= 2, what="a queue at blue")
            switched.set()
            futures += [pool.submit(client, i) for i in range(40, 80)]
            wait_for(lambda: status(green)["queue"]["depth"] >= 2, what="green queues")
            assert status(green)["totals"]["served"] == 0
            blue.stop()  # as on SIGTERM: it finishes its queue and its requests in flight, then ends
            wait_for(lambda: status(green)["dispatching"], what="the lease taken over")
            results = [f.result() for f in futures]
    assert [r[0] for r in results] == [200] * 80
    assert [sim.stats(i)["max_in_flight"] for i in (0, 1)] == [1, 1]


def test_queued_requests_wait_for_the_first_health_checks(sim: SimFleet, tmp_path: Path) -> None:
    """A process that starts does not refuse requests as 'no ready container' before its
    first round of checks (a SIGHUP replacement would otherwise fail the first ones)."""
    table = routes(tmp_path / "routes.json", [("a/0", sim.url(0), "a")], health={"interval_s": 5})
    started = time.monotonic()
    with in_process(table, wait_ready=False) as orch:
        assert call(orch.url + "/run_model", "POST", {})[0] == 200
        assert time.monotonic() - started < 2
