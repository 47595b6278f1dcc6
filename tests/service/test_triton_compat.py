"""Triton compatibility: config.pbtxt repositories, the ModelConfig RPC, load with an override, and
every call Triton's published example clients for `simple` make, through stock clients."""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from servers import ROOT, serving
from support import client, expect_error  # noqa: F401 - client is a fixture
from proto_fields import extension_layout, message_fields
from onnx_builders import affine_config, affine_graph, save_graph, write_model

EXAMPLES = ROOT / "examples" / "triton_repository"


def write_pbtxt(repo: Path, name: str, text: str, graph=None, versions=(1,)) -> Path:
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text)
    for version in versions:
        if graph is not None:
            save_graph(graph, model_dir / str(version) / "model.onnx")
    return model_dir


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("triton-repo")
    shutil.copytree(EXAMPLES, path, dirs_exist_ok=True)
    # A native model in the same repository.
    write_model(path, "native", affine_graph(2.0, 0.0), affine_config())
    # Partial config: the graph supplies inputs and outputs; two versions, both served.
    write_pbtxt(path, "partial", 'backend: "onnxruntime"\nmax_batch_size: 2\n'
                'version_policy: { all { } }\n', affine_graph(3.0, 0.0), versions=(1, 2))
    # Fields we accept and ignore, labels from a file, and a reshape.
    write_pbtxt(path, "tuned", '''
        platform: "onnxruntime_onnx"
        max_batch_size: 4
        input [{ name: "x" data_type: TYPE_FP32 dims: [2, 2] reshape: { shape: [4] } }]
        output [{ name: "y" data_type: TYPE_FP32 dims: [2, 2] reshape: { shape: [4] }
                  label_filename: "labels.txt" }]
        instance_group [{ count: 2 kind: KIND_CPU }]
        optimization {
          graph { level: 1 }
          execution_accelerators { gpu_execution_accelerator [
            { name: "cuda"
              parameters { key: "enable_cuda_graph" value: "1" }
              parameters { key: "use_tf32" value: "0" }
              parameters { key: "cudnn_conv_algo_search" value: "EXHAUSTIVE" }
              parameters { key: "cudnn_conv_use_max_workspace" value: "1" } },
            { name: "tensorrt" } ] }
        }
        model_warmup [{ name: "zeros" batch_size: 1 }]
        parameters { key: "task_kind" value: { string_value: "classifier" } }
        parameters { key: "custom_knob" value: { string_value: "7" } }
        parameters { key: "cudnn_conv_algo_search" value: { string_value: "1" } }
        parameters { key: "gpu_mem_limit" value: { string_value: "1073741824" } }
    ''', affine_graph(1.0, 1.0))
    (path / "tuned" / "labels.txt").write_text("north\neast\nsouth\nwest\n")
    return path


@pytest.fixture(scope="module")
def server(repo):
    yield from serving(repo)


def simple_inputs(batch: int = 1):
    input0 = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    input1 = np.ones((batch, 16), dtype=np.int32)
    inputs = [triton.InferInput("INPUT0", [batch, 16], "INT32"),
              triton.InferInput("INPUT1", [batch, 16], "INT32")]
    inputs[0].set_data_from_numpy(input0)
    inputs[1].set_data_from_numpy(input1)
    return inputs, input0, input1


# -- the ModelConfig message ---------------------------------------------------------------------


