"""Fixtures shared by every test folder; the helpers behind them live in servers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from servers import ServerProcess, start_server


@pytest.fixture
def server_factory():
    """Start servers with start_server(...); every one is stopped after the test."""
    started: list[ServerProcess] = []

    def factory(repo: Path, *extra_args: str, **kwargs) -> ServerProcess:
        server = start_server(repo, *extra_args, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


