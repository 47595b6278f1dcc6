"""The Open Inference Protocol over REST, through the stock tritonclient.http (sync, async_infer
and aio), making every call of Triton's simple_http_* example clients against Triton's `simple`
model; and the same answers over REST and gRPC for every bundled model."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from onnx_builders import affine_config, affine_graph, save_graph, write_model
from servers import ROOT, serving
from service.core.config import load_model_config
from service.core.datatypes import DATATYPES
from support import expect_error

EXAMPLES = ROOT / "examples" / "triton_repository"
BUNDLED = ROOT / "models"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("repo")
    shutil.copytree(EXAMPLES / "simple", path / "simple")
    write_model(path, "affine", affine_graph(2.0, 1.0), affine_config())
    return path


@pytest.fixture(scope="module")
def server(repo):
    yield from serving(repo)


@pytest.fixture
def client(server):
    with triton_http.InferenceServerClient(server.http_address) as c:
        yield c


def simple_inputs(binary: bool = True):
    """simple_http_infer_client.py's inputs: INPUT0 = 0..15, INPUT1 = ones."""
    input0 = np.arange(16, dtype=np.int32).reshape(1, 16)
    input1 = np.ones((1, 16), dtype=np.int32)
    inputs = [triton_http.InferInput("INPUT0", [1, 16], "INT32"),
              triton_http.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(input0, binary_data=binary)
    inputs[1].set_data_from_numpy(input1, binary_data=binary)
    return inputs, input0, input1


def check_simple(result, input0, input1) -> None:
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), input0 + input1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), input0 - input1)


# -- simple_http_health_metadata.py ----------------------------------------------------------------

def test_health_and_metadata(client):
    headers = {"test": "1"}
    assert client.is_server_live(headers=headers)
    assert client.is_server_ready(headers=headers)
    assert client.is_model_ready("simple", headers=headers)
    assert client.is_model_ready("simple", "1")
    assert not client.is_model_ready("simple", "2")
    assert not client.is_model_ready("missing")
    metadata = client.get_server_metadata(headers=headers)
    assert metadata["name"] == "onnx-serve"
    # Exactly what is served: gRPC's list (test_kserve_api.py) and the binary tensor format.
    assert metadata["extensions"] == [
        "model_repository", "model_configuration", "statistics", "health", "reflection",
        "system_shared_memory", "classification", "binary_tensor_data"]
    model = client.get_model_metadata("simple", query_params={"test_1": 1, "test_2": 2})
    assert model["name"] == "simple" and model["versions"] == ["1"]
    assert model["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == \
        [("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])]
    # Unlike gRPC's through tritonclient, the REST metadata shows its parameters.
    assert model["parameters"]["execution_provider"] == "CPUExecutionProvider"
    assert client.get_model_metadata("simple", "1") == model
    expect_error(lambda: client.get_model_metadata("missing"), "404",
                 "model 'missing' is not loaded")


def test_model_config_is_tritons(client):
    config = client.get_model_config("simple")
    assert config["name"] == "simple" and config["max_batch_size"] == 8
    assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]
    assert config["input"][0]["data_type"] == "TYPE_INT32"
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert client.get_model_config("simple", "1") == config


# -- simple_http_infer_client.py, async and aio ---------------------------------------------------

@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-inputs", "json-inputs"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-outputs", "json-outputs"])
def test_infer_with_and_without_binary_data(client, binary_in, binary_out):
    inputs, input0, input1 = simple_inputs(binary_in)
    outputs = [triton_http.InferRequestedOutput("OUTPUT0", binary_data=binary_out),
               triton_http.InferRequestedOutput("OUTPUT1", binary_data=not binary_out)]
    result = client.infer("simple", inputs, outputs=outputs, request_id="1",
                          headers={"test": "1"}, query_params={"test_1": 1, "test_2": 2})
    check_simple(result, input0, input1)
    response = result.get_response()
    assert response["id"] == "1" and response["model_version"] == "1"
    first, second = response["outputs"]
    assert ("parameters" in first) == binary_out and ("data" in first) == (not binary_out)
    assert ("parameters" in second) == (not binary_out)
    assert result.get_output("OUTPUT1")["datatype"] == "INT32"


def test_infer_without_requested_outputs_returns_all_in_binary(client):
    inputs, input0, input1 = simple_inputs()
    result = client.infer("simple", inputs)
    check_simple(result, input0, input1)
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])


