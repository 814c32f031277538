"""The test CA of the edge, once for this suite."""

from __future__ import annotations

import pytest

from tests.edge.pki import Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
