"""Every model bundled under models/ loads in the service and answers a request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from PIL import Image

from servers import ROOT, start_server
from service.core.datatypes import DATATYPES

MODELS = ROOT / "models"

@pytest.fixture(scope="module")
def server():
    process = start_server(MODELS)
    yield process
    assert process.terminate() == 0


def bundled_names() -> list[str]:
    return sorted(p.parent.name for p in Path(MODELS).glob("*/config.yaml"))


@pytest.mark.parametrize("name", bundled_names())
def test_bundled_model_answers(server, name):
    with triton.InferenceServerClient(server.grpc_address) as client:
        assert client.is_model_ready(name), f"{name} is not ready"
        metadata = client.get_model_metadata(name)
        inputs = []
        for spec in metadata.inputs:
            # One item; variable dims (image height/width) get 12 pixels.
            shape = [1 if i == 0 and d == -1 else (12 if d == -1 else d)
                     for i, d in enumerate(spec.shape)]
            tensor = triton.InferInput(spec.name, shape, spec.datatype)
            tensor.set_data_from_numpy(np.zeros(shape, DATATYPES[spec.datatype].numpy))
            inputs.append(tensor)
        result = client.infer(name, inputs)
        for spec in metadata.outputs:
            output = result.as_numpy(spec.name)
            assert output is not None and output.shape[0] == 1
            assert np.isfinite(output.astype(np.float64)).all()


FASHION = Path("/usr/share/datasets/fashion-mnist")


def fashion_test_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    import gzip

    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:count]
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:count]
    return images, labels


@pytest.mark.parametrize("name", bundled_names())
def test_bundled_model_through_the_task_api(server, name):
    """Each bundled model does its task on real data through our own client."""
    from service.client import TaskClient, to_pil

    with TaskClient(server.grpc_address, timeout=120) as client:
        info = client.describe_model(name)
        kind = info.task_kind
        if kind == "classifier":
            images, labels = fashion_test_images(200)
            response = client.classify(list(images), name, top_k=3)
            predicted = np.array([r.labels[0].index for r in response.results])
            # Trained models: far above chance (10%) on held-out images.
            assert (predicted == labels).mean() > 0.8
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
        else:
            pytest.fail(f"bundled model {name} has task kind {kind!r}, which no test covers")
