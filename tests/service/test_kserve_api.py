"""The Open Inference Protocol through the stock tritonclient, against a real server process."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import grpc
from servers import serving
from support import client, expect_error  # noqa: F401 - client is a fixture
from onnx import TensorProto

from onnx_builders import (
    affine_config, affine_graph, identity_graph, simple_config, simple_graph, write_model,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    # affine: version 1 computes 1x+0, version 2 computes 2x+1; both served.
    write_model(repo, "affine", affine_graph(1.0, 0.0),
                affine_config(version_policy={"all": True}), versions=(1,))
    write_model(repo, "affine", affine_graph(2.0, 1.0),
                affine_config(version_policy={"all": True}), versions=(2,))
    write_model(repo, "simple", simple_graph(), simple_config())
    write_model(repo, "nobatch", affine_graph(5.0, 0.0, batch_axis=False),
                affine_config(max_batch_size=0, dynamic_batching={}),)
    write_model(repo, "bytes", identity_graph(TensorProto.UINT8), {
        "max_batch_size": 4,
        "inputs": [{"name": "x", "datatype": "UINT8", "shape": [4]}],
        "outputs": [{"name": "y", "datatype": "UINT8", "shape": [4]}]})
    write_model(repo, "labels", affine_graph(1.0, 0.0), affine_config(
        task={"kind": "classifier", "labels": ["a", "b", "c", "d"], "num_classes": 4}))
    yield from serving(repo)


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def infer_input(name, array, datatype):
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


GRPC_EXTENSIONS = ["model_repository", "model_configuration", "statistics", "health", "reflection",
                   "system_shared_memory", "classification"]


def test_live_ready_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "onnx-serve"
    # Exactly what is served, no more (no sequence batching, CUDA shared memory, trace, logging).
    assert list(metadata.extensions) == GRPC_EXTENSIONS


def test_model_ready_by_version(client):
    assert client.is_model_ready("affine")
    assert client.is_model_ready("affine", "1")
    assert client.is_model_ready("affine", "2")
    assert not client.is_model_ready("affine", "3")
    assert not client.is_model_ready("missing")


def test_model_metadata(client):
    metadata = client.get_model_metadata("affine")
    assert metadata.name == "affine"
    assert metadata.versions == ["1", "2"]
    assert metadata.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [("y", "FP32", [-1, 4])]
    nobatch = client.get_model_metadata("nobatch")
    assert list(nobatch.inputs[0].shape) == [4]


def test_infer_raw_contents_default_and_named_versions(client):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    latest = client.infer("affine", [infer_input("x", x, "FP32")], request_id="req-7")
    assert latest.get_response().model_version == "2"
    assert latest.get_response().id == "req-7"
    np.testing.assert_array_equal(latest.as_numpy("y"), 2 * x + 1)
    v1 = client.infer("affine", [infer_input("x", x, "FP32")], model_version="1")
    np.testing.assert_array_equal(v1.as_numpy("y"), x)


def test_infer_simple_with_requested_outputs(client):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    inputs = [infer_input("INPUT0", a, "INT32"), infer_input("INPUT1", b, "INT32")]
    both = client.infer("simple", inputs)
    np.testing.assert_array_equal(both.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(both.as_numpy("OUTPUT1"), a - b)
    only = client.infer("simple", inputs, outputs=[triton.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in only.get_response().outputs] == ["OUTPUT1"]
    np.testing.assert_array_equal(only.as_numpy("OUTPUT1"), a - b)


def test_infer_typed_contents(stub):
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name, values in (("INPUT0", range(16)), ("INPUT1", [3] * 16)):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.contents.int_contents.extend(values)
    response = stub.ModelInfer(request)
    sums = np.frombuffer(response.raw_output_contents[0], dtype=np.int32)
    assert sums.tolist() == [i + 3 for i in range(16)]

    request = service_pb2.ModelInferRequest(model_name="affine", model_version="1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend([0.5] * 8)
    response = stub.ModelInfer(request)
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [0.5] * 8


def test_model_without_batch_axis(client):
    x = np.ones(4, dtype=np.float32)
    result = client.infer("nobatch", [infer_input("x", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("y"), 5 * x)


def test_statistics_count_requests_and_batches(client):
    x = np.ones((2, 4), dtype=np.float32)
    before = client.get_inference_statistics("simple").model_stats[0]
    for _ in range(3):
        client.infer("simple", [infer_input("INPUT0", x.astype(np.int32).repeat(4, 1), "INT32"),
                                infer_input("INPUT1", x.astype(np.int32).repeat(4, 1), "INT32")])
    after = client.get_inference_statistics("simple").model_stats[0]
    assert after.name == "simple" and after.version == "1"
    assert after.inference_stats.success.count == before.inference_stats.success.count + 3
    assert after.inference_count == before.inference_count + 6
    # One call at a time, each alone in the queue: three executions of two items each.
    assert after.execution_count == before.execution_count + 3
    assert after.last_inference >= before.last_inference and after.last_inference > 0

    def runs_of_two(stats) -> int:
        return sum(b.compute_infer.count for b in stats.batch_stats if b.batch_size == 2)

    assert runs_of_two(after) == runs_of_two(before) + 3
    everything = client.get_inference_statistics()
    assert {(s.name, s.version) for s in everything.model_stats} >= {("affine", "1"), ("affine", "2")}
    expect_error(lambda: client.get_inference_statistics("missing"), "NOT_FOUND", "missing")


def test_repository_index(client):
    index = client.get_model_repository_index()
    entries = {(m.name, m.version, m.state) for m in index.models}
    assert ("affine", "1", "READY") in entries and ("affine", "2", "READY") in entries
    assert ("simple", "1", "READY") in entries


# -- errors: each names the field, what was expected and what came --------------------------


def test_unknown_model_and_version(client):
    x = np.ones((1, 4), dtype=np.float32)
    expect_error(lambda: client.infer("missing", [infer_input("x", x, "FP32")]),
                 "NOT_FOUND", "model 'missing' is not loaded")
    expect_error(lambda: client.infer("affine", [infer_input("x", x, "FP32")], model_version="9"),
                 "NOT_FOUND", "model 'affine' version 9 is not loaded", "loaded versions: [1, 2]")
    expect_error(lambda: client.get_model_metadata("affine", "x1"),
                 "INVALID_ARGUMENT", "version must be a positive integer", "'x1'")


@pytest.mark.parametrize(
    "name, array, datatype, fragments",
    [
        ("x", np.ones((1, 4), np.float64), "FP64",
         ["input 'x': datatype must be FP32, got FP64"]),
        ("x", np.ones((1, 5), np.float32), "FP32", ["input 'x': shape must be [-1, 4], got [1, 5]"]),
        ("x", np.ones((4,), np.float32), "FP32", ["input 'x': shape must be [-1, 4], got [4]"]),
        ("x", np.ones((9, 4), np.float32), "FP32",
         ["batch size must be <= max_batch_size 8, got 9"]),
        ("z", np.ones((1, 4), np.float32), "FP32",
         ["missing input(s) ['x'] and unexpected input(s) ['z']; expected ['x']"]),
    ],
)
def test_bad_inputs_are_invalid_argument(client, name, array, datatype, fragments):
    expect_error(lambda: client.infer("affine", [infer_input(name, array, datatype)]),
                 "INVALID_ARGUMENT", *fragments)


def test_extra_input_and_unknown_output(client):
    x = np.ones((1, 4), np.float32)
    expect_error(
        lambda: client.infer("affine", [infer_input("x", x, "FP32"), infer_input("w", x, "FP32")]),
        "INVALID_ARGUMENT", "unexpected input(s) ['w']")
    expect_error(
        lambda: client.infer("affine", [infer_input("x", x, "FP32")],
                             outputs=[triton.InferRequestedOutput("nope")]),
        "INVALID_ARGUMENT", "unknown requested output(s) ['nope']; available ['y']")


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_raw_length_and_count_mismatches(stub):
    request = service_pb2.ModelInferRequest(model_name="affine")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(b"\0" * 15)
    error = rpc_error(lambda: stub.ModelInfer(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("input 'x': raw_input_contents[0] has 15 bytes; shape [1, 4] of "
                               "FP32 needs 16")

    request.raw_input_contents.append(b"\0" * 16)
    error = rpc_error(lambda: stub.ModelInfer(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents has 2 entries but inputs has 1" in error.details()

    typed = service_pb2.ModelInferRequest(model_name="affine")
    tensor = typed.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.int_contents.extend([1, 2, 3, 4])
    error = rpc_error(lambda: stub.ModelInfer(typed))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("input 'x': contents.fp32_contents has 0 values; shape [1, 4] of "
                               "FP32 needs 4 (values came in contents.int_contents)")

    negative = service_pb2.ModelInferRequest(model_name="affine")
    negative.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
    error = rpc_error(lambda: stub.ModelInfer(negative))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "shape dims must be >= 1, got [-1, 4]" in error.details()

    bf16_input = service_pb2.ModelInferRequest(model_name="affine")
    bf16_input.inputs.add(name="x", datatype="BF16", shape=[1, 4])
    error = rpc_error(lambda: stub.ModelInfer(bf16_input))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "datatype 'BF16' is not supported" in error.details()


def test_model_infer_wire_format_in_any_field_order(server, stub):
    """The server cuts raw_input_contents out of the wire bytes itself and writes its responses
    by hand: fields in any order, unknown fields and two raw tensors must work as with protobuf,
    and malformed bytes must be refused by name."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 5, dtype=np.int32)
    head = service_pb2.ModelInferRequest(model_name="simple", id="wire")
    for name in ("INPUT0", "INPUT1"):
        head.inputs.add(name=name, datatype="INT32", shape=[1, 16])
    raws = [service_pb2.ModelInferRequest(raw_input_contents=[x.tobytes()]).SerializeToString()
            for x in (a, b)]
    unknown_field = b"\xa0\x06\x2a"  # field 100, varint 42: skipped, as protobuf does
    # Raw contents before, between and after the other fields: all valid protobuf encodings.
    body = head.SerializeToString()
    for wire in (raws[0] + raws[1] + body, raws[0] + body + unknown_field + raws[1]):
        with grpc.insecure_channel(server.grpc_address) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            response = service_pb2.ModelInferResponse.FromString(call(wire))
        assert response.id == "wire" and response.model_name == "simple"
        assert [(o.name, list(o.shape)) for o in response.outputs] == [
            ("OUTPUT0", [1, 16]), ("OUTPUT1", [1, 16])]
        np.testing.assert_array_equal(
            np.frombuffer(response.raw_output_contents[0], np.int32), (a + b).ravel())
        np.testing.assert_array_equal(
            np.frombuffer(response.raw_output_contents[1], np.int32), (a - b).ravel())

    truncated = body[:-3]
    for wire, fragment in ((truncated, "runs past the end of the message"),
                           (b"\xff" * 11, "varint longer than 10 bytes"),
                           (b"\x0f", "unsupported wire type 7 at byte 0")):
        with grpc.insecure_channel(server.grpc_address) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            error = rpc_error(lambda: call(wire))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("the request is not a valid ModelInferRequest: ")
        assert fragment in error.details(), error.details()


