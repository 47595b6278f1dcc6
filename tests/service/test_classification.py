"""Triton's classification extension through tritonclient's InferRequestedOutput(name,
class_count=k) over gRPC (sync and aio) and REST (binary and JSON): per item the top k as BYTES
"<score>:<index>:<label>", formatted as Triton does, with labels from the task config or a Triton
config's label_filename, without labels, for integer outputs and models without a batch axis."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
import tritonclient.http as triton_http
from onnx import TensorProto
from tritonclient.grpc import service_pb2, service_pb2_grpc

from onnx_builders import (
    affine_config, affine_graph, brightness_classifier_graph, identity_graph, image_spec,
    save_graph, simple_config, simple_graph, write_model,
)
from servers import serving
from support import client, expect_error  # noqa: F401 - client is a fixture

LABELS = ["bright", "dark", "neutral"]
PBTXT = """name: "labelled"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "images" data_type: TYPE_FP32 dims: [ 1, 8, 8 ] } ]
output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" } ]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("classification-repo")
    write_model(repo, "brightness", brightness_classifier_graph(), {
        "max_batch_size": 4, "inputs": [image_spec("images")],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [3]}],
        "task": {"kind": "classifier", "labels": LABELS}})
    (repo / "labelled").mkdir()
    (repo / "labelled" / "config.pbtxt").write_text(PBTXT)
    (repo / "labelled" / "labels.txt").write_text("light\nshadow\n")  # fewer than the classes
    save_graph(brightness_classifier_graph(), repo / "labelled" / "1" / "model.onnx")
    write_model(repo, "affine", affine_graph(1.0, 0.0), affine_config())
    write_model(repo, "nobatch", affine_graph(1.0, 0.0, batch_axis=False),
                affine_config(max_batch_size=0, dynamic_batching={"enabled": False}))
    write_model(repo, "simple", simple_graph(), simple_config())
    write_model(repo, "half", identity_graph(TensorProto.FLOAT16), {
        "max_batch_size": 4, "inputs": [{"name": "x", "datatype": "FP16", "shape": [4]}],
        "outputs": [{"name": "y", "datatype": "FP16", "shape": [4]}]})
    yield from serving(repo)


IMAGES = np.stack([np.full((1, 8, 8), 0.9, np.float32), np.full((1, 8, 8), -0.4, np.float32)])


def images_input(module=triton):
    x = module.InferInput("images", list(IMAGES.shape), "FP32")
    x.set_data_from_numpy(IMAGES)
    return [x]


def tritons_strings(scores: np.ndarray, k: int, labels: list[str]) -> list[list[bytes]]:
    """What Triton answers: per row the k highest as std::to_string(score) ("%f") ":" index, and
    ":" label where there is one."""
    rows = []
    for row in scores:
        order = sorted(range(len(row)), key=lambda i: -row[i])[:k]
        rows.append([(f"{row[i]:f}:{i}" + (f":{labels[i]}" if i < len(labels) else "")).encode()
                     for i in order])
    return rows


def test_grpc_top_k_with_task_labels(client):
    scores = client.infer("brightness", images_input()).as_numpy("probabilities")
    result = client.infer("brightness", images_input(), outputs=[
        triton.InferRequestedOutput("probabilities", class_count=2)])
    output = result.get_output("probabilities")
    assert (output.datatype, list(output.shape)) == ("BYTES", [2, 2])
    classes = result.as_numpy("probabilities")
    assert classes.tolist() == tritons_strings(scores, 2, LABELS)
    assert classes[0][0].startswith(b"0.9") and classes[0][0].endswith(b":0:bright")
    assert classes[1][0].endswith(b":1:dark")


