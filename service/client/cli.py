"""Command line for the task API: `python -m service.client` (installed as `onnx-client`).

    onnx-client classify shoe.png bag.jpg --model fashion_cnn --top-k 3
    onnx-client generate --model cdcgan --count 16 --class 7 --seed 1 --out samples/
    onnx-client upscale photo.png photo_x3.png --model espcn_x3
    onnx-client reconstruct shoe.png --model conv_autoencoder
    onnx-client models
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from service.client.client import ChannelOptions, TaskClient, to_pil


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnx-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default="localhost:8001", help="host:port of the service")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline per call, seconds")
    parser.add_argument("--tls-ca", help="CA certificate (PEM) to verify the server: enables TLS")
    parser.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--tls-key", help="client private key (PEM) for mutual TLS")
    parser.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                        help="metadata sent with every call, e.g. 'authorization=Bearer KEY'")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    classify = sub.add_parser("classify", help="top-k labels for image files")
    classify.add_argument("files", nargs="+", type=Path)
    classify.add_argument("--model", required=True)
    classify.add_argument("--top-k", type=int, default=1)

    generate = sub.add_parser("generate", help="images from a generator into a directory")
    generate.add_argument("--model", required=True)
    generate.add_argument("--count", type=int, default=1)
    generate.add_argument("--class", dest="class_label", type=int)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--interpolate", type=int, metavar="STEPS",
                          help="walk between two latents drawn from the seed in STEPS images")
    generate.add_argument("--out", type=Path, required=True)

    upscale = sub.add_parser("upscale", help="super-resolve one image file")
    upscale.add_argument("input", type=Path)
    upscale.add_argument("output", type=Path)
    upscale.add_argument("--model", required=True)

    reconstruct = sub.add_parser("reconstruct", help="autoencoder round trip and anomaly score")
    reconstruct.add_argument("files", nargs="+", type=Path)
    reconstruct.add_argument("--model", required=True)
    reconstruct.add_argument("--out", type=Path, help="directory for the reconstructions")

    sub.add_parser("models", help="list the served models")
    for command in (classify, generate, upscale, reconstruct):
        command.add_argument("--version", default="", help="model version (default: latest)")
    return parser


def _progress(enabled: bool, label: str):
    def show(done: int, total: int) -> None:
        print(f"\r{label}: {100 * done // max(total, 1):3d}% ({done}/{total})", end="",
              file=sys.stderr, flush=True)
        if done >= total:
            print(file=sys.stderr)

    return show if enabled else None


def run(args: argparse.Namespace) -> int:
    metadata = []
    for header in args.header:
        key, sep, value = header.partition("=")
        if not sep:
            raise SystemExit(f"--header must be KEY=VALUE, got {header!r}")
        metadata.append((key.strip().lower(), value))
    options = ChannelOptions(tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                             metadata=tuple(metadata))
    show = not args.quiet
    with TaskClient(args.server, timeout=args.timeout, options=options) as client:
        if args.command == "classify":
            response = client.classify(args.files, args.model, args.top_k, args.version)
            for path, result in zip(args.files, response.results):
                labels = ", ".join(f"{label.name} {label.probability:.3f}" for label in result.labels)
                print(f"{path}\t{labels}\t[{result.conversion}]")
        elif args.command == "generate":
            interpolate = (None, None, args.interpolate) if args.interpolate else None
            response = client.generate(args.model, args.count, args.seed, args.class_label,
                                       interpolate=interpolate, version=args.version)
            args.out.mkdir(parents=True, exist_ok=True)
            report = _progress(show, "saving")
            for i, image in enumerate(response.images):
                to_pil(image).save(args.out / f"{args.model}_{response.seed}_{i:04d}.png")
                if report:
                    report(i + 1, len(response.images))
            print(f"{len(response.images)} images in {args.out} (seed {response.seed})")
        elif args.command == "upscale":
            image = client.upscale(args.input, args.model, args.version,
                                   progress=_progress(show, "upscaling"))
            image.save(args.output)
            print(f"{args.output}: {image.width}x{image.height}")
        elif args.command == "reconstruct":
            response = client.reconstruct(args.files, args.model, args.version)
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
            for path, image, error in zip(args.files, response.images, response.errors):
                print(f"{path}\terror {error:.6f}")
                if args.out:
                    to_pil(image).save(args.out / f"{path.stem}_reconstructed.png")
        elif args.command == "models":
            for info in client.list_models().models:
                print(json.dumps({
                    "name": info.name, "versions": list(info.versions), "task": info.task_kind,
                    "provider": info.execution_provider, "state": info.state,
                }))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
