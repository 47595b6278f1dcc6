"""Smoke tests of the load generators against a real server: Locust's gRPC user, the lean
closed-loop client the bench uses, and the in-process ceiling. They check the tools work and
report what they saw, never how fast anything was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from servers import metric_value
from onnx_builders import affine_config, affine_graph, write_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "affine", affine_graph(2.0, 1.0), affine_config(
        task={"kind": "tensor"}))
    return repo


@pytest.fixture(scope="module")
def server(repo):
    from servers import start_server

    process = start_server(repo)
    yield process
    assert process.terminate() == 0


def test_locust_user_sends_model_infer_over_grpc(server, tmp_path):
    prefix = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless",
         "-u", "2", "-r", "2", "--max-requests", "20", "--run-time", "50s",
         "--host", f"grpc://{server.grpc_address}",
         "--model", "affine", "--batch-size", "4", "--payload", "generated",
         "--deadline-ms", "5000", "--json-file", str(prefix), "--only-summary",
         "--loglevel", "WARNING"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Locust's CSV writer runs every few seconds and can miss a short run; its JSON is final.
    stats = {entry["name"]: entry for entry in json.loads(Path(f"{prefix}.json").read_text())}
    entry = stats["ModelInfer affine b4 generated"]
    assert entry["method"] == "grpc"
    calls = entry["num_requests"]
    assert calls == 20 and entry["num_failures"] == 0 and entry["total_content_length"] > 0
    text = server.metrics_text()
    assert metric_value(text, "inference_requests_total", model="affine", rpc="ModelInfer",
                        code="OK") >= calls


def test_closed_loop_client_reports_calls_cpu_and_server_batches(server, repo):
    from loadtest import harness
    from loadtest.payloads import infer_request_bytes, make_inputs, signature_from_config

    signature = signature_from_config(repo / "affine")
    inputs, used = make_inputs(signature, 2, "real")
    assert used == "generated"  # not an image input: real data falls back
    body = infer_request_bytes("affine", inputs, signature)
    probe = harness.Server(server.process, server.grpc_port, server.metrics_port)
    result = harness.closed_loop(server.grpc_address, body, clients=4, batch_size=2,
                                 seconds=0.5, warmup=0.1, server=probe)
    assert result.calls > 0 and result.errors == 0
    assert result.items_per_s == result.calls * 2 / 0.5
    assert 0 <= result.client_cpu and result.server_cpu is not None
    assert 2 <= result.mean_batch("affine") <= 8  # requests of 2 items, max_batch_size 8
    assert result.p50_ms <= result.percentile_ms(99)


def test_ceiling_runs_the_same_model_in_process(repo):
    from loadtest.ceiling import measure

    results = measure(repo / "affine", [1, 8], seconds=0.05)
    assert set(results) == {1, 8}
    assert all(r["runs"] >= 5 and r["items_per_s"] > 0 for r in results.values())
