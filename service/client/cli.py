"""Command line for the task API: `onnx-client` (or `python -m service.client`).

    onnx-client classify shoe.png bag.jpg --model fashion_cnn --top-k 3
    onnx-client generate --model cdcgan --count 16 --class 7 --seed 1 --out samples/
    onnx-client upscale photo.png photo_x2.png --model espcn_x2
    onnx-client encode shoe.png bag.png --model conv_encoder > latents.jsonl
    onnx-client decode latents.jsonl --model conv_decoder --out decoded/
    onnx-client reconstruct shoe.png --model conv_autoencoder --out rec/
    onnx-client models
    onnx-client describe espcn_x2

The connection options (--server, --timeout, --tls-*, --header, --quiet) go before or after the
command. `onnx-client COMMAND --help` explains each command's options.

Exit status: 0 done; 1 the server refused the call, or a result could not be written;
2 a mistake on the command line or in an input file, found before anything was sent.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from pathlib import Path

# gRPC, NumPy and Pillow are imported where they are used: `--help` and a mistake on the command
# line are answered without them, in a fifth of the time (see service/client/__init__.py).

SERVER_ENV = "ONNXSERVE_SERVER"
DEFAULT_PORT = 8001
DEFAULT_SERVER = f"localhost:{DEFAULT_PORT}"
DEFAULT_TIMEOUT_S = 120.0
UINT32_MAX = 2**32 - 1
_ADDRESS = re.compile(r"(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\[\]]+)(?::(?P<port>\d+))?")


class _Parser(argparse.ArgumentParser):
    """A mistake is one line on stderr (exit 2); the usage is one `--help` away."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default, except the empty ones (None, False, ''): what leaving those
    out means is written in the option's own help."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == "":
            return action.help
        return super()._get_help_string(action)


def _server_address(text: str) -> str:
    """HOST[:PORT] with our port 8001 when PORT is left out (gRPC itself would take 443)."""
    if "/" in text:  # a gRPC URI such as unix:///run/onnx-serve.sock: used as given
        return text
    match = _ADDRESS.fullmatch(text)
    if not match or not 0 < int(match["port"] or DEFAULT_PORT) < 65536:
        raise argparse.ArgumentTypeError(
            f"expected HOST[:PORT], e.g. localhost:8001 or [::1]:8001, got {text!r}")
    return f"{match['host']}:{match['port'] or DEFAULT_PORT}"


def _integer(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected an integer from {low} to {high}, got {text!r}")
        return value

    return parse


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip().lower(), value


def _input_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, expected a file")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file {text!r}")
    return path


def _latents_source(text: str) -> Path | None:
    """'-' is stdin (None)."""
    return None if text == "-" else _input_file(text)


def _output_dir(text: str) -> Path:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, expected a directory")
    return path


def _output_image(text: str) -> Path:
    """A path to write one image to, its format named by its extension, in an existing folder:
    checked before the server does the work."""
    from PIL import Image

    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, expected an image file name")
    if not path.suffix:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no extension to name the image format, e.g. {path.name}.png")
    if Image.registered_extensions().get(path.suffix.lower()) not in Image.SAVE:
        raise argparse.ArgumentTypeError(
            f"{text!r}: Pillow writes no {path.suffix!r} images; use e.g. .png, .jpg or .webp")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: no directory {str(path.parent)!r}")
    return path


def _add_connection_options(parser: argparse.ArgumentParser, header_dest: str,
                            server: str) -> None:
    """On the main parser and on every command, so that they work on either side of the command.
    Their defaults are SUPPRESS, and set once in the namespace given to `parse_args`: a command's
    parser would otherwise overwrite a value given before the command with its own default.
    Headers given after the command go to their own list, so that none given before are lost."""
    source = f"from ${SERVER_ENV}" if os.environ.get(SERVER_ENV) else f"or set ${SERVER_ENV}"
    group = parser.add_argument_group("connection (before or after the command)")
    option = functools.partial(group.add_argument, default=argparse.SUPPRESS)
    option("--server", type=_server_address, metavar="HOST[:PORT]",
           help=f"gRPC address of the service, port {DEFAULT_PORT} when left out "
                f"(default: {server}, {source})")
    option("--timeout", type=_positive_seconds, metavar="SECONDS",
           help=f"deadline of each call (default: {DEFAULT_TIMEOUT_S:g})")
    option("--tls-ca", type=_input_file, metavar="PEM",
           help="CA certificate to verify the server with; turns TLS on (default: plain text)")
    option("--tls-cert", type=_input_file, metavar="PEM",
           help="client certificate for mutual TLS, with --tls-key (default: none)")
    option("--tls-key", type=_input_file, metavar="PEM",
           help="private key of --tls-cert (default: none)")
    option("--header", dest=header_dest, type=_header, action="append", metavar="KEY=VALUE",
           help="metadata sent with every call, repeatable, e.g. 'authorization=Bearer KEY' "
                "(default: none)")
    option("--quiet", action="store_true",
           help="no progress bars, which are drawn only when stderr is a terminal "
                "(default: off)")


