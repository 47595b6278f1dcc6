"""Real server processes for the tests: service.launcher's, re-exported so test modules import
them as `from servers import start_server` (a module named `conftest` would be ambiguous, as
tests/training has its own).

The server runs in its own process: it is how it runs in production (signals, exit codes), and it
keeps our generated `inference` protobuf package apart from tritonclient's, which defines the same
message names and cannot share one Python process with it.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from service.launcher import (  # noqa: F401 - re-exported for the test modules
    ROOT, ServerProcess, histogram_totals, metric_total, metric_value, start_server, wait_for,
)


def http_status(url: str) -> int:
    """The HTTP status a GET of `url` answers, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def serving(repo: Path, *flags: str, **kwargs) -> Iterator[ServerProcess]:
    """A server for a fixture, `yield from serving(repo, ...)`: started with start_server, and
    after the tests it served, stopped with the exit code a clean drain gives (0)."""
    process = start_server(repo, *flags, **kwargs)
    yield process
    assert process.terminate() == 0
