"""The dashboard as a person opens it: headless Chromium through the edge's loopback admin
frontend (what `ssh -L 9000:127.0.0.1:9000` reaches from a laptop, docs/operations.md "The
dashboard"), the real edge and orchestrator with sim containers behind, traffic first."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import time
from pathlib import Path

from tests.edge.edge_support import FrontDoor
from tests.edge.pki import make_pki
from tests.orchestrator.orch_support import SimFleet, chromium

# Where the screenshot goes besides tmp_path (the docs' copy is made with this set).
SCREENSHOT = os.environ.get("ONNXFLEET_DASHBOARD_SCREENSHOT")


def texts(dom: str, cls: str) -> list[str]:
    return re.findall(r'<text[^>]*class="' + cls + r'"[^>]*>([^<]*)</text>', dom)


def test_the_dashboard_opens_in_a_browser_with_axes_and_a_legend(sim: SimFleet, tmp_path: Path) -> None:
    with FrontDoor(make_pki(tmp_path / "pki"), sim) as door:
        # three seconds of traffic through the public listener, then the last second closes
        for _ in range(3):
            started = time.monotonic()
            for _ in range(8):
                assert door.request().status == 200
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        time.sleep(1.1)
        history = door.status()["history"]
        assert sum(s["answers"] for s in history) == 24
        busiest = max(s["answers"] for s in history)
        slowest = max(s["mean_ms"] or 0 for s in history)

        page = door.admin("GET", "/")
        assert page.status == 200
        assert "default-src 'none'" in (page.header("Content-Security-Policy") or "")

        shot = tmp_path / "dashboard.png"
        dom = chromium(tmp_path / "profile", "--dump-dom", door.admin_url + "/")
        chromium(tmp_path / "profile", "--window-size=900,760", f"--screenshot={shot}", door.admin_url + "/")
        assert shot.stat().st_size > 10_000
        if SCREENSHOT:
            shutil.copyfile(shot, SCREENSHOT)

        # the page ran (its script is allowed by the CSP's hash) and read /status
        assert '<div id="error" role="alert"></div>' in dom
        assert '<tr data-container="c0/0"><td>c0/0</td><td>c0</td><td class="ready">ready</td>' in dom
        # y axes: ticks with units, from 0 to at least the data's maximum
        left = [float(t.removesuffix(" req/s")) for t in texts(dom, "tick y-left")]
        right = [float(t.removesuffix(" ms")) for t in texts(dom, "tick y-right")]
        assert all(t.endswith(" req/s") for t in texts(dom, "tick y-left"))
        assert all(t.endswith(" ms") for t in texts(dom, "tick y-right"))
        for ticks, top in ((left, busiest), (right, slowest)):
            assert ticks == sorted(ticks)
            assert len(ticks) >= 3
            assert ticks[0] == 0
            assert ticks[-1] >= top
        # x axis: a tick on each whole minute of the five shown, as clock times, and its title
        minutes = texts(dom, "tick x")
        assert len(minutes) in (4, 5), minutes
        assert all(re.fullmatch(r"\d\d:\d\d", t) for t in minutes), minutes
        assert texts(dom, "title axis-title") == ["time (hh:mm, this browser's clock)"]
        # a legend entry per series, and each series drawn
        legend = re.findall(r'<li data-series="(\w+)"><span class="swatch \1"></span>([^<]*)</li>', dom)
        assert [name for name, _ in legend] == ["answers", "errors", "latency"]
        assert [text for _, text in legend][2] == "mean latency, ms (right axis)"
        for series in ("answers", "errors", "latency"):
            assert f'data-series="{series}"></polyline>' in dom, series

        # the public listener: a browser (no Bearer) is refused, told where the dashboard is
        public = chromium(tmp_path / "profile", "--ignore-certificate-errors", "--dump-dom", door.url + "/")
        assert '"code": "unauthorized"' in public
        assert "docs/operations.md" in public
        assert "<table" not in public
        assert "c0/0" not in public


def test_the_admin_listener_answers_only_names_that_cannot_be_rebound(sim: SimFleet, tmp_path: Path) -> None:
    """A web page open in the browser that holds the SSH tunnel cannot read the fleet's
    state by making its own host name resolve to 127.0.0.1 (DNS rebinding)."""
    with FrontDoor(make_pki(tmp_path / "pki"), sim) as door:

        def get(path: str, host: str | None) -> tuple[int, dict]:
            conn = http.client.HTTPConnection("127.0.0.1", door.ports.admin, timeout=30)
            try:
                conn.putrequest("GET", path, skip_host=True)
                if host is not None:
                    conn.putheader("Host", host)
                conn.endheaders()
                answer = conn.getresponse()
                body = answer.read()
                return answer.status, json.loads(body) if answer.getheader("Content-Type", "").startswith(
                    "application/json"
                ) else {}
            finally:
                conn.close()

        port = door.ports.admin
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}", None):
            for path in ("/", "/status", "/metrics"):
                assert get(path, host)[0] == 200, (path, host)
        for host in (
            f"evil.example:{port}",
            "evil.example",
            f"127.0.0.1.nip.io:{port}",
            f"localhost.:{port}",
        ):
            for path in ("/", "/status", "/metrics"):
                code, body = get(path, host)
                assert (code, body.get("code")) == (403, "forbidden_host"), (path, host)
                assert "IP address or localhost" in body["error"]
        # the admin API keeps its own check (the token) and is not touched by this one
        assert door.admin("POST", "/admin/reload").status == 200

        # the browser itself, with evil.example resolving to the tunnel's end: refused
        dom = chromium(
            tmp_path / "profile",
            "--host-resolver-rules=MAP evil.example 127.0.0.1",
            "--dump-dom",
            f"http://evil.example:{port}/",
        )
        assert '"code": "forbidden_host"' in dom
        assert "c0/0" not in dom
