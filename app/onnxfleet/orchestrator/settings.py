"""The orchestrator's settings and their defaults, written once: the command line's
defaults are these (cli.py), and this module imports nothing heavy, so that
``onnxfleet orchestrator --help`` stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class HealthSpec:
    path: str = "/readyz"
    interval_s: float = 1.0
    timeout_s: float = 1.0
    fall: int = 2
    rise: int = 2


@dataclass(frozen=True)
class Settings:
    routes_path: str
    admin_token: str | None = None
    api_token: str | None = None  # raw, from $ONNXFLEET_API_TOKEN (development)
    api_tokens_path: str | None = None  # hashed, re-read on reload
    state_dir: Path | None = None
    admin_listener: bool = False  # /admin/* has its own listener (--admin-bind)
    upstream_timeout_s: float = 60.0
    retries: int = 2
    job_ttl_s: float = 300.0
    max_jobs: int = 1000
    max_job_bytes: int = 256 * 1024 * 1024
    max_body_bytes: int = 8 * 1024 * 1024
    max_queue_bytes: int = 64 * 1024 * 1024
    health_defaults: HealthSpec = field(default_factory=HealthSpec)
    access_log: bool = True
