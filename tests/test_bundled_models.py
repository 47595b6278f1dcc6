"""Every model bundled under models/ loads in the service, answers through both APIs, and matches
ONNX Runtime's CPU provider run in this process.

On this machine the server runs on the CPU provider (the fp16 variants, `instance_kind: gpu`, are
then not served, and the test checks that it says why). `make gpu-check` runs the same tests with
ONNXSERVE_DEVICE=cuda on a GPU machine, with and without CUDA graphs: there they compare the CUDA
provider with the CPU one, and with GPU_CHECK_OUT set they write each model's max abs difference
to $GPU_CHECK_OUT/parity-<pass>.json.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import yaml
from PIL import Image

from loadtest.payloads import make_inputs, metadata_parameters, signature_from_config
from servers import ROOT, metric_value, serving
from service.core.config import load_model_config
from service.core.runtime import RuntimeOptions, warmup_runs

MODELS = ROOT / "models"
CUDA = "CUDAExecutionProvider"
# Max |served - CPU provider in this process|, relative to the output's largest magnitude (or
# absolute below 1). On the CPU provider both sides run the same kernels and differ only where
# batching changes summation order; on CUDA with TF32 off fp32 kernels differ by summation order
# too. An fp16 variant is compared with the same fp16 graph on the CPU provider: both round to
# fp16, at different points.
TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2}
PARITY_BATCH = 3


def tolerance(name: str) -> float:
    return TOLERANCE["fp16" if name.endswith("_fp16") else "fp32"]


def record(figure: str, name: str, value) -> None:
    """Add one model's figure to $GPU_CHECK_OUT/<figure>-<GPU_CHECK_PASS>.json (gpu-check)."""
    out = os.environ.get("GPU_CHECK_OUT")
    if not out:
        return
    path = Path(out) / f"{figure}-{os.environ.get('GPU_CHECK_PASS', 'default')}.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[name] = value
    path.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def server():
    yield from serving(MODELS)


@pytest.fixture(scope="module")
def provider(server) -> str:
    """The server's execution provider; with ONNXSERVE_DEVICE=cuda it must be CUDA."""
    with triton.InferenceServerClient(server.grpc_address) as client:
        params = metadata_parameters(client.get_server_metadata())
    if os.environ.get("ONNXSERVE_DEVICE") == "cuda":
        assert params["execution_provider"] == CUDA, params
    return params["execution_provider"]


def bundled_names() -> list[str]:
    return sorted(p.parent.name for p in Path(MODELS).glob("*/config.yaml"))


def served_here(server, provider: str, name: str) -> bool:
    """False for a GPU-only model (the fp16 variants) on a server without CUDA, after checking
    that the server says why it does not serve it."""
    if yaml.safe_load((MODELS / name / "config.yaml").read_text()).get("instance_kind") != "gpu":
        return True
    if provider == CUDA:
        return True
    with triton.InferenceServerClient(server.grpc_address) as client:
        assert client.is_server_ready() and not client.is_model_ready(name)
        reasons = {m.name: m.reason for m in client.get_model_repository_index().models}
        assert "instance_kind gpu needs the CUDA provider" in reasons[name]
    return False


def cpu_session(name: str) -> ort.InferenceSession:
    config = load_model_config(MODELS / name / "config.yaml")
    return ort.InferenceSession(str(MODELS / name / "1" / config.model_filename),
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", bundled_names())
def test_bundled_model_matches_the_cpu_provider(server, provider, name):
    if not served_here(server, provider, name):
        return
    signature = signature_from_config(MODELS / name)
    config = load_model_config(MODELS / name / "config.yaml")
    # Random inputs, so a mix-up of items would show: a batch of 3 (image height and width 20
    # where variable), which no warm-up ran, and the first shape warm-up ran, which has a CUDA
    # graph when graphs are on.
    warmed = next(iter(warmup_runs(config, RuntimeOptions(), provider == CUDA)[0].inputs.values()))
    cases = {"batch3": (PARITY_BATCH, 20), "warmed": (warmed.shape[0], warmed.shape[-1])}
    session = cpu_session(name)
    diffs: dict = {}
    with triton.InferenceServerClient(server.grpc_address) as client:
        assert client.is_model_ready(name), f"{name} is not ready"
        metadata = client.get_model_metadata(name)
        for case, (batch, side) in cases.items():
            inputs, _ = make_inputs(signature, batch, "generated", image_size=side, seed=5)
            tensors = []
            for spec in metadata.inputs:
                tensor = triton.InferInput(spec.name, list(inputs[spec.name].shape), spec.datatype)
                tensor.set_data_from_numpy(inputs[spec.name])
                tensors.append(tensor)
            result = client.infer(name, tensors)
            expected = dict(zip([o.name for o in signature.outputs], session.run(None, inputs)))
            for spec in metadata.outputs:
                output, want = result.as_numpy(spec.name), expected[spec.name]
                assert output.shape == want.shape and np.isfinite(output.astype(np.float64)).all()
                diff = float(np.abs(output.astype(np.float64) - want).max())
                scale = max(1.0, float(np.abs(want).max()))
                assert diff <= tolerance(name) * scale, (case, spec.name, diff, scale)
                diffs[f"{spec.name}@{case}"] = diff
    record("parity", name, {"provider": provider, "max_abs_diff": diffs,
                            "tolerance": tolerance(name)})


def test_provider_is_reported_in_metadata_and_metrics(server, provider):
    text = server.metrics_text()
    with triton.InferenceServerClient(server.grpc_address) as client:
        for name in bundled_names():
            if not served_here(server, provider, name):
                continue
            params = metadata_parameters(client.get_model_metadata(name))
            assert params["execution_provider"] == provider, name
            assert metric_value(text, "inference_execution_provider_info", model=name,
                                version="1", provider=provider) == 1, name


def test_warm_up_ran_the_plan(server, provider):
    """Each model's 'model ready' line reports the warm-up runs and CUDA graphs of the plan for
    the server's provider and tiling (the defaults: 128-pixel tiles, 16 of overlap)."""
    ready, no_graphs = {}, set()
    for message in server.messages():
        found = re.match(r"model ready: name=(\S+) .*warm_up_runs=(\d+) cuda_graphs=(\d+)", message)
        if found:
            ready[found[1]] = (int(found[2]), int(found[3]))
        refused = re.search(r"/models/([^/]+)/\d+/\S+: CUDA graphs are not possible", message)
        if refused:  # the model has nodes ONNX Runtime keeps on the CPU
            no_graphs.add(refused[1])
    graphs_on = os.environ.get("ONNXSERVE_CUDA_ENABLE_CUDA_GRAPH", "false").lower() in ("1", "true")
    for name in bundled_names():
        if not served_here(server, provider, name):
            continue
        config = load_model_config(MODELS / name / "config.yaml")
        runs = warmup_runs(config, RuntimeOptions(), tune_per_shape=provider == CUDA)
        graphs = sum(run.fixed_shape for run in runs) if graphs_on and provider == CUDA else 0
        if name in no_graphs:
            graphs = 0
        assert ready[name] == (len(runs), graphs), name
        record("warm_up", name, {"runs": len(runs), "cuda_graphs": graphs,
                                 "graphs_refused": name in no_graphs,
                                 "shapes": [list(next(iter(r.inputs.values())).shape)
                                            for r in runs]})


FASHION = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def fashion_test_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    import gzip

    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:count]
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:count]
    return images, labels