@pytest.mark.parametrize("request_algorithm", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_algorithm", [None, "gzip", "deflate"])
def test_infer_compressed_both_ways(client, request_algorithm, response_algorithm):
    inputs, input0, input1 = simple_inputs()
    result = client.infer("simple", inputs,
                          request_compression_algorithm=request_algorithm,
                          response_compression_algorithm=response_algorithm)
    check_simple(result, input0, input1)


def test_response_compression_is_on_the_wire(server):
    inputs, _, _ = simple_inputs()
    body, json_size = triton_http.InferenceServerClient.generate_request_body(inputs)
    for encoding in ("gzip", "deflate"):
        request = urllib.request.Request(
            f"{server.http_url}/v2/models/simple/infer", data=body, method="POST",
            headers={"Inference-Header-Content-Length": str(json_size),
                     "Accept-Encoding": encoding})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["Content-Encoding"] == encoding
            compressed = response.read()
            header_length = int(response.headers["Inference-Header-Content-Length"])
        result = triton_http.InferenceServerClient.parse_response_body(
            compressed, header_length=header_length, content_encoding=encoding)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"),
                                      np.arange(16, dtype=np.int32).reshape(1, 16) + 1)


def test_async_infer(client):
    requests = []
    expected = []
    for i in range(8):
        inputs, input0, input1 = simple_inputs()
        requests.append(client.async_infer("simple", inputs, request_id=str(i)))
        expected.append((input0, input1))
    # The connection pool carries several at once; each answer is its own request's.
    with triton_http.InferenceServerClient(client._parsed_url.netloc, concurrency=4) as pooled:
        concurrent = [pooled.async_infer("simple", simple_inputs()[0], request_id=str(i))
                      for i in range(8)]
        for i, request in enumerate(concurrent):
            result = request.get_result()
            assert result.get_response()["id"] == str(i)
    for (input0, input1), request in zip(expected, requests):
        check_simple(request.get_result(), input0, input1)


def test_aio_client(server):
    async def scenario():
        async with triton_aio.InferenceServerClient(server.http_address) as client:
            assert await client.is_server_live()
            assert await client.is_server_ready()
            assert await client.is_model_ready("simple")
            assert (await client.get_model_metadata("simple"))["name"] == "simple"
            results = await asyncio.gather(*(
                client.infer("simple", simple_inputs()[0], request_id=str(i)) for i in range(6)))
            stats = await client.get_inference_statistics("simple")
            return results, stats

    results, stats = asyncio.run(scenario())
    _, input0, input1 = simple_inputs()
    for i, result in enumerate(results):
        check_simple(result, input0, input1)
        assert result.get_response()["id"] == str(i)
    assert stats["model_stats"][0]["name"] == "simple"


# -- statistics, repository (simple_http_model_control.py) ---------------------------------------

def test_statistics_count_requests_exactly(client):
    def stats():
        return client.get_inference_statistics("simple")["model_stats"][0]

    before = stats()
    for version in ("", "1", ""):  # /v2/models/simple/infer and /v2/models/simple/versions/1/infer
        assert client.infer("simple", simple_inputs()[0], model_version=version).get_response()[
            "model_version"] == "1"
    after = stats()
    assert after["name"] == "simple" and after["version"] == "1"
    assert after["inference_stats"]["success"]["count"] == \
        before["inference_stats"]["success"]["count"] + 3
    assert after["inference_count"] == before["inference_count"] + 3
    assert after["execution_count"] == before["execution_count"] + 3
    everything = client.get_inference_statistics()["model_stats"]
    assert {(s["name"], s["version"]) for s in everything} == {("simple", "1"), ("affine", "1")}
    assert client.get_inference_statistics("simple", "1")["model_stats"][0]["version"] == "1"
    expect_error(lambda: client.get_inference_statistics("missing"), "404", "missing")


def test_repository_index_load_and_unload(client, server, repo):
    index = {(m["name"], m["version"], m["state"]) for m in client.get_model_repository_index()}
    assert index == {("simple", "1", "READY"), ("affine", "1", "READY")}
    save_graph(affine_graph(3.0, 0.0), repo / "affine" / "2" / "model.onnx")
    client.load_model("affine")  # latest: 1, so version 2 replaces 1
    assert client.get_model_metadata("affine")["versions"] == ["2"]
    x = np.ones((1, 4), np.float32)
    tensor = triton_http.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("affine", [tensor]).as_numpy("y"), 3 * x)
    client.unload_model("affine")
    assert not client.is_model_ready("affine")
    states = {m["name"]: (m["state"], m["reason"]) for m in client.get_model_repository_index()}
    assert states["affine"] == ("UNAVAILABLE", "unloaded")
    expect_error(lambda: client.unload_model("no such!"), "400", "model name must match")
    client.load_model("affine")
    assert client.is_model_ready("affine")