def _default_server() -> str:
    environment = os.environ.get(SERVER_ENV)
    if not environment:
        return DEFAULT_SERVER
    try:
        return _server_address(environment)
    except argparse.ArgumentTypeError as exc:
        print(f"onnx-client: error: ${SERVER_ENV}: {exc}", file=sys.stderr)
        sys.exit(2)


def _connection_defaults() -> argparse.Namespace:
    return argparse.Namespace(server=_default_server(), timeout=DEFAULT_TIMEOUT_S, tls_ca=None,
                              tls_cert=None, tls_key=None, header=[], command_headers=[],
                              quiet=False)


def _parser(server: str) -> argparse.ArgumentParser:
    parser = _Parser(prog="onnx-client", description=__doc__, formatter_class=_HelpFormatter)
    _add_connection_options(parser, "header", server)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text,
                                formatter_class=_HelpFormatter)
        _add_connection_options(parser, "command_headers", server)
        return parser

    def model_options(parser: argparse.ArgumentParser, kind: str) -> None:
        parser.add_argument("--model", required=True, help=f"name of a served {kind} model")
        parser.add_argument("--version", default="",
                            help="model version (default: the highest loaded one)")

    images_help = "image files: PNG, JPEG or anything else Pillow reads"

    classify = command("classify", "print the top-k labels of each image file")
    classify.add_argument("files", nargs="+", type=_input_file, metavar="FILE", help=images_help)
    model_options(classify, "classifier")
    classify.add_argument("--top-k", type=_integer(1, UINT32_MAX), default=1, metavar="K",
                          help="labels per image, best first")

    generate = command("generate", "write images from a generator into a directory, "
                                   "named MODEL_SEED_NNNN.png")
    model_options(generate, "generator or conditional generator")
    generate.add_argument("--count", type=_integer(1, UINT32_MAX), default=1,
                          help="images to generate (ignored with --interpolate)")
    generate.add_argument("--class", dest="class_label", type=int, metavar="LABEL",
                          help="class index: required by conditional generators, refused by "
                               "the others (default: none)")
    generate.add_argument("--seed", type=_integer(0, 2**64 - 1),
                          help="makes the images reproducible (default: the server picks one "
                               "and it is printed)")
    generate.add_argument("--interpolate", type=_integer(2, UINT32_MAX), metavar="STEPS",
                          help="instead of --count random images, STEPS images on the straight "
                               "line between two latents drawn from the seed (default: off)")
    generate.add_argument("--out", type=_output_dir, required=True, metavar="DIR",
                          help="directory for the images, created when missing")

    upscale = command("upscale", "super-resolve one image file (streamed, so any size that "
                                 "the server allows)")
    upscale.add_argument("input", type=_input_file, metavar="INPUT", help=images_help)
    upscale.add_argument("output", type=_output_image, metavar="OUTPUT",
                         help="image file to write, its format named by its extension "
                              "(.png, .jpg, ...), in an existing directory")
    model_options(upscale, "super-resolution")

    encode = command("encode", "print the latent vector of each image file, one JSON line "
                               'each: {"file": ..., "latent": [...]}')
    encode.add_argument("files", nargs="+", type=_input_file, metavar="FILE", help=images_help)
    model_options(encode, "encoder")

    decode = command("decode", "write the image of each latent vector into a directory, "
                               "named MODEL_NNNN.png")
    decode.add_argument("latents", nargs="?", type=_latents_source, default="-", metavar="FILE",
                        help="JSON lines, each a list of numbers or an object with a 'latent' "
                             "list (what `encode` prints); '-' reads stdin")
    model_options(decode, "decoder or generator")
    decode.add_argument("--out", type=_output_dir, required=True, metavar="DIR",
                        help="directory for the images, created when missing")

    reconstruct = command("reconstruct", "autoencoder round trip: print each image's "
                                         "reconstruction error, the anomaly score")
    reconstruct.add_argument("files", nargs="+", type=_input_file, metavar="FILE",
                             help=images_help)
    model_options(reconstruct, "autoencoder")
    reconstruct.add_argument("--out", type=_output_dir, metavar="DIR",
                             help="directory for the reconstructions, NAME_reconstructed.png, "
                                  "created when missing (default: not written)")

    command("models", "list the served models, one JSON line each")

    describe = command("describe", "print one model's inputs, outputs and task metadata as JSON")
    describe.add_argument("model", metavar="MODEL", help="model name")
    describe.add_argument("--version", default="",
                          help="model version (default: the highest loaded one)")
    return parser


def _progress(args: argparse.Namespace, label: str):
    """A bar redrawn in place on a terminal; nothing in a log or with --quiet."""
    if args.quiet or not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        print(f"\r{label}: {100 * done // max(total, 1):3d}% ({done}/{total})", end="",
              file=sys.stderr, flush=True)
        if done >= total:
            print(file=sys.stderr)

    return show


class _InputError(Exception):
    """A mistake in an input file, found before anything is sent (exit 2)."""


def _numbers(value) -> list[float] | None:
    """A non-empty JSON list of numbers as floats, else None."""
    if not isinstance(value, list) or not value or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        return None
    try:
        return [float(v) for v in value]
    except OverflowError:  # an integer beyond any float
        return None


