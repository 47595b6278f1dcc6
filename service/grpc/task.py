"""`onnxserve.task.v1.TaskService`: the task-level front end.

Thin: protobuf images and vectors in, one TaskCore call, protobuf out. Errors are ServiceErrors that
the interceptor maps to statuses.
"""

from __future__ import annotations

import numpy as np

from service._proto import task_service_pb2 as pb
from service._proto import task_service_pb2_grpc as pb_grpc
from service.core.description import IndexEntry, ModelDescription
from service.core.inference import InferenceCore
from service.core.repository import ModelVersion
from service.errors import InvalidArgument
from service.grpc.calls import deadline_of, note_call
from service.limits import MESSAGE_ENVELOPE_BYTES, check_response_fits
from service.tasks import images as img
from service.tasks.core import TaskCore
from service.tasks.pixels import RowCanvas

# Streamed chunks stay around this size (and well under the message limit).
_CHUNK_BYTES = 1 << 20


def _image_data(image: pb.Image, where: str) -> img.ImageData:
    kind = image.WhichOneof("data")
    if kind == "encoded":
        return img.EncodedImage(image.encoded)
    if kind == "raw":
        raw = image.raw
        return img.RawPixels(raw.pixels, raw.height, raw.width, raw.channels)
    raise InvalidArgument(f"{where}: give encoded (PNG/JPEG bytes) or raw pixels")


def _images_in(images) -> list[img.ImageData]:
    return [_image_data(image, f"images[{i}]") for i, image in enumerate(images)]


def _raw(pixels: np.ndarray) -> pb.Image:
    """An HxW or HxWxC uint8 array as a raw image message."""
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return pb.Image(raw=pb.RawImage(pixels=pixels.tobytes(), height=pixels.shape[0],
                                    width=pixels.shape[1], channels=channels))


def _image_out(picture, image_format: int) -> pb.Image:
    if image_format == pb.RAW:
        return _raw(np.asarray(picture))
    return pb.Image(encoded=img.encode_png(picture))


def _vectors(latents) -> list[list[float]]:
    return [list(v.values) for v in latents]


def _noted(model: ModelVersion) -> tuple[str, str]:
    note_call(model.name, model.version_label)
    return model.name, model.version_label


