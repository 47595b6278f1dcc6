"""Start-up as a new user meets it: the command's words, busy ports, a wrong repository, an unusable
device, unreadable files; each a non-zero exit with one line on stderr, never a traceback; and a
gRPC port that opens only once the startup models are loaded."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2_grpc

from onnx_builders import affine_config, affine_graph, slow_start_graph, write_model
from servers import ROOT, ServerProcess
from support import fp32_request, output
from service.cli import flag_of
from service.settings import ServerSettings

ONNX_SERVE = Path(sys.executable).parent / "onnx-serve"


def run_serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def one_line_failure(result: subprocess.CompletedProcess) -> str:
    """The start failed with exit code 2 and exactly one line on stderr, which is returned."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("serve: "), lines[0]
    return lines[0]


def quiet_flags(repo: Path, grpc_port: int = 0, metrics_port: int = 0,
                http_port: int = 0) -> list[str]:
    """Flags for a start that should fail before serving; warnings only, so that stderr holds
    nothing but the failure line."""
    return ["--models", str(repo), "--host", "127.0.0.1", "--grpc-port", str(grpc_port),
            "--http-port", str(http_port), "--metrics-port", str(metrics_port),
            "--log-level", "WARNING"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("repo")
    write_model(path, "affine", affine_graph(1.0, 0.0), affine_config())
    return path


# -- the command -----------------------------------------------------------------------------

def test_installed_command_and_module_take_the_same_words(repo, server_factory):
    for command in ([str(ONNX_SERVE)], [sys.executable, "-m", "service"],
                    [sys.executable, "-m", "service", "serve"]):
        result = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: onnx-serve"), result.stdout[:200]
        assert "--models MODELS" in result.stdout
    # `onnx-serve --models ...` serves, as the README says.
    server = server_factory(repo)
    assert server.process.args[:3] == [sys.executable, "-m", "service"]
    assert server.process.args[3] == "--models"


def test_help_lists_every_setting_with_its_default_and_environment_variable():
    result = run_serve("--help")
    text = " ".join(result.stdout.split())
    for name, field in ServerSettings.model_fields.items():
        flag = flag_of(name, field)
        if not flag:  # secrets: environment only
            assert name in ("api_keys", "admin_keys")
            continue
        assert flag in text, flag
        assert f"env ONNXSERVE_{name.upper()};" in text, name


def test_a_mistyped_flag_is_one_line():
    result = run_serve("--grpc-prot", "9000")
    assert result.returncode == 2
    assert result.stderr.strip() == \
        "onnx-serve: unrecognized arguments: --grpc-prot 9000 (see --help)"


def test_settings_that_go_together_are_one_line(repo, tmp_path):
    line = one_line_failure(run_serve(*quiet_flags(repo), "--tls-cert", str(tmp_path / "c.pem")))
    assert line == ("serve: settings: Value error, tls_cert_file and tls_key_file go together; "
                    "give both or neither")


# -- ports -----------------------------------------------------------------------------------

def test_a_second_server_on_a_busy_grpc_port_fails_instead_of_sharing_it(repo, server_factory):
    first = server_factory(repo)
    line = one_line_failure(run_serve(*quiet_flags(repo, grpc_port=first.grpc_port)))
    assert line == (f"serve: the gRPC port {first.grpc_port} on 127.0.0.1 is in use by another "
                    "process (choose another with --grpc-port, or 0 for any free one)")
    # A listener that allows sharing (SO_REUSEPORT, gRPC's own default) is refused as well.
    with socket.socket() as sharing:
        sharing.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sharing.bind(("127.0.0.1", 0))
        sharing.listen()
        port = sharing.getsockname()[1]
        line = one_line_failure(run_serve(*quiet_flags(repo, grpc_port=port)))
        assert f"the gRPC port {port} on 127.0.0.1 is in use" in line


def test_reuse_port_shares_a_port_on_purpose(repo, server_factory):
    port = free_port()
    first = server_factory(repo, "--reuse-port", grpc_port=port)
    second = server_factory(repo, "--reuse-port", grpc_port=port)
    assert first.grpc_port == second.grpc_port == port
    assert first.process.poll() is None and second.process.poll() is None


def test_a_busy_http_port_fails_the_start_and_minus_one_turns_rest_off(repo, server_factory):
    first = server_factory(repo)
    line = one_line_failure(run_serve(*quiet_flags(repo, http_port=first.http_port)))
    assert line == (f"serve: the HTTP port {first.http_port} on 127.0.0.1 is in use by another "
                    "process (choose another with --http-port, or 0 for any free one)")
    without_rest = server_factory(repo, http_port=-1)
    assert without_rest.http_port == -1
    assert "http_port=-1" in " ".join(without_rest.messages())


def test_a_busy_metrics_port_fails_the_start(repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_failure(run_serve(*quiet_flags(repo, metrics_port=port)))
    assert line == (f"serve: the metrics port {port} on 127.0.0.1 is in use by another process "
                    "(choose another with --metrics-port, or 0 for any free one)")


# -- repository, models, device, files -------------------------------------------------------

def test_a_missing_repository_is_an_error_naming_the_path(tmp_path):
    missing = tmp_path / "mdoels"
    assert one_line_failure(run_serve(*quiet_flags(missing))) == \
        f"serve: model repository {missing} does not exist"
    a_file = tmp_path / "models.txt"
    a_file.write_text("not a directory")
    assert one_line_failure(run_serve(*quiet_flags(a_file))) == \
        f"serve: model repository {a_file} is not a directory"


def test_an_empty_repository_starts_with_a_warning(tmp_path, server_factory):
    empty = tmp_path / "empty"
    empty.mkdir()
    server = server_factory(empty)
    warnings = [line["message"] for line in server.log_lines if line.get("level") == "WARNING"]
    assert warnings == [f"model repository {empty} has no models; load them with "
                        "RepositoryModelLoad once they are there"]
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING  # nothing asked for, nothing missing


def test_a_startup_model_not_in_the_repository_is_an_error(repo):
    line = one_line_failure(run_serve(*quiet_flags(repo), "--model", "afine"))
    assert line == (f"serve: startup model(s) ['afine'] not in repository {repo}; "
                    "it has ['affine']")


def test_cuda_requested_without_cuda_is_one_line(repo):
    line = one_line_failure(run_serve(*quiet_flags(repo), "--device", "cuda"))
    assert line.startswith("serve: device 'cuda' requested but CUDA is not usable: ")


def test_an_unreadable_tls_or_key_file_is_one_line(repo, tmp_path):
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    line = one_line_failure(run_serve(*quiet_flags(repo), "--tls-cert", str(cert),
                                      "--tls-key", str(key)))
    assert line == f"serve: tls_key_file {key}: No such file or directory"
    keys = tmp_path / "keys.txt"
    line = one_line_failure(run_serve(*quiet_flags(repo), "--api-keys-file", str(keys)))
    assert line == f"serve: api_keys_file {keys}: No such file or directory"


def test_a_cpu_start_prints_no_cuda_library_noise(repo, server_factory):
    server = server_factory(repo)  # device auto, as a new user starts it
    text = "\n".join(server.messages())
    assert "Failed to load" not in text and "Please follow" not in text
    assert any(m.startswith("execution provider: CPUExecutionProvider (CUDA not used: ")
               for m in server.messages())


# -- the gRPC port opens once the models are loaded --------------------------------------------

def test_grpc_port_opens_only_once_the_startup_models_are_loaded(tmp_path):
    write_model(tmp_path, "affine", affine_graph(2.0, 1.0), affine_config())
    write_model(tmp_path, "slow_start", slow_start_graph(300_000), {
        "max_batch_size": 4,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [64]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [64]}]})
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--models", str(tmp_path), "--host", "127.0.0.1",
         "--grpc-port", str(port), "--http-port", "0", "--metrics-port", "0", "--log-format", "json",
         "--intra-op-threads", "1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    events: dict[str, dict] = {}
    loading, serving = threading.Event(), threading.Event()

    def follow() -> None:
        for raw in process.stderr:
            line = json.loads(raw)
            if line.get("event") in ("loading", "serving"):
                events[line["event"]] = line
                (loading if line["event"] == "loading" else serving).set()

    threading.Thread(target=follow, daemon=True).start()
    outcomes: list[tuple[grpc.StatusCode, str]] = []
    x = np.ones((1, 4), np.float32)
    try:
        assert loading.wait(60)
        metrics_port = events["loading"]["metrics_port"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            # While loading: /metrics answers, every call finds the port closed.
            text = ""
            while not serving.is_set():
                try:
                    reply = stub.ModelInfer(fp32_request("affine", x), timeout=5)
                    outcomes.append((grpc.StatusCode.OK, ""))
                    np.testing.assert_array_equal(output(reply), 2 * x + 1)
                except grpc.RpcError as exc:
                    outcomes.append((exc.code(), exc.details()))
                if not text:
                    text = ServerProcess(process, metrics_port=metrics_port).metrics_text()
            assert serving.wait(120)
            assert stub.ModelInfer(fp32_request("affine", x), timeout=10, wait_for_ready=True)
        assert "# HELP inference_requests_total" in text  # /metrics answered during the load
    finally:
        process.terminate()
        process.wait(60)
    refused = [o for o in outcomes if o[0] != grpc.StatusCode.OK]
    assert refused, "no call was made while the models loaded"
    assert len(refused) > 1
    for code, details in refused:
        assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
        assert "Connection refused" in details or "failed to connect" in details, details
