"""Per-model configuration: `models/<name>/config.yaml`, validated at load.

The file declares the task kind, the tensor signature, batching and the task metadata a client
needs. Tensor shapes follow Triton's convention: when `max_batch_size > 0` the batch axis is
implicit and not written in `shape`; -1 marks a variable dimension.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.core.datatypes import DATATYPES
from service.errors import ModelLoadError

CONFIG_FILENAME = "config.yaml"

# Every datatype of the one table.
DatatypeName = Literal[tuple(DATATYPES)]


class _Strict(BaseModel):
    # Unknown keys are typos until proven otherwise: refuse them so the error names the field.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskKind(str, enum.Enum):
    TENSOR = "tensor"  # no task API; tensor API only
    CLASSIFIER = "classifier"
    AUTOENCODER = "autoencoder"
    ENCODER = "encoder"
    DECODER = "decoder"
    GENERATOR = "generator"
    CONDITIONAL_GENERATOR = "conditional_generator"
    SUPER_RESOLUTION = "super_resolution"


class TensorSpec(_Strict):
    name: str = Field(min_length=1)
    """Tensor name in the ONNX graph."""
    datatype: DatatypeName
    """Open Inference Protocol datatype (FP32, INT64, ...)."""
    shape: list[int]
    """Dimensions without the batch axis when max_batch_size > 0; -1 for a variable one."""
    reshape: list[int] | None = None
    """The shape the graph itself has (without batch axis), when it differs from `shape`."""
    optional: bool = False
    """Inputs only: requests may leave it out (the graph must give it a default)."""

    @model_validator(mode="after")
    def _dims_valid(self) -> TensorSpec:
        for field, dims in (("shape", self.shape), ("reshape", self.reshape or [])):
            if any(d == 0 or d < -1 for d in dims):
                raise ValueError(f"{field} dims must be positive or -1, got {dims}")
        if self.reshape is not None and -1 not in self.shape + self.reshape:
            if int(np.prod(self.shape)) != int(np.prod(self.reshape)):
                raise ValueError(
                    f"reshape {self.reshape} must hold as many elements as shape {self.shape}"
                )
        return self

    @property
    def graph_shape(self) -> list[int]:
        """Dims (without batch axis) of the tensor inside the graph."""
        return self.shape if self.reshape is None else self.reshape


class DynamicBatching(_Strict):
    enabled: bool = True
    """Merge concurrent requests into one session run."""
    max_queue_delay_us: int = Field(default=500, ge=0, le=10_000_000)
    """Longest a queued request waits for company before its batch runs."""
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    """Batch sizes worth waiting for; warm-up runs each of them."""
    max_queue_size: int = Field(default=256, ge=1)
    """Requests allowed to wait; beyond it the server answers RESOURCE_EXHAUSTED at once."""


class VersionPolicy(_Strict):
    """Which versions found on disk are served: exactly one of the three."""

    latest: int | None = Field(default=None, ge=1)
    all: bool | None = None
    specific: list[int] | None = None

    @model_validator(mode="after")
    def _one_choice(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) not in (None, False)]
        if len(chosen) > 1:
            raise ValueError(f"give exactly one of latest, all, specific; got {chosen}")
        return self

    def select(self, available: list[int]) -> list[int]:
        available = sorted(available)
        if self.all:
            return available
        if self.specific is not None:
            return [v for v in available if v in set(self.specific)]
        return available[-(self.latest or 1):]


class PixelScaling(_Strict):
    """Between 8-bit pixels and model values: value = (pixel * scale - mean) / std. For image
    inputs it is applied as written; for image outputs it is inverted."""

    scale: float = 1.0 / 255.0
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)


class TaskMetadata(_Strict):
    kind: TaskKind = TaskKind.TENSOR
    """What the model does; drives the task API."""
    labels: list[str] | None = None
    """Class names in output order (classifiers)."""
    input_scaling: PixelScaling | None = None
    """Pixel-to-input mapping for image inputs."""
    output_scaling: PixelScaling | None = None
    """Pixel-to-output mapping of image outputs, inverted: pixel = (out * std + mean) / scale."""
    latent_size: int | None = Field(default=None, ge=1)
    """Latent vector length (generators, encoders, decoders)."""
    num_classes: int | None = Field(default=None, ge=1)
    """Number of classes (classifiers, conditional generators)."""
    upscale_factor: int | None = Field(default=None, ge=1)
    """Output/input size ratio (super-resolution)."""
    color_mode: Literal["grey", "rgb", "y"] | None = None
    """Colour the network sees: grey, rgb, or y (luma only; chroma upscaled by bicubic)."""

    @model_validator(mode="after")
    def _kind_requirements(self) -> TaskMetadata:
        required = {
            TaskKind.GENERATOR: ["latent_size"],
            TaskKind.CONDITIONAL_GENERATOR: ["latent_size", "num_classes"],
            TaskKind.SUPER_RESOLUTION: ["upscale_factor"],
            TaskKind.ENCODER: ["latent_size"],
            TaskKind.DECODER: ["latent_size"],
        }.get(self.kind, [])
        missing = [f for f in required if getattr(self, f) is None]
        if missing:
            raise ValueError(f"task kind '{self.kind.value}' needs {', '.join(missing)}")
        if self.kind is TaskKind.CLASSIFIER and self.labels is None and self.num_classes is None:
            raise ValueError("task kind 'classifier' needs labels or num_classes")
        if self.labels is not None and self.num_classes is not None:
            if len(self.labels) != self.num_classes:
                raise ValueError(
                    f"labels has {len(self.labels)} names but num_classes is {self.num_classes}"
                )
        return self


class CudaOptions(_Strict):
    """ONNX Runtime CUDA provider options. In a model's config every field left out takes the
    server's setting `cuda_<field>`; on the CPU provider they are validated but not used."""

    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] | None = None
    """How cuDNN picks a convolution algorithm per input shape: EXHAUSTIVE benchmarks every new
    shape (a stall on each new batch or tile shape), HEURISTIC asks cuDNN's heuristics."""
    gpu_mem_limit: int | None = Field(default=None, ge=0)
    """Bytes the provider's device memory arena may hold; 0: no limit."""
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] | None = None
    """How the device memory arena grows: in powers of two, or by what is asked for."""
    do_copy_in_default_stream: bool | None = None
    """Copy between host and device on the compute stream (true, safe) or on separate streams."""
    use_tf32: bool | None = None
    """Let fp32 convolutions and matrix products run as TF32 on Ampere and later (faster, about
    3 decimal digits); off, fp32 results match the CPU provider's to fp32 rounding."""
    enable_cuda_graph: bool | None = None
    """Capture a CUDA graph per warmed-up input shape and replay it; other shapes run normally."""

    @classmethod
    def from_settings(cls, settings) -> CudaOptions:
        """The server-wide defaults: ServerSettings' `cuda_<field>` for every field."""
        return cls(**{name: getattr(settings, f"cuda_{name}") for name in cls.model_fields})


