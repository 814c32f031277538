"""Run an app under gunicorn from our own CLI (no gunicorn command line, no app string)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

# gunicorn merges its own logging defaults into logconfig_dict (text handlers on
# gunicorn.error, an access log on gunicorn.access): send its messages to our JSON root
# handler (onnxfleet.logs) and drop its access lines; services log one JSON line per
# request themselves.
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {},
    "loggers": {
        "gunicorn.error": {"handlers": [], "propagate": True},
        "gunicorn.access": {"handlers": [], "propagate": False},
    },
}
# Settings every onnxfleet service wants: heartbeat files in memory (the containers run
# with a read-only root filesystem), no control socket file, our logging.
BASE_OPTIONS: dict[str, Any] = {
    "worker_tmp_dir": "/dev/shm",
    "accesslog": None,
    "logconfig_dict": LOGGING,
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
