"""Every model bundled under models/ loads in the service and answers a request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from conftest import ROOT, start_server

MODELS = ROOT / "models"
NUMPY = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
         "UINT8": np.uint8}

pytestmark = pytest.mark.skipif(
    not any(MODELS.glob("*/config.yaml")), reason="no bundled models in models/ yet"
)


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
            tensor.set_data_from_numpy(np.zeros(shape, NUMPY[spec.datatype]))
            inputs.append(tensor)
        result = client.infer(name, inputs)
        for spec in metadata.outputs:
            output = result.as_numpy(spec.name)
            assert output is not None and output.shape[0] == 1
            assert np.isfinite(output.astype(np.float64)).all()
