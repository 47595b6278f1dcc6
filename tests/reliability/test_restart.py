"""Rolling restarts and reloads: SIGTERM under steady load loses no admitted call, a new version
loaded under load fails no call, and the documented client retry policy (retry_policy.json) rides
out a server stopped and started again on the same port."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2_grpc

from servers import metric_value, wait_for
from onnx_builders import (
    affine_config, affine_graph, save_graph, slow_config, slow_graph, write_model,
)
from reliability_support import (
    ClosedLoop, QueueWatch, code_of, draining, fp32_request, output, slow_request,
)

RETRY_POLICY = Path(__file__).with_name("retry_policy.json")
DRAINING = "server is shutting down; retry on another replica"
OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE


def policy_options() -> list[tuple[str, object]]:
    """The documented client settings: the service config with its retry policy, plus reconnect
    backoff short enough that a restarted server is found again within a second or so."""
    return [
        ("grpc.service_config", RETRY_POLICY.read_text()),
        ("grpc.enable_retries", 1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def slow_repo(path: Path, queue: int = 64) -> Path:
    config = slow_config(dynamic_batching={"max_queue_delay_us": 1000, "max_queue_size": queue})
    write_model(path, "slow", slow_graph(), config)
    write_model(path, "long", slow_graph(), config)
    return path


class Outcomes:
    """Per-call outcomes of client threads, each tagged with whether SIGTERM had been sent
    when the call started and when it ended."""

    def __init__(self):
        self.lock = threading.Lock()
        self.signalled = threading.Event()
        self.rows: list[tuple[bool, bool, grpc.StatusCode, str]] = []

    def record(self, started_after: bool, code, details: str) -> None:
        with self.lock:
            self.rows.append((started_after, self.signalled.is_set(), code, details))


def test_sigterm_under_steady_load_loses_no_admitted_call(tmp_path, server_factory):
    server = server_factory(slow_repo(tmp_path), "--shutdown-grace", "60")
    outcomes = Outcomes()
    x = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)

    def client(index: int) -> None:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = slow_request(200, seed=0)
            for _ in range(3000):  # bounded; ends at the first refusal after SIGTERM
                started_after = outcomes.signalled.is_set()
                try:
                    response = stub.ModelInfer(request, timeout=60)
                    assert np.array_equal(output(response), x)
                    outcomes.record(started_after, OK, "")
                except grpc.RpcError as exc:
                    outcomes.record(started_after, exc.code(), exc.details())
                    if outcomes.signalled.is_set():
                        return

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(6)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(outcomes.rows) > 60, what="steady load")
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        # A long call in flight when the signal comes must still complete.
        long_call = stub.ModelInfer.future(slow_request(15_000, "long", seed=0), timeout=120)
        wait_for(lambda: metric_value(server.metrics_text(), "inference_inflight_requests",
                                      model="long") == 1, what="long call in flight")
        outcomes.signalled.set()
        # Calls that began before the flag have this long to reach the server before the signal:
        # otherwise one sent in the same instant arrives after gRPC stopped taking calls and is
        # cancelled by gRPC itself, though it counts as under way.
        time.sleep(0.2)
        server.process.send_signal(15)
        wait_for(lambda: draining(channel), what="readiness flipped")
        assert code_of(long_call) == OK
        np.testing.assert_array_equal(output(long_call.result()), x)
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert server.process.wait(60) == 0

    codes = Counter(code for _, _, code, _ in outcomes.rows)
    print(f"outcomes through SIGTERM: {dict(codes)}")
    # Before the signal every call succeeded.
    assert all(code == OK for _, ended_after, code, _ in outcomes.rows if not ended_after)
    # A call that was already under way when the signal went out ends OK or, if it reached the
    # server after the drain began, with the drain's UNAVAILABLE: none is cut off.
    for started_after, _, code, details in outcomes.rows:
        if not started_after:
            assert code == OK or (code == UNAVAILABLE and details == DRAINING), (code, details)
    # Later calls are refused: the drain message, no server to connect to once it is gone, or
    # (see test_sigterm_answers_new_calls_with_unavailable_only) CANCELLED in the last moment.
    refusals = [(code, details) for started_after, _, code, details in outcomes.rows
                if started_after and code != OK]
    assert refusals, "no client saw the drain"
    for code, details in refusals:
        assert code == grpc.StatusCode.CANCELLED or details == DRAINING \
            or "failed to connect" in details.lower() or "cancelling all calls" in details.lower() \
            or "connection refused" in details.lower(), (code, details)
    # The server drained every admitted call within its grace period.
    messages = server.messages()
    assert not any("grace period over" in m for m in messages)
    assert "stopped" in messages


def test_new_version_loaded_under_load_fails_nothing(tmp_path, server_factory):
    repo = slow_repo(tmp_path)
    server = server_factory(repo)

    def exact(request, response):
        x = np.frombuffer(request.raw_input_contents[0], np.float32)
        assert np.array_equal(output(response).ravel(), x)

    with triton.InferenceServerClient(server.grpc_address) as admin, \
            QueueWatch(server, "slow") as watch, \
            ClosedLoop(server.grpc_address, lambda i: slow_request(300, seed=i), threads=8,
                       max_calls=5000, limit_s=90, check=exact) as traffic:
        wait_for(lambda: traffic.result.calls > 40, what="traffic flowing")
        for version in (2, 3):
            save_graph(slow_graph(), repo / "slow" / str(version) / "model.onnx")
            admin.load_model("slow")  # latest: 1 -> the old version drains and goes
            seen = traffic.result.versions[str(version)]
            wait_for(lambda: traffic.result.versions[str(version)] > seen + 30,
                     what=f"traffic on version {version}")
        result = traffic.stop()
        assert admin.get_model_metadata("slow").versions == ["3"]
    print(f"versions served: {dict(result.versions)}, queue peak seen {watch.max_depth}")
    assert result.failures() == {}, result.details
    assert set(result.versions) == {"1", "2", "3"}
    assert watch.max_depth > 0  # the swaps happened with requests waiting


def check_policy_file() -> None:
    policy = json.loads(RETRY_POLICY.read_text())
    (method,) = policy["methodConfig"]
    assert {n["service"] for n in method["name"]} == {
        "inference.GRPCInferenceService", "onnxserve.task.v1.TaskService"}
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "CANCELLED"]
    assert method["waitForReady"] is True


def affine_repo(path: Path) -> tuple[np.ndarray, np.ndarray]:
    write_model(path, "affine", affine_graph(2.0, 1.0), affine_config())
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    return x, x * 2 + 1


class PolicyTraffic:
    """Client threads calling through their own policy channels until stopped (bounded)."""

    def __init__(self, address: str, x: np.ndarray, expected: np.ndarray, threads: int):
        self.outcomes: list[tuple[grpc.StatusCode, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._args = (address, x, expected)
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        address, x, expected = self._args
        with grpc.insecure_channel(address, options=policy_options()) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(3000):
                if self._stop.is_set():
                    return
                try:
                    response = stub.ModelInfer(fp32_request("affine", x))  # the policy's timeout
                    np.testing.assert_array_equal(output(response), expected)
                    outcome = (OK, "")
                except grpc.RpcError as exc:
                    outcome = (exc.code(), exc.details())
                with self._lock:
                    self.outcomes.append(outcome)

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(90)
        assert not any(thread.is_alive() for thread in self._threads)


def test_retry_policy_waits_for_a_server_restarted_on_the_same_port(tmp_path, server_factory):
    check_policy_file()
    x, expected = affine_repo(tmp_path)
    first = server_factory(tmp_path)
    port = first.grpc_port
    address = f"127.0.0.1:{port}"
    with grpc.insecure_channel(address, options=policy_options()) as policy_channel, \
            grpc.insecure_channel(address) as plain_channel:
        policy_stub = service_pb2_grpc.GRPCInferenceServiceStub(policy_channel)
        plain_stub = service_pb2_grpc.GRPCInferenceServiceStub(plain_channel)
        for stub in (policy_stub, plain_stub):
            np.testing.assert_array_equal(output(stub.ModelInfer(fp32_request("affine", x),
                                                                 timeout=10)), expected)
        assert first.terminate(timeout=60) == 0
        # While no server listens: without the policy a call fails at once; with it, calls
        # wait (waitForReady, within the policy's timeout) for the server to come back.
        assert code_of(plain_stub.ModelInfer.future(fp32_request("affine", x), timeout=10)) \
            == UNAVAILABLE
        waiting = [policy_stub.ModelInfer.future(fp32_request("affine", x)) for _ in range(10)]
        assert not any(call.done() for call in waiting)

        second = server_factory(tmp_path, "--grpc-port", str(port))
        assert second.grpc_port == port
        for call in waiting:
            assert code_of(call) == OK
            np.testing.assert_array_equal(output(call.result()), expected)


def test_retry_policy_carries_steady_traffic_through_a_restart(tmp_path, server_factory):
    x, expected = affine_repo(tmp_path)
    first = server_factory(tmp_path)
    port = first.grpc_port
    with PolicyTraffic(f"127.0.0.1:{port}", x, expected, threads=16) as traffic:
        wait_for(lambda: len(traffic.outcomes) > 100, what="traffic through the policy")
        server = first
        for _ in range(2):  # two restarts, one after the other
            assert server.terminate(timeout=60) == 0
            before_restart = len(traffic.outcomes)
            server = server_factory(tmp_path, "--grpc-port", str(port))
            wait_for(lambda: len(traffic.outcomes) > before_restart + 100,
                     what="traffic after the restart")
    codes = Counter(code for code, _ in traffic.outcomes)
    print(f"through the restart with the policy: {dict(codes)}")
    assert codes == {OK: len(traffic.outcomes)}, \
        Counter(outcome for outcome in traffic.outcomes if outcome[0] != OK)


def test_sigterm_answers_new_calls_only_with_codes_the_policy_retries(tmp_path, server_factory):
    """Clients that call in a tight loop through a SIGTERM see OK, UNAVAILABLE (draining, then the
    closed port) and, for a call that reaches gRPC's queue as the server shuts down, CANCELLED:
    the two codes the documented retry policy retries. Nothing else, no admitted call lost."""
    x, expected = affine_repo(tmp_path)
    server = server_factory(tmp_path)
    outcomes: list[tuple[grpc.StatusCode, str]] = []
    signalled = threading.Event()

    def client() -> None:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            failures_after_signal = 0
            for _ in range(20_000):  # bounded; ends 20 failures after SIGTERM
                try:
                    stub.ModelInfer(fp32_request("affine", x), timeout=10)
                    outcomes.append((OK, ""))
                except grpc.RpcError as exc:
                    outcomes.append((exc.code(), exc.details()))
                    failures_after_signal += signalled.is_set()
                    if failures_after_signal >= 20:
                        return

    threads = [threading.Thread(target=client, daemon=True) for _ in range(16)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(outcomes) > 200, what="steady load")
    signalled.set()
    assert server.terminate(timeout=60) == 0
    for thread in threads:
        thread.join(60)
    codes = Counter(code for code, _ in outcomes)
    print(f"outcomes through SIGTERM: {dict(codes)}")
    assert set(codes) <= {OK, UNAVAILABLE, grpc.StatusCode.CANCELLED}, \
        Counter(outcome for outcome in outcomes if outcome[0] != OK)
    assert codes[UNAVAILABLE] > codes[grpc.StatusCode.CANCELLED]
