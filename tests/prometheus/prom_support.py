"""Debian's Prometheus and promtool (unpacked by make setup in .cache/prometheus) and the
prometheus role's templates rendered by Ansible, as the role deploys them."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.ansible.ansible_support import render_role_template
from tests.support import ROOT, free_port, wait_for

ROLE = ROOT / "roles" / "prometheus"
BIN = ROOT / ".cache" / "prometheus" / "usr" / "bin"
PROMETHEUS = BIN / "prometheus"
PROMTOOL = BIN / "promtool"


def render(template: str, dest: Path, **variables: Any) -> Path:
    """One of the role's templates, rendered by Ansible with its defaults, its vars and
    ``variables``."""
    return render_role_template(ROLE, template, dest, variables)


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROMTOOL), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


class Prometheus:
    """``prometheus`` on a loopback port with a configuration file and its own data dir."""

    def __init__(self, config: Path, work: Path) -> None:
        self.config = config
        self.port = free_port()
        self.work = work
        self.log_path = work / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Prometheus:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={self.config}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    f"--storage.tsdb.path={self.work / 'data'}",
                    "--web.console.templates=/nonexistent",
                    "--web.console.libraries=/nonexistent",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._ready, timeout=60, what="prometheus ready")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr, time=str(time.time()))
        return list(data["result"])
