"""The load client (`onnxfleet load`) and its importable engine::

    from onnxfleet.load import BackgroundLoad, LoadPlan, run_load

    results = run_load(LoadPlan("http://127.0.0.1:8080", n=100, concurrency=5))

The engine is imported on first use: `onnxfleet --help` and the container health check
import this package and must not pay for asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnxfleet.load.runner import (
        BackgroundLoad,
        LoadPlan,
        Progress,
        RequestRecord,
        Results,
        run_load,
        target_url,
    )

__all__ = ["BackgroundLoad", "LoadPlan", "Progress", "RequestRecord", "Results", "run_load", "target_url"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("onnxfleet.load.runner"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
