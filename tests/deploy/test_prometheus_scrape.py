"""A real Prometheus (Debian's binary) scrapes a running server; a p95 latency comes back through
Prometheus's HTTP query API, as the dashboard and the SLO alert read it."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml

from servers import wait_for
from onnx_builders import affine_config, affine_graph, write_model

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/onnx-serve.yml"
P95 = ('histogram_quantile(0.95, sum by (le, model) (rate('
       'inference_request_duration_seconds_bucket{rpc="ModelInfer",model="affine"}[1m])))')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus:
    def __init__(self, tmp_path: Path, target: str):
        binary = shutil.which("prometheus")
        assert binary, "Debian's prometheus is missing: run `make apt-deps`"
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            # Fast enough that the test waits for a couple of scrapes, not for minutes.
            "global": {"scrape_interval": "200ms", "scrape_timeout": "150ms",
                       "evaluation_interval": "200ms"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "onnx-serve",
                                "static_configs": [{"targets": [target]}]}],
        }))
        self.port = free_port()
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )

    def get(self, path: str):
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except (urllib.error.URLError, ConnectionError):
            assert self.process.poll() is None, self.process.stderr.read()
            return None, ""

    def query(self, expr: str) -> list[dict]:
        status, body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if status != 200:
            return []
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture
def server(tmp_path, server_factory):
    repo = tmp_path / "repo"
    write_model(repo, "affine", affine_graph(2.0, 1.0), affine_config())
    return server_factory(repo)


@pytest.fixture
def prometheus(tmp_path, server):
    instance = Prometheus(tmp_path, f"127.0.0.1:{server.metrics_port}")
    yield instance
    instance.stop()


def infer(client, count: int) -> None:
    x = triton.InferInput("x", [2, 4], "FP32")
    x.set_data_from_numpy(np.arange(8, dtype=np.float32).reshape(2, 4))
    for _ in range(count):
        client.infer("affine", [x])


def test_prometheus_reads_p95_latency_from_a_running_server(server, prometheus):
    with triton.InferenceServerClient(server.grpc_address) as client:
        infer(client, 1)
        wait_for(lambda: prometheus.get("/-/ready")[0] == 200, what="prometheus ready")
        # A first scrape that already holds the series, so that rate() sees them grow.
        wait_for(lambda: prometheus.value(
            'inference_request_duration_seconds_count{model="affine",rpc="ModelInfer"}') == 1,
            what="a scrape with the first call")
        infer(client, 20)

    assert prometheus.value('up{job="onnx-serve"}') == 1
    p95 = wait_for(lambda: prometheus.value(P95), what="p95 from rate() over two scrapes")
    assert math.isfinite(p95) and 0 < p95 <= 10, p95  # inside the service's bucket range

    codes = wait_for(lambda: prometheus.query(
        'sum by (model, code) (inference_requests_total{rpc="ModelInfer"}) == 21'),
        what="21 answered calls")
    assert codes[0]["metric"] == {"model": "affine", "code": "OK"}
    # The shipped recording rule computes the same quantile family from the same data.
    recorded = wait_for(lambda: prometheus.value(
        'model:inference_request_duration_seconds:p95_5m{model="affine"}'),
        what="recording rule evaluated")
    assert math.isfinite(recorded) and 0 < recorded <= 10
