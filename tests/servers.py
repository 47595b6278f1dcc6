"""Real server processes on ephemeral ports over test model repositories, and helpers to wait on
them. Test modules import from here (`from servers import start_server`): a module named
`conftest` would be ambiguous, as tests/training has its own.

The server runs in its own process: it is how it runs in production (signals, exit codes), and it
keeps our generated `inference` protobuf package apart from tritonclient's, which defines the same
message names and cannot share one Python process with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60


@dataclass
class ServerProcess:
    process: subprocess.Popen
    grpc_port: int = 0
    metrics_port: int = 0
    log_lines: list[dict] = field(default_factory=list)

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def terminate(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def messages(self) -> list[str]:
        return [line.get("message", "") for line in self.log_lines]


def start_server(repo: Path, *extra_args: str, env: dict | None = None) -> ServerProcess:
    """Start `python -m service serve` on port 0 and wait for its 'serving' log event."""
    command = [
        sys.executable, "-m", "service", "serve", "--models", str(repo), "--host", "127.0.0.1",
        "--grpc-port", "0", "--metrics-port", "0", "--log-format", "json",
        "--intra-op-threads", "1", *extra_args,
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, **(env or {})},
    )
    server = ServerProcess(process)
    ready = threading.Event()

    def drain() -> None:
        # Read every log line (a full pipe would block the server) and spot the 'serving' event.
        for raw in process.stderr:
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                line = {"message": raw.rstrip()}
            server.log_lines.append(line)
            if line.get("event") == "serving":
                server.grpc_port, server.metrics_port = line["grpc_port"], line["metrics_port"]
                ready.set()
        ready.set()  # process exited

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(START_TIMEOUT_S) or not server.grpc_port:
        process.kill()
        raise RuntimeError(f"server did not start: {server.messages()[-20:]}")
    return server


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; the tests' only way to wait on the
    server's state (never a fixed sleep)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def metric_value(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text, or 0.0 when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0
