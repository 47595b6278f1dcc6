"""Command line: `onnx-serve [flags]`, the same as `python -m service [flags]` (the word `serve`
before the flags is accepted too, as in `python -m service serve --models models`).

Every flag comes from a field of ServerSettings, with the field's docstring as its help; each falls
back to its ONNXSERVE_* environment variable, then to the default. Process-wide switches (the
allocator, Pillow's own pixel limit, Prometheus' *_created series, the garbage collector) are set
here, at the entry point, so that building a server in a test changes nothing else in the process.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import logging
import sys
import typing

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from service.errors import StartupError
from service.logs import configure_logging
from service.settings import ENV_PREFIX, ServerSettings

log = logging.getLogger(__name__)
PROG = "onnx-serve"


class _OneLineParser(argparse.ArgumentParser):
    """A command-line mistake is one line on stderr, not the usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def flag_of(name: str, field: FieldInfo) -> str:
    """The field's flag: declared with settings.flag(), else --<name-with-dashes>; "" for none."""
    extra = field.json_schema_extra or {}
    return extra.get("flag", "--" + name.replace("_", "-"))


def default_text(field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=True)
    if default is None or default == []:
        return "none"
    return str(default).lower() if isinstance(default, bool) else str(default)


def _choices(annotation) -> list[str]:
    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return []


def settings_table() -> str:
    """The README's table of settings, written from the settings model (`make docs`)."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for name, field in ServerSettings.model_fields.items():
        flag = flag_of(name, field)
        meaning = " ".join((field.description or "").split())
        choices = _choices(field.annotation)
        if choices:
            meaning += f" One of: {', '.join(f'`{c}`' for c in choices)}."
        shown = f"`{flag} NAME`" if name == "startup_models" else (f"`{flag}`" if flag else "")
        rows.append(f"| {shown} | `{ENV_PREFIX}{name.upper()}` | `{default_text(field)}` "
                    f"| {meaning.replace('|', '/')} |")
    return "\n".join(rows)


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=PROG, description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in ServerSettings.model_fields.items():
        flag = flag_of(name, field)
        if not flag:
            continue
        choices = _choices(field.annotation)
        help_text = " ".join((field.description or "").split())
        if choices:
            help_text += f" One of: {', '.join(choices)}."
        help_text += f" [env {ENV_PREFIX}{name.upper()}; default {default_text(field)}]"
        kwargs: dict = {"dest": name, "default": None, "help": help_text.replace("%", "%%")}
        if name == "startup_models":
            kwargs.update(action="append", metavar="NAME")
        elif field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = name.upper()
        parser.add_argument(flag, **kwargs)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = ServerSettings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            where = f"setting '{err['loc'][0]}'" if err["loc"] else "settings"
            got = f" (got {err['input']!r})" if err["loc"] else ""
            print(f"serve: {where}: {err['msg']}{got}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    _tune_process(settings.malloc_reuse_bytes)

    from service.app import InferenceServer  # imports onnxruntime: after argument errors

    async def run() -> None:
        server = InferenceServer(settings)
        await server.start()
        _freeze_startup_objects()
        await server.serve_until_signal()

    try:
        loop_factory = _loop_factory(settings.event_loop)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run())
    except StartupError as exc:
        log.debug("start-up failed", exc_info=exc)  # the cause, with --log-level DEBUG
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _tune_process(malloc_reuse_bytes: int) -> None:
    import prometheus_client
    from PIL import Image

    prometheus_client.disable_created_metrics()  # *_created series only add scrape weight
    # Our own, configurable limit (max_image_pixels) is checked from each image's header;
    # Pillow's global bomb check would answer with its own message and limit instead.
    Image.MAX_IMAGE_PIXELS = None
    _tune_malloc(malloc_reuse_bytes)


def _freeze_startup_objects() -> None:
    """Everything built at start (modules, descriptors, sessions) lives as long as the process:
    move it out of the collector's generations so full collections under load skip it (reference
    counting still frees what is dropped later, e.g. on unload)."""
    gc.collect()
    gc.freeze()


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


def _loop_factory(choice: str) -> typing.Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for, or on auto when it is installed (it is a Linux/macOS extra)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise StartupError("event_loop 'uvloop' requested but uvloop is not installed")
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
