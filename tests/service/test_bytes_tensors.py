"""BYTES tensors end to end: the flows of Triton's simple_grpc_string_infer_client.py and
grpc_explicit_byte_content_client.py against a string model (strings to int and back) and a string
identity, over gRPC (sync and aio) and REST (binary and JSON); shape and count checks; string
requests batched; config.pbtxt TYPE_STRING; strings in shared memory."""

from __future__ import annotations

import asyncio
import json
import struct
import urllib.error
import urllib.request
import uuid

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from onnx_builders import (
    affine_config, affine_graph, save_graph, simple_string_graph, slow_config, slow_text_graph,
    string_config, string_identity_graph, write_model,
)
from servers import serving
from support import (  # noqa: F401 - client is a fixture
    client, expect_error, slow_request, wait_until_computing,
)

PBTXT = """name: "string_pbtxt"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_STRING dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_STRING dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_STRING dims: [ 16 ] }
]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("bytes-repo")
    write_model(repo, "simple_string", simple_string_graph(),
                string_config(("INPUT0", "INPUT1"), ("OUTPUT0", "OUTPUT1")))
    write_model(repo, "simple_identity", string_identity_graph(),
                string_config(("INPUT0",), ("OUTPUT0",)))
    write_model(repo, "slow_text", slow_text_graph(), slow_config(
        inputs=slow_config()["inputs"] + [{"name": "text", "datatype": "BYTES", "shape": [4]}],
        outputs=slow_config()["outputs"] + [{"name": "text_out", "datatype": "BYTES",
                                             "shape": [4]}]))
    write_model(repo, "affine", affine_graph(2.0, 1.0), affine_config())
    (repo / "string_pbtxt").mkdir()
    (repo / "string_pbtxt" / "config.pbtxt").write_text(PBTXT)
    save_graph(simple_string_graph(), repo / "string_pbtxt" / "1" / "model.onnx")
    yield from serving(repo)


def numbers_as_text(values) -> np.ndarray:
    """As the example: each integer's UTF-8 text, in an object array of the same shape."""
    values = np.asarray(values)
    return np.array([str(x).encode() for x in values.reshape(-1)],
                    dtype=np.object_).reshape(values.shape)


def string_inputs(module, in0, in1, binary: bool = True):
    inputs = [module.InferInput("INPUT0", list(in0.shape), "BYTES"),
              module.InferInput("INPUT1", list(in1.shape), "BYTES")]
    if module is triton_http:
        inputs[0].set_data_from_numpy(in0, binary_data=binary)
        inputs[1].set_data_from_numpy(in1, binary_data=binary)
    else:
        inputs[0].set_data_from_numpy(in0)
        inputs[1].set_data_from_numpy(in1)
    return inputs


def check_sums(results, a, b) -> None:
    np.testing.assert_array_equal(results.as_numpy("OUTPUT0").astype(np.int64), a + b)
    np.testing.assert_array_equal(results.as_numpy("OUTPUT1").astype(np.int64), a - b)


def test_simple_grpc_string_infer_client_flow(client):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    outputs = [triton.InferRequestedOutput("OUTPUT0"), triton.InferRequestedOutput("OUTPUT1")]
    results = client.infer("simple_string", string_inputs(triton, numbers_as_text(a),
                                                          numbers_as_text(b)), outputs=outputs)
    assert results.get_output("OUTPUT0").datatype == "BYTES"
    for i in range(16):  # as the example checks them: each element's text as an integer
        assert int(results.as_numpy("OUTPUT0")[0][i]) == a[0][i] + b[0][i]
        assert int(results.as_numpy("OUTPUT1")[0][i]) == a[0][i] - b[0][i]

    # The identity with an embedded NUL, then with 4-byte blobs given as np.bytes_.
    for data in (np.array(["he\x00llo".encode()] * 16, dtype=np.object_).reshape(1, 16),
                 np.array([b"\x00\x01\x02\x03"] * 16, dtype=np.bytes_).reshape(1, 16)):
        inputs = [triton.InferInput("INPUT0", list(data.shape), "BYTES")]
        inputs[0].set_data_from_numpy(data)
        output = client.infer("simple_identity", inputs).as_numpy("OUTPUT0")
        if data.dtype == np.object_:
            np.testing.assert_array_equal(output, data)
        else:
            np.testing.assert_array_equal(np.char.encode(output.astype(str)), data)


