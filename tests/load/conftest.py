"""One stand-in fleet for the whole load suite; each test starts from zeroed counts."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_support import LoadServer


@pytest.fixture(scope="session")
def load_server_session() -> Iterator[LoadServer]:
    with LoadServer() as server:
        yield server


@pytest.fixture
def server(load_server_session: LoadServer) -> LoadServer:
    load_server_session.reset_counts()
    return load_server_session
