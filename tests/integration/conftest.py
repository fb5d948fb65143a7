"""Shared fixtures: a real server subprocess on a free port, and real MCP clients.

The helpers the test modules import are in ``tests/helpers.py`` (clients, the test
projects folder, ``running_server``) and ``tests/launchers.py`` (the server, gateway
and Redis launchers, and the process helpers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TRANSPORTS, client_for, running_server
from tests.launchers import ServerProcess


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="session")
def server(shared_tmp: Path) -> Iterator[ServerProcess]:
    """The default server every transport test shares."""
    with running_server(shared_tmp, PYTHON_TIMEOUT="20") as srv:
        yield srv


@pytest.fixture(scope="session", params=TRANSPORTS)
async def client(request: pytest.FixtureRequest, server: ServerProcess) -> AsyncIterator[Any]:
    """One long-lived client per transport; tests using it run once per transport."""
    async with client_for(request.param, server) as connected:
        connected.kind = request.param
        yield connected