def test_model_config_message_matches_tritons():
    # Our generated module cannot share this process with tritonclient's: read it in a child.
    ours = subprocess.run(
        [sys.executable, "-c", "import json, sys; sys.path.insert(0, 'tests');"
         "from proto_fields import message_fields;"
         "from service._proto import model_config_pb2, grpc_service_pb2 as g;"
         "d = message_fields(model_config_pb2.ModelConfig.DESCRIPTOR);"
         "d.update(message_fields(g.ModelConfigResponse.DESCRIPTOR));"
         "print(json.dumps(d))"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    mine = {k: {f: tuple(v) for f, v in fields.items()}
            for k, fields in json.loads(ours.stdout).items()}
    theirs = message_fields(model_config_pb2.ModelConfig.DESCRIPTOR)
    theirs.update(message_fields(service_pb2.ModelConfigResponse.DESCRIPTOR))
    assert mine == theirs


def test_streaming_and_shared_memory_rpcs_match_tritons():
    ours = subprocess.run(
        [sys.executable, "-c", "import json, sys; sys.path.insert(0, 'tests');"
         "from proto_fields import extension_layout;"
         "from service._proto import grpc_service_pb2 as g;"
         "print(json.dumps(extension_layout(g)))"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    fields, rpcs = json.loads(ours.stdout)
    their_fields, their_rpcs = extension_layout(service_pb2)
    assert {k: {f: tuple(v) for f, v in m.items()} for k, m in fields.items()} == their_fields
    assert {"ModelStreamInfer", "SystemSharedMemoryRegister", "CudaSharedMemoryStatus"} <= set(rpcs)
    assert {name: their_rpcs[name] for name in rpcs} == rpcs


# -- repository ----------------------------------------------------------------------------------


def test_mixed_repository_serves(client):
    for name in ("simple", "add_sub_autofill", "native", "partial", "tuned"):
        assert client.is_model_ready(name), name
    assert client.is_server_ready()


def test_models_for_other_backends_fail_alone(tmp_path, server_factory):
    shutil.copytree(EXAMPLES, tmp_path, dirs_exist_ok=True)
    write_pbtxt(tmp_path, "tensorrt", 'platform: "tensorrt_plan"\nmax_batch_size: 8\n')
    write_pbtxt(tmp_path, "pythonic", 'backend: "python"\n')
    write_pbtxt(tmp_path, "sequence", 'backend: "onnxruntime"\nsequence_batching { }\n',
                affine_graph(1.0, 0.0))
    both = write_model(tmp_path, "both", affine_graph(1.0, 0.0), affine_config())
    (both / "config.pbtxt").write_text('backend: "onnxruntime"\n')
    server = server_factory(tmp_path)
    with triton.InferenceServerClient(server.grpc_address) as client:
        assert client.is_model_ready("simple")
        index = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
        assert index["tensorrt"][0] == "UNAVAILABLE"
        assert ("model 'tensorrt' is for 'tensorrt_plan'; this server runs only ONNX models"
                in index["tensorrt"][1])
        assert "model 'pythonic' is for 'python'" in index["pythonic"][1]
        assert ("field 'sequence_batching' (sequence batching) is not supported by this server"
                in index["sequence"][1])
        assert "model 'both' has two configs" in index["both"][1]
        assert f"{both}/config.yaml" in index["both"][1]
        assert f"{both}/config.pbtxt" in index["both"][1]
        expect_error(lambda: client.load_model("tensorrt"), "FAILED_PRECONDITION",
                     "tensorrt_plan")


def test_get_model_config_for_every_model(client):
    config = client.get_model_config("simple").config
    assert config.name == "simple" and config.max_batch_size == 8
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("INPUT0", model_config_pb2.TYPE_INT32, [16]), ("INPUT1", model_config_pb2.TYPE_INT32, [16])]
    assert [o.name for o in config.output] == ["OUTPUT0", "OUTPUT1"]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    as_json = client.get_model_config("simple", as_json=True)["config"]
    assert as_json["name"] == "simple" and int(as_json["max_batch_size"]) == 8
    assert as_json["input"][0]["dims"] == ["16"]

    autofilled = client.get_model_config("add_sub_autofill").config
    assert autofilled.max_batch_size == 4  # the graph's dim 0 is symbolic: a batch axis
    assert [(i.name, list(i.dims)) for i in autofilled.input] == [("INPUT0", [16]),
                                                                  ("INPUT1", [16])]
    partial_config = client.get_model_config("partial").config
    assert partial_config.max_batch_size == 2
    assert partial_config.version_policy.WhichOneof("policy_choice") == "all"
    assert client.get_model_metadata("partial").versions == ["1", "2"]

    native = client.get_model_config("native").config
    assert native.max_batch_size == 8 and native.input[0].data_type == model_config_pb2.TYPE_FP32
    assert native.parameters["task_kind"].string_value == "tensor"

    tuned = client.get_model_config("tuned").config
    assert tuned.instance_group[0].count == 2
    assert list(tuned.input[0].reshape.shape) == [4]
    assert json.loads(tuned.parameters["labels"].string_value) == ["north", "east", "south", "west"]
    # The CUDA provider options, the legacy top-level code (1: HEURISTIC) winning over the
    # accelerator's, as in Triton's ONNX Runtime backend.
    (cuda,) = tuned.optimization.execution_accelerators.gpu_execution_accelerator
    assert cuda.name == "cuda"
    assert dict(cuda.parameters) == {"cudnn_conv_algo_search": "HEURISTIC",
                                     "gpu_mem_limit": "1073741824", "enable_cuda_graph": "1",
                                     "use_tf32": "0"}
    assert "cudnn_conv_algo_search" not in tuned.parameters


def test_ignored_fields_are_logged(server):
    messages = server.messages()
    assert any("field 'optimization.graph' is accepted and ignored" in m for m in messages)
    assert any("field 'model_warmup' is accepted and ignored" in m for m in messages)
    assert any("parameter 'custom_knob' is not used" in m for m in messages)
    accelerators = "optimization.execution_accelerators.gpu_execution_accelerator"
    assert any(f"{accelerators}[0] parameter 'cudnn_conv_use_max_workspace' is not used" in m
               for m in messages)
    assert any(f"{accelerators}[1] 'tensorrt' is ignored" in m for m in messages)
    # Valid, reported, and not passed to ONNX Runtime on the CPU provider.
    assert any("cuda options {'cudnn_conv_algo_search': 'HEURISTIC', 'gpu_mem_limit': "
               "1073741824, 'use_tf32': False, 'enable_cuda_graph': True} are valid but not used "
               "on CPUExecutionProvider" in m for m in messages), messages


def test_reshape_is_applied_both_ways(client):
    x = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    tensor = triton.InferInput("x", [2, 2, 2], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("tuned", [tensor])
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
    assert list(client.get_model_metadata("tuned").inputs[0].shape) == [-1, 2, 2]


# -- the example clients' calls --------------------------------------------------------------------


def test_simple_infer_client_calls(client):
    """simple_grpc_infer_client: infer with requested outputs, headers, compression, statistics."""
    before = client.get_inference_statistics(model_name="simple")
    inputs, input0, input1 = simple_inputs()
    outputs = [triton.InferRequestedOutput("OUTPUT0"), triton.InferRequestedOutput("OUTPUT1")]
    for compression in (None, "gzip", "deflate"):
        results = client.infer(model_name="simple", inputs=inputs, outputs=outputs,
                               client_timeout=30, headers={"test": "1"},
                               compression_algorithm=compression)
        np.testing.assert_array_equal(results.as_numpy("OUTPUT0"), input0 + input1)
        np.testing.assert_array_equal(results.as_numpy("OUTPUT1"), input0 - input1)
    after = client.get_inference_statistics(model_name="simple")
    assert len(after.model_stats) == 1
    assert (after.model_stats[0].inference_stats.success.count
            == before.model_stats[0].inference_stats.success.count + 3)


def test_health_metadata_and_model_control_client_calls(client):
    """simple_grpc_health_metadata and simple_grpc_model_control."""
    assert client.is_server_live() and client.is_model_ready("simple")
    assert client.get_server_metadata().name
    metadata = client.get_model_metadata("simple", as_json=True)
    assert metadata["name"] == "simple" and metadata["inputs"][0]["datatype"] == "INT32"
    index = client.get_model_repository_index(as_json=True)
    assert {"name": "simple", "version": "1", "state": "READY"} in index["models"]
    client.unload_model("add_sub_autofill")
    assert not client.is_model_ready("add_sub_autofill")
    client.load_model("add_sub_autofill")
    assert client.is_model_ready("add_sub_autofill")


def test_async_infer_with_callback(client):
    """simple_grpc_async_infer_client."""
    done: queue.Queue = queue.Queue()

    def callback(user_data, result, error):
        user_data.put(error if error else result)

    inputs, input0, input1 = simple_inputs()
    for _ in range(4):
        client.async_infer("simple", inputs, partial(callback, done), request_id="7")
    for _ in range(4):
        result = done.get(timeout=30)
        assert not isinstance(result, Exception), result
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), input0 + input1)
        assert result.get_response().id == "7"


def test_aio_client(server):
    """simple_grpc_aio_infer_client."""
    async def scenario():
        async with triton_aio.InferenceServerClient(server.grpc_address) as aio:
            assert await aio.is_server_ready()
            inputs, input0, input1 = simple_inputs(batch=2)
            result = await aio.infer("simple", inputs)
            config = await aio.get_model_config("simple")
            return result, input0 + input1, config

    result, expected, config = asyncio.run(scenario())
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected)
    assert config.config.max_batch_size == 8


def test_keepalive_and_channel_args(server):
    """simple_grpc_keepalive_client and simple_grpc_custom_args_client."""
    keepalive = triton.KeepAliveOptions(keepalive_time_ms=10000, keepalive_timeout_ms=5000,
                                        keepalive_permit_without_calls=True,
                                        http2_max_pings_without_data=2)
    with triton.InferenceServerClient(server.grpc_address, keepalive_options=keepalive) as kc:
        inputs, input0, input1 = simple_inputs()
        np.testing.assert_array_equal(kc.infer("simple", inputs).as_numpy("OUTPUT1"),
                                      input0 - input1)
    args = [("grpc.max_receive_message_length", 1 << 20)]
    with triton.InferenceServerClient(server.grpc_address, channel_args=args) as cc:
        assert cc.is_server_ready()


def test_raw_stub_calls_with_typed_and_raw_contents(server):
    """grpc_client / grpc_explicit_int_content_client: service_pb2 stubs directly."""
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(service_pb2.ServerLiveRequest()).live
        assert stub.ServerReady(service_pb2.ServerReadyRequest()).ready
        assert stub.ModelReady(service_pb2.ModelReadyRequest(name="simple", version="1")).ready
        assert stub.ServerMetadata(service_pb2.ServerMetadataRequest()).version
        assert stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="simple")).platform
        config = stub.ModelConfig(service_pb2.ModelConfigRequest(name="simple")).config
        assert config.max_batch_size == 8

        typed = service_pb2.ModelInferRequest(model_name="simple", model_version="1")
        for name, values in (("INPUT0", range(16)), ("INPUT1", [1] * 16)):
            tensor = typed.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            tensor.contents.int_contents.extend(values)
        typed.outputs.add(name="OUTPUT0")
        response = stub.ModelInfer(typed)
        assert [o.name for o in response.outputs] == ["OUTPUT0"]
        assert np.frombuffer(response.raw_output_contents[0], np.int32).tolist() == \
            [i + 1 for i in range(16)]

        raw = service_pb2.ModelInferRequest(model_name="simple")
        for name in ("INPUT0", "INPUT1"):
            raw.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            raw.raw_input_contents.append(np.full(16, 5, np.int32).tobytes())
        response = stub.ModelInfer(raw)
        assert np.frombuffer(response.raw_output_contents[1], np.int32).tolist() == [0] * 16