@pytest.mark.parametrize("name", bundled_names())
def test_bundled_model_through_the_task_api(server, provider, name):
    """Each bundled model does its task on real data through our own client."""
    from service.client import TaskClient, to_pil

    if not served_here(server, provider, name):
        return
    with TaskClient(server.grpc_address, timeout=120) as client:
        info = client.describe_model(name)
        kind = info.task_kind
        if kind == "classifier":
            images, labels = fashion_test_images(200)
            response = client.classify(list(images), name, top_k=3)
            predicted = np.array([r.labels[0].index for r in response.results])
            # Trained models: far above chance (10%) on held-out images.
            assert (predicted == labels).mean() > 0.8
            # 28x28 grey needs no conversion: the probabilities are the CPU provider's.
            config = load_model_config(MODELS / name / "config.yaml")
            scaling = config.task.input_scaling
            x = ((images.astype(np.float32) * scaling.scale - scaling.mean) / scaling.std)[:, None]
            want = cpu_session(name).run([config.outputs[0].name],
                                         {config.inputs[0].name: x.astype(np.float32)})[0]
            diff = max(float(abs(label.probability - want[i, label.index]))
                       for i, result in enumerate(response.results) for label in result.labels)
            assert diff <= tolerance(name), diff
            record("task_parity", name, {"classify_top3_probability_max_abs_diff": diff})
        elif kind in ("generator", "conditional_generator"):
            label = 3 if kind == "conditional_generator" else None
            first = client.generate(name, count=4, seed=11, class_label=label)
            again = client.generate(name, count=4, seed=11, class_label=label)
            assert [i.encoded for i in first.images] == [i.encoded for i in again.images]
            assert to_pil(first.images[0]).size == (28, 28)
        elif kind == "encoder":
            images, _ = fashion_test_images(4)
            response = client.encode(list(images), name)
            assert all(len(v.values) == info.latent_size for v in response.latents)
        elif kind == "decoder":
            response = client.decode([[0.0] * info.latent_size] * 2, name)
            assert to_pil(response.images[0]).size == (28, 28)
        elif kind == "autoencoder":
            images, _ = fashion_test_images(8)
            noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
            response = client.reconstruct(list(images) + [noise], name)
            # Noise is an anomaly: it reconstructs worse than real clothing does.
            assert response.errors[-1] > max(response.errors[:-1])
        elif kind == "super_resolution":
            sample = Image.open(ROOT.parent / "shared/data/sr/test/Set5/bird.png").convert("RGB")
            crop = sample.crop((0, 0, 60, 40))
            out = client.upscale(crop, name)
            assert out.size == (60 * info.upscale_factor, 40 * info.upscale_factor)
            # Grey, smaller than a tile: one run of BT.601 studio-range luma (color_mode y),
            # 16 + 219 * g / 255 in and its inverse out, as the CPU provider computes it.
            grey = np.asarray(crop.convert("L"))
            served = np.asarray(client.upscale(grey, name)).astype(int)
            config = load_model_config(MODELS / name / "config.yaml")
            luma = (16.0 + grey.astype(np.float32) * (219.0 / 255.0)) / 255.0
            y = cpu_session(name).run([config.outputs[0].name], {
                config.inputs[0].name: luma[None, None].astype(np.float32)})[0][0, 0]
            want = np.clip(np.rint((y * 255.0 - 16.0) * (255.0 / 219.0)), 0, 255).astype(int)
            levels = int(np.abs(served - want).max())
            # Rounding to 8 bits may flip by one level; fp16 rounds once more on the way.
            assert levels <= (2 if name.endswith("_fp16") else 1), levels
            record("task_parity", name, {"upscale_grey_max_level_diff": levels})
        else:
            pytest.fail(f"bundled model {name} has task kind {kind!r}, which no test covers")
