"""Overload: a full queue sheds load with RESOURCE_EXHAUSTED at once, what is admitted completes,
throughput comes back when load drops, and one saturated model does not starve another.

No timing asserts: the outcome is read from status codes, counts and the server's own metrics.
Offered rates are derived from a measured capacity only to shape the load.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2_grpc

from servers import metric_value, serving, wait_for
from onnx_builders import slow_config, slow_graph, write_model
from reliability_support import (
    ClosedLoop, QueueWatch, code_of, gauge, output, slow_request, statistics,
)

QUEUE = 4          # slow_config's max_queue_size
WORK = 400         # loop trips per request: a few tens of ms per batch on one core
OK = grpc.StatusCode.OK
FULL = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("overload-repo")
    write_model(repo, "slow", slow_graph(), slow_config())
    write_model(repo, "steady", slow_graph(), slow_config())
    yield from serving(repo)


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def exact(request, response) -> None:
    """The slow model is an exact identity: an admitted request gets its own input back."""
    x = np.frombuffer(request.raw_input_contents[0], np.float32)
    assert np.array_equal(output(response).ravel(), x), "a response carried another request's data"


def closed_loop_rate(server, model: str, calls_per_thread: int) -> tuple[float, ClosedLoop]:
    """Calls per second with QUEUE clients: never more outstanding than the queue holds."""
    started = time.monotonic()
    loop = ClosedLoop(server.grpc_address, lambda i: slow_request(WORK, model, seed=i),
                      threads=QUEUE, max_calls=calls_per_thread, check=exact).start()
    result = loop.join()
    return result.calls / (time.monotonic() - started), loop


def open_loop(address: str, model: str, rate: float, count: int) -> list:
    """`count` calls started at `rate` per second whatever happens to the earlier ones."""
    calls = []
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        start = time.monotonic()
        pace = threading.Event()  # never set: wait() is the pacing clock of an open loop
        for i in range(count):
            pace.wait(max(0.0, start + i / rate - time.monotonic()))
            calls.append((i, stub.ModelInfer.future(slow_request(WORK, model, seed=i),
                                                    timeout=120)))
        return [(i, code_of(call), call) for i, call in calls]


def test_overload_sheds_at_once_admits_exactly_and_recovers(server, stub):
    # Capacity, with no more clients than the queue holds: nothing is refused.
    capacity, before = closed_loop_rate(server, "slow", calls_per_thread=10)
    assert before.result.failures() == {}

    text = server.metrics_text()
    queued_before = metric_value(text, "inference_queue_duration_seconds_count", model="slow")
    stats_before = statistics(stub, "slow")

    # Three times capacity, open loop, for a bounded number of calls.
    offered = 3 * capacity
    count = int(min(max(offered * 3, 60), 600))
    with QueueWatch(server, "slow") as watch:
        outcomes = open_loop(server.grpc_address, "slow", offered, count)
    codes = [code for _, code, _ in outcomes]
    admitted = [(i, call) for i, code, call in outcomes if code == OK]
    refused = [call for _, code, call in outcomes if code == FULL]
    print(f"capacity {capacity:.0f}/s, offered {offered:.0f}/s x {count}: "
          f"{len(admitted)} admitted, {len(refused)} refused, queue peak seen {watch.max_depth}")

    assert set(codes) <= {OK, FULL}, f"unexpected statuses: {set(codes) - {OK, FULL}}"
    assert refused, "3x capacity never filled the queue"
    assert admitted, "nothing was admitted"
    for call in refused:
        assert "model 'slow' version 1: queue is full (4 requests waiting); retry with backoff" \
            in call.details()
    # Admitted calls got exactly their own data back.
    for i, call in admitted:
        x = np.random.default_rng(i).standard_normal((1, 512)).astype(np.float32)
        assert np.array_equal(output(call.result()), x)
    # The queue never held more than it allows (sampled), and no refused call was ever queued:
    # the server's own count of queued requests grew by exactly the admitted ones.
    assert watch.samples > 0 and watch.max_depth <= QUEUE
    text = server.metrics_text()
    queued = metric_value(text, "inference_queue_duration_seconds_count", model="slow")
    assert queued - queued_before == len(admitted)
    stats = statistics(stub, "slow")
    assert stats.inference_stats.success.count - stats_before.inference_stats.success.count \
        == len(admitted)
    # Statistics count a refusal as a failed request (as Triton does), and nothing else failed.
    assert stats.inference_stats.fail.count - stats_before.inference_stats.fail.count \
        == len(refused)
    assert metric_value(text, "inference_requests_total", model="slow", rpc="ModelInfer",
                        code="RESOURCE_EXHAUSTED") >= len(refused)

    # Load drops: the queue and in-flight gauges return to zero and a closed loop as before is
    # served in full again.
    wait_for(lambda: gauge(server, "inference_queue_depth", model="slow") == 0
             and gauge(server, "inference_inflight_requests", model="slow") == 0,
             what="queue and in-flight back to 0")
    recovered, after = closed_loop_rate(server, "slow", calls_per_thread=10)
    assert after.result.failures() == {}
    assert after.result.codes[OK] == before.result.codes[OK]
    print(f"throughput before overload {capacity:.0f}/s, after {recovered:.0f}/s")


def test_full_queue_refuses_while_the_model_is_still_busy(server, stub):
    """'At once', shown by order instead of time: with the model busy and its queue full, every
    further call is refused before the busy call has finished."""
    busy = stub.ModelInfer.future(slow_request(60_000, "slow"), timeout=120)
    wait_for(lambda: gauge(server, "inference_inflight_requests", model="slow") == 1,
             what="busy call in flight")
    wait_for(lambda: gauge(server, "inference_queue_depth", model="slow") == 0,
             what="busy call taken into a batch")
    queued = [stub.ModelInfer.future(slow_request(0, "slow"), timeout=120) for _ in range(QUEUE)]
    wait_for(lambda: gauge(server, "inference_queue_depth", model="slow") == QUEUE,
             what="a full queue")
    extra = [stub.ModelInfer.future(slow_request(0, "slow"), timeout=120) for _ in range(20)]
    assert [code_of(call) for call in extra] == [FULL] * 20
    assert not busy.done(), "refusals waited for compute"
    assert [code_of(call) for call in [busy, *queued]] == [OK] * (QUEUE + 1)


def test_saturated_model_does_not_starve_another(server, stub):
    stats_before = statistics(stub, "steady")
    # 'slow' gets four times more clients than its queue holds, back to back, while 'steady'
    # gets fewer clients than its own queue holds.
    with ClosedLoop(server.grpc_address, lambda i: slow_request(WORK, "slow", seed=i),
                    threads=4 * QUEUE, max_calls=400, limit_s=60) as flood:
        wait_for(lambda: flood.result.codes[FULL] > 0, what="slow saturated")
        steady = ClosedLoop(server.grpc_address,
                            lambda i: slow_request(WORK // 4, "steady", seed=i),
                            threads=2, max_calls=40, limit_s=60, check=exact).start()
        steady_result = steady.join()
        flood_done_during_steady = flood.result.calls
    flood_result = flood.result

    assert set(flood_result.codes) <= {OK, FULL}
    assert flood_result.codes[FULL] > 0 and flood_done_during_steady > 0
    assert steady_result.failures() == {}, steady_result.details
    assert steady_result.codes[OK] == 80
    stats = statistics(stub, "steady")
    assert stats.inference_stats.success.count - stats_before.inference_stats.success.count == 80
    text = server.metrics_text()
    assert metric_value(text, "inference_requests_total", model="steady", rpc="ModelInfer",
                        code="RESOURCE_EXHAUSTED") == 0
