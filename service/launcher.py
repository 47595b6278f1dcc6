"""The one way tests, benchmarks and scripts start a server: `python -m service` in its own
process (signals, exit codes and protobuf packages as in production), on port 0 unless told
otherwise, ready once its JSON log says `serving`; and readers for what it exposes (metrics,
histograms, CPU time, RSS).

This module imports nothing of the server itself, so clients that use tritonclient's protobuf
stubs (whose `inference` package collides with ours) can use it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class ServerProcess:
    process: subprocess.Popen
    grpc_port: int = 0
    metrics_port: int = 0
    log_lines: list[dict] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def messages(self) -> list[str]:
        return [line.get("message", "") for line in self.log_lines]

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def cpu_seconds(self) -> float:
        return stat_cpu_seconds(Path(f"/proc/{self.pid}/stat").read_text())

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (a drain) and the exit code; killed if it has not exited within `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def start_server(repo: Path, *flags: str, grpc_port: int = 0, pin: list[str] | None = None,
                 env: dict | None = None, log_path: Path | None = None,
                 timeout: float = 120) -> ServerProcess:
    """Start a server over `repo` on 127.0.0.1 (metrics on a free port, JSON logs, one intra-op
    thread unless `flags` say otherwise) and return once it serves. `pin` is a command prefix
    such as `taskset -c 0`; `log_path`, when given, receives every log line as it comes."""
    command = [*(pin or []), sys.executable, "-m", "service", "--models", str(repo),
               "--host", "127.0.0.1", "--grpc-port", str(grpc_port), "--metrics-port", "0",
               "--log-format", "json", "--intra-op-threads", "1", *flags]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    server = ServerProcess(process)
    ready = threading.Event()

    def drain() -> None:
        # Read every log line (a full pipe would block the server) and spot the 'serving' event.
        sink = log_path.open("a") if log_path else None
        for raw in process.stderr:
            if sink:
                sink.write(raw)
                sink.flush()
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                line = {"message": raw.rstrip()}
            server.log_lines.append(line)
            if line.get("event") == "serving":
                server.grpc_port, server.metrics_port = line["grpc_port"], line["metrics_port"]
                ready.set()
        ready.set()  # the process exited
        if sink:
            sink.close()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(timeout) or not server.grpc_port:
        process.kill()
        raise RuntimeError(f"server did not start: {server.messages()[-20:]}")
    return server


def stat_cpu_seconds(stat: str) -> float:
    """User plus system CPU seconds from a /proc/<pid>[/task/<tid>]/stat line."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _samples(text: str, name: str, labels: dict):
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                yield sample.value


def metric_value(text: str, name: str, **labels) -> float:
    """The value of the first sample in Prometheus text matching `labels`, or 0.0 if none."""
    return next(_samples(text, name, labels), 0.0)


def metric_total(text: str, name: str, **labels) -> float:
    """The sum over every sample matching `labels` (e.g. a counter over all its versions)."""
    return sum(_samples(text, name, labels))


def histogram_totals(text: str, name: str, **labels) -> tuple[float, float]:
    """(sum, count) of one histogram over every series matching `labels`."""
    return metric_total(text, name + "_sum", **labels), metric_total(text, name + "_count",
                                                                     **labels)


def wait_for(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.005):
    """Poll `predicate` until it returns a truthy value (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
