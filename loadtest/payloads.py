"""Request payloads for the load generators: model signatures, real or generated inputs, and
pre-serialised ModelInferRequest bytes.

The messages come from tritonclient's stubs (same wire format as the service's own): a load
generator must not import `service._proto`, whose `inference` package collides with tritonclient's.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

FASHION_MNIST = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # without the batch axis; -1 = variable


@dataclass(frozen=True)
class Signature:
    model: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    input_scaling: dict | None = None

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0


def signature_from_config(model_dir: Path) -> Signature:
    """The signature of a model directory in a repository (its config.yaml)."""
    config = yaml.safe_load((model_dir / "config.yaml").read_text())

    def specs(key):
        return tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in config[key])

    task = config.get("task") or {}
    return Signature(model_dir.name, int(config.get("max_batch_size", 0)), specs("inputs"),
                     specs("outputs"), task.get("input_scaling"))


def signature_from_metadata(response) -> Signature:
    """The signature from a ModelMetadataResponse (tritonclient's message); its shapes carry the
    batch axis (-1) first when the model batches."""
    params = metadata_parameters(response)
    max_batch = int(params.get("max_batch_size", 0))
    strip = 1 if max_batch > 0 else 0

    def specs(group):
        return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)[strip:]) for t in group)

    scaling = params.get("input_scaling")
    return Signature(response.name, max_batch, specs(response.inputs), specs(response.outputs),
                     json.loads(scaling) if isinstance(scaling, str) else None)


def metadata_parameters(response) -> dict:
    """ModelMetadataResponse.parameters (field 100), which this service adds to the protocol and
    tritonclient's message does not declare: read from the unknown fields, each a map entry that
    has the layout of ModelInferRequest.ParametersEntry."""
    from google.protobuf.unknown_fields import UnknownFieldSet
    from tritonclient.grpc import service_pb2

    params = {}
    for field in UnknownFieldSet(response):
        if field.field_number == 100:
            entry = service_pb2.ModelInferRequest.ParametersEntry.FromString(field.data)
            params[entry.key] = _param_value(entry.value)
    return params


def _param_value(param):
    kind = param.WhichOneof("parameter_choice")
    return getattr(param, kind) if kind else None


def fashion_mnist_images(count: int, split: str = "t10k") -> np.ndarray | None:
    """Up to `count` Fashion-MNIST images as uint8 [n, 28, 28], or None without the dataset."""
    path = FASHION_MNIST / f"{split}-images-idx3-ubyte.gz"
    if not path.is_file():
        return None
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    n, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    images = np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)
    return images[:count]


def make_inputs(
    signature: Signature, batch_size: int, payload: str = "real", image_size: int = 256,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], str]:
    """Input arrays for one request, and what the payload really is ('real' falls back to
    'generated' when the dataset is absent or the input is not a 28x28 image)."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    used = "generated"
    for spec in signature.inputs:
        dims = [d if d > 0 else image_size for d in spec.shape]
        shape = ([batch_size] if signature.batched else []) + dims
        dtype = NUMPY[spec.datatype]
        if payload == "real" and tuple(spec.shape[-2:]) == (28, 28) and dtype == np.float32:
            images = fashion_mnist_images(max(batch_size, 1))
            if images is not None:
                reps = -(-batch_size // len(images))
                pixels = np.tile(images, (reps, 1, 1))[:batch_size].astype(np.float32)
                arrays[spec.name] = _scale(pixels, signature.input_scaling).reshape(shape)
                used = "real"
                continue
        if np.issubdtype(dtype, np.floating):
            arrays[spec.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        elif dtype == np.bool_:
            arrays[spec.name] = rng.random(shape) < 0.5
        else:
            arrays[spec.name] = rng.integers(0, 8, shape).astype(dtype)
    return arrays, used


def _scale(pixels: np.ndarray, scaling: dict | None) -> np.ndarray:
    if not scaling:
        return pixels / 255.0
    scaled = pixels * scaling.get("scale", 1.0)
    return (scaled - scaling.get("mean", 0.0)) / scaling.get("std", 1.0)


def infer_request_bytes(model: str, inputs: dict[str, np.ndarray], signature: Signature) -> bytes:
    """A serialised ModelInferRequest with raw contents: a load generator sends these bytes as they
    are, so its own per-call cost stays out of the measurement."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        tensor = request.inputs.add(name=name, datatype=_datatype(signature, name))
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    for spec in signature.outputs:
        request.outputs.add(name=spec.name)
    return request.SerializeToString()


def _datatype(signature: Signature, name: str) -> str:
    return next(s.datatype for s in signature.inputs if s.name == name)


MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_METADATA = "/inference.GRPCInferenceService/ModelMetadata"
