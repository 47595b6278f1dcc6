"""Smoke tests of the load generators against a real server: Locust's gRPC users (tensor and task
API), the lean closed-loop client the bench uses, and the in-process ceiling. They check the tools
work and report what they saw, never how fast anything was."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servers import metric_value, serving
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
    yield from serving(repo)


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
    assert list(stats) == ["ModelInfer affine b4 generated"]  # no class named: ModelInferUser only
    entry = stats["ModelInfer affine b4 generated"]
    assert entry["method"] == "grpc"
    calls = entry["num_requests"]
    assert calls == 20 and entry["num_failures"] == 0 and entry["total_content_length"] > 0
    text = server.metrics_text()
    assert metric_value(text, "inference_requests_total", model="affine", rpc="ModelInfer",
                        code="OK") >= calls


# The bundled models the task users need, and no more: the server starts in a second or two.
TASK_MODELS = ("fashion_mlp", "dcgan", "cdcgan", "espcn_x2", "conv_autoencoder")


@pytest.fixture(scope="module")
def bundled_server():
    yield from serving(ROOT / "models", *(a for m in TASK_MODELS for a in ("--model", m)))


def run_locust(server, prefix: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless",
         "-u", "2", "-r", "2", "--run-time", "50s", "--host", f"grpc://{server.grpc_address}",
         "--deadline-ms", "10000", "--json-file", str(prefix), "--only-summary",
         "--loglevel", "WARNING", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


def _real(available: bool) -> str:
    return "real" if available else "generated"  # what the user says it sent


def _task_runs():
    from loadtest.payloads import SR_PHOTO, fashion_mnist_images

    images = _real(fashion_mnist_images(1) is not None)
    photo = _real(SR_PHOTO.is_file())
    runs = [
        ("ClassifyUser", "fashion_mlp", ["--batch-size", "4", "--payload", "real"],
         f"Classify fashion_mlp b4 {images} raw"),
        ("GenerateUser", "dcgan", ["--batch-size", "4", "--task-seed", "7"],
         "Generate dcgan b4 raw"),
        ("GenerateUser", "cdcgan", ["--batch-size", "2", "--task-class-label", "3"],
         "Generate cdcgan b2 class3 raw"),
        ("SuperResolveUser", "espcn_x2", ["--payload", "real", "--image-size", "64"],
         f"SuperResolve espcn_x2 b1 {photo} 64x64 raw"),
        ("ReconstructUser", "conv_autoencoder",
         ["--batch-size", "3", "--payload", "generated", "--task-image-format", "png"],
         "Reconstruct conv_autoencoder b3 generated png"),
    ]
    return [pytest.param(*run, id=f"{run[0]}-{run[1]}") for run in runs]


@pytest.mark.parametrize("user, model, args, name", _task_runs())
def test_locust_task_users_call_their_rpc(bundled_server, tmp_path, user, model, args, name):
    prefix = tmp_path / "run"
    result = run_locust(bundled_server, prefix, user, "--model", model, "--max-requests", "12",
                        *args)
    assert result.returncode == 0, result.stdout + result.stderr
    # Its JSON, not its CSVs, for the reason given in the test above.
    stats = {entry["name"]: entry for entry in json.loads(Path(f"{prefix}.json").read_text())}
    assert list(stats) == [name]
    entry = stats[name]
    assert entry["method"] == "grpc"
    assert entry["num_requests"] == 12 and entry["num_failures"] == 0
    assert entry["total_content_length"] > 0
    rpc = name.split()[0]
    assert metric_value(bundled_server.metrics_text(), "inference_requests_total", model=model,
                        rpc=rpc, code="OK") >= 12


def test_locust_task_user_refuses_a_model_of_another_kind(bundled_server, tmp_path):
    prefix = tmp_path / "run"
    started = time.monotonic()
    result = run_locust(bundled_server, prefix, "ClassifyUser", "--model", "espcn_x2")
    assert result.returncode == 1, result.stdout + result.stderr
    # Quits at once instead of idling (or failing every call) until --run-time is up.
    assert time.monotonic() - started < 30
    reason = ("ClassifyUser: model 'espcn_x2' is a super_resolution model; Classify needs a "
              "classifier model")
    assert result.stderr.count(reason) == 1  # once per process, not once per user
    assert json.loads(Path(f"{prefix}.json").read_text()) == []


# Under --processes the master's exit code is the run's (it never reads its workers'), and one
# line says why, however many workers were refused.
@pytest.mark.parametrize("args, reason", [
    (["ClassifyUser", "--model", "espcn_x2"],
     "ClassifyUser: model 'espcn_x2' is a super_resolution model; Classify needs a classifier "
     "model"),
    (["--model", "missing"],
     "ModelInferUser: ModelMetadata('missing') failed: NOT_FOUND: model 'missing' is not loaded; "
     f"loaded models: {sorted(TASK_MODELS)}"),
], ids=["wrong-kind", "missing-model"])
def test_locust_master_of_two_processes_exits_1_on_a_refused_model(bundled_server, tmp_path,
                                                                    args, reason):
    prefix = tmp_path / "run"
    result = run_locust(bundled_server, prefix, "--processes", "2", *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.count(reason) == 1, result.stderr  # by the master, not per worker
    assert "Traceback" not in result.stderr
    assert json.loads(Path(f"{prefix}.json").read_text()) == []


def test_locust_master_of_two_processes_counts_its_workers_failures(server, tmp_path):
    """Each worker quits by itself at --max-requests; its last failures still reach the master,
    whose exit code is then --exit-code-on-error."""
    name = "ModelInfer affine b16 generated"  # affine's max_batch_size is 8: every call fails
    before = metric_value(server.metrics_text(), "inference_requests_total", model="affine",
                          rpc="ModelInfer", code="INVALID_ARGUMENT")
    prefix = tmp_path / "run"
    result = run_locust(server, prefix, "--processes", "2", "--max-requests", "5",
                        "--exit-code-on-error", "3", "--model", "affine", "--batch-size", "16",
                        "--payload", "generated")
    assert result.returncode == 3, result.stdout + result.stderr
    stats = {entry["name"]: entry for entry in json.loads(Path(f"{prefix}.json").read_text())}
    assert list(stats) == [name]
    assert stats[name]["num_requests"] == 10 and stats[name]["num_failures"] == 10  # 5 a worker
    after = metric_value(server.metrics_text(), "inference_requests_total", model="affine",
                         rpc="ModelInfer", code="INVALID_ARGUMENT")
    assert after - before == 10


def test_closed_loop_client_reports_calls_cpu_and_server_batches(server, repo):
    from loadtest import harness
    from loadtest.payloads import infer_request_bytes, make_inputs, signature_from_config

    signature = signature_from_config(repo / "affine")
    inputs, used = make_inputs(signature, 2, "real")
    assert used == "generated"  # not an image input: real data falls back
    body = infer_request_bytes("affine", inputs, signature)
    result = harness.closed_loop(server.grpc_address, body, clients=4, batch_size=2,
                                 seconds=0.5, warmup=0.1, server=server)
    assert result.calls > 0 and result.errors == 0
    assert result.items_per_s == result.calls * 2 / 0.5
    assert 0 <= result.client_cpu and result.server_cpu is not None
    assert 2 <= result.mean_batch("affine") <= 8  # requests of 2 items, max_batch_size 8
    assert result.p50_ms <= result.percentile_ms(99)


def test_rest_client_sends_binary_tensors_and_counts_each_answered_call(server, repo):
    """The REST load generator's request is a binary-extension infer call the server answers
    correctly (outputs checked here byte for byte), and its closed loop counts what it sent."""
    import urllib.request

    import numpy as np

    from loadtest import rest
    from loadtest.payloads import make_inputs, signature_from_config

    request = rest.payload(repo / "affine", 3, server.http_address)
    head, body = request.split(b"\r\n\r\n", 1)
    request_line, *header_lines = head.decode().split("\r\n")
    method, path, _ = request_line.split(" ")
    headers = dict(line.split(": ", 1) for line in header_lines)
    with urllib.request.urlopen(urllib.request.Request(
            server.http_url + path, data=body, method=method, headers=headers), timeout=10) as reply:
        length = int(reply.headers["Inference-Header-Content-Length"])
        answer = reply.read()
    (output,) = json.loads(answer[:length])["outputs"]
    assert output == {"name": "y", "datatype": "FP32", "shape": [3, 4],
                      "parameters": {"binary_data_size": 48}}
    inputs, _ = make_inputs(signature_from_config(repo / "affine"), 3, "real")
    np.testing.assert_array_equal(np.frombuffer(answer[length:], np.float32).reshape(3, 4),
                                  inputs["x"] * 2 + 1)

    def answered() -> float:
        return metric_value(server.metrics_text(), "inference_requests_total", model="affine",
                            rpc="ModelInfer", code="OK", protocol="http")

    before = answered()
    result = rest.closed_loop(server.http_address, request, clients=4, batch_size=3,
                              seconds=0.5, warmup=0.0, server=server)
    assert result.calls > 0 and result.errors == 0
    assert result.items_per_s == result.calls * 3 / 0.5
    assert result.server_cpu is not None and 3 <= result.mean_batch("affine") <= 8
    # Besides the timed calls (no warm-up here): one check per connection, and at most one call
    # per connection still running when the window closed.
    assert result.calls + 4 <= answered() - before <= result.calls + 4 + 4

    missing = rest.infer_request(server.http_address, "missing", inputs, ["y"])
    with pytest.raises(rest.HttpError, match="answered with 404"):
        rest.closed_loop(server.http_address, missing, 1, 3, 0.1, warmup=0.0)


def test_ceiling_runs_the_same_model_in_process(repo):
    from loadtest.ceiling import measure

    results = measure(repo / "affine", [1, 8], seconds=0.05)
    assert set(results) == {1, 8}
    assert all(r["runs"] >= 5 and r["items_per_s"] > 0 for r in results.values())


def test_sweep_ceiling_process_measures_a_window_per_request(repo):
    from loadtest.sweep import Ceiling

    ceiling = Ceiling([], repo / "affine", "generated")
    try:
        windows = [ceiling.window(batch, 0.05) for batch in (1, 8, 1)]
    finally:
        ceiling.close()
    assert all(w["runs"] >= 5 and w["items_per_s"] > 0 and w["items_per_cpu_s"] > 0
               for w in windows)