def test_grpc_explicit_byte_content_client_flow(server):
    request = service_pb2.ModelInferRequest(model_name="simple_string", model_version="")
    input0 = request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 16])
    input0.contents.bytes_contents.extend(str(i).encode() for i in range(16))
    input1 = request.inputs.add(name="INPUT1", datatype="BYTES", shape=[1, 16])
    input1.contents.bytes_contents.extend([b"1"] * 16)
    request.outputs.add(name="OUTPUT0")
    request.outputs.add(name="OUTPUT1")
    with grpc.insecure_channel(server.grpc_address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    results = [np.resize(deserialize_bytes_tensor(response.raw_output_contents[index]),
                         list(output.shape)) for index, output in enumerate(response.outputs)]
    assert len(results) == 2
    for i in range(16):
        assert int(results[0][0][i]) == i + 1 and int(results[1][0][i]) == i - 1


def test_aio_client_and_batches_of_several_items(server):
    a = np.arange(48, dtype=np.int32).reshape(3, 16)
    b = np.full((3, 16), -7, dtype=np.int32)

    async def run():
        async with triton_aio.InferenceServerClient(server.grpc_address) as client:
            return await client.infer("simple_string", string_inputs(
                triton_aio, numbers_as_text(a), numbers_as_text(b)))

    check_sums(asyncio.run(run()), a, b)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_rest_binary_and_json(server, binary):
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    with triton_http.InferenceServerClient(server.http_address) as client:
        outputs = [triton_http.InferRequestedOutput("OUTPUT0", binary_data=binary),
                   triton_http.InferRequestedOutput("OUTPUT1", binary_data=not binary)]
        results = client.infer("simple_string", string_inputs(
            triton_http, numbers_as_text(a), numbers_as_text(b), binary), outputs=outputs)
        check_sums(results, a, b)
        described = results.get_output("OUTPUT0")
        assert ("data" in described) == (not binary) and described["datatype"] == "BYTES"
        if not binary:  # JSON carries the elements as strings
            assert described["data"][:3] == ["3", "4", "5"]
        text = ["é", "\x00", "", "ok"] * 4
        inputs = [triton_http.InferInput("INPUT0", [1, 16], "BYTES")]
        inputs[0].set_data_from_numpy(
            np.array([t.encode() for t in text], dtype=np.object_).reshape(1, 16),
            binary_data=binary)
        output = client.infer("simple_identity", inputs, outputs=[
            triton_http.InferRequestedOutput("OUTPUT0", binary_data=binary)]).as_numpy("OUTPUT0")
        assert [v.decode() if isinstance(v, bytes) else v for v in output.reshape(-1)] == text


def raw_bytes_request(raw: bytes, shape=(1, 16), model="simple_identity",
                      datatype="BYTES") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0" if model != "affine" else "x", datatype=datatype,
                       shape=list(shape))
    request.raw_input_contents.append(raw)
    return request


def test_shape_and_count_checks(server):
    good = serialize_byte_tensor(np.array([b"ab"] * 16, dtype=np.object_)).item()
    element = struct.pack("<I", 2) + b"ab"
    cases = [
        (raw_bytes_request(good[:-1]), "input 'INPUT0': raw_input_contents[0]: BYTES element 15 "
                                       "declares 2 bytes but only 1 remain"),
        (raw_bytes_request(good + b"\0"), "input 'INPUT0': raw_input_contents[0] has 1 bytes "
                                          "after its 16 BYTES elements"),
        (raw_bytes_request(element * 15), "input 'INPUT0': raw_input_contents[0] ends before "
                                          "BYTES element 15 of 16"),
        (raw_bytes_request(b"\0" * 60), "input 'INPUT0': raw_input_contents[0] has 60 bytes, too "
                                        "few for 16 BYTES elements of a 4-byte length each"),
        (raw_bytes_request(good, shape=(1, 8, 2)),
         "input 'INPUT0': shape must be [-1, 16], got [1, 8, 2]"),
        (raw_bytes_request(good, model="affine", shape=(4, 4)),
         "input 'x': datatype must be FP32, got BYTES"),
        (raw_bytes_request((struct.pack("<I", 1) + b"\xff") * 16),
         "input 'INPUT0': BYTES element 0 is not UTF-8 text (invalid start byte at byte 0); "
         "ONNX Runtime's string tensors carry text"),
    ]
    typed = service_pb2.ModelInferRequest(model_name="simple_identity")
    typed.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 16]).contents \
        .bytes_contents.extend([b"x"] * 15)
    cases.append((typed, "input 'INPUT0': contents.bytes_contents has 15 values; shape [1, 16] "
                         "of BYTES needs 16"))
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for request, message in cases:
            assert expect_error(lambda: stub.ModelInfer(request), "INVALID_ARGUMENT") == message
    numbers = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16],
                                      "data": list(range(16))}]}).encode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server.http_url}/v2/models/simple_identity/infer", numbers,
                               timeout=30)
    assert refused.value.code == 400
    assert json.loads(refused.value.read()) == {
        "error": "input 'INPUT0': BYTES data must be strings"}