# -- load with an override -----------------------------------------------------------------------


def test_load_with_config_override_then_restore(client):
    inputs16, _, _ = simple_inputs(batch=16)
    expect_error(lambda: client.infer("simple", inputs16), "INVALID_ARGUMENT",
                 "batch size must be <= max_batch_size 8, got 16")
    client.load_model("simple", config=json.dumps({"backend": "onnxruntime",
                                                   "max_batch_size": 16}))
    assert client.get_model_config("simple").config.max_batch_size == 16
    result = client.infer("simple", inputs16)  # the batcher honours the new limit
    assert result.as_numpy("OUTPUT0").shape == (16, 16)

    # A malformed override is refused, naming the problem; the model stays as it was.
    expect_error(lambda: client.load_model("simple", config='{"max_batch_size": "many"}'),
                 "INVALID_ARGUMENT", "parameter 'config': not a valid ModelConfig JSON")
    expect_error(lambda: client.load_model("simple", config='{"platform": "tensorrt_plan"}'),
                 "INVALID_ARGUMENT", "is for 'tensorrt_plan'")
    expect_error(lambda: client.load_model("simple", config='{"input": [{"name": "INPUT0", '
                                                            '"data_type": "TYPE_BF16"}]}'),
                 "INVALID_ARGUMENT", "data_type TYPE_BF16 is not served")
    assert client.get_model_config("simple").config.max_batch_size == 16
    assert client.is_model_ready("simple")

    client.load_model("simple")  # a plain load reads the repository again
    assert client.get_model_config("simple").config.max_batch_size == 8


