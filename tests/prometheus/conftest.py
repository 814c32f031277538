"""Debian's prometheus and promtool (make setup), and the edge's test CA, for this suite."""

from __future__ import annotations

import pytest

from tests.edge.pki import Pki, make_pki
from tests.prometheus.prom_support import PROMETHEUS, PROMTOOL


@pytest.fixture(autouse=True, scope="session")
def _prometheus_unpacked() -> None:
    missing = [str(path) for path in (PROMETHEUS, PROMTOOL) if not path.exists()]
    assert not missing, f"no {', '.join(missing)}: run make setup (it unpacks Debian's prometheus package)"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
