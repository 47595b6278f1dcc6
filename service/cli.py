"""Command line: `python -m service serve [flags]` (also installed as `serve`).

Each flag falls back to its ONNXSERVE_* environment variable, then to the default.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import sys

from pydantic import ValidationError

from service.logs import configure_logging
from service.settings import ServerSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the models of a repository")
    flags = {
        "--models": ("models", "model repository directory"),
        "--host": ("host", "address to bind"),
        "--grpc-port": ("grpc_port", "gRPC port (0: any free port)"),
        "--metrics-port": ("metrics_port", "Prometheus metrics port (0: any free port)"),
        "--device": ("device", "auto, cpu or cuda"),
        "--intra-op-threads": ("intra_op_threads", "ONNX Runtime intra-op threads (0: auto)"),
        "--inter-op-threads": ("inter_op_threads", "ONNX Runtime inter-op threads"),
        "--graph-optimization": ("graph_optimization", "disable, basic, extended or all"),
        "--cuda-cudnn-conv-algo-search": ("cuda_cudnn_conv_algo_search",
                                          "CUDA: HEURISTIC, EXHAUSTIVE or DEFAULT"),
        "--cuda-gpu-mem-limit": ("cuda_gpu_mem_limit", "CUDA: arena bytes per session (0: none)"),
        "--cuda-arena-extend-strategy": ("cuda_arena_extend_strategy",
                                         "CUDA: kNextPowerOfTwo or kSameAsRequested"),
        "--cuda-do-copy-in-default-stream": ("cuda_do_copy_in_default_stream",
                                             "CUDA: copies on the compute stream (true/false)"),
        "--cuda-use-tf32": ("cuda_use_tf32", "CUDA: allow TF32 for fp32 maths (true/false)"),
        "--cuda-enable-cuda-graph": ("cuda_enable_cuda_graph",
                                     "CUDA: replay a CUDA graph per warmed-up shape (true/false)"),
        "--max-message-bytes": ("max_message_bytes", "largest gRPC message"),
        "--max-load-file-bytes": ("max_load_file_bytes", "model files per load request, bytes"),
        "--max-connection-age": ("max_connection_age_s", "close client connections after s"),
        "--shutdown-grace": ("shutdown_grace_s", "seconds in-flight calls get on SIGTERM"),
        "--max-image-pixels": ("max_image_pixels", "task API: largest image, width x height"),
        "--max-images-per-request": ("max_images_per_request", "task API: images per request"),
        "--max-generate-count": ("max_generate_count", "task API: images per Generate"),
        "--sr-tile-size": ("sr_tile_size", "task API: super-resolution tile edge, pixels"),
        "--sr-tile-overlap": ("sr_tile_overlap", "task API: context around each tile, pixels"),
        "--tls-cert": ("tls_cert_file", "PEM server certificate: serve over TLS"),
        "--tls-key": ("tls_key_file", "PEM private key of the server certificate"),
        "--tls-client-ca": ("tls_client_ca_file", "PEM CA: require client certificates (mTLS)"),
        "--api-keys-file": ("api_keys_file", "file of inference API keys, one per line"),
        "--admin-keys-file": ("admin_keys_file", "file of admin API keys, one per line"),
        "--event-loop": ("event_loop", "auto, asyncio or uvloop"),
        "--malloc-reuse-bytes": ("malloc_reuse_bytes", "heap-reuse bound, bytes (0: glibc's)"),
        "--log-format": ("log_format", "text or json"),
        "--log-level": ("log_level", "DEBUG, INFO, WARNING or ERROR"),
    }
    for flag, (dest, help_text) in flags.items():
        serve.add_argument(flag, dest=dest, default=None, help=help_text)
    serve.add_argument(
        "--model", dest="startup_models", action="append", default=None,
        help="load only this model at start (repeatable; default: all)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "serve":
        _parser().print_help()
        return 2
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        settings = ServerSettings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            print(f"serve: setting '{err['loc'][0]}': {err['msg']} (got {err['input']!r})",
                  file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    _tune_malloc(settings.malloc_reuse_bytes)

    from service.app import InferenceServer  # imports onnxruntime: after argument errors

    async def run() -> None:
        await InferenceServer(settings).run_until_signal()

    with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
        runner.run(run())
    return 0


def _tune_malloc(reuse_bytes: int) -> None:
    """Keep blocks up to `reuse_bytes` in glibc's heap, and freed memory up to 4 times that, so
    that per-request tensor buffers are reused instead of faulted in page by page each time."""
    if not reuse_bytes or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, reuse_bytes)
    mallopt(m_trim_threshold, 4 * reuse_bytes)


def _loop_factory(choice: str):
    """uvloop when asked for, or on auto when it is installed (it is a Linux/macOS extra)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("serve: event_loop 'uvloop' requested but uvloop is not installed")
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
