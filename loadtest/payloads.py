"""Request payloads for the load generators: model signatures, real or generated inputs, and
pre-serialised ModelInferRequest bytes; images and pre-serialised requests for the task API.

The tensor API's messages come from tritonclient's stubs (same wire format as the service's own): a
load generator must not import `service._proto.grpc_service_pb2`, whose `inference` package
collides with tritonclient's. The task API's messages are the service's own (`task_messages`).
"""

from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from service.core.datatypes import DATATYPES

# Where Debian's dataset-fashion-mnist puts the files (the Makefile's apt list; the compose Locust
# image copies the test images there too).
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST = Path(os.environ.get("FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST))
# Super-resolution's real payload: a photo of the Set5 test set in the checkout's shared data, read
# where it lies (the load generator's --task-photo points elsewhere).
SR_PHOTO = Path(__file__).resolve().parents[2] / "shared/data/sr/test/Set5/baby.png"


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
        dtype = DATATYPES[spec.datatype].numpy
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


def infer_request_bytes(model: str, inputs: dict[str, np.ndarray],
                        signature: Signature | None = None) -> bytes:
    """A serialised ModelInferRequest with raw contents: a load generator sends these bytes as they
    are, so its own per-call cost stays out of the measurement. Each input's datatype is its
    array's; with a signature, every output is requested by name."""
    from tritonclient.grpc import service_pb2

    by_numpy = {row.numpy: name for name, row in DATATYPES.items()}
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        tensor = request.inputs.add(name=name, datatype=by_numpy[array.dtype])
        tensor.shape.extend(array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    for spec in signature.outputs if signature else ():
        request.outputs.add(name=spec.name)
    return request.SerializeToString()


MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_METADATA = "/inference.GRPCInferenceService/ModelMetadata"


# -- task API (onnxserve.task.v1.TaskService) ---------------------------------------------------

TASK_SERVICE = "/onnxserve.task.v1.TaskService"


def task_messages():
    """The task API's protobuf module, which `make proto` generates into service/_proto. Unlike the
    tensor API's stubs it can share a process with tritonclient: its package is onnxserve.task.v1
    and it imports no other generated module (grpc_service_pb2 would bring the clashing
    `inference` package along). Raises ImportError where the stubs are absent."""
    from service._proto import task_service_pb2

    return task_service_pb2


def model_images(
    count: int, chw: tuple[int, ...], payload: str = "real", seed: int = 0,
) -> tuple[np.ndarray, str]:
    """`count` uint8 images (N x H x W x C) for an image model whose input is C x H x W, and what
    they really are: Fashion-MNIST test images as they are (28 x 28 grey; the server converts
    them to the model's input as it would any client's), or random pixels of the model's own size
    ('real' falls back to that without the dataset)."""
    if payload == "real":
        images = fashion_mnist_images(max(count, 1))
        if images is not None:
            reps = -(-count // len(images))
            return np.tile(images, (reps, 1, 1))[:count, :, :, None], "real"
    channels, height, width = chw[-3:]
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, height, width, channels), dtype=np.uint8), "generated"


def photo(size: int, payload: str = "real", path: Path = SR_PHOTO,
          seed: int = 0) -> tuple[np.ndarray, str]:
    """One size x size RGB uint8 image (H x W x 3), and what it really is: the photo at `path`,
    scaled up if its short side is below `size` and centre-cropped (a crop keeps the photo's own
    detail, which is what super-resolution works on), or random pixels ('real' falls back to that
    without the photo or Pillow)."""
    if payload == "real" and path.is_file():
        try:
            from PIL import Image
        except ImportError:
            Image = None
        if Image is not None:
            with Image.open(path) as image:
                picture = image.convert("RGB")
            short = min(picture.size)
            if short < size:
                picture = picture.resize(
                    (max(size, round(picture.width * size / short)),
                     max(size, round(picture.height * size / short))),
                    Image.Resampling.BICUBIC)
            left, top = (picture.width - size) // 2, (picture.height - size) // 2
            return np.asarray(picture.crop((left, top, left + size, top + size))), "real"
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "generated"


def task_image(pixels: np.ndarray, image_format: str = "raw"):
    """An H x W x C uint8 array as a task API Image, built by the service's own client: raw
    pixels, or PNG bytes (encoded here, once, so a load generator pays for it before the run, not
    per call)."""
    from service.client.client import to_image_message  # needs the task stubs, like the users

    if image_format == "png":
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(buffer, "PNG")
        return to_image_message(buffer.getvalue())
    return to_image_message(pixels)


def _response_format(pb, image_format: str) -> int:
    return pb.PNG if image_format == "png" else pb.RAW


def classify_request_bytes(pb, model: str, images: np.ndarray, image_format: str = "raw") -> bytes:
    """A serialised ClassifyRequest for N x H x W x C images (top 1 label each)."""
    return pb.ClassifyRequest(
        model=model, images=[task_image(i, image_format) for i in images],
    ).SerializeToString()


def reconstruct_request_bytes(pb, model: str, images: np.ndarray,
                              image_format: str = "raw") -> bytes:
    """A serialised ReconstructRequest for N x H x W x C images; the images come back in the same
    format."""
    return pb.ReconstructRequest(
        model=model, images=[task_image(i, image_format) for i in images],
        format=_response_format(pb, image_format),
    ).SerializeToString()


def super_resolve_request_bytes(pb, model: str, image: np.ndarray,
                                image_format: str = "raw") -> bytes:
    """A serialised SuperResolveRequest for one H x W x C image (the message holds one)."""
    return pb.SuperResolveRequest(
        model=model, image=task_image(image, image_format),
        format=_response_format(pb, image_format),
    ).SerializeToString()


def generate_request_bytes(pb, model: str, count: int, image_format: str = "raw",
                           seed: int | None = None, class_label: int | None = None) -> bytes:
    """A serialised GenerateRequest for `count` images from random latents; without a seed the
    server draws one per call."""
    return pb.GenerateRequest(
        model=model, count=count, seed=seed, class_label=class_label,
        format=_response_format(pb, image_format),
    ).SerializeToString()
