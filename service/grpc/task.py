"""`onnxserve.task.v1.TaskService`: the task-level front end.

Thin: protobuf images and vectors in, one TaskCore call, protobuf out. Errors are ServiceErrors that
the interceptor maps to statuses.
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from service._proto import task_service_pb2 as pb
from service._proto import task_service_pb2_grpc as pb_grpc
from service.core.inference import InferenceCore
from service.core.repository import ModelVersion
from service.core.tensors import full_shape
from service.settings import MESSAGE_ENVELOPE_BYTES
from service.errors import InvalidArgument, ResourceExhausted
from service.tasks import images as img
from service.tasks.core import TaskCore

# Streamed chunks stay around this size (and well under the message limit).
_CHUNK_BYTES = 1 << 20


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    return time.monotonic() + remaining if remaining is not None else None


class TaskServicer(pb_grpc.TaskServiceServicer):
    def __init__(self, core: InferenceCore, tasks: TaskCore, max_message_bytes: int):
        self._core = core
        self._tasks = tasks
        self._max_message_bytes = max_message_bytes

    # -- conversions ----------------------------------------------------------------------------

    def _pictures(self, images, field: str = "images"):
        limits = self._tasks.limits
        if len(images) > limits.max_images:
            raise InvalidArgument(f"{field}: expected 1..{limits.max_images} items, got {len(images)}")
        return [self._picture(image, f"{field}[{i}]") for i, image in enumerate(images)]

    def _picture(self, image: pb.Image, where: str):
        kind = image.WhichOneof("data")
        if kind == "encoded":
            return img.decode_encoded(image.encoded, where, self._tasks.limits.image)
        if kind == "raw":
            raw = image.raw
            return img.decode_raw(raw.pixels, raw.height, raw.width, raw.channels, where,
                                  self._tasks.limits.image)
        raise InvalidArgument(f"{where}: give encoded (PNG/JPEG bytes) or raw pixels")

    @staticmethod
    def _image(picture, image_format: int) -> pb.Image:
        if image_format == pb.RAW:
            array = np.asarray(picture)
            channels = 1 if array.ndim == 2 else array.shape[2]
            return pb.Image(raw=pb.RawImage(pixels=array.tobytes(), height=array.shape[0],
                                            width=array.shape[1], channels=channels))
        return pb.Image(encoded=img.encode_png(picture))

    @staticmethod
    def _vectors(latents) -> list[list[float]]:
        return [list(v.values) for v in latents]

    # -- RPCs -----------------------------------------------------------------------------------

    async def Classify(self, request, context):
        model, results = await self._tasks.classify(
            request.model, request.version, self._pictures(request.images), request.top_k,
            _deadline(context))
        response = pb.ClassifyResponse(model=model.name, version=model.version_label)
        for result in results:
            entry = response.results.add(conversion=result.conversion)
            for index, name, probability in result.labels:
                entry.labels.add(index=index, name=name, probability=probability)
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
            latents=self._vectors(request.latents),
            interpolation=interpolation,
            deadline=_deadline(context),
        )
        return pb.GenerateResponse(
            model=model.name, version=model.version_label, seed=generated.seed,
            images=[self._image(p, request.format) for p in generated.images],
            latents=[pb.LatentVector(values=v.tolist()) for v in generated.latents],
        )

    async def SuperResolve(self, request, context):
        model, plan = self._plan(request, context)
        raw_bytes = plan.width * plan.height * plan.channels
        if request.format == pb.RAW:
            self._check_fits(raw_bytes)
        output = np.empty((plan.height, plan.width, plan.channels), np.uint8)
        async for strip in plan.strips:
            output[strip.row_start:strip.row_start + strip.pixels.shape[0]] = strip.pixels
        picture = Image.fromarray(output[:, :, 0] if plan.channels == 1 else output)
        image = self._image(picture, request.format)
        self._check_fits(image.ByteSize())
        return pb.SuperResolveResponse(model=model.name, version=model.version_label,
                                       image=image, scale=plan.scale, conversion=plan.conversion)

    async def SuperResolveStream(self, request, context):
        _, plan = self._plan(request, context)
        row_bytes = plan.width * plan.channels
        chunk_bytes = min(_CHUNK_BYTES, (self._max_message_bytes - MESSAGE_ENVELOPE_BYTES) // 2)
        rows_per_chunk = max(1, chunk_bytes // row_bytes)
        async for strip in plan.strips:
            for offset in range(0, strip.pixels.shape[0], rows_per_chunk):
                rows = strip.pixels[offset:offset + rows_per_chunk]
                yield pb.SuperResolveChunk(
                    width=plan.width, height=plan.height, channels=plan.channels,
                    scale=plan.scale, row_start=strip.row_start + offset,
                    row_count=rows.shape[0], pixels=rows.tobytes(),
                )

    def _plan(self, request, context):
        if not request.HasField("image"):
            raise InvalidArgument("image: an image is required")
        picture = self._picture(request.image, "image")
        return self._tasks.plan_upscale(request.model, request.version, picture,
                                        _deadline(context))

    def _check_fits(self, size: int) -> None:
        if size + MESSAGE_ENVELOPE_BYTES > self._max_message_bytes:
            raise ResourceExhausted(
                f"the upscaled image needs {size} bytes, more than the {self._max_message_bytes}"
                "-byte message limit; use SuperResolveStream"
            )

    async def Encode(self, request, context):
        model, latents = await self._tasks.encode(
            request.model, request.version, self._pictures(request.images), _deadline(context))
        return pb.EncodeResponse(model=model.name, version=model.version_label,
                                 latents=[pb.LatentVector(values=v.tolist()) for v in latents])

    async def Decode(self, request, context):
        model, pictures = await self._tasks.decode(
            request.model, request.version, self._vectors(request.latents), _deadline(context))
        return pb.DecodeResponse(model=model.name, version=model.version_label,
                                 images=[self._image(p, request.format) for p in pictures])

    async def Reconstruct(self, request, context):
        model, pictures, errors = await self._tasks.reconstruct(
            request.model, request.version, self._pictures(request.images), _deadline(context))
        return pb.ReconstructResponse(
            model=model.name, version=model.version_label, errors=errors,
            images=[self._image(p, request.format) for p in pictures])

    async def ListModels(self, request, context):
        response = pb.ListModelsResponse()
        for entry in self._core.repository.entries():
            if entry.versions:
                response.models.append(self._info(entry.versions[max(entry.versions)]))
            else:
                response.models.add(name=entry.name, state=entry.reason or entry.state.value)
        return response

    async def DescribeModel(self, request, context):
        if not request.model:
            raise InvalidArgument("model: a model name is required")
        return self._info(self._core.model(request.model, request.version))

    def _info(self, model: ModelVersion) -> pb.ModelInfo:
        config, task = model.config, model.config.task
        info = pb.ModelInfo(
            name=model.name,
            versions=[v.version_label for v in self._core.repository.loaded_versions(model.name)],
            task_kind=task.kind.value, labels=task.labels or [],
            num_classes=task.num_classes or 0, latent_size=task.latent_size or 0,
            upscale_factor=task.upscale_factor or 0, color_mode=task.color_mode or "",
            execution_provider=model.runtime.provider, max_batch_size=config.max_batch_size,
            state="READY",
        )
        for group, specs in ((info.inputs, config.inputs), (info.outputs, config.outputs)):
            for spec in specs:
                group.add(name=spec.name, datatype=spec.datatype, shape=full_shape(spec, config))
        return info

