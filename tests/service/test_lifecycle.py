"""Load, reload and unload at run time under traffic; broken models; graceful shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from servers import ROOT, metric_value, wait_for
from service._proto import task_service_pb2 as task_pb
from service._proto import task_service_pb2_grpc as task_grpc
from service.client.client import ChannelOptions, TaskClient, assemble_chunks, to_image_message
from onnx_builders import (
    save_graph, affine_config, affine_graph, slow_config, slow_graph, super_resolution_graph,
    write_model,
)


def infer_affine(client, x, model="affine", version=""):
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor], model_version=version)
    return result.get_response().model_version, result.as_numpy("y")


class Traffic:
    """Threads that keep calling one model until stopped, recording every outcome."""

    def __init__(self, address: str, model: str, version: str = "", threads: int = 4):
        self.outcomes: list[tuple[str, np.ndarray] | Exception] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(address, model, version))
                         for _ in range(threads)]

    def _run(self, address, model, version):
        x = np.full((2, 4), 3.0, np.float32)
        with triton.InferenceServerClient(address) as client:
            for _ in range(5000):  # bounded even if stop() is never reached
                if self._stop.is_set():
                    return
                try:
                    self.outcomes.append(infer_affine(client, x, model, version))
                except InferenceServerException as exc:
                    self.outcomes.append(exc)

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        wait_for(lambda: len(self.outcomes) > 20, what="traffic flowing")
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def failures(self):
        return [o for o in self.outcomes if isinstance(o, Exception)]


def test_reload_and_unload_under_traffic_fail_nothing(tmp_path, server_factory):
    write_model(tmp_path, "affine", affine_graph(1.0, 0.0), affine_config())
    write_model(tmp_path, "multi", affine_graph(1.0, 0.0),
                affine_config(version_policy={"all": True}))
    write_model(tmp_path, "side", affine_graph(1.0, 0.0), affine_config())
    server = server_factory(tmp_path)
    x = np.full((2, 4), 3.0, np.float32)

    with triton.InferenceServerClient(server.grpc_address) as admin, \
            Traffic(server.grpc_address, "affine") as default_traffic, \
            Traffic(server.grpc_address, "multi", version="1") as pinned_traffic:
        # A new version appears on disk and is loaded: the default moves to it.
        save_graph(affine_graph(2.0, 0.0), tmp_path / "affine" / "2" / "model.onnx")
        admin.load_model("affine")
        assert infer_affine(admin, x)[0] == "2"
        # A second version of a multi-version model: version 1 keeps serving throughout.
        save_graph(affine_graph(2.0, 0.0), tmp_path / "multi" / "2" / "model.onnx")
        admin.load_model("multi")
        assert admin.get_model_metadata("multi").versions == ["1", "2"]
        # Another model leaves and comes back.
        admin.unload_model("side")
        assert not admin.is_model_ready("side")
        admin.load_model("side")
        wait_for(lambda: sum(1 for o in default_traffic.outcomes
                             if not isinstance(o, Exception) and o[0] == "2") > 20,
                 what="traffic on the new version")

    assert default_traffic.failures() == []
    assert pinned_traffic.failures() == []
    for version, y in default_traffic.outcomes:
        np.testing.assert_array_equal(y, x * (1.0 if version == "1" else 2.0))
    assert {version for version, _ in default_traffic.outcomes} == {"1", "2"}
    assert {version for version, _ in pinned_traffic.outcomes} == {"1"}
    text = server.metrics_text()
    # Version 1 of affine is gone (latest policy): its gauges go with it.
    assert metric_value(text, "inference_model_ready", model="affine", version="2") == 1
    assert 'inference_model_ready{model="affine",version="1"}' not in text


def test_unloaded_model_is_not_found_and_unknown_load_is_named(tmp_path, server_factory):
    write_model(tmp_path, "affine", affine_graph(1.0, 0.0), affine_config())
    server = server_factory(tmp_path)
    with triton.InferenceServerClient(server.grpc_address) as client:
        client.unload_model("affine")
        with pytest.raises(InferenceServerException) as info:
            infer_affine(client, np.ones((1, 4), np.float32))
        assert info.value.status() == "StatusCode.NOT_FOUND"
        index = {(m.name, m.state, m.reason) for m in client.get_model_repository_index().models}
        assert ("affine", "UNAVAILABLE", "unloaded") in index
        with pytest.raises(InferenceServerException) as info:
            client.load_model("nothing-here")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        assert "model 'nothing-here' not found in repository" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.load_model("../escape")
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "model name must match" in info.value.message()


def test_broken_models_fail_alone_with_clear_errors(tmp_path, server_factory):
    write_model(tmp_path, "affine", affine_graph(1.0, 0.0), affine_config())
    corrupt = write_model(tmp_path, "corrupt", affine_graph(1.0, 0.0), affine_config())
    (corrupt / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    badconfig = write_model(tmp_path, "badconfig", affine_graph(1.0, 0.0), affine_config())
    (badconfig / "config.yaml").write_text("max_batch_size: many\ninputs: []\n")
    mismatch = write_model(tmp_path, "mismatch", affine_graph(1.0, 0.0), affine_config(dim=5))
    server = server_factory(tmp_path)

    with triton.InferenceServerClient(server.grpc_address) as client:
        assert infer_affine(client, np.ones((1, 4), np.float32))[1].tolist() == [[1.0] * 4]
        assert client.is_server_live()
        assert not client.is_server_ready()  # startup models are missing
        reasons = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
        assert reasons["corrupt"][0] == "UNAVAILABLE"
        assert f"{corrupt}/1/model.onnx: ONNX Runtime cannot load the model" in reasons["corrupt"][1]
        assert f"{badconfig}/config.yaml: field 'max_batch_size'" in reasons["badconfig"][1]
        assert "field 'inputs': List should have at least 1 item" in reasons["badconfig"][1]
        assert "config field 'inputs.0': shape [5]" in reasons["mismatch"][1]
        text = server.metrics_text()
        assert metric_value(text, "inference_model_ready", model="corrupt", version="") == 0
        assert 'inference_model_ready{model="corrupt",version=""} 0.0' in text
        assert metric_value(text, "inference_queue_capacity", model="affine", version="1") == 256
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("corrupt")
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "model 'corrupt' is not ready (UNAVAILABLE)" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.load_model("mismatch")
        assert info.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert f"{mismatch}/1/model.onnx: config field 'inputs.0'" in info.value.message()


def test_sigterm_drains_inflight_calls_and_refuses_new_ones(tmp_path, server_factory):
    write_model(tmp_path, "slow", slow_graph(), slow_config())
    server = server_factory(tmp_path)
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="slow")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 512])
    request.inputs.add(name="work", datatype="INT64", shape=[1, 1])
    x = np.random.default_rng(2).standard_normal((1, 512)).astype(np.float32)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        busy_request = service_pb2.ModelInferRequest()
        busy_request.CopyFrom(request)
        busy_request.raw_input_contents.extend([x.tobytes(), np.array([[150_000]]).tobytes()])
        busy = stub.ModelInfer.future(busy_request, timeout=60)
        wait_for(lambda: metric_value(server.metrics_text(), "inference_inflight_requests",
                                      model="slow") == 1, what="a call in flight")

        server.process.send_signal(signal.SIGTERM)
        health = health_pb2_grpc.HealthStub(channel)

        def not_serving() -> bool:
            # NOT_SERVING first; moments later gRPC itself refuses new calls (UNAVAILABLE).
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            except grpc.RpcError as exc:
                return exc.code() == grpc.StatusCode.UNAVAILABLE
            return status == health_pb2.HealthCheckResponse.NOT_SERVING

        wait_for(not_serving, what="health NOT_SERVING")
        late = service_pb2.ModelInferRequest()
        late.CopyFrom(request)
        late.raw_input_contents.extend([x.tobytes(), np.array([[0]]).tobytes()])
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(late, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        y = np.frombuffer(busy.result().raw_output_contents[0], np.float32)
        np.testing.assert_array_equal(y, x[0])
    assert server.process.wait(30) == 0
    assert "stopped" in server.messages()


def test_settings_come_from_environment(tmp_path, server_factory):
    write_model(tmp_path, "affine", affine_graph(1.0, 0.0, dim=4096), affine_config(dim=4096))
    server = server_factory(tmp_path, env={"ONNXSERVE_MAX_MESSAGE_BYTES": "8192"})
    with triton.InferenceServerClient(server.grpc_address) as client:
        with pytest.raises(InferenceServerException) as info:
            infer_affine(client, np.ones((1, 4096), np.float32))
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_invalid_setting_is_reported_by_name():
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--grpc-port", "not-a-port"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "setting 'grpc_port'" in result.stderr and "'not-a-port'" in result.stderr


def test_max_connection_age_closes_connections_and_clients_carry_on(tmp_path, server_factory):
    write_model(tmp_path, "affine", affine_graph(1.0, 0.0), affine_config())
    server = server_factory(tmp_path, "--max-connection-age", "0.3")
    states: list[grpc.ChannelConnectivity] = []
    with grpc.insecure_channel(server.grpc_address) as channel:
        channel.subscribe(states.append, try_to_connect=True)
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        # The server ends the connection by age: the channel goes READY -> IDLE ...
        wait_for(lambda: grpc.ChannelConnectivity.IDLE in states[states.index(
            grpc.ChannelConnectivity.READY):], what="the connection closed by age")
        # ... and the next call simply reconnects.
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_a_streamed_upscale_keeps_its_version_through_a_reload(tmp_path, server_factory):
    """The stream resolves its model version once: a reload to a new version halfway through
    neither fails the rest of its strips nor mixes the new version's pixels into them."""
    unit = {"scale": 1 / 255, "mean": 0.0, "std": 1.0}
    config = {
        "max_batch_size": 8,
        "inputs": [{"name": "low_res", "datatype": "FP32", "shape": [1, -1, -1]}],
        "outputs": [{"name": "high_res", "datatype": "FP32", "shape": [1, -1, -1]}],
        "task": {"kind": "super_resolution", "upscale_factor": 2, "color_mode": "y",
                 "input_scaling": unit, "output_scaling": unit}}
    write_model(tmp_path, "sr", super_resolution_graph(2, seed=4), config)
    server = server_factory(tmp_path)
    # 16 MB of output in 1 MB strips: far more than gRPC's flow-control window, so the server is
    # still computing strips when the reload lands.
    image = np.random.default_rng(0).integers(0, 256, (2048, 2048), np.uint8)
    request = task_pb.SuperResolveRequest(model="sr", image=to_image_message(image))
    with TaskClient(server.grpc_address, timeout=120) as client, \
            triton.InferenceServerClient(server.grpc_address) as admin, \
            grpc.insecure_channel(server.grpc_address,
                                  options=ChannelOptions().grpc_options()) as channel:
        version_1 = np.asarray(client.upscale(image, "sr"))
        stream = task_grpc.TaskServiceStub(channel).SuperResolveStream(request, timeout=120)
        first = next(stream)
        save_graph(super_resolution_graph(2, seed=9), tmp_path / "sr" / "2" / "model.onnx")
        admin.load_model("sr")  # latest: 1, so version 1 stops serving new calls
        assert admin.get_model_metadata("sr").versions == ["2"]
        streamed = np.asarray(assemble_chunks([first, *stream]))
        version_2 = np.asarray(client.upscale(image, "sr"))
    assert first.row_start == 0 and first.row_count < 4096
    np.testing.assert_array_equal(streamed, version_1)
    assert not np.array_equal(version_2, version_1)
