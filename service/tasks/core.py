"""Task-level operations (classify, generate, super-resolve, encode, decode, reconstruct).

Each one turns images, labels and latent vectors into tensors from the model's config (task kind,
signature, scaling, latent size, scale factor) and runs them through the same InferenceCore, and so
the same batching scheduler and metrics, as the tensor API. A new model of a known kind needs no
new code.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.core.config import TaskKind
from service.core.description import ModelDescription
from service.core.inference import InferenceCore
from service.core.repository import ModelVersion
from service.errors import InvalidArgument
from service.tasks import images as img
from service.tasks.colour import ColourPlan, plan_colour
from service.tasks.pixels import to_uint8
from service.tasks.tiling import Window, tile_windows

AUTOENCODERS = (TaskKind.AUTOENCODER,)
ENCODERS = (TaskKind.ENCODER,)
DECODERS = (TaskKind.DECODER, TaskKind.GENERATOR)
GENERATORS = (TaskKind.GENERATOR, TaskKind.CONDITIONAL_GENERATOR)
CLASSIFIERS = (TaskKind.CLASSIFIER,)
SUPER_RESOLUTION = (TaskKind.SUPER_RESOLUTION,)


@dataclass(frozen=True)
class TaskLimits:
    max_images: int
    max_generate_count: int
    tile_size: int
    tile_overlap: int
    image: img.ImageLimits


@dataclass
class Classified:
    labels: list[tuple[int, str, float]]
    conversion: str


@dataclass
class Generated:
    images: list[Image.Image]
    latents: np.ndarray
    seed: int


@dataclass
class Strip:
    """Rows [row_start, row_start + len(pixels)) of the upscaled image, HxWxC uint8."""

    row_start: int
    pixels: np.ndarray


@dataclass
class UpscalePlan:
    width: int
    height: int
    channels: int
    scale: int
    conversion: str
    strips: AsyncIterator[Strip]

    @property
    def raw_bytes(self) -> int:
        return self.width * self.height * self.channels


def _require_name(name: str) -> None:
    if not name:
        raise InvalidArgument("model: a model name is required")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


class TaskCore:
    def __init__(self, core: InferenceCore, limits: TaskLimits):
        self._core = core
        self.limits = limits

    # -- shared -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _hold(self, name: str, version: str, kinds: tuple[TaskKind, ...],
                    rpc: str) -> AsyncIterator[ModelVersion]:
        """The model version for one task call, held until the call ends."""
        _require_name(name)
        async with self._core.hold(name, version) as model:
            kind = model.config.task.kind.value
            if model.config.task.kind not in kinds:
                wanted = " or ".join(k.value for k in kinds)
                raise InvalidArgument(f"model: '{name}' is {_article(kind)} {kind} model; {rpc} "
                                      f"needs {_article(wanted)} {wanted} model")
            if model.config.max_batch_size < 1:
                raise InvalidArgument(f"model: '{name}' has no batch axis; the task API needs one")
            yield model

    def describe(self, name: str, version: str) -> ModelDescription:
        _require_name(name)
        return self._core.describe(name, version)

    def check_count(self, count: int, field: str, limit: int) -> None:
        if count < 1 or count > limit:
            raise InvalidArgument(f"{field}: expected 1..{limit} items, got {count}")

    def _decode(self, images: Sequence[img.ImageData], field: str) -> list[Image.Image]:
        """Count first, then decode: a request of too many images costs no decoding."""
        self.check_count(len(images), field, self.limits.max_images)
        return [img.decode(image, f"{field}[{i}]", self.limits.image)
                for i, image in enumerate(images)]

    async def _run(
        self, model: ModelVersion, inputs: dict[str, np.ndarray], deadline: float | None
    ) -> dict[str, np.ndarray]:
        """Run N items, split into requests of at most max_batch_size that the batcher may merge
        with other traffic; outputs are concatenated back in order."""
        total = len(next(iter(inputs.values())))
        step = model.config.max_batch_size
        parts = await asyncio.gather(*(
            self._core.run(model, {k: v[start:start + step] for k, v in inputs.items()}, deadline)
            for start in range(0, total, step)
        ))
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _image_batch(self, model: ModelVersion, pictures: list[Image.Image]):
        spec = model.config.inputs[0]
        if len(spec.shape) != 3 or -1 in spec.shape:
            raise InvalidArgument(
                f"model: '{model.name}' input '{spec.name}' shape {spec.shape} is not a fixed "
                "CxHxW image"
            )
        converted = [img.to_model_input(p, spec.shape, model.config.task.input_scaling)
                     for p in pictures]
        return spec.name, np.stack([c[0] for c in converted]), [c[1] for c in converted]

    def _images_out(self, model: ModelVersion, tensor: np.ndarray):
        """NxCxHxW model output to (uint8 images, unrounded 0..255 floats)."""
        pixels = img.unscale_pixels(tensor, model.config.task.output_scaling)
        return [img.chw_to_image(to_uint8(p)) for p in pixels], pixels

    def _latents(self, model: ModelVersion, vectors: list[list[float]], field: str) -> np.ndarray:
        size = model.config.task.latent_size
        for i, vector in enumerate(vectors):
            if len(vector) != size:
                raise InvalidArgument(
                    f"{field}[{i}]: has {len(vector)} values; model '{model.name}' expects "
                    f"latent_size {size}"
                )
        latents = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), size)
        if not np.isfinite(latents).all():
            raise InvalidArgument(f"{field}: values must be finite numbers")
        return latents

    def _latent_input(self, model: ModelVersion) -> tuple[str, list[int]]:
        spec = next((s for s in model.config.inputs if s.datatype in ("FP32", "FP16")), None)
        if spec is None or int(np.prod(spec.shape)) != model.config.task.latent_size:
            raise InvalidArgument(
                f"model: '{model.name}' has no FP32 input of latent_size "
                f"{model.config.task.latent_size} values"
            )
        return spec.name, spec.shape

    # -- RPCs ---------------------------------------------------------------------------------

    async def classify(
        self, name: str, version: str, images: Sequence[img.ImageData], top_k: int,
        deadline: float | None,
    ) -> tuple[ModelVersion, list[Classified]]:
        async with self._hold(name, version, CLASSIFIERS, "Classify") as model:
            return model, await self._classify(model, self._decode(images, "images"), top_k,
                                               deadline)

    async def _classify(self, model: ModelVersion, pictures: list[Image.Image], top_k: int,
                        deadline: float | None) -> list[Classified]:
        task = model.config.task
        classes = task.num_classes or len(task.labels or [])
        top_k = top_k or 1
        if not 1 <= top_k <= classes:  # gRPC's top_k cannot be negative, REST's can
            raise InvalidArgument(f"top_k: expected 1..{classes}, got {top_k}")
        input_name, batch, conversions = self._image_batch(model, pictures)
        outputs = await self._run(model, {input_name: batch}, deadline)
        probabilities = outputs[model.config.outputs[0].name].reshape(len(pictures), -1)
        labels = task.labels or [str(i) for i in range(classes)]
        results = []
        for row, conversion in zip(probabilities, conversions):
            best = np.argsort(-row, kind="stable")[:top_k]
            results.append(Classified([(int(i), labels[i], float(row[i])) for i in best],
                                      conversion))
        return results

    async def generate(
        self, name: str, version: str, *, count: int, seed: int | None, class_label: int | None,
        latents: list[list[float]], interpolation: tuple[list[float], list[float], int] | None,
        deadline: float | None,
    ) -> tuple[ModelVersion, Generated]:
        async with self._hold(name, version, GENERATORS, "Generate") as model:
            return model, await self._generate(model, count, seed, class_label, latents,
                                               interpolation, deadline)

    async def _generate(self, model, count, seed, class_label, latents, interpolation,
                        deadline) -> Generated:
        name, task = model.name, model.config.task
        conditional = task.kind is TaskKind.CONDITIONAL_GENERATOR
        if conditional and class_label is None:
            raise InvalidArgument(
                f"class_label: model '{name}' is a conditional generator; give a class label "
                f"in 0..{task.num_classes - 1}"
            )
        if not conditional and class_label is not None:
            raise InvalidArgument(
                f"class_label: model '{name}' is not conditional; omit class_label "
                f"(got {class_label})"
            )
        if conditional and not 0 <= class_label < task.num_classes:
            raise InvalidArgument(
                f"class_label: expected 0..{task.num_classes - 1}, got {class_label}"
            )
        seed = secrets.randbits(63) if seed is None else seed
        rng = np.random.default_rng(seed)
        size = task.latent_size
        limit = self.limits.max_generate_count
        if latents:
            self.check_count(len(latents), "latents", limit)
            vectors = self._latents(model, latents, "latents")
        elif interpolation is not None:
            start, end, steps = interpolation
            if steps < 2 or steps > limit:
                raise InvalidArgument(f"interpolation.steps: expected 2..{limit}, got {steps}")
            a = self._latents(model, [start], "interpolation.start")[0] if start else \
                rng.standard_normal(size, dtype=np.float32)
            b = self._latents(model, [end], "interpolation.end")[0] if end else \
                rng.standard_normal(size, dtype=np.float32)
            t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
            vectors = (1 - t) * a + t * b
        else:
            count = count or 1
            self.check_count(count, "count", limit)
            vectors = rng.standard_normal((count, size), dtype=np.float32)

        latent_name, latent_shape = self._latent_input(model)
        inputs = {latent_name: vectors.reshape(len(vectors), *latent_shape)}
        if conditional:
            label_spec = next(s for s in model.config.inputs if s.name != latent_name)
            inputs[label_spec.name] = np.full(
                (len(vectors), *label_spec.shape), class_label, dtype=np.int64
            )
        outputs = await self._run(model, inputs, deadline)
        pictures, _ = self._images_out(model, outputs[model.config.outputs[0].name])
        return Generated(pictures, vectors, seed)

    async def encode(self, name, version, images, deadline) -> tuple[ModelVersion, np.ndarray]:
        async with self._hold(name, version, ENCODERS, "Encode") as model:
            input_name, batch, _ = self._image_batch(model, self._decode(images, "images"))
            outputs = await self._run(model, {input_name: batch}, deadline)
            return model, outputs[model.config.outputs[0].name].reshape(len(batch), -1)

    async def decode(self, name, version, latents, deadline):
        async with self._hold(name, version, DECODERS, "Decode") as model:
            self.check_count(len(latents), "latents", self.limits.max_images)
            vectors = self._latents(model, latents, "latents")
            latent_name, latent_shape = self._latent_input(model)
            outputs = await self._run(
                model, {latent_name: vectors.reshape(len(vectors), *latent_shape)}, deadline
            )
            return model, self._images_out(model, outputs[model.config.outputs[0].name])[0]

    async def reconstruct(self, name, version, images, deadline):
        async with self._hold(name, version, AUTOENCODERS, "Reconstruct") as model:
            input_name, batch, _ = self._image_batch(model, self._decode(images, "images"))
            outputs = await self._run(model, {input_name: batch}, deadline)
            rebuilt, pixels = self._images_out(model, outputs[model.config.outputs[0].name])
            originals = img.unscale_pixels(batch, model.config.task.input_scaling)
            errors = (((pixels - originals) / 255.0) ** 2).reshape(len(batch), -1).mean(axis=1)
            return model, rebuilt, [float(e) for e in errors]

    # -- super-resolution -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def upscale(self, name: str, version: str, image: img.ImageData,
                      deadline: float | None) -> AsyncIterator[tuple[ModelVersion, UpscalePlan]]:
        """Validate and describe the upscale. Its strips are computed lazily, tile row by tile
        row, so memory stays bounded by one row of tiles; the model version is held until the
        block ends, so every strip comes from the version the upscale started on."""
        async with self._hold(name, version, SUPER_RESOLUTION, "SuperResolve") as model:
            picture = img.decode(image, "image", self.limits.image)
            task = model.config.task
            scale = task.upscale_factor
            network_channels = model.config.inputs[0].shape[0]
            colour = plan_colour(picture,
                                 task.color_mode or ("rgb" if network_channels == 3 else "y"))
            width, height = picture.size
            tile, overlap = self.limits.tile_size, self.limits.tile_overlap
            rows, cols = tile_windows(height, tile, overlap), tile_windows(width, tile, overlap)
            how = colour.description + (", alpha resized" if colour.alpha is not None else "")
            yield model, UpscalePlan(
                width=width * scale, height=height * scale, channels=colour.channels,
                scale=scale,
                conversion=(f"{picture.mode} {width}x{height}: {how}; {len(rows) * len(cols)} "
                            f"tile(s) of at most {tile}x{tile} (overlap {overlap}) at x{scale}"),
                strips=self._strips(model, colour, rows, cols, deadline),
            )

    async def _strips(self, model: ModelVersion, colour: ColourPlan, rows: list[Window],
                      cols: list[Window], deadline) -> AsyncIterator[Strip]:
        task = model.config.task
        scale = task.upscale_factor
        planes = colour.planes
        for row in rows:
            tiles = np.stack([
                planes[:, row.start:row.start + row.length, col.start:col.start + col.length]
                for col in cols
            ])
            outputs = await self._run(
                model, {model.config.inputs[0].name: img.scale_pixels(tiles, task.input_scaling)},
                deadline,
            )
            result = img.unscale_pixels(outputs[model.config.outputs[0].name],
                                        task.output_scaling)
            top, bottom = (row.core_start - row.start) * scale, (row.core_end - row.start) * scale
            strip = np.empty((result.shape[1], (row.core_end - row.core_start) * scale,
                              planes.shape[2] * scale), np.float32)
            for col, tile_out in zip(cols, result):
                left = (col.core_start - col.start) * scale
                right = (col.core_end - col.start) * scale
                strip[:, :, col.core_start * scale:col.core_end * scale] = \
                    tile_out[:, top:bottom, left:right]
            yield Strip(row.core_start * scale, colour.finish(strip, row, scale))