def test_load_with_files_from_the_request(client, repo):
    model_bytes = (repo / "simple" / "1" / "model.onnx").read_bytes()
    config = json.dumps({"backend": "onnxruntime", "max_batch_size": 4})
    client.load_model("uploaded", config=config, files={"file:3/model.onnx": model_bytes})
    assert client.get_model_metadata("uploaded").versions == ["3"]
    inputs, input0, input1 = simple_inputs()
    np.testing.assert_array_equal(client.infer("uploaded", inputs).as_numpy("OUTPUT0"),
                                  input0 + input1)
    assert not (repo / "uploaded").exists()  # nothing written into the repository

    expect_error(lambda: client.load_model("uploaded2", config=config,
                                           files={"file:../../etc/model.onnx": model_bytes}),
                 "INVALID_ARGUMENT", "expected 'file:<version>/model.onnx'")
    expect_error(lambda: client.load_model("uploaded3", files={"file:1/model.onnx": model_bytes}),
                 "INVALID_ARGUMENT", "files need a 'config' parameter too")
    client.unload_model("uploaded")
    assert not client.is_model_ready("uploaded")


def test_override_round_trips_our_own_config(client):
    """A config read back with get_model_config loads unchanged (task metadata included)."""
    original = client.get_model_config("tuned", as_json=True)["config"]
    client.load_model("tuned", config=json.dumps(original))
    again = client.get_model_config("tuned", as_json=True)["config"]
    assert again == original
    client.load_model("tuned")


def test_file_limit(tmp_path, server_factory):
    shutil.copytree(EXAMPLES, tmp_path, dirs_exist_ok=True)
    server = server_factory(tmp_path, "--max-load-file-bytes", "100")
    with triton.InferenceServerClient(server.grpc_address) as client:
        expect_error(lambda: client.load_model(
            "x", config='{"backend": "onnxruntime"}', files={"file:1/model.onnx": b"0" * 101}),
            "INVALID_ARGUMENT", "files total 101 bytes; the limit is 100 (max_load_file_bytes)")


def test_json_format_of_our_config_parses_as_tritons(client):
    config = client.get_model_config("native").config
    text = json_format.MessageToJson(config)
    parsed = json_format.Parse(text, model_config_pb2.ModelConfig())
    assert parsed.max_batch_size == 8