def test_aio_client(server):
    async def run():
        async with triton_aio.InferenceServerClient(server.grpc_address) as client:
            return await client.infer("brightness", images_input(triton_aio), outputs=[
                triton_aio.InferRequestedOutput("probabilities", class_count=3)])

    classes = asyncio.run(run()).as_numpy("probabilities")
    assert [[v.split(b":")[2] for v in row] for row in classes] == [
        [b"bright", b"neutral", b"dark"], [b"dark", b"neutral", b"bright"]]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_rest(server, binary):
    with triton_http.InferenceServerClient(server.http_address) as client:
        scores = client.infer("brightness", images_input(triton_http)).as_numpy("probabilities")
        result = client.infer("brightness", images_input(triton_http), outputs=[
            triton_http.InferRequestedOutput("probabilities", binary_data=binary,
                                             class_count=1)])
        output = result.get_output("probabilities")
        assert (output["datatype"], output["shape"]) == ("BYTES", [2, 1])
        expected = tritons_strings(scores, 1, LABELS)
        if binary:
            assert result.as_numpy("probabilities").tolist() == expected
        else:  # JSON carries them as strings
            assert output["data"] == [row[0].decode() for row in expected]


def test_labels_from_label_filename_and_none_past_their_end(client):
    scores = client.infer("labelled", images_input()).as_numpy("probabilities")
    classes = client.infer("labelled", images_input(), outputs=[
        triton.InferRequestedOutput("probabilities", class_count=3)]).as_numpy("probabilities")
    assert classes.tolist() == tritons_strings(scores, 3, ["light", "shadow"])
    assert classes[0][1].count(b":") == 1  # index 2 has no label: "<score>:2"


def test_without_labels_integer_outputs_ties_and_no_batch_axis(client):
    x = triton.InferInput("x", [2, 4], "FP32")
    x.set_data_from_numpy(np.array([[0.5, 3.25, -1.0, 3.25], [1e-7, 0.0, 2.0, 1.0]], np.float32))
    classes = client.infer("affine", [x], outputs=[
        triton.InferRequestedOutput("y", class_count=10)]).as_numpy("y")
    # k above the element count gives every element; equal scores in index order.
    assert classes.tolist() == [
        [b"3.250000:1", b"3.250000:3", b"0.500000:0", b"-1.000000:2"],
        [b"2.000000:2", b"1.000000:3", b"0.000000:0", b"0.000000:1"]]

    a = np.array([[5, -2, 9, 0] * 4], np.int32)
    inputs = [triton.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(np.zeros((1, 16), np.int32))
    classes = client.infer("simple", inputs, outputs=[
        triton.InferRequestedOutput("OUTPUT0", class_count=2),
        triton.InferRequestedOutput("OUTPUT1")])
    assert classes.as_numpy("OUTPUT0").tolist() == [[b"9:2", b"9:6"]]
    np.testing.assert_array_equal(classes.as_numpy("OUTPUT1"), a)  # the other output as is

    x = triton.InferInput("x", [4], "FP32")
    x.set_data_from_numpy(np.array([1.0, 4.0, 2.0, 3.0], np.float32))
    result = client.infer("nobatch", [x], outputs=[triton.InferRequestedOutput("y", 2)])
    assert list(result.get_output("y").shape) == [2]
    assert result.as_numpy("y").tolist() == [b"4.000000:1", b"3.000000:3"]


def test_refusals(server, client):
    x = triton.InferInput("x", [1, 4], "FP16")
    x.set_data_from_numpy(np.ones((1, 4), np.float16))
    expect_error(lambda: client.infer("half", [x], outputs=[
        triton.InferRequestedOutput("y", class_count=1)]), "INVALID_ARGUMENT",
        "output 'y': classification needs a numeric output", "it is FP16")
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for value, message in ((service_pb2.InferParameter(int64_param=0),
                                "output 'y': parameter 'classification' must be >= 1, got 0"),
                               (service_pb2.InferParameter(string_param="2"),
                                "output 'y': parameter 'classification' must be an integer, "
                                "got str '2'")):
            request = service_pb2.ModelInferRequest(model_name="affine")
            request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
            request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
            request.outputs.add(name="y").parameters["classification"].CopyFrom(value)
            assert expect_error(lambda: stub.ModelInfer(request), "INVALID_ARGUMENT") == message
