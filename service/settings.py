"""Server-wide settings (per-model settings live in each model's config.yaml).

Every field can come from an environment variable with the ONNXSERVE_ prefix
(e.g. ONNXSERVE_GRPC_PORT=9001); command-line flags override the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# A 4096 x 4096 RGB float32 tensor is 192 MiB; leave room for the protobuf envelope.
DEFAULT_MAX_MESSAGE_BYTES = 4096 * 4096 * 3 * 4 + 1024 * 1024
# What a response may need beyond its tensors' or image's bytes (names, shapes, fields).
MESSAGE_ENVELOPE_BYTES = 4096


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ONNXSERVE_", extra="forbid")

    models: Path = Path("models")
    """Model repository directory: <name>/config.yaml and <name>/<version>/model.onnx."""
    host: str = "0.0.0.0"
    """Address the gRPC and metrics servers bind to."""
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """gRPC port; 0 picks a free one (logged at start)."""
    metrics_port: int = Field(default=8002, ge=0, le=65535)
    """Prometheus metrics HTTP port; 0 picks a free one."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Execution provider: auto uses CUDA only when its libraries and a device are usable."""
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
    """Largest gRPC message accepted or sent."""
    max_load_file_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    """Largest total of model files a load request may carry (tritonclient load_model files)."""
    max_connection_age_s: float = Field(default=0.0, ge=0)
    """Close client connections after this long (0: never), so that clients balancing over DNS
    (a headless Service) reconnect and find replicas added by a scale-out."""
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long in-flight calls may take to finish before the process exits."""
    startup_models: list[str] | None = None
    """Models to load at start (default: every model in the repository)."""
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
    tls_cert_file: Path | None = None
    """PEM server certificate (chain): serve gRPC over TLS."""
    tls_key_file: Path | None = None
    """PEM private key of the server certificate."""
    tls_client_ca_file: Path | None = None
    """PEM CA bundle: require client certificates signed by it (mutual TLS)."""
    api_keys: list[SecretStr] = Field(default_factory=list)
    """Inference API keys (env: JSON list); clients send 'authorization: Bearer <key>'."""
    api_keys_file: Path | None = None
    """File of inference API keys, one per line."""
    admin_keys: list[SecretStr] = Field(default_factory=list)
    """Admin API keys: everything inference keys may do, plus repository load and unload."""
    admin_keys_file: Path | None = None
    """File of admin API keys, one per line."""
    public_health: bool = True
    """Health checks, reflection and /metrics need no key even when keys are configured."""
    malloc_reuse_bytes: int = Field(default=32 * 1024 * 1024, ge=0, le=32 * 1024 * 1024)
    """glibc only: memory blocks up to this size are reused from the heap rather than mapped and
    unmapped per request (mallopt M_MMAP_THRESHOLD; 0 keeps glibc's defaults). Multi-megabyte
    tensors otherwise cost a page fault per 4 KiB page on every request."""
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    """asyncio event loop: uvloop costs less per gRPC call (auto: uvloop when installed)."""
    log_format: Literal["text", "json"] = "text"
    """Log line format; json gives one object per line."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level logged."""
