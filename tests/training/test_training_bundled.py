"""Every model bundled under models/: config valid, ONNX signature matches it, and it answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.core.config import CONFIG_FILENAME, load_model_config
from service.core.datatypes import DATATYPES

MODELS = Path(__file__).resolve().parents[2] / "models"
BUNDLED = (
    sorted(d.name for d in MODELS.iterdir() if (d / CONFIG_FILENAME).exists())
    if MODELS.exists()
    else []
)
ORT_TYPES = {"tensor(float)": "FP32", "tensor(int64)": "INT64"}


def test_bundle_under_25_mb():
    total = sum(p.stat().st_size for p in MODELS.rglob("*") if p.is_file())
    assert total < 25 * 1024 * 1024, f"models/ holds {total / 2**20:.1f} MiB"


def test_cnn_onnx_at_most_2_mb():
    path = MODELS / "fashion_cnn" / "1" / "model.onnx"
    assert path.stat().st_size <= 2 * 1024 * 1024


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_matches_config_and_runs(name):
    config = load_model_config(MODELS / name / CONFIG_FILENAME)
    assert config.name == name and config.max_batch_size > 0
    session = ort.InferenceSession(
        str(MODELS / name / "1" / config.model_filename), providers=["CPUExecutionProvider"]
    )
    graph_in = {i.name: i for i in session.get_inputs()}
    graph_out = {o.name: o for o in session.get_outputs()}
    assert [t.name for t in config.inputs] == list(graph_in)
    assert [t.name for t in config.outputs] == list(graph_out)
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in config.inputs:
        node = graph_in[spec.name]
        assert ORT_TYPES[node.type] == spec.datatype
        assert isinstance(node.shape[0], str), "batch axis must be dynamic and named"
        shape = [3] + [d if d > 0 else 9 for d in spec.shape]
        dtype = DATATYPES[spec.datatype].numpy
        feeds[spec.name] = (
            rng.integers(0, config.task.num_classes or 2, shape)
            if dtype == np.int64
            else rng.random(shape)
        ).astype(dtype)
    outputs = session.run([t.name for t in config.outputs], feeds)
    for spec, out in zip(config.outputs, outputs):
        assert out.shape[0] == 3 and out.dtype == DATATYPES[spec.datatype].numpy
        factor = config.task.upscale_factor or 1
        want = [d if d > 0 else 9 * factor for d in spec.shape]
        assert list(out.shape[1:]) == want
        assert np.all(np.isfinite(out))
    if config.task.kind.value == "classifier":
        np.testing.assert_allclose(outputs[0].sum(axis=1), 1.0, atol=1e-5)
