"""Dynamic batching, deadlines, cancellation and queue limits, end to end over gRPC."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from servers import metric_value, wait_for
from support import slow_request
from onnx_builders import affine_config, affine_graph, slow_config, slow_graph, write_model


@pytest.fixture
def server(tmp_path, server_factory):
    write_model(tmp_path, "affine", affine_graph(2.0, 0.5), affine_config())
    write_model(tmp_path, "slow", slow_graph(), slow_config())
    return server_factory(tmp_path)


def occupy(stub, server):
    """Start a long request on the slow model and return once it is computing: its one instance
    is then busy, and whatever comes next waits in the queue."""
    busy = stub.ModelInfer.future(slow_request(work=150_000), timeout=60)
    wait_for(lambda: metric_value(server.metrics_text(), "inference_inflight_requests",
                                  model="slow") == 1, what="busy request in flight")
    return busy


def test_concurrent_requests_are_batched_and_exact(server):
    rng = np.random.default_rng(1)
    payloads = [rng.standard_normal((int(rng.integers(1, 3)), 4)).astype(np.float32)
                for _ in range(240)]

    def send(x):
        with triton.InferenceServerClient(server.grpc_address) as client:
            tensor = triton.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            return client.infer("affine", [tensor]).as_numpy("y")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, payloads))
    for x, y in zip(payloads, results):
        np.testing.assert_array_equal(y, x * np.float32(2.0) + np.float32(0.5))

    text = server.metrics_text()
    runs = metric_value(text, "inference_batch_size_count", model="affine", version="1")
    single = metric_value(text, "inference_batch_size_bucket", model="affine", version="1", le="1.0")
    items = metric_value(text, "inference_batch_size_sum", model="affine", version="1")
    assert items == sum(len(x) for x in payloads)
    assert runs < len(payloads), "requests were never merged"
    assert runs - single > 0, "no executed batch held more than one item"


def test_expired_deadline_in_queue_never_reaches_compute(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        busy = occupy(stub, server)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(slow_request(work=0), timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        busy.result()
        stats = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="slow"))
    assert stats.model_stats[0].execution_count == 1  # only the busy request ran
    dropped = wait_for(lambda: metric_value(
        server.metrics_text(), "inference_requests_dropped_total", model="slow", reason="deadline"))
    assert dropped == 1


def test_cancelled_calls_leave_no_queue_entries(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        busy = occupy(stub, server)
        queued = [stub.ModelInfer.future(slow_request(work=0), timeout=60) for _ in range(4)]
        wait_for(lambda: metric_value(server.metrics_text(), "inference_queue_depth",
                                      model="slow") == 4, what="four queued requests")
        for call in queued:
            call.cancel()
        wait_for(lambda: metric_value(server.metrics_text(), "inference_queue_depth",
                                      model="slow") == 0, what="queue emptied by cancellation")
        busy.result()
        stats = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="slow"))
    assert stats.model_stats[0].execution_count == 1
    text = server.metrics_text()
    assert metric_value(text, "inference_requests_dropped_total", model="slow",
                        reason="cancelled") == 4


def test_full_queue_answers_resource_exhausted_at_once(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        busy = occupy(stub, server)
        queued = [stub.ModelInfer.future(slow_request(work=0), timeout=60) for _ in range(4)]
        wait_for(lambda: metric_value(server.metrics_text(), "inference_queue_depth",
                                      model="slow") == 4, what="a full queue")
        with triton.InferenceServerClient(server.grpc_address) as client:
            inputs = [triton.InferInput("x", [1, 512], "FP32"),
                      triton.InferInput("work", [1, 1], "INT64")]
            inputs[0].set_data_from_numpy(np.ones((1, 512), np.float32))
            inputs[1].set_data_from_numpy(np.zeros((1, 1), np.int64))
            with pytest.raises(InferenceServerException) as info:
                client.infer("slow", inputs)
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "model 'slow' version 1: queue is full (4 requests waiting)" in info.value.message()
        # Everything admitted still completes, exactly.
        for call in [busy, *queued]:
            y = np.frombuffer(call.result().raw_output_contents[0], np.float32)
            assert np.array_equal(y, np.ones(512, np.float32))