def test_load_with_a_config_override_and_files_sent_in_the_request(client, server, repo, tmp_path):
    graph = tmp_path / "model.onnx"
    save_graph(affine_graph(5.0, 0.0), graph)
    config = json.dumps({"name": "sent", "max_batch_size": 4,
                         "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
                         "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}]})
    # tritonclient.http's load_model(files=...) puts bytes into json.dumps and fails in the client
    # itself, so the files go as the REST API defines them: base64 strings.
    body = json.dumps({"parameters": {
        "config": config,
        "file:1/model.onnx": base64.b64encode(graph.read_bytes()).decode()}}).encode()
    request = urllib.request.Request(f"{server.http_url}/v2/repository/models/sent/load",
                                     data=body, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
    tensor = triton_http.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(client.infer("sent", [tensor]).as_numpy("y"),
                                  np.full((1, 4), 5.0, np.float32))
    expect_error(lambda: client.load_model("sent", config="{not json"), "400",
                 "not a valid ModelConfig JSON")
    bad = json.dumps({"parameters": {"config": config, "file:1/model.onnx": "%%%"}}).encode()
    request = urllib.request.Request(f"{server.http_url}/v2/repository/models/sent/load",
                                     data=bad, method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == 400
    assert json.loads(info.value.read()) == {
        "error": "parameter 'file:1/model.onnx': expected the file's bytes in base64"}


# -- the same answers over REST and gRPC -----------------------------------------------------------

def bundled_inputs(model_dir, rng) -> tuple[dict[str, np.ndarray], list[str]]:
    config = load_model_config(model_dir / "config.yaml")
    arrays = {}
    for spec in config.inputs:
        dims = [d if d > 0 else 12 for d in spec.shape]
        shape = ([3] if config.max_batch_size else []) + dims
        dtype = DATATYPES[spec.datatype].numpy
        if dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            arrays[spec.name] = rng.integers(0, config.task.num_classes or 2, shape).astype(dtype)
    return arrays, [spec.name for spec in config.outputs]


@pytest.fixture(scope="module")
def bundled_server():
    yield from serving(BUNDLED)


# Every bundled model this CPU server serves: the fp16 variants are instance_kind gpu.
BUNDLED_MODELS = sorted(
    p.name for p in BUNDLED.iterdir() if (p / "config.yaml").is_file()
    and load_model_config(p / "config.yaml").instance_kind != "gpu")


@pytest.mark.parametrize("model", BUNDLED_MODELS)
def test_rest_and_grpc_give_bit_identical_outputs(bundled_server, model):
    arrays, output_names = bundled_inputs(BUNDLED / model, np.random.default_rng(7))
    config = load_model_config(BUNDLED / model / "config.yaml")
    datatypes = {spec.name: spec.datatype for spec in config.inputs}

    with triton_grpc.InferenceServerClient(bundled_server.grpc_address) as grpc_client:
        tensors = []
        for name, array in arrays.items():
            tensors.append(triton_grpc.InferInput(name, list(array.shape), datatypes[name]))
            tensors[-1].set_data_from_numpy(array)
        by_grpc = grpc_client.infer(model, tensors)
    with triton_http.InferenceServerClient(bundled_server.http_address) as http_client:
        for binary in (True, False):
            tensors = []
            for name, array in arrays.items():
                tensors.append(triton_http.InferInput(name, list(array.shape), datatypes[name]))
                tensors[-1].set_data_from_numpy(array, binary_data=binary)
            outputs = [triton_http.InferRequestedOutput(n, binary_data=binary)
                       for n in output_names]
            by_rest = http_client.infer(model, tensors, outputs=outputs)
            for name in output_names:
                rest, grpc = by_rest.as_numpy(name), by_grpc.as_numpy(name)
                assert rest.dtype == grpc.dtype and rest.shape == grpc.shape
                assert rest.tobytes() == grpc.tobytes(), (model, name, binary)
