"""The runtime's CUDA-path building blocks, run on the CPU provider over real sessions: provider
options, the warm-up plan, host-bound IO binding and the fixed-shape buffers of CUDA graphs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from onnx_builders import affine_config, affine_graph, super_resolution_graph, write_model
from service.core.config import CudaOptions, load_model_config, parse_model_config
from service.core.runtime import (
    FixedShapeBuffers, OnnxModel, ProviderChoice, RuntimeOptions, cuda_provider_options,
    resolve_cuda_options, run_host_bound, warmup_runs,
)
from service.errors import ModelLoadError, ModelSkipped
from service.settings import ServerSettings
from service.tasks.tiling import WARMUP_IMAGE_SIZES, tile_runs

CPU = ProviderChoice("CPUExecutionProvider", "test")


def server_cuda_defaults(**settings) -> CudaOptions:
    return CudaOptions.from_settings(ServerSettings(**settings))


def test_server_defaults_become_provider_options():
    assert cuda_provider_options(server_cuda_defaults()) == {
        "cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kNextPowerOfTwo",
        "do_copy_in_default_stream": "1", "use_tf32": "0", "enable_cuda_graph": "0",
    }  # gpu_mem_limit 0 (no limit) is ORT's own default, so it is not passed


def test_model_options_replace_only_what_they_set():
    defaults = server_cuda_defaults(cuda_gpu_mem_limit=1 << 30)
    model = CudaOptions(cudnn_conv_algo_search="EXHAUSTIVE", enable_cuda_graph=True)
    resolved = resolve_cuda_options(defaults, model)
    assert cuda_provider_options(resolved) == {
        "cudnn_conv_algo_search": "EXHAUSTIVE", "gpu_mem_limit": str(1 << 30),
        "arena_extend_strategy": "kNextPowerOfTwo", "do_copy_in_default_stream": "1",
        "use_tf32": "0", "enable_cuda_graph": "1",
    }
    assert resolve_cuda_options(defaults, None) is defaults


@pytest.mark.parametrize("cuda, field, fragment", [
    ({"cudnn_conv_algo_search": "FAST"}, "cuda.cudnn_conv_algo_search", "'HEURISTIC'"),
    ({"gpu_mem_limit": -1}, "cuda.gpu_mem_limit", "greater than or equal to 0"),
    ({"graphs": True}, "cuda.graphs", "Extra inputs are not permitted"),
])
def test_bad_cuda_options_name_the_field(cuda, field, fragment):
    with pytest.raises(ModelLoadError) as info:
        parse_model_config(affine_config(cuda=cuda), "m/config.yaml")
    assert f"m/config.yaml: field '{field}'" in info.value.message
    assert fragment in info.value.message


def test_gpu_only_model_is_skipped_on_the_cpu_provider(tmp_path):
    model_dir = write_model(tmp_path, "g", affine_graph(1.0, 0.0),
                            affine_config(instance_kind="gpu"))
    config = load_model_config(model_dir / "config.yaml")
    with pytest.raises(ModelSkipped) as info:
        OnnxModel(model_dir / "1" / "model.onnx", config, CPU, RuntimeOptions())
    assert "instance_kind gpu needs the CUDA provider; this server runs on CPUExecutionProvider " \
           "(test)" in info.value.message


def sr_config(max_batch_size: int = 8, preferred: list[int] | None = None):
    return parse_model_config({
        "max_batch_size": max_batch_size,
        "inputs": [{"name": "low_res", "datatype": "FP32", "shape": [1, -1, -1]}],
        "outputs": [{"name": "high_res", "datatype": "FP32", "shape": [1, -1, -1]}],
        "dynamic_batching": {"preferred_batch_sizes": preferred or [4, 8]},
        "task": {"kind": "super_resolution", "upscale_factor": 3},
    }, "sr")


def test_super_resolution_warm_up_covers_every_tile_run_of_the_reference_images():
    options = RuntimeOptions(sr_tile_size=128, sr_tile_overlap=16)
    runs = warmup_runs(sr_config(), options, tune_per_shape=True)
    planned = {run.inputs["low_res"].shape for run in runs}
    for width, height in WARMUP_IMAGE_SIZES:
        for batch, h, w in tile_runs(width, height, 128, 16, 8):
            assert (batch, 1, h, w) in planned, (width, height, batch)
    # 1920 wide: 15 windows, sent as 8 + 7; 1280: 8 + 2; 640: 5; 256: 2. Every window is 160
    # pixels (tile + 2 * overlap): edge windows shift inward instead of shrinking.
    assert planned == {(b, 1, 160, 160) for b in (2, 5, 7, 8)}
    assert all(run.fixed_shape for run in runs)
    # The CPU provider keeps nothing per shape: one run per window shape.
    cpu = warmup_runs(sr_config(), options, tune_per_shape=False)
    assert [run.inputs["low_res"].shape for run in cpu] == [(1, 1, 160, 160)]


def test_large_tiles_warm_the_whole_image_windows_of_small_images():
    runs = warmup_runs(sr_config(), RuntimeOptions(sr_tile_size=512, sr_tile_overlap=16),
                       tune_per_shape=True)
    # 1920x1080: rows and columns of 544-pixel windows, 4 per row; 1280x720: 3 per row;
    # 640x480: one row of the image's height, 2 windows; 256x256: the image itself.
    assert {run.inputs["low_res"].shape for run in runs} == {
        (4, 1, 544, 544), (3, 1, 544, 544), (2, 1, 480, 544), (1, 1, 256, 256)}


def test_other_models_warm_batch_one_and_the_preferred_sizes():
    config = parse_model_config(affine_config(), "a")
    runs = warmup_runs(config, RuntimeOptions(), tune_per_shape=True)
    assert [run.inputs["x"].shape for run in runs] == [(1, 4), (4, 4), (8, 4)]
    assert all(run.fixed_shape for run in runs)
    variable = parse_model_config(affine_config(
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [-1]}]), "v")
    # Placeholder dims: run to warm up, but no shape traffic will have (no CUDA graph for them).
    assert not any(run.fixed_shape for run in warmup_runs(variable, RuntimeOptions(), True))


@pytest.fixture
def sr_session(tmp_path):
    path = write_model(tmp_path, "sr", super_resolution_graph(2), {}) / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_host_bound_run_equals_a_plain_run_and_keeps_its_outputs(sr_session):
    rng = np.random.default_rng(0)
    first, second = (rng.random((3, 1, 10, 12), dtype=np.float32) for _ in range(2))
    # A non-contiguous view, as a slice of a larger batch can be.
    strided = rng.random((3, 1, 10, 24), dtype=np.float32)[..., ::2]
    (out1,) = run_host_bound(sr_session, {"low_res": first}, ["high_res"])
    (out2,) = run_host_bound(sr_session, {"low_res": second}, ["high_res"])
    (out3,) = run_host_bound(sr_session, {"low_res": strided}, ["high_res"])
    plain = [sr_session.run(["high_res"], {"low_res": x})[0] for x in (first, second, strided)]
    np.testing.assert_array_equal(out1, plain[0])  # not overwritten by the later runs
    np.testing.assert_array_equal(out2, plain[1])
    np.testing.assert_array_equal(out3, plain[2])
    assert out1.shape == (3, 1, 20, 24)


def test_fixed_shape_buffers_serve_their_shapes_only(sr_session):
    buffers = FixedShapeBuffers(sr_session, ["high_res"], device="cpu")
    rng = np.random.default_rng(1)
    batch4 = rng.random((4, 1, 16, 16), dtype=np.float32)
    buffers.add({"low_res": batch4})
    buffers.add({"low_res": batch4 * 2})  # same shape: no second slot
    buffers.add({"low_res": rng.random((2, 1, 16, 16), dtype=np.float32)})
    assert len(buffers) == 2
    (a,) = buffers.run({"low_res": batch4})
    other = rng.random((4, 1, 16, 16), dtype=np.float32)
    (b,) = buffers.run({"low_res": other})
    np.testing.assert_array_equal(a, sr_session.run(None, {"low_res": batch4})[0])
    np.testing.assert_array_equal(b, sr_session.run(None, {"low_res": other})[0])
    assert buffers.run({"low_res": rng.random((3, 1, 16, 16), dtype=np.float32)}) is None
