"""One stand-in fleet for the whole load suite; each test starts from zeroed counts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.load.load_support import LoadServer


@pytest.fixture(scope="session")
def load_server_session() -> Iterator[LoadServer]:
    with LoadServer() as server:
        yield server


@pytest.fixture
def server(load_server_session: LoadServer) -> LoadServer:
    load_server_session.reset_counts()
    return load_server_session
