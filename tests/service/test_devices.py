"""Models for another device: a CPU-only server skips `instance_kind: gpu` models and stays ready
for the rest, unless the operator named the model at start."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from onnx_builders import affine_config, affine_graph, write_model

@pytest.fixture
def repo(tmp_path):
    write_model(tmp_path, "cpu_model", affine_graph(2.0, 0.0), affine_config())
    write_model(tmp_path, "gpu_model", affine_graph(2.0, 0.0), affine_config(
        instance_kind="gpu", cuda={"cudnn_conv_algo_search": "EXHAUSTIVE"}))
    return tmp_path


def test_gpu_model_is_skipped_with_one_line_and_the_server_stays_ready(repo, server_factory):
    server = server_factory(repo, "--device", "cpu")
    reason = (f"{repo}/gpu_model/1/model.onnx: instance_kind gpu needs the CUDA provider; this "
              "server runs on CPUExecutionProvider (CPU requested)")
    lines = [m for m in server.messages() if "gpu_model" in m]
    assert lines == [f"model 'gpu_model' not served on this device: {reason}"]
    with triton.InferenceServerClient(server.grpc_address) as client:
        assert client.is_server_ready()
        assert client.is_model_ready("cpu_model") and not client.is_model_ready("gpu_model")
        index = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
        assert index["gpu_model"] == ("UNAVAILABLE", reason)
        x = triton.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("gpu_model", [x])
        assert info.value.status() == str(grpc.StatusCode.UNAVAILABLE)
        assert info.value.message() == f"model 'gpu_model' is not ready (UNAVAILABLE): {reason}"
        with pytest.raises(InferenceServerException) as info:
            client.load_model("gpu_model")
        assert info.value.status() == str(grpc.StatusCode.FAILED_PRECONDITION)
        assert info.value.message() == reason
        assert client.is_server_ready()
    # Not a failure: no 'not ready' series for the alert to page on.
    assert 'model="gpu_model"' not in server.metrics_text()


def test_gpu_model_named_at_start_keeps_a_cpu_server_unready(repo, server_factory):
    server = server_factory(repo, "--device", "cpu", "--model", "cpu_model",
                            "--model", "gpu_model")
    with triton.InferenceServerClient(server.grpc_address) as client:
        assert client.is_model_ready("cpu_model")
        assert not client.is_server_ready()
