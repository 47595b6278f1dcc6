"""Python client for the task API, sync (`TaskClient`) and asyncio (`AsyncTaskClient`).

    from service.client import TaskClient
    with TaskClient("localhost:8001") as client:
        result = client.classify(["shoe.png"], model="fashion_cnn", top_k=3)
        print(result.results[0].labels[0].name)

Images may be file paths, PNG/JPEG bytes, PIL images or HxW(xC) uint8 numpy arrays.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from service._proto import task_service_pb2 as pb
from service._proto import task_service_pb2_grpc as pb_grpc
from service.tasks.pixels import MODE_BY_CHANNELS, RowCanvas

ImageLike = str | Path | bytes | Image.Image | np.ndarray
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ChannelOptions:
    """How to reach the server: TLS files, metadata sent with every call (e.g. auth headers)."""

    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not (self.tls_ca or self.tls_cert):
            return None
        read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
        return grpc.ssl_channel_credentials(
            root_certificates=read(self.tls_ca), private_key=read(self.tls_key),
            certificate_chain=read(self.tls_cert),
        )

    def grpc_options(self) -> list[tuple[str, int]]:
        return [("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes)]


def to_image_message(image: ImageLike) -> pb.Image:
    """Any supported image form to the wire message (files are sent as their own bytes)."""
    if isinstance(image, (str, Path)):
        return pb.Image(encoded=Path(image).read_bytes())
    if isinstance(image, bytes):
        return pb.Image(encoded=image)
    if isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image = np.asarray(image)
    array = np.ascontiguousarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return pb.Image(raw=pb.RawImage(pixels=array.tobytes(), height=array.shape[0],
                                    width=array.shape[1], channels=array.shape[2]))


def to_pil(image: pb.Image) -> Image.Image:
    """A returned image (PNG or raw) as a PIL image."""
    if image.WhichOneof("data") == "encoded":
        return Image.open(io.BytesIO(image.encoded))
    raw = image.raw
    return Image.frombytes(MODE_BY_CHANNELS[raw.channels], (raw.width, raw.height), raw.pixels)


def _generate_request(model, count, seed, class_label, latents, interpolate, version, raw):
    request = pb.GenerateRequest(model=model, version=version, count=count,
                                 format=pb.RAW if raw else pb.PNG)
    if seed is not None:
        request.seed = seed
    if class_label is not None:
        request.class_label = class_label
    for vector in latents or ():
        request.latents.add(values=list(vector))
    if interpolate is not None:
        start, end, steps = interpolate
        request.interpolation.steps = steps
        if start is not None:
            request.interpolation.start.values.extend(start)
        if end is not None:
            request.interpolation.end.values.extend(end)
    return request


def assemble_chunks(chunks: Iterable[pb.SuperResolveChunk],
                    progress: Callable[[int, int], None] | None = None) -> Image.Image:
    """Streamed rows back into one image."""
    canvas = None
    for chunk in chunks:
        if canvas is None:
            canvas = RowCanvas(chunk.height, chunk.width, chunk.channels)
        rows = np.frombuffer(chunk.pixels, np.uint8).reshape(chunk.row_count, chunk.width,
                                                             chunk.channels)
        done = canvas.put(chunk.row_start, rows)
        if progress:
            progress(done, chunk.height)
    if canvas is None:
        raise RuntimeError("the server sent no rows")
    return canvas.image()


class TaskClient:
    """Blocking client. `timeout` (seconds) is the default deadline of every call."""

    def __init__(self, target: str, timeout: float | None = 60.0,
                 options: ChannelOptions = ChannelOptions()):
        credentials = options.credentials()
        self._channel = (grpc.secure_channel(target, credentials, options.grpc_options())
                         if credentials else grpc.insecure_channel(target, options.grpc_options()))
        self._stub = pb_grpc.TaskServiceStub(self._channel)
        self._timeout = timeout
        self._metadata = list(options.metadata) or None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request, timeout):
        return method(request, timeout=timeout or self._timeout, metadata=self._metadata)

    def classify(self, images: Sequence[ImageLike], model: str, top_k: int = 1,
                 version: str = "", timeout: float | None = None) -> pb.ClassifyResponse:
        request = pb.ClassifyRequest(model=model, version=version, top_k=top_k,
                                     images=[to_image_message(i) for i in images])
        return self._call(self._stub.Classify, request, timeout)

    def generate(self, model: str, count: int = 1, seed: int | None = None,
                 class_label: int | None = None, latents: Sequence[Sequence[float]] = (),
                 interpolate: tuple | None = None, version: str = "", raw: bool = False,
                 timeout: float | None = None) -> pb.GenerateResponse:
        """`interpolate` is (start or None, end or None, steps)."""
        request = _generate_request(model, count, seed, class_label, latents, interpolate,
                                    version, raw)
        return self._call(self._stub.Generate, request, timeout)

    def upscale(self, image: ImageLike, model: str, version: str = "", stream: bool = True,
                progress: Callable[[int, int], None] | None = None,
                timeout: float | None = None) -> Image.Image:
        """Upscale one image; by default streamed, so the result may exceed one message."""
        request = pb.SuperResolveRequest(model=model, version=version,
                                         image=to_image_message(image))
        if stream:
            chunks = self._stub.SuperResolveStream(
                request, timeout=timeout or self._timeout, metadata=self._metadata)
            return assemble_chunks(chunks, progress)
        return to_pil(self._call(self._stub.SuperResolve, request, timeout).image)

    def encode(self, images: Sequence[ImageLike], model: str, version: str = "",
               timeout: float | None = None) -> pb.EncodeResponse:
        request = pb.EncodeRequest(model=model, version=version,
                                   images=[to_image_message(i) for i in images])
        return self._call(self._stub.Encode, request, timeout)

    def decode(self, latents: Sequence[Sequence[float]], model: str, version: str = "",
               raw: bool = False, timeout: float | None = None) -> pb.DecodeResponse:
        request = pb.DecodeRequest(model=model, version=version, format=pb.RAW if raw else pb.PNG,
                                   latents=[pb.LatentVector(values=list(v)) for v in latents])
        return self._call(self._stub.Decode, request, timeout)

    def reconstruct(self, images: Sequence[ImageLike], model: str, version: str = "",
                    raw: bool = False, timeout: float | None = None) -> pb.ReconstructResponse:
        request = pb.ReconstructRequest(model=model, version=version,
                                        format=pb.RAW if raw else pb.PNG,
                                        images=[to_image_message(i) for i in images])
        return self._call(self._stub.Reconstruct, request, timeout)

    def list_models(self, timeout: float | None = None) -> pb.ListModelsResponse:
        return self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)

    def describe_model(self, model: str, version: str = "",
                       timeout: float | None = None) -> pb.ModelInfo:
        return self._call(self._stub.DescribeModel,
                          pb.DescribeModelRequest(model=model, version=version), timeout)


class AsyncTaskClient:
    """asyncio client with the same methods as TaskClient, each a coroutine."""

    def __init__(self, target: str, timeout: float | None = 60.0,
                 options: ChannelOptions = ChannelOptions()):
        credentials = options.credentials()
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options.grpc_options())
            if credentials else grpc.aio.insecure_channel(target, options.grpc_options())
        )
        self._stub = pb_grpc.TaskServiceStub(self._channel)
        self._timeout = timeout
        self._metadata = list(options.metadata) or None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method, request, timeout):
        return await method(request, timeout=timeout or self._timeout, metadata=self._metadata)

    async def classify(self, images, model, top_k=1, version="", timeout=None):
        request = pb.ClassifyRequest(model=model, version=version, top_k=top_k,
                                     images=[to_image_message(i) for i in images])
        return await self._call(self._stub.Classify, request, timeout)

    async def generate(self, model, count=1, seed=None, class_label=None, latents=(),
                       interpolate=None, version="", raw=False, timeout=None):
        request = _generate_request(model, count, seed, class_label, latents, interpolate,
                                    version, raw)
        return await self._call(self._stub.Generate, request, timeout)

    async def upscale(self, image, model, version="", timeout=None) -> Image.Image:
        request = pb.SuperResolveRequest(model=model, version=version,
                                         image=to_image_message(image))
        call = self._stub.SuperResolveStream(request, timeout=timeout or self._timeout,
                                             metadata=self._metadata)
        return assemble_chunks([chunk async for chunk in call])

    async def encode(self, images, model, version="", timeout=None):
        request = pb.EncodeRequest(model=model, version=version,
                                   images=[to_image_message(i) for i in images])
        return await self._call(self._stub.Encode, request, timeout)

    async def decode(self, latents, model, version="", raw=False, timeout=None):
        request = pb.DecodeRequest(model=model, version=version, format=pb.RAW if raw else pb.PNG,
                                   latents=[pb.LatentVector(values=list(v)) for v in latents])
        return await self._call(self._stub.Decode, request, timeout)

    async def reconstruct(self, images, model, version="", raw=False, timeout=None):
        request = pb.ReconstructRequest(model=model, version=version,
                                        format=pb.RAW if raw else pb.PNG,
                                        images=[to_image_message(i) for i in images])
        return await self._call(self._stub.Reconstruct, request, timeout)

    async def list_models(self, timeout=None):
        return await self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)

    async def describe_model(self, model, version="", timeout=None):
        return await self._call(self._stub.DescribeModel,
                                pb.DescribeModelRequest(model=model, version=version), timeout)
