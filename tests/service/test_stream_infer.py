"""ModelStreamInfer through tritonclient's start_stream / async_stream_infer / stop_stream and the
aio client's stream_infer: answers by id, errors that leave the stream open, requests batched with
other clients', a cancelled stream's queued requests dropped, and the per-request metrics."""

from __future__ import annotations

import asyncio
import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from onnx_builders import simple_config, simple_graph, slow_config, slow_graph, write_model
from servers import metric_value, serving, wait_for
from support import (  # noqa: F401 - client is a fixture
    client, slow_request, wait_until_computing, wait_until_queued,
)

STREAM = "ModelStreamInfer"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("stream-repo")
    write_model(repo, "simple", simple_graph(), simple_config())
    write_model(repo, "slow", slow_graph(), slow_config())
    yield from serving(repo)


def requests_total(server, **labels) -> float:
    return metric_value(server.metrics_text(), "inference_requests_total", rpc=STREAM,
                        protocol="grpc", **labels)


def simple_inputs(first: np.ndarray, module=triton):
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"),
              module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(first)
    inputs[1].set_data_from_numpy(np.ones((1, 16), np.int32))
    return inputs


def slow_inputs(work: int, seed: int):
    x = np.random.default_rng(seed).standard_normal((1, 512)).astype(np.float32)
    inputs = [triton.InferInput("x", [1, 512], "FP32"), triton.InferInput("work", [1, 1], "INT64")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(np.full((1, 1), work, np.int64))
    return inputs, x


def test_answers_carry_their_ids_and_errors_leave_the_stream_open(server, client):
    before = {code: requests_total(server, model="simple", code=code)
              for code in ("OK", "INVALID_ARGUMENT")}
    unknown_before = requests_total(server, model="", code="NOT_FOUND")
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    rows = {str(i): np.full((1, 16), i, np.int32) for i in range(20)}
    for request_id, first in list(rows.items())[:10]:
        client.async_stream_infer("simple", simple_inputs(first), request_id=request_id)
    client.async_stream_infer("nope", simple_inputs(rows["0"]), request_id="unknown-model")
    bad = [triton.InferInput("INPUT0", [1, 15], "INT32")]
    bad[0].set_data_from_numpy(np.zeros((1, 15), np.int32))
    client.async_stream_infer("simple", bad, request_id="bad-shape")
    for request_id, first in list(rows.items())[10:]:
        client.async_stream_infer("simple", simple_inputs(first), request_id=request_id)
    client.stop_stream()  # half-closes, then waits for every answer

    results, errors = {}, []
    while not answers.empty():
        result, error = answers.get()
        if error is not None:
            errors.append(error.message())
        else:
            results[result.get_response().id] = result
    assert sorted(results, key=int) == list(rows)
    for request_id, result in results.items():
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), rows[request_id] + 1)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), rows[request_id] - 1)
    assert sorted(errors) == sorted([
        "model 'nope' is not loaded; loaded models: ['simple', 'slow']",
        "model 'simple': missing input(s) ['INPUT1']; expected ['INPUT0', 'INPUT1']"])
    # Each request counted once, with its own labels; the stream itself adds nothing.
    assert requests_total(server, model="simple", code="OK") == before["OK"] + 20
    assert requests_total(server, model="simple", code="INVALID_ARGUMENT") == \
        before["INVALID_ARGUMENT"] + 1
    assert requests_total(server, model="", code="NOT_FOUND") == unknown_before + 1


def test_aio_stream_infer(server):
    async def run():
        async def requests():
            for i in range(8):
                yield {"model_name": "simple", "request_id": f"aio-{i}",
                       "inputs": simple_inputs(np.full((1, 16), i, np.int32), triton_aio)}
                if i == 3:
                    yield {"model_name": "simple", "model_version": "7", "request_id": "bad",
                           "inputs": simple_inputs(np.zeros((1, 16), np.int32), triton_aio)}

        async with triton_aio.InferenceServerClient(server.grpc_address) as client:
            return [(result, error) async for result, error in client.stream_infer(requests())]

    answers = asyncio.run(run())
    errors = [error.message() for _, error in answers if error is not None]
    assert errors == ["model 'simple' version 7 is not loaded; loaded versions: [1]"]
    answers = [(result, error) for result, error in answers if error is None]
    by_id = {result.get_response().id: result.as_numpy("OUTPUT0") for result, _ in answers}
    assert sorted(by_id) == sorted(f"aio-{i}" for i in range(8))
    for i in range(8):
        np.testing.assert_array_equal(by_id[f"aio-{i}"], np.full((1, 16), i + 1, np.int32))


def model_statistics(server, model: str) -> service_pb2.ModelStatistics:
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name=model)).model_stats[0]


def batches_of(stats: service_pb2.ModelStatistics, size: int) -> int:
    return next((b.compute_infer.count for b in stats.batch_stats if b.batch_size == size), 0)


def test_stream_requests_batch_with_everyone_elses(server, client):
    """While a unary call holds the model, three stream requests and another client's queue up;
    the four then run as one batch."""
    before = model_statistics(server, "slow")
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        busy = stub.ModelInfer.future(slow_request(40_000, seed=1), timeout=120)
        wait_until_computing(server, "slow")
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        expected = {}
        for i in range(3):
            inputs, expected[f"s{i}"] = slow_inputs(0, seed=10 + i)
            client.async_stream_infer("slow", inputs, request_id=f"s{i}")
        wait_until_queued(server, "slow", 3)
        other = stub.ModelInfer.future(slow_request(0, seed=2), timeout=120)
        busy.result()
        other.result()
        client.stop_stream()
    got = [answers.get() for _ in range(3)]
    assert [error for _, error in got] == [None] * 3
    for result, _ in got:
        np.testing.assert_array_equal(result.as_numpy("y"),
                                      expected[result.get_response().id])
    after = model_statistics(server, "slow")
    assert after.inference_count - before.inference_count == 5
    assert after.execution_count - before.execution_count == 2
    assert batches_of(after, 4) - batches_of(before, 4) == 1


def test_cancelling_the_stream_drops_its_queued_requests(server, client):
    text = server.metrics_text()
    dropped = metric_value(text, "inference_requests_dropped_total", model="slow",
                           reason="cancelled")
    cancelled = requests_total(server, model="slow", code="CANCELLED")
    before = model_statistics(server, "slow")
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        busy = stub.ModelInfer.future(slow_request(40_000, seed=3), timeout=120)
        wait_until_computing(server, "slow")
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(3):
            client.async_stream_infer("slow", slow_inputs(0, seed=20 + i)[0])
        wait_until_queued(server, "slow", 3)
        client.stop_stream(cancel_requests=True)
        wait_for(lambda: metric_value(server.metrics_text(), "inference_requests_dropped_total",
                                      model="slow", reason="cancelled") == dropped + 3,
                 what="the queued requests dropped")
        assert metric_value(server.metrics_text(), "inference_queue_depth", model="slow") == 0
        busy.result()
    after = model_statistics(server, "slow")
    assert after.inference_count - before.inference_count == 1  # the busy call alone computed
    wait_for(lambda: requests_total(server, model="slow", code="CANCELLED") == cancelled + 3,
             what="each cancelled request counted")
    # tritonclient tells the callback of the cancellation; no request was answered.
    while not answers.empty():
        result, error = answers.get()
        assert result is None and error.status() == "StatusCode.CANCELLED"
