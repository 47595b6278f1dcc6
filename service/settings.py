"""Server-wide settings (per-model settings live in each model's config.yaml).

Every field can come from an environment variable with the ONNXSERVE_ prefix
(e.g. ONNXSERVE_GRPC_PORT=9001); command-line flags override the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ONNXSERVE_"
# A 4096 x 4096 RGB float32 tensor is 192 MiB; leave room for the protobuf envelope.
DEFAULT_MAX_MESSAGE_BYTES = 4096 * 4096 * 3 * 4 + 1024 * 1024


def flag(name: str, **field) -> object:
    """A field whose command-line flag is not simply --<field-name-with-dashes>; `name` "" for a
    field with no flag at all (secrets: a command line is visible to every user of the host)."""
    return Field(json_schema_extra={"flag": name}, **field)


class ServerSettings(BaseSettings):
    """Every field is a flag of `onnx-serve` and an ONNXSERVE_* environment variable; its
    docstring is the flag's help and the README's description (service.cli derives both)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid",
                                      use_attribute_docstrings=True)

    models: Path = Path("models")
    """Model repository directory: NAME/config.yaml (or config.pbtxt) and NAME/VERSION/model.onnx."""
    host: str = "0.0.0.0"
    """Address the gRPC, REST and metrics servers bind to."""
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """gRPC port; 0 picks a free one (logged at start). Opened once the startup models are
    loaded, so a proxy or client never meets a server that cannot serve yet."""
    http_port: int = Field(default=8000, ge=-1, le=65535)
    """REST port (the Open Inference Protocol over HTTP, the task API, the demo page); 0 picks a
    free one, -1 turns REST off. Opened, like gRPC's, once the startup models are loaded."""
    metrics_port: int = Field(default=8002, ge=0, le=65535)
    """Prometheus metrics HTTP port; 0 picks a free one. Opened first, so loading can be
    watched."""
    reuse_port: bool = False
    """Let other processes bind the same gRPC and REST ports (SO_REUSEPORT), the kernel spreading
    connections over them: only for several servers on one host sharing ports on purpose. Off, a
    busy port stops the start with an error instead of silently sharing it."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Execution provider: auto uses CUDA only when its libraries and a device are usable; cuda
    fails the start when they are not."""
    intra_op_threads: int = Field(default=0, ge=0)
    """ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime decide."""
    inter_op_threads: int = Field(default=1, ge=0)
    """ONNX Runtime inter-op threads per session."""
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    """ONNX Runtime graph optimisation level."""
    cuda_cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = "HEURISTIC"
    """CUDA: how cuDNN picks convolution algorithms (EXHAUSTIVE re-benchmarks every new shape)."""
    cuda_gpu_mem_limit: int = Field(default=0, ge=0)
    """CUDA: bytes each session's device memory arena may hold; 0: no limit."""
    cuda_arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kNextPowerOfTwo"
    """CUDA: how the device memory arena grows."""
    cuda_do_copy_in_default_stream: bool = True
    """CUDA: host-device copies on the compute stream (false: separate streams, racy)."""
    cuda_use_tf32: bool = False
    """CUDA: allow TF32 for fp32 convolutions and matrix products (off: fp32 parity with CPU)."""
    cuda_enable_cuda_graph: bool = False
    """CUDA: capture and replay a CUDA graph per warmed-up input shape."""
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    """Largest gRPC message accepted or sent, and largest REST request body (the default takes a
    4096x4096 RGB FP32 tensor)."""
    max_load_file_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    """Largest total of model files a load request may carry (tritonclient load_model files)."""
    max_connection_age_s: float = flag("--max-connection-age", default=0.0, ge=0)
    """Close client connections after this long (0: never), so that clients balancing over DNS
    (a headless Service) reconnect and find replicas added by a scale-out."""
    shutdown_grace_s: float = flag("--shutdown-grace", default=30.0, ge=0)
    """On SIGTERM, how long in-flight calls may take to finish before the process exits."""
    startup_models: list[str] | None = flag("--model", default=None)
    """A model to load at start (repeat the flag for several; env: a JSON list). Default: every
    model in the repository."""
    max_image_pixels: int = Field(default=4096 * 4096, ge=1)
    """Task API: largest image (width x height) accepted, checked from the header before decoding."""
    max_images_per_request: int = Field(default=256, ge=1)
    """Task API: images (or latent vectors) per request."""
    max_generate_count: int = Field(default=256, ge=1)
    """Task API: images per Generate call."""
    sr_tile_size: int = Field(default=128, ge=8)
    """Task API: super-resolution input tile edge in pixels; bounds memory per model run."""
    sr_tile_overlap: int = Field(default=16, ge=0)
    """Task API: context pixels around each tile; must cover the network's receptive field."""
    tls_cert_file: Path | None = flag("--tls-cert", default=None)
    """PEM server certificate (chain): serve gRPC and REST over TLS."""
    tls_key_file: Path | None = flag("--tls-key", default=None)
    """PEM private key of the server certificate."""
    tls_client_ca_file: Path | None = flag("--tls-client-ca", default=None)
    """PEM CA bundle: require client certificates signed by it (mutual TLS)."""
    api_keys: list[SecretStr] = flag("", default_factory=list)
    """Inference API keys (env only, a JSON list); clients send 'authorization: Bearer KEY'."""
    api_keys_file: Path | None = None
    """File of inference API keys, one per line."""
    admin_keys: list[SecretStr] = flag("", default_factory=list)
    """Admin API keys (env only, a JSON list): everything inference keys may do, plus repository
    load and unload and shared-memory registration."""
    admin_keys_file: Path | None = None
    """File of admin API keys, one per line."""
    public_health: bool = True
    """Health checks, reflection and /metrics need no key even when keys are configured."""
    malloc_reuse_bytes: int = Field(default=32 * 1024 * 1024, ge=0, le=32 * 1024 * 1024)
    """glibc only: memory blocks up to this size are reused from the heap rather than mapped and
    unmapped per request (mallopt M_MMAP_THRESHOLD; 0 keeps glibc's defaults). Multi-megabyte
    tensors otherwise cost a page fault per 4 KiB page on every request."""
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    """asyncio event loop: uvloop costs about 10% less server CPU per gRPC call (auto: uvloop when
    installed; it is a Linux and macOS extra)."""
    log_format: Literal["text", "json"] = "text"
    """Log line format; json gives one object per line."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level logged."""

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together; give both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        return self
