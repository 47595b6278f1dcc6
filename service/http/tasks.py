"""The task API over REST: a thin translation of the same TaskCore calls the gRPC TaskService
makes, with the same limits and messages, each route counted under its gRPC RPC's name.

A super-resolution answer is by default a PNG streamed with chunked transfer as the strips are
computed, so any image within max_image_pixels can be upscaled with one `curl`; a JSON answer (a
base64 PNG) is bounded by the message limit, like gRPC's SuperResolve.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator

import numpy as np

from service.core.description import IndexEntry, ModelDescription
from service.core.inference import InferenceCore
from service.core.repository import ModelVersion
from service.errors import InvalidArgument
from service.http import task_codec as codec
from service.http.framework import JSON, Request, Response, Router, json_response, within_deadline
from service.http.png import PngStream
from service.limits import check_response_fits
from service.tasks import images as img
from service.tasks.core import Strip, TaskCore, UpscalePlan

_VERSIONED = ("version", "timeout_ms")
_STREAM_ADVICE = "ask for image/png (the default), which streams"
# What ModelInfo holds for a model that does not serve (only its state and reason are known).
_NOT_SERVING = {"versions": [], "task_kind": "", "inputs": [], "outputs": [], "labels": [],
                "num_classes": 0, "latent_size": 0, "upscale_factor": 0, "color_mode": "",
                "execution_provider": "", "max_batch_size": 0}


def _png_json(picture) -> dict:
    return {"png": base64.b64encode(img.encode_png(picture)).decode("ascii")}


def _header(name: str, value) -> tuple[bytes, bytes]:
    return name.encode(), str(value).encode("latin-1")


def _version(request: Request) -> str:
    return request.query.get("version", "")


def _model_headers(model: ModelVersion) -> list[tuple[bytes, bytes]]:
    return [_header("x-model", model.name), _header("x-model-version", model.version_label)]


def _tensors(tensors) -> list[dict]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]


def model_info(model: ModelDescription | IndexEntry) -> dict:
    """ModelInfo of protos/task_service.proto, every field present as in gRPC's answer."""
    if isinstance(model, IndexEntry):
        return {"name": model.name, **_NOT_SERVING, "state": model.state, "reason": model.reason}
    task = model.task
    return {"name": model.name, "versions": list(model.versions), "task_kind": task.kind.value,
            "inputs": _tensors(model.inputs), "outputs": _tensors(model.outputs),
            "labels": list(task.labels or []), "num_classes": task.num_classes or 0,
            "latent_size": task.latent_size or 0, "upscale_factor": task.upscale_factor or 0,
            "color_mode": task.color_mode or "", "execution_provider": model.execution_provider,
            "max_batch_size": model.max_batch_size, "state": "READY", "reason": ""}


