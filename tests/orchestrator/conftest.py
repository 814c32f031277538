"""One sim-backend process for the whole suite; each test resets it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.orchestrator.orch_support import SimFleet

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