def _read_latents(source: Path | None) -> list[list[float]]:
    """JSON lines, each a list of numbers or an object with a 'latent' list."""
    name = "stdin" if source is None else str(source)
    data = sys.stdin.buffer.read() if source is None else source.read_bytes()
    text = data.decode(errors="replace")  # not UTF-8: the line is then reported as not JSON
    latents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _InputError(f"{name} line {number}: not JSON ({exc.msg})") from None
        vector = _numbers(value.get("latent") if isinstance(value, dict) else value)
        if vector is None:
            raise _InputError(f"{name} line {number}: expected a list of numbers or an object "
                              f"with a 'latent' list, got {line.strip()[:60]!r}")
        latents.append(vector)
    if not latents:
        raise _InputError(f"{name}: no latent vectors")
    return latents


def run(args: argparse.Namespace) -> int:
    from service.client.client import ChannelOptions, TaskClient

    options = ChannelOptions(tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                             metadata=tuple(args.header + args.command_headers))
    latents = _read_latents(args.latents) if args.command == "decode" else None
    if getattr(args, "out", None):
        args.out.mkdir(parents=True, exist_ok=True)
    with TaskClient(args.server, timeout=args.timeout, options=options) as client:
        if args.command == "classify":
            response = client.classify(args.files, args.model, args.top_k, args.version)
            for path, result in zip(args.files, response.results):
                labels = ", ".join(f"{label.name} {label.probability:.3f}"
                                   for label in result.labels)
                print(f"{path}\t{labels}\t[{result.conversion}]")
        elif args.command == "generate":
            interpolate = (None, None, args.interpolate) if args.interpolate else None
            response = client.generate(args.model, args.count, args.seed, args.class_label,
                                       interpolate=interpolate, version=args.version)
            report = _progress(args, "saving")
            for i, image in enumerate(response.images):
                _write_png(image, args.out / f"{args.model}_{response.seed}_{i:04d}.png")
                if report:
                    report(i + 1, len(response.images))
            print(f"{len(response.images)} images in {args.out} (seed {response.seed})")
        elif args.command == "upscale":
            image = client.upscale(args.input, args.model, args.version,
                                   progress=_progress(args, "upscaling"))
            image.save(args.output)
            print(f"{args.output}: {image.width}x{image.height}")
        elif args.command == "encode":
            response = client.encode(args.files, args.model, args.version)
            for path, latent in zip(args.files, response.latents):
                print(json.dumps({"file": str(path), "latent": list(latent.values)}))
        elif args.command == "decode":
            response = client.decode(latents, args.model, args.version)
            for i, image in enumerate(response.images):
                _write_png(image, args.out / f"{args.model}_{i:04d}.png")
            print(f"{len(response.images)} images in {args.out}")
        elif args.command == "reconstruct":
            response = client.reconstruct(args.files, args.model, args.version)
            for path, image, error in zip(args.files, response.images, response.errors):
                print(f"{path}\terror {error:.6f}")
                if args.out:
                    _write_png(image, args.out / f"{path.stem}_reconstructed.png")
        elif args.command == "models":
            for info in client.list_models().models:
                print(json.dumps(_summary(info)))
        elif args.command == "describe":
            print(json.dumps(_description(client.describe_model(args.model, args.version))))
    return 0


def _write_png(image, path: Path) -> None:
    """The PNG bytes as the server sent them (every request here asks for PNG)."""
    from service.client.client import to_pil

    if image.WhichOneof("data") == "encoded":
        path.write_bytes(image.encoded)
    else:
        to_pil(image).save(path)


def _summary(info) -> dict:
    return {"name": info.name, "versions": list(info.versions), "task": info.task_kind,
            "provider": info.execution_provider, "state": info.state}


def _tensors(specs) -> list[dict]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in specs]


def _description(info) -> dict:
    return {
        **_summary(info), "max_batch_size": info.max_batch_size, "inputs": _tensors(info.inputs),
        "outputs": _tensors(info.outputs), "labels": list(info.labels),
        "num_classes": info.num_classes, "latent_size": info.latent_size,
        "upscale_factor": info.upscale_factor, "color_mode": info.color_mode,
    }


def _rpc_error(exc, server: str) -> str:
    code = exc.code().name
    # Both can mean that nothing answers at the address, so the line says which one was tried.
    where = f" at {server}" if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else ""
    return f"onnx-client: {code}{where}: {exc.details()}"


def main(argv: list[str] | None = None) -> int:
    defaults = _connection_defaults()
    parser = _parser(defaults.server)
    args = parser.parse_args(argv, defaults)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    import grpc

    try:
        status = run(args)
        # Flushed here, not at exit, so that a closed pipe is seen inside this `try`.
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # What Python's documentation recommends for `onnx-client models | head -2`: point
        # stdout at devnull so that the flush at exit does not fail again, and exit quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except _InputError as exc:
        print(f"onnx-client: error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(_rpc_error(exc, args.server), file=sys.stderr)
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"onnx-client: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
