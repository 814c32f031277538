"""Run an app under gunicorn from our own CLI (no gunicorn command line, no app string)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

# Settings every onnxfleet service wants: heartbeat files in memory (the containers run
# with a read-only root filesystem), no gunicorn access log (services log JSON
# themselves), and a log config that leaves our JSON handler alone.
BASE_OPTIONS: dict[str, Any] = {
    "worker_tmp_dir": "/dev/shm",
    "accesslog": None,
    "logconfig_dict": {"version": 1, "disable_existing_loggers": False, "root": {}},
    "control_socket_disable": True,
}


class _Application(BaseApplication):
    def __init__(self, factory: Callable[[], Any], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = {**BASE_OPTIONS, **options}
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        # Called in the worker process after fork: models and event loops are created
        # there, never inherited from the arbiter.
        return self.factory()


def serve(factory: Callable[[], Any], options: dict[str, Any]) -> None:
    """Block serving ``factory()`` with gunicorn ``options`` (bind, workers, worker_class...)."""
    _Application(factory, options).run()