class ModelConfig(_Strict):
    name: str | None = None
    """Must equal the model's directory name when given."""
    platform: Literal["onnxruntime_onnx"] = "onnxruntime_onnx"
    """Runtime that serves the model."""
    max_batch_size: int = Field(default=0, ge=0)
    """Largest batch in one request or one merged run; 0: the model has no batch axis."""
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    dynamic_batching: DynamicBatching = Field(default_factory=DynamicBatching)
    instance_count: int = Field(default=1, ge=1, le=64)
    """ONNX Runtime sessions per loaded version, run concurrently."""
    instance_kind: Literal["auto", "cpu", "gpu"] = "auto"
    """auto: the server's execution provider (CUDA when usable); cpu: always the CPU; gpu: CUDA
    only (a server on the CPU provider does not serve the model, e.g. an fp16 variant)."""
    cuda: CudaOptions | None = None
    """CUDA provider options for this model, over the server's cuda_* settings."""
    version_policy: VersionPolicy = Field(default_factory=lambda: VersionPolicy(latest=1))
    task: TaskMetadata = Field(default_factory=TaskMetadata)
    model_filename: str = Field(default="model.onnx", pattern=r"^[A-Za-z0-9_.-]+$")
    """File name inside each version directory."""

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        for group in ("inputs", "outputs"):
            names = [t.name for t in getattr(self, group)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{group} has duplicate tensor names {dupes}")
        too_big = [b for b in self.dynamic_batching.preferred_batch_sizes
                   if b < 1 or b > max(self.max_batch_size, 1)]
        if too_big:
            raise ValueError(
                f"dynamic_batching.preferred_batch_sizes {too_big} must lie in "
                f"1..max_batch_size ({self.max_batch_size})"
            )
        return self

    @property
    def batching_enabled(self) -> bool:
        return self.max_batch_size > 0 and self.dynamic_batching.enabled


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_model_config(data: object, source: str) -> ModelConfig:
    """Validate a config mapping; errors name `source`, each failing field and the value seen."""
    if not isinstance(data, dict):
        raise ModelLoadError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            seen = f" (got {err['input']!r})" if err["type"] != "missing" else ""
            problems.append(f"field '{_field_path(err['loc'])}': {err['msg']}{seen}")
        raise ModelLoadError(f"{source}: " + "; ".join(problems)) from None


def load_model_config(path: Path) -> ModelConfig:
    """Read and validate one model's config file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{path}: not valid YAML: {exc}") from None
    config = parse_model_config(data, str(path))
    if config.name is not None and config.name != path.parent.name:
        raise ModelLoadError(
            f"{path}: field 'name': must match the directory name '{path.parent.name}' "
            f"(got {config.name!r})"
        )
    return config