class TaskServicer(pb_grpc.TaskServiceServicer):
    def __init__(self, core: InferenceCore, tasks: TaskCore, max_message_bytes: int):
        self._core = core
        self._tasks = tasks
        self._max_message_bytes = max_message_bytes

    async def Classify(self, request, context):
        model, results = await self._tasks.classify(
            request.model, request.version, _images_in(request.images), request.top_k,
            deadline_of(context))
        name, version = _noted(model)
        response = pb.ClassifyResponse(model=name, version=version)
        for result in results:
            entry = response.results.add(conversion=result.conversion)
            for index, label, probability in result.labels:
                entry.labels.add(index=index, name=label, probability=probability)
        return response

    async def Generate(self, request, context):
        interpolation = None
        if request.HasField("interpolation"):
            i = request.interpolation
            interpolation = (list(i.start.values), list(i.end.values), i.steps)
        model, generated = await self._tasks.generate(
            request.model, request.version,
            count=request.count,
            seed=request.seed if request.HasField("seed") else None,
            class_label=request.class_label if request.HasField("class_label") else None,
            latents=_vectors(request.latents),
            interpolation=interpolation,
            deadline=deadline_of(context),
        )
        name, version = _noted(model)
        return pb.GenerateResponse(
            model=name, version=version, seed=generated.seed,
            images=[_image_out(p, request.format) for p in generated.images],
            latents=[pb.LatentVector(values=v.tolist()) for v in generated.latents],
        )

    async def SuperResolve(self, request, context):
        async with self._tasks.upscale(request.model, request.version, self._image_in(request),
                                       deadline_of(context)) as (model, plan):
            name, version = _noted(model)
            # A PNG is never much larger than its raw pixels: refuse from the planned size,
            # before any tile is computed.
            check_response_fits(plan.raw_bytes, self._max_message_bytes, "the upscaled image",
                                "use SuperResolveStream")
            canvas = RowCanvas(plan.height, plan.width, plan.channels)
            async for strip in plan.strips:
                canvas.put(strip.row_start, strip.pixels)
        if request.format == pb.RAW:
            image = _raw(canvas.pixels)
        else:
            image = pb.Image(encoded=img.encode_png(canvas.image()))
            check_response_fits(len(image.encoded), self._max_message_bytes,
                                "the upscaled image", "use SuperResolveStream")
        return pb.SuperResolveResponse(model=name, version=version, image=image,
                                       scale=plan.scale, conversion=plan.conversion)

    async def SuperResolveStream(self, request, context):
        async with self._tasks.upscale(request.model, request.version, self._image_in(request),
                                       deadline_of(context)) as (model, plan):
            _noted(model)
            row_bytes = plan.width * plan.channels
            chunk_bytes = min(_CHUNK_BYTES,
                              (self._max_message_bytes - MESSAGE_ENVELOPE_BYTES) // 2)
            rows_per_chunk = max(1, chunk_bytes // row_bytes)
            async for strip in plan.strips:
                for offset in range(0, strip.pixels.shape[0], rows_per_chunk):
                    rows = strip.pixels[offset:offset + rows_per_chunk]
                    yield pb.SuperResolveChunk(
                        width=plan.width, height=plan.height, channels=plan.channels,
                        scale=plan.scale, row_start=strip.row_start + offset,
                        row_count=rows.shape[0], pixels=rows.tobytes(),
                    )

    @staticmethod
    def _image_in(request) -> img.ImageData:
        if not request.HasField("image"):
            raise InvalidArgument("image: an image is required")
        return _image_data(request.image, "image")

    async def Encode(self, request, context):
        model, latents = await self._tasks.encode(
            request.model, request.version, _images_in(request.images), deadline_of(context))
        name, version = _noted(model)
        return pb.EncodeResponse(model=name, version=version,
                                 latents=[pb.LatentVector(values=v.tolist()) for v in latents])

    async def Decode(self, request, context):
        model, pictures = await self._tasks.decode(
            request.model, request.version, _vectors(request.latents), deadline_of(context))
        name, version = _noted(model)
        return pb.DecodeResponse(model=name, version=version,
                                 images=[_image_out(p, request.format) for p in pictures])

    async def Reconstruct(self, request, context):
        model, pictures, errors = await self._tasks.reconstruct(
            request.model, request.version, _images_in(request.images), deadline_of(context))
        name, version = _noted(model)
        return pb.ReconstructResponse(
            model=name, version=version, errors=errors,
            images=[_image_out(p, request.format) for p in pictures])

    async def ListModels(self, request, context):
        response = pb.ListModelsResponse()
        for listed in self._core.list_models():
            if isinstance(listed, IndexEntry):
                response.models.add(name=listed.name, state=listed.state, reason=listed.reason)
            else:
                response.models.append(_info(listed))
        return response

    async def DescribeModel(self, request, context):
        model = self._tasks.describe(request.model, request.version)
        note_call(model.name, model.version)
        return _info(model)


def _info(model: ModelDescription) -> pb.ModelInfo:
    task = model.task
    info = pb.ModelInfo(
        name=model.name, versions=model.versions,
        task_kind=task.kind.value, labels=task.labels or [],
        num_classes=task.num_classes or 0, latent_size=task.latent_size or 0,
        upscale_factor=task.upscale_factor or 0, color_mode=task.color_mode or "",
        execution_provider=model.execution_provider, max_batch_size=model.max_batch_size,
        state="READY",
    )
    for group, tensors in ((info.inputs, model.inputs), (info.outputs, model.outputs)):
        for tensor in tensors:
            group.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    return info
