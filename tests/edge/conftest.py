"""One certificate authority and one sim-backend process for the edge suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.edge.pki import Pki, make_pki
from tests.orchestrator.orch_support import SimFleet


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def sim_fleet() -> Iterator[SimFleet]:
    fleet = SimFleet(size=4, service_ms=20.0)
    with fleet.service:
        yield fleet


@pytest.fixture
def sim(sim_fleet: SimFleet) -> SimFleet:
    """The shared fake containers, every one back to ``ok`` with fresh counters."""
    sim_fleet.reset()
    return sim_fleet