class TaskRoutes:
    def __init__(self, core: InferenceCore, tasks: TaskCore, max_message_bytes: int):
        self._core = core
        self._tasks = tasks
        self._max_message_bytes = max_message_bytes

    def register(self, router: Router) -> None:
        router.add("GET", "/v1/models", self.list_models, "ListModels")
        router.add("GET", "/v1/models/{model}", self.describe_model, "DescribeModel")
        for action, handler, call in (
                ("classify", self.classify, "Classify"), ("generate", self.generate, "Generate"),
                ("superresolve", self.superresolve, "SuperResolve"),
                ("encode", self.encode, "Encode"), ("decode", self.decode, "Decode"),
                ("reconstruct", self.reconstruct, "Reconstruct")):
            router.add("POST", f"/v1/models/{{model}}/{action}", handler, call, cancellable=True)

    # -- models ---------------------------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        codec.check_query(request, ())
        return json_response({"models": [model_info(m) for m in self._core.list_models()]})

    async def describe_model(self, request: Request) -> Response:
        codec.check_query(request, ("version",))
        model = self._tasks.describe(request.params["model"], _version(request))
        request.note(model.name, model.version)
        return json_response(model_info(model))

    # -- tasks ----------------------------------------------------------------------------------

    @staticmethod
    async def _call(request: Request, deadline: float | None, work):
        """Run one TaskCore call under the request's deadline; note the model it resolved to."""
        model, *results = await within_deadline(deadline, work, request.params["model"])
        request.note(model.name, model.version_label)
        return model, *results

    async def classify(self, request: Request) -> Response:
        codec.check_query(request, ("top_k", *_VERSIONED))
        deadline = codec.deadline(request)
        images, body = codec.images(request, "images", ("top_k",))
        top_k = codec.query_integer(request, "top_k")
        if "top_k" in body:
            if top_k is not None:
                raise InvalidArgument("top_k: given both in the query and in the body; give it "
                                      "once")
            top_k = codec.integer(body["top_k"], "top_k")
        model, results = await self._call(request, deadline, self._tasks.classify(
            request.params["model"], _version(request), images, top_k or 0, deadline))
        return json_response({
            "model": model.name, "version": model.version_label,
            "results": [{"labels": [{"index": i, "name": name, "probability": p}
                                    for i, name, p in r.labels], "conversion": r.conversion}
                        for r in results]})

    async def generate(self, request: Request) -> Response:
        codec.check_query(request, _VERSIONED)
        deadline = codec.deadline(request)
        body = codec.json_body(request, ("count", "seed", "class_label", "latents",
                                         "interpolation"))
        answer = codec.preferred(request.headers.get("accept"), (JSON, codec.PNG))
        model, generated = await self._call(request, deadline, self._tasks.generate(
            request.params["model"], _version(request),
            count=codec.optional_integer(body, "count") or 0,
            seed=codec.optional_integer(body, "seed", 0, codec.MAX_SEED),
            class_label=codec.optional_integer(body, "class_label"),
            latents=codec.vectors(body.get("latents"), "latents"),
            interpolation=codec.interpolation(body.get("interpolation")),
            deadline=deadline))
        if answer == codec.PNG:
            return self._one_png(generated.images, model, [_header("x-seed", generated.seed)])
        return json_response({"model": model.name, "version": model.version_label,
                              "seed": generated.seed,
                              "images": [_png_json(p) for p in generated.images],
                              "latents": generated.latents.tolist()})

    async def encode(self, request: Request) -> Response:
        codec.check_query(request, _VERSIONED)
        deadline = codec.deadline(request)
        images, _ = codec.images(request, "images")
        model, latents = await self._call(request, deadline, self._tasks.encode(
            request.params["model"], _version(request), images, deadline))
        return json_response({"model": model.name, "version": model.version_label,
                              "latents": latents.astype(np.float32).tolist()})

    async def decode(self, request: Request) -> Response:
        codec.check_query(request, _VERSIONED)
        deadline = codec.deadline(request)
        body = codec.json_body(request, ("latents",))
        answer = codec.preferred(request.headers.get("accept"), (JSON, codec.PNG))
        model, pictures = await self._call(request, deadline, self._tasks.decode(
            request.params["model"], _version(request),
            codec.vectors(body.get("latents"), "latents"), deadline))
        if answer == codec.PNG:
            return self._one_png(pictures, model, [])
        return json_response({"model": model.name, "version": model.version_label,
                              "images": [_png_json(p) for p in pictures]})

    async def reconstruct(self, request: Request) -> Response:
        codec.check_query(request, _VERSIONED)
        deadline = codec.deadline(request)
        images, _ = codec.images(request, "images")
        model, pictures, errors = await self._call(request, deadline, self._tasks.reconstruct(
            request.params["model"], _version(request), images, deadline))
        # float32, as gRPC's `repeated float errors` carries them.
        return json_response({"model": model.name, "version": model.version_label,
                              "images": [_png_json(p) for p in pictures],
                              "errors": np.float32(errors).tolist()})

    @staticmethod
    def _one_png(pictures, model: ModelVersion, headers: list) -> Response:
        if len(pictures) != 1:
            raise InvalidArgument(f"header 'Accept': image/png answers with exactly one image; "
                                  f"this call made {len(pictures)} (ask for {JSON})")
        return Response(body=img.encode_png(pictures[0]), content_type=codec.PNG,
                        headers=_model_headers(model) + headers)

    # -- super-resolution -------------------------------------------------------------------------

    async def superresolve(self, request: Request) -> Response:
        codec.check_query(request, _VERSIONED)
        image = codec.one_image(request)
        answer = codec.preferred(request.headers.get("accept"), (codec.PNG, JSON))
        name, deadline = request.params["model"], codec.deadline(request)
        stack = contextlib.AsyncExitStack()
        model, plan = await within_deadline(deadline, stack.enter_async_context(
            self._tasks.upscale(name, _version(request), image, deadline)), name)
        request.note(model.name, model.version_label)
        stream = _png_stream(stack, plan, deadline, name)
        # Started here, so the stream owns the held model from now on and releases it however
        # the call ends, even when its response is never sent.
        header = await anext(stream)
        if answer == codec.PNG:
            return Response(body=_prefixed(header, stream), content_type=codec.PNG, headers=[
                *_model_headers(model), _header("x-upscale-scale", plan.scale),
                _header("x-conversion", plan.conversion)])
        async with contextlib.aclosing(stream):
            # As gRPC's SuperResolve: a PNG is never much larger than its raw pixels, so refuse
            # from the planned size, before any tile is computed.
            check_response_fits(plan.raw_bytes, self._max_message_bytes, "the upscaled image",
                                _STREAM_ADVICE)
            encoded = header + b"".join([chunk async for chunk in stream])
        check_response_fits((len(encoded) + 2) // 3 * 4, self._max_message_bytes,
                            "the upscaled image in base64", _STREAM_ADVICE)
        return json_response({"model": model.name, "version": model.version_label,
                              "scale": plan.scale, "conversion": plan.conversion,
                              "image": {"png": base64.b64encode(encoded).decode("ascii")}})


async def _strips(plan: UpscalePlan, deadline: float | None, name: str) -> AsyncIterator[Strip]:
    """The plan's strips, each awaited under the deadline (HTTP has no timer of its own)."""
    while True:
        try:
            yield await within_deadline(deadline, anext(plan.strips), name)
        except StopAsyncIteration:
            return


async def _png_stream(stack: contextlib.AsyncExitStack, plan: UpscalePlan,
                      deadline: float | None, name: str) -> AsyncIterator[bytes]:
    async with stack:
        png = PngStream(plan.width, plan.height, plan.channels)
        yield png.header()
        async for strip in _strips(plan, deadline, name):
            # Compressing a strip takes tens of milliseconds: off the event loop.
            yield await asyncio.to_thread(png.rows, strip.pixels)
        yield png.end()


async def _prefixed(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk
