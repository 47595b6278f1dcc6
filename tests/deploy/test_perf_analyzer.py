"""Triton's perf_analyzer (`make perf-analyzer`) against a real server over gRPC and REST, plain,
streaming and with its tensors in system shared memory: it runs unchanged, and the server-side split it prints, read from our statistics (the ModelStatistics RPC,
GET .../stats), accounts for the server's request time. Nothing here asserts how fast anything
was."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from onnx_builders import affine_config, affine_graph, write_model
from servers import metric_total, metric_value

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 500
SERVER_SPLIT = re.compile(
    r"Server: \n\s+Inference count: \d+\n\s+Execution count: \d+\n"
    r"\s+Successful request count: (?P<requests>\d+)\n"
    r"\s+Avg request latency: (?P<total>\d+) usec \(overhead (?P<overhead>\d+) usec \+ "
    r"queue (?P<queue>\d+) usec \+ compute input (?P<input>\d+) usec \+ "
    r"compute infer (?P<infer>\d+) usec \+ compute output (?P<output>\d+) usec\)")


def perf_analyzer() -> str:
    path = Path(os.environ.get("PERF_ANALYZER", ROOT / ".venv/perf-analyzer/perf_analyzer"))
    assert os.access(path, os.X_OK), f"perf_analyzer not found at {path}: run `make perf-analyzer`"
    return str(path)


MODES = {  # id: (protocol, perf_analyzer's options, the RPC its calls are counted under)
    "grpc": ("grpc", [], "ModelInfer"),
    "http": ("http", [], "ModelInfer"),
    "grpc-streaming": ("grpc", ["--streaming"], "ModelStreamInfer"),
    "grpc-shared-memory": ("grpc", ["--shared-memory", "system"], "ModelInfer"),
    "http-shared-memory": ("http", ["--shared-memory", "system"], "ModelInfer"),
}


@pytest.mark.parametrize("mode", MODES)
def test_perf_analyzer_prints_the_server_split(server_factory, mode):
    protocol, options, rpc = MODES[mode]
    server = server_factory(ROOT / "models", "--model", "fashion_cnn")
    address = server.grpc_address if protocol == "grpc" else server.http_address
    before = server.metrics_text()
    calls = {"model": "fashion_cnn", "rpc": rpc}
    ok_before = metric_value(before, "inference_requests_total", code="OK", **calls)
    all_before = metric_total(before, "inference_requests_total", **calls)
    result = subprocess.run(
        [perf_analyzer(), "-m", "fashion_cnn", "-i", protocol, "-u", address,
         "--concurrency-range", "1", "--request-count", str(REQUESTS), *options],
        capture_output=True, text=True, timeout=120)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said

    client = re.search(r"Client: \n\s+Request count: (\d+)\n\s+Throughput: ([\d.]+) infer/sec",
                       result.stdout)
    assert client, said
    assert int(client[1]) == REQUESTS and float(client[2]) > 0
    # Every call it sent answered OK (the server's own count), and no call of any other code.
    text = server.metrics_text()
    assert metric_value(text, "inference_requests_total", code="OK", **calls) - ok_before \
        == REQUESTS
    assert metric_total(text, "inference_requests_total", **calls) - all_before == REQUESTS

    split = SERVER_SPLIT.search(result.stdout)
    assert split, said
    parts = {k: int(v) for k, v in split.groupdict().items()}
    assert parts["requests"] == REQUESTS
    assert parts["infer"] > 0
    # The overhead is what perf_analyzer derives: request time in none of the parts our
    # statistics report. At concurrency 1 nothing queues behind anything, so it is the servicer's
    # own bookkeeping around the batcher, a small share of the request.
    assert parts["overhead"] < parts["total"] / 4, parts


def test_perf_sweep_pairs_delays_in_alternating_rounds(tmp_path):
    from loadtest import perf_sweep

    write_model(tmp_path, "affine", affine_graph(2.0, 1.0), affine_config())
    # Stability 1000%: any three windows count as stable, so no measurement comes back empty.
    summary = perf_sweep.run(tmp_path, ["affine"], ["0", "2000"], [1, 2], rounds=2,
                             window_ms={"affine": 200}, stability=1000, cores=([], []))
    order = [(w.round, w.concurrency, w.config) for w in summary.measurements]
    assert order == [(0, 1, "d0"), (0, 1, "d2000"), (0, 2, "d0"), (0, 2, "d2000"),
                     (1, 1, "d2000"), (1, 1, "d0"), (1, 2, "d2000"), (1, 2, "d0")]
    assert all(w.infer_per_s > 0 and w.p99_us >= w.p50_us > 0 and w.mean_batch >= 1
               for w in summary.measurements)
    ratio, where = summary.lowest_config_ratio()
    assert ratio > 0 and where.startswith("affine d2000/d0, ")
    ratio, where = summary.lowest_step_ratio()
    assert ratio > 0 and where.startswith("affine d") and where.endswith("1 -> 2 clients")
    table = summary.table()
    assert "| clients | d0 infer/s |" in table and table.count("\n| 1 | ") == 1
