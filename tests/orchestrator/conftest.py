"""One sim-backend process for the whole suite; each test resets it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from orch_support import SimFleet

SERVICE_MS = 50.0


@pytest.fixture(scope="session")
def sim_fleet() -> Iterator[SimFleet]:
    fleet = SimFleet(size=6, service_ms=SERVICE_MS)
    with fleet.service:
        yield fleet


@pytest.fixture
def sim(sim_fleet: SimFleet) -> SimFleet:
    """The shared fake fleet, every port back to ``ok`` with fresh counters."""
    sim_fleet.reset()
    return sim_fleet
