"""System shared memory over gRPC (tritonclient.grpc, sync and aio) and REST (tritonclient.http),
with tritonclient.utils.shared_memory's segments: the flows of Triton's simple_grpc_shm_client.py
and simple_http_shm_client.py, outputs mixing shared memory and the response, every refusal, and a
region unregistered while a request reads and writes it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from onnx_builders import (
    brightness_classifier_graph, image_spec, simple_config, simple_graph, slow_config,
    slow_graph, write_model,
)
from servers import serving, wait_for
from support import expect_error, wait_until_computing

CUDA_REFUSAL = "CUDA shared memory is not supported by this server; system shared memory is"
TENSOR_BYTES = 64  # a [1, 16] INT32 tensor of the simple model


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("shm-repo")
    write_model(repo, "simple", simple_graph(), simple_config())
    write_model(repo, "slow", slow_graph(), slow_config())
    write_model(repo, "brightness", brightness_classifier_graph(), {
        "max_batch_size": 4, "inputs": [image_spec("images")],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [3]}]})
    yield from serving(repo)


@pytest.fixture
def grpc_client(server):
    with triton_grpc.InferenceServerClient(server.grpc_address) as client:
        yield client
        client.unregister_system_shared_memory()


@pytest.fixture
def http_client(server):
    with triton_http.InferenceServerClient(server.http_address) as client:
        yield client
        client.unregister_system_shared_memory()


@contextlib.contextmanager
def segments(*sizes: int):
    """Fresh segments as tritonclient.utils.shared_memory makes them: (name, key, handle) each,
    destroyed afterwards."""
    made = []
    try:
        for size in sizes:
            name = f"region-{uuid.uuid4().hex[:8]}"
            key = f"/onnxserve-test-{uuid.uuid4().hex}"
            made.append((name, key, shm.create_shared_memory_region(name, key, size)))
        yield made
    finally:
        for _, _, handle in made:
            shm.destroy_shared_memory_region(handle)


def maps(server) -> str:
    return Path(f"/proc/{server.pid}/maps").read_text()


def simple_data():
    return np.arange(16, dtype=np.int32), np.ones(16, dtype=np.int32)


def shm_simple_request(triton, inputs_region: str, outputs_region: str | None):
    """simple_*_shm_client.py's request: both inputs from one region, both outputs into another
    (None: in the response)."""
    inputs = [triton.InferInput("INPUT0", [1, 16], "INT32"),
              triton.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory(inputs_region, TENSOR_BYTES)
    inputs[1].set_shared_memory(inputs_region, TENSOR_BYTES, offset=TENSOR_BYTES)
    outputs = [triton.InferRequestedOutput("OUTPUT0"), triton.InferRequestedOutput("OUTPUT1")]
    if outputs_region is not None:
        outputs[0].set_shared_memory(outputs_region, TENSOR_BYTES)
        outputs[1].set_shared_memory(outputs_region, TENSOR_BYTES, offset=TENSOR_BYTES)
    return inputs, outputs


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tritons_simple_shm_client_flow(server, grpc_client, http_client, protocol):
    client, triton = ((grpc_client, triton_grpc) if protocol == "grpc"
                      else (http_client, triton_http))
    # As the example starts: no region of either kind left registered.
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()
    input0, input1 = simple_data()
    with segments(2 * TENSOR_BYTES, 2 * TENSOR_BYTES) as made:
        (out_name, out_key, out_handle), (in_name, in_key, in_handle) = made
        client.register_system_shared_memory(out_name, out_key, 2 * TENSOR_BYTES)
        shm.set_shared_memory_region(in_handle, [input0])
        shm.set_shared_memory_region(in_handle, [input1], offset=TENSOR_BYTES)
        client.register_system_shared_memory(in_name, in_key, 2 * TENSOR_BYTES)
        assert in_key.lstrip("/") in maps(server)

        inputs, outputs = shm_simple_request(triton, in_name, out_name)
        results = client.infer("simple", inputs, outputs=outputs)
        got = []
        for index, name in enumerate(("OUTPUT0", "OUTPUT1")):
            output = results.get_output(name)
            datatype, shape = ((output.datatype, list(output.shape)) if protocol == "grpc"
                               else (output["datatype"], output["shape"]))
            assert (datatype, shape) == ("INT32", [1, 16])
            got.append(shm.get_contents_as_numpy(out_handle, triton_to_np_dtype(datatype),
                                                 shape, offset=index * TENSOR_BYTES))
        np.testing.assert_array_equal(got[0][0], input0 + input1)
        np.testing.assert_array_equal(got[1][0], input0 - input1)
        if protocol == "grpc":
            # Outputs in shared memory keep their place with an empty raw entry, as Triton's.
            assert list(results.get_response().raw_output_contents) == [b"", b""]
            regions = client.get_system_shared_memory_status().regions
            status = {name: (r.key, r.offset, r.byte_size) for name, r in regions.items()}
        else:
            assert "data" not in results.get_output("OUTPUT0")
            assert "parameters" not in results.get_output("OUTPUT0")
            status = {r["name"]: (r["key"], r["offset"], r["byte_size"])
                      for r in client.get_system_shared_memory_status()}
        assert status == {out_name: (out_key, 0, 2 * TENSOR_BYTES),
                          in_name: (in_key, 0, 2 * TENSOR_BYTES)}
        client.unregister_system_shared_memory()
        assert in_key.lstrip("/") not in maps(server)
        assert out_key.lstrip("/") not in maps(server)
        empty = client.get_system_shared_memory_status()
        assert (len(empty.regions) if protocol == "grpc" else len(empty)) == 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_outputs_mixing_shared_memory_and_the_response(grpc_client, http_client, protocol):
    client, triton = ((grpc_client, triton_grpc) if protocol == "grpc"
                      else (http_client, triton_http))
    input0, input1 = simple_data()
    with segments(2 * TENSOR_BYTES, TENSOR_BYTES) as made:
        (in_name, in_key, in_handle), (out_name, out_key, out_handle) = made
        shm.set_shared_memory_region(in_handle, [input0, input1])
        client.register_system_shared_memory(in_name, in_key, 2 * TENSOR_BYTES)
        client.register_system_shared_memory(out_name, out_key, TENSOR_BYTES)
        inputs, outputs = shm_simple_request(triton, in_name, None)
        outputs[0].set_shared_memory(out_name, TENSOR_BYTES)  # OUTPUT0 there, OUTPUT1 sent
        results = client.infer("simple", inputs, outputs=outputs)
        np.testing.assert_array_equal(results.as_numpy("OUTPUT1")[0], input0 - input1)
        np.testing.assert_array_equal(
            shm.get_contents_as_numpy(out_handle, np.int32, [1, 16])[0], input0 + input1)
        # An input from shared memory beside one in the message (raw_input_contents, binary).
        inputs[1] = triton.InferInput("INPUT1", [1, 16], "INT32")
        inputs[1].set_data_from_numpy(np.full((1, 16), 5, np.int32))
        results = client.infer("simple", inputs)
        np.testing.assert_array_equal(results.as_numpy("OUTPUT0")[0], input0 + 5)


def test_aio_client(server):
    input0, input1 = simple_data()

    async def flow(in_name, in_key, out_name, out_key):
        async with triton_aio.InferenceServerClient(server.grpc_address) as client:
            await client.register_system_shared_memory(in_name, in_key, 2 * TENSOR_BYTES)
            await client.register_system_shared_memory(out_name, out_key, 2 * TENSOR_BYTES)
            inputs, outputs = shm_simple_request(triton_grpc, in_name, out_name)
            await asyncio.gather(*(client.infer("simple", inputs, outputs=outputs)
                                   for _ in range(8)))
            status = await client.get_system_shared_memory_status()
            unknown = shm_simple_request(triton_grpc, "nope", None)[0]
            with pytest.raises(InferenceServerException) as refused:
                await client.infer("simple", unknown)
            assert refused.value.status() == "StatusCode.NOT_FOUND"
            await client.unregister_system_shared_memory(in_name)
            remaining = await client.get_system_shared_memory_status()
            await client.unregister_system_shared_memory()
            return sorted(status.regions), sorted(remaining.regions)

    with segments(2 * TENSOR_BYTES, 2 * TENSOR_BYTES) as made:
        (in_name, in_key, in_handle), (out_name, out_key, out_handle) = made
        shm.set_shared_memory_region(in_handle, [input0, input1])
        status, remaining = asyncio.run(flow(in_name, in_key, out_name, out_key))
        assert status == sorted([in_name, out_name]) and remaining == [out_name]
        np.testing.assert_array_equal(
            shm.get_contents_as_numpy(out_handle, np.int32, [1, 16], offset=TENSOR_BYTES)[0],
            input0 - input1)


def raw_shm_request(region: str, size: int, offset: int | None = None,
                    output_parameters: dict | None = None) -> service_pb2.ModelInferRequest:
    """A request whose INPUT0 is in `region` and INPUT1 in raw_input_contents, built by hand for
    the parameter combinations tritonclient never sends."""
    request = service_pb2.ModelInferRequest(model_name="simple")
    first = request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    first.parameters["shared_memory_region"].string_param = region
    if size is not None:
        first.parameters["shared_memory_byte_size"].int64_param = size
    if offset is not None:
        first.parameters["shared_memory_offset"].int64_param = offset
    request.inputs.add(name="INPUT1", datatype="INT32", shape=[1, 16])
    request.raw_input_contents.append(np.ones(16, np.int32).tobytes())
    for name, params in (output_parameters or {}).items():
        output = request.outputs.add(name=name)
        for key, value in params.items():
            if isinstance(value, str):
                output.parameters[key].string_param = value
            else:
                output.parameters[key].int64_param = value
    return request


def test_refusals_name_the_region(server, grpc_client, http_client):
    with segments(2 * TENSOR_BYTES) as made:
        ((name, key, handle),) = made
        shm.set_shared_memory_region(handle, list(simple_data()))
        for code, call, fragments in [
            ("NOT_FOUND", lambda: grpc_client.register_system_shared_memory(
                "ghost", "/onnxserve-no-such-segment", 64),
             ["shared memory region 'ghost': no shared-memory segment with key "
              "'/onnxserve-no-such-segment'"]),
            ("INVALID_ARGUMENT", lambda: grpc_client.register_system_shared_memory(
                "escape", "/../../etc/passwd", 64), ["key '/../../etc/passwd': expected a POSIX"]),
            ("INVALID_ARGUMENT", lambda: grpc_client.register_system_shared_memory(
                "big", key, 2 * TENSOR_BYTES, offset=1),
             [f"shared memory region 'big': offset 1 + byte_size 128 runs past the end of "
              f"segment '{key}'"]),
        ]:
            expect_error(call, code, *fragments)
        grpc_client.register_system_shared_memory(name, key, 2 * TENSOR_BYTES)
        expect_error(lambda: grpc_client.register_system_shared_memory(name, key, 8),
                     "ALREADY_EXISTS", f"shared memory region '{name}' is already registered")
        expect_error(lambda: http_client.register_system_shared_memory(name, key, 8),
                     "409", f"shared memory region '{name}' is already registered")
        expect_error(lambda: http_client.register_system_shared_memory("x", "/a/b", 8),
                     "400", "key '/a/b': expected a POSIX shared-memory key")
        expect_error(lambda: grpc_client.get_system_shared_memory_status("nope"), "NOT_FOUND",
                     "shared memory region 'nope' is not registered")

        with triton_grpc.InferenceServerClient(server.grpc_address) as client:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(client._channel)

            def infer(*args, **kwargs):
                return lambda: stub.ModelInfer(raw_shm_request(*args, **kwargs), timeout=30)

            cases = [
                ("NOT_FOUND", infer("nope", 64),
                 "input 'INPUT0': shared memory region 'nope' is not registered"),
                ("INVALID_ARGUMENT", infer(name, 64, 128),
                 f"input 'INPUT0': shared_memory_offset 128 is past the end of shared memory "
                 f"region '{name}' (128 bytes)"),
                ("INVALID_ARGUMENT", infer(name, 64, 96),
                 "input 'INPUT0': shared_memory_offset 96 + shared_memory_byte_size 64 runs "
                 f"past the end of shared memory region '{name}' (128 bytes)"),
                ("INVALID_ARGUMENT", infer(name, 32),
                 f"input 'INPUT0': shared memory region '{name}' (shared_memory_byte_size) has "
                 "32 bytes; shape [1, 16] of INT32 needs 64"),
                ("INVALID_ARGUMENT", infer(name, None),
                 "input 'INPUT0': parameter 'shared_memory_byte_size' is required with "
                 "'shared_memory_region'"),
                ("INVALID_ARGUMENT", infer(name, 64, output_parameters={"OUTPUT0": {
                    "shared_memory_region": name, "shared_memory_byte_size": 32}}),
                 f"output 'OUTPUT0': shared memory region '{name}' gives it 32 bytes "
                 "(shared_memory_byte_size); it needs 64"),
                ("INVALID_ARGUMENT", infer(name, 64, output_parameters={"OUTPUT0": {
                    "shared_memory_region": name, "shared_memory_byte_size": 64,
                    "classification": 2}}),
                 "output 'OUTPUT0': give classification or shared_memory_region, not both"),
                ("INVALID_ARGUMENT", infer(name, 64, output_parameters={"OUTPUT0": {
                    "shared_memory_region": name, "shared_memory_byte_size": "64"}}),
                 "output 'OUTPUT0': parameter 'shared_memory_byte_size' must be an integer, "
                 "got str '64'"),
            ]
            for code, call, message in cases:
                assert expect_error(call, code) == message
            typed = raw_shm_request(name, 64)
            typed.inputs[0].contents.int_contents.extend(range(16))
            typed.ClearField("raw_input_contents")
            typed.inputs[1].contents.int_contents.extend(range(16))
            expect_error(lambda: stub.ModelInfer(typed), "INVALID_ARGUMENT",
                         f"input 'INPUT0': has both contents and shared memory region '{name}'")

        # The same over REST, with its own statuses.
        inputs, _ = shm_simple_request(triton_http, "nope", None)
        expect_error(lambda: http_client.infer("simple", inputs), "404",
                     "input 'INPUT0': shared memory region 'nope' is not registered")
        inputs, outputs = shm_simple_request(triton_http, name, name)
        outputs[1].set_shared_memory(name, 8)
        expect_error(lambda: http_client.infer("simple", inputs, outputs=outputs), "400",
                     "output 'OUTPUT1': shared memory region", "gives it 8 bytes")
        # The server served nothing it should not have: the region still holds the inputs.
        np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.int32, [2, 16]),
                                      np.stack(simple_data()))
        # One region's status and unregister by name, over REST.
        assert http_client.get_system_shared_memory_status(name) == [
            {"name": name, "key": key, "offset": 0, "byte_size": 2 * TENSOR_BYTES}]
        expect_error(lambda: http_client.get_system_shared_memory_status("nope"), "404",
                     "shared memory region 'nope' is not registered")
        http_client.unregister_system_shared_memory(name)
        assert http_client.get_system_shared_memory_status() == []


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_cuda_shared_memory_is_refused_but_cleanup_calls_work(grpc_client, http_client,
                                                              protocol):
    if protocol == "grpc":
        expect_error(lambda: grpc_client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64),
                     "UNIMPLEMENTED", CUDA_REFUSAL)
        assert len(grpc_client.get_cuda_shared_memory_status().regions) == 0
        expect_error(lambda: grpc_client.get_cuda_shared_memory_status("gpu"), "NOT_FOUND",
                     "CUDA shared memory region 'gpu' is not registered")
        grpc_client.unregister_cuda_shared_memory()
    else:
        expect_error(lambda: http_client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64),
                     "501", CUDA_REFUSAL)
        assert http_client.get_cuda_shared_memory_status() == []
        http_client.unregister_cuda_shared_memory("gpu")


def test_unregistered_while_in_use_the_request_finishes_and_the_next_is_refused(
        server, grpc_client):
    """The in-flight request keeps its mapping (reads its input, writes its output), the next
    one naming the region gets NOT_FOUND, and the mapping goes once the request is done."""
    x = np.random.default_rng(7).standard_normal((1, 512)).astype(np.float32)
    with segments(2 * x.nbytes) as made:
        ((name, key, handle),) = made
        shm.set_shared_memory_region(handle, [x])
        grpc_client.register_system_shared_memory(name, key, 2 * x.nbytes)
        inputs = [triton_grpc.InferInput("x", [1, 512], "FP32"),
                  triton_grpc.InferInput("work", [1, 1], "INT64")]
        inputs[0].set_shared_memory(name, x.nbytes)
        inputs[1].set_data_from_numpy(np.full((1, 1), 40_000, np.int64))
        output = triton_grpc.InferRequestedOutput("y")
        output.set_shared_memory(name, x.nbytes, offset=x.nbytes)
        outcome = {}

        def call():
            outcome["result"] = grpc_client.infer("slow", inputs, outputs=[output],
                                                  client_timeout=120)

        thread = threading.Thread(target=call)
        thread.start()
        wait_until_computing(server, "slow")
        grpc_client.unregister_system_shared_memory(name)
        expect_error(lambda: grpc_client.infer("slow", inputs), "NOT_FOUND",
                     f"input 'x': shared memory region '{name}' is not registered")
        assert key.lstrip("/") in maps(server)  # still held by the request in flight
        thread.join(120)
        assert outcome["result"].get_output("y").shape == [1, 512]
        np.testing.assert_array_equal(
            shm.get_contents_as_numpy(handle, np.float32, [1, 512], offset=x.nbytes), x)
        wait_for(lambda: key.lstrip("/") not in maps(server), what="the mapping released")