def test_typed_values_out_of_range_for_narrow_types(stub):
    request = service_pb2.ModelInferRequest(model_name="bytes")
    tensor = request.inputs.add(name="x", datatype="UINT8", shape=[1, 4])
    tensor.contents.uint_contents.extend([0, 7, 255, 300])
    error = rpc_error(lambda: stub.ModelInfer(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "input 'x': values must lie in [0, 255] for UINT8, got range [0, 300]"
    del tensor.contents.uint_contents[-1]
    tensor.contents.uint_contents.append(9)
    response = stub.ModelInfer(request)
    assert np.frombuffer(response.raw_output_contents[0], np.uint8).tolist() == [0, 7, 255, 9]


def test_server_survives_errors(client):
    for _ in range(5):
        with pytest.raises(InferenceServerException):
            client.infer("affine", [infer_input("x", np.ones((1, 3), np.float32), "FP32")])
    assert client.is_server_live() and client.is_server_ready()
    ok = client.infer("affine", [infer_input("x", np.ones((1, 4), np.float32), "FP32")])
    assert ok.as_numpy("y").shape == (1, 4)


def test_metrics_count_by_model_version_rpc_and_code(server, client):
    x = np.ones((1, 4), np.float32)
    client.infer("affine", [infer_input("x", x, "FP32")], model_version="1")
    with pytest.raises(InferenceServerException):
        client.infer("affine", [infer_input("x", np.ones((1, 2), np.float32), "FP32")])
    text = server.metrics_text()
    assert ('inference_requests_total{code="OK",model="affine",protocol="grpc",rpc="ModelInfer",'
            'version="1"}') in text
    assert ('inference_requests_total{code="INVALID_ARGUMENT",model="affine",protocol="grpc",'
            'rpc="ModelInfer",version="2"}') in text
    for name in ("inference_request_duration_seconds_bucket", "inference_queue_duration_seconds_bucket",
                 "inference_compute_duration_seconds_bucket", "inference_batch_size_bucket",
                 "inference_inflight_requests", "inference_queue_depth"):
        assert name in text, name
    assert 'inference_model_ready{model="affine",version="2"} 1.0' in text
    assert ('inference_execution_provider_info{model="affine",provider="CPUExecutionProvider",'
            'version="1"} 1.0') in text
    assert 'le="0.0001"' in text and 'le="10.0"' in text