def test_string_requests_batch_together(server):
    """Three string requests queue behind a busy instance, then run as one batch, each getting
    its own strings back."""
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def request(work: int, words: list[bytes]) -> service_pb2.ModelInferRequest:
            message = slow_request(work, model="slow_text")
            message.inputs.add(name="text", datatype="BYTES", shape=[1, 4])
            message.raw_input_contents.append(
                serialize_byte_tensor(np.array(words, dtype=np.object_)).item())
            return message

        def statistics():
            return stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="slow_text"))\
                .model_stats[0]

        before = statistics()
        busy = stub.ModelInfer.future(request(40_000, [b"busy"] * 4), timeout=120)
        wait_until_computing(server, "slow_text")
        words = {i: [f"{i}-{j}".encode() * (i + 1) for j in range(4)] for i in range(3)}
        calls = {i: stub.ModelInfer.future(request(0, words[i]), timeout=120) for i in words}
        busy.result()
        for i, call in calls.items():
            response = call.result()
            index = [o.name for o in response.outputs].index("text_out")
            assert list(deserialize_bytes_tensor(response.raw_output_contents[index])) == words[i]
        after = statistics()
    assert after.inference_count - before.inference_count == 4
    assert after.execution_count - before.execution_count == 2
    merged = {b.batch_size: b.compute_infer.count for b in after.batch_stats}
    assert merged.get(3, 0) - {b.batch_size: b.compute_infer.count
                               for b in before.batch_stats}.get(3, 0) == 1


def test_config_pbtxt_type_string_is_served(client):
    config = client.get_model_config("string_pbtxt").config
    assert [mc.data_type for mc in config.input] == [13, 13]  # TYPE_STRING
    metadata = client.get_model_metadata("string_pbtxt")
    assert [t.datatype for t in metadata.inputs] == ["BYTES", "BYTES"]
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    check_sums(client.infer("string_pbtxt", string_inputs(triton, numbers_as_text(a),
                                                          numbers_as_text(a))), a, a)


def test_strings_in_shared_memory(client):
    a = numbers_as_text(np.arange(16).reshape(1, 16))
    b = numbers_as_text(np.full((1, 16), 2))
    raw_a, raw_b = serialize_byte_tensor(a), serialize_byte_tensor(b)
    size_a, size_b = len(raw_a.item()), len(raw_b.item())
    key = f"/onnxserve-test-{uuid.uuid4().hex}"
    handle = shm.create_shared_memory_region("strings", key, 4096)
    try:
        shm.set_shared_memory_region(handle, [raw_a, raw_b])
        client.register_system_shared_memory("strings", key, 4096)
        inputs = [triton.InferInput("INPUT0", [1, 16], "BYTES"),
                  triton.InferInput("INPUT1", [1, 16], "BYTES")]
        inputs[0].set_shared_memory("strings", size_a)
        inputs[1].set_shared_memory("strings", size_b, offset=size_a)
        output = triton.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory("strings", 1024, offset=2048)
        results = client.infer("simple_string", inputs, outputs=[output])
        assert list(results.get_output("OUTPUT0").shape) == [1, 16]
        sums = shm.get_contents_as_numpy(handle, np.object_, [1, 16], offset=2048)
        assert [int(v) for v in sums.reshape(-1)] == [i + 2 for i in range(16)]
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)
