"""Deadlines and cancellation: a queued call that expires or is cancelled never reaches compute,
and a burst of cancelled calls leaves nothing behind (queue, in-flight gauge, the interceptor's
call count that shutdown waits on)."""

from __future__ import annotations

import grpc
import numpy as np
from tritonclient.grpc import service_pb2_grpc

from servers import metric_value, wait_for
from onnx_builders import slow_config, slow_graph, write_model
from reliability_support import code_of, gauge, output, slow_request, statistics

BUSY_WORK = 50_000  # ~3 s of compute on an idle core: outlasts everything queued behind it


def slow_server(tmp_path, server_factory, queue: int):
    write_model(tmp_path, "slow", slow_graph(), slow_config(
        dynamic_batching={"max_queue_delay_us": 1000, "max_queue_size": queue}))
    return server_factory(tmp_path, "--shutdown-grace", "60")


def hold_busy(server, stub):
    """One long call computing, the queue empty behind it."""
    busy = stub.ModelInfer.future(slow_request(BUSY_WORK), timeout=120)
    wait_for(lambda: gauge(server, "inference_inflight_requests", model="slow") == 1,
             what="busy call in flight")
    wait_for(lambda: gauge(server, "inference_queue_depth", model="slow") == 0,
             what="busy call taken into a batch")
    return busy


def counters(server, stub) -> dict:
    text = server.metrics_text()
    stats = statistics(stub, "slow")
    return {
        "deadline": metric_value(text, "inference_requests_dropped_total", model="slow",
                                 reason="deadline"),
        "cancelled": metric_value(text, "inference_requests_dropped_total", model="slow",
                                  reason="cancelled"),
        "computed_items": metric_value(text, "inference_batch_size_sum", model="slow"),
        "batches": metric_value(text, "inference_compute_duration_seconds_count", model="slow"),
        "executions": stats.execution_count,
        "inferences": stats.inference_count,
        "cancelled_rpcs": metric_value(text, "inference_requests_total", model="slow",
                                       rpc="ModelInfer", code="CANCELLED"),
    }


def delta(after: dict, before: dict) -> dict:
    return {key: after[key] - before[key] for key in after}


def test_expired_and_cancelled_queued_calls_never_reach_compute(tmp_path, server_factory):
    server = slow_server(tmp_path, server_factory, queue=64)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        before = counters(server, stub)
        busy = hold_busy(server, stub)
        expiring = [stub.ModelInfer.future(slow_request(0), timeout=0.25) for _ in range(10)]
        doomed = [stub.ModelInfer.future(slow_request(0), timeout=120) for _ in range(10)]
        assert [code_of(call) for call in expiring] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 10
        wait_for(lambda: gauge(server, "inference_queue_depth", model="slow") == 10,
                 what="expired calls gone, cancellable ones queued")
        for call in doomed:
            call.cancel()
        wait_for(lambda: gauge(server, "inference_queue_depth", model="slow") == 0,
                 what="cancelled calls removed from the queue")
        # All twenty left the queue while the one busy call was still computing.
        assert not busy.done(), "busy call finished too early for this test to prove anything"
        assert [code_of(call) for call in doomed] == [grpc.StatusCode.CANCELLED] * 10
        busy.result()
        wait_for(lambda: gauge(server, "inference_inflight_requests", model="slow") == 0,
                 what="nothing in flight")
        changes = delta(counters(server, stub), before)
    assert changes["deadline"] == 10
    assert changes["cancelled"] == 10
    # Only the busy call was ever computed: one batch of one item.
    assert changes["executions"] == 1 and changes["inferences"] == 1
    assert changes["batches"] == 1 and changes["computed_items"] == 1


def test_burst_of_cancelled_calls_leaves_nothing_behind(tmp_path, server_factory):
    server = slow_server(tmp_path, server_factory, queue=256)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        before = counters(server, stub)

        # 200 calls queued behind a busy one, then all cancelled.
        busy = hold_busy(server, stub)
        burst = [stub.ModelInfer.future(slow_request(0), timeout=120) for _ in range(200)]
        wait_for(lambda: gauge(server, "inference_queue_depth", model="slow") == 200,
                 what="200 queued calls")
        for call in burst:
            call.cancel()
        wait_for(lambda: gauge(server, "inference_queue_depth", model="slow") == 0
                 and gauge(server, "inference_inflight_requests", model="slow") == 1,
                 what="queue emptied, only the busy call in flight")
        assert not busy.done()
        busy.result()
        wait_for(lambda: gauge(server, "inference_inflight_requests", model="slow") == 0,
                 what="nothing in flight")
        changes = delta(counters(server, stub), before)
        assert changes["cancelled"] == 200
        assert changes["executions"] == 1 and changes["computed_items"] == 1
        wait_for(lambda: metric_value(server.metrics_text(), "inference_requests_total",
                                      model="slow", rpc="ModelInfer", code="CANCELLED")
                 - before["cancelled_rpcs"] == 200, what="200 CANCELLED calls counted")

        # 200 more cancelled at every stage: queued, taken into a batch, computing, done.
        calls = []
        for i in range(200):
            calls.append(stub.ModelInfer.future(slow_request(50, seed=i), timeout=120))
            if i % 3 == 0:
                calls[i // 2].cancel()
        for call in calls[::7]:
            call.cancel()
        codes = [code_of(call) for call in calls]
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED}
        for i, (call, code) in enumerate(zip(calls, codes)):
            if code == grpc.StatusCode.OK:  # survivors got their own data
                x = np.random.default_rng(i).standard_normal((1, 512)).astype(np.float32)
                assert np.array_equal(output(call.result()), x)
        wait_for(lambda: gauge(server, "inference_queue_depth", model="slow") == 0
                 and gauge(server, "inference_inflight_requests", model="slow") == 0,
                 what="queue and in-flight back to 0")
        assert code_of(stub.ModelInfer.future(slow_request(0), timeout=60)) == grpc.StatusCode.OK

    # The interceptor's in-flight count is what shutdown drains on: a leaked call would hold it.
    assert server.terminate(timeout=60) == 0
    messages = server.messages()
    assert "draining: 0 call(s) in flight" in messages, [m for m in messages if "drain" in m]
    assert not any("grace period over" in m for m in messages)
