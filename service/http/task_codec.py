"""REST task requests to the task core's inputs, and the answer a client accepts.

Images come as the raw body (`Content-Type: image/png` or `image/jpeg`), as the file parts of a
`multipart/form-data` body in order, or in a JSON body as `{"png": base64}`, `{"jpeg": base64}` or
`{"raw": {"pixels": base64, "height", "width", "channels"}}`. Every JSON field and query parameter
is checked for its type here, naming it; ranges and sizes are the task core's to check, so REST and
gRPC refuse the same values with the same messages.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import InvalidArgument
from service.http.framework import JSON, Request
from service.tasks.images import EncodedImage, ImageData, RawPixels

PNG = "image/png"
IMAGE_TYPES = (PNG, "image/jpeg")
MULTIPART = "multipart/form-data"
MAX_SEED = 2**64 - 1  # the gRPC API's uint64
MAX_TIMEOUT_MS = 2**31 - 1  # about 24 days
_RAW_FIELDS = ("pixels", "height", "width", "channels")
# python-multipart logs each malformed body as a warning before raising: the client gets the
# message in its 400, the server log needs no line per client mistake.
logging.getLogger("python_multipart").setLevel(logging.ERROR)


# -- query parameters --------------------------------------------------------------------------

def check_query(request: Request, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) if allowed else "none"
        raise InvalidArgument(f"query parameter '{unknown[0]}': unknown; this route takes "
                              f"{expected}")


def query_integer(request: Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"{name}: expected an integer, got {text!r}") from None


def deadline(request: Request) -> float | None:
    """`?timeout_ms=` as a deadline on the monotonic clock, like a gRPC call's timeout."""
    timeout = query_integer(request, "timeout_ms")
    if timeout is None:
        return None
    return time.monotonic() + integer(timeout, "timeout_ms", 1, MAX_TIMEOUT_MS) / 1000


# -- JSON fields ---------------------------------------------------------------------------------

def _kind(value) -> str:
    if isinstance(value, dict):
        return f"an object with {sorted(value)}" if value else "an empty object"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", type(None): "null"}[type(value)]


def json_body(request: Request, allowed: tuple[str, ...]) -> dict:
    """The JSON object of a body that must be JSON (an empty body is `{}`), without unknown
    fields."""
    kind, _ = parse_options_header(request.headers.get("content-type"))
    if request.body and kind.decode("latin-1") != JSON:
        raise InvalidArgument(f"header 'Content-Type': expected {JSON}, got "
                              f"{request.headers.get('content-type')!r}")
    body = request.json()
    check_fields(body, allowed, "the request body")
    return body


def check_fields(obj: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise InvalidArgument(f"{where}: unknown field '{unknown[0]}'; expected "
                              f"{', '.join(allowed)}")


def integer(value, field: str, low: int | None = None, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{field}: expected an integer, got {_kind(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        expected = f">= {low}" if high is None else f"{low}..{high}"
        raise InvalidArgument(f"{field}: expected {expected}, got {value}")
    return value


def optional_integer(obj: dict, field: str, low: int | None = None,
                     high: int | None = None) -> int | None:
    value = obj.get(field)
    return None if value is None else integer(value, field, low, high)


def vector(value, field: str) -> list[float]:
    if not isinstance(value, list):
        raise InvalidArgument(f"{field}: expected a list of numbers, got {_kind(value)}")
    for i, number in enumerate(value):
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            raise InvalidArgument(f"{field}[{i}]: expected a number, got {_kind(number)}")
    return value


def vectors(value, field: str) -> list[list[float]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{field}: expected a list of lists of numbers, got {_kind(value)}")
    return [vector(v, f"{field}[{i}]") for i, v in enumerate(value)]


def interpolation(value) -> tuple[list[float], list[float], int] | None:
    """`{"start": [..], "end": [..], "steps": N}`; an absent endpoint is drawn from the seed."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgument(f"interpolation: expected an object, got {_kind(value)}")
    check_fields(value, ("start", "end", "steps"), "interpolation")
    return (vector(value.get("start") or [], "interpolation.start"),
            vector(value.get("end") or [], "interpolation.end"),
            integer(value.get("steps", 0), "interpolation.steps"))


# -- images ----------------------------------------------------------------------------------------

def images(request: Request, field: str, json_fields: tuple[str, ...] = ()) -> tuple[
        list[ImageData], dict]:
    """The request's images in order, and the other fields of a JSON body (`json_fields`)."""
    header = request.headers.get("content-type")
    kind, options = parse_options_header(header)
    kind = kind.decode("latin-1")
    if kind in IMAGE_TYPES:
        return [EncodedImage(request.body)], {}
    if kind == MULTIPART:
        return _multipart(request.body, options.get(b"boundary"), field), {}
    if kind == JSON:
        body = request.json()
        check_fields(body, (field, *json_fields), "the request body")
        listed = body.pop(field, None)
        if not isinstance(listed, list):
            raise InvalidArgument(f"{field}: required, a list of images, got {_kind(listed)}")
        return [_json_image(image, f"{field}[{i}]") for i, image in enumerate(listed)], body
    if not header:
        raise InvalidArgument(f"header 'Content-Type': required; send {', '.join(IMAGE_TYPES)}, "
                              f"{MULTIPART} or {JSON}")
    raise InvalidArgument(f"header 'Content-Type': expected {', '.join(IMAGE_TYPES)}, "
                          f"{MULTIPART} or {JSON}, got {header!r} (curl --data-binary sends "
                          "application/x-www-form-urlencoded unless told -H 'Content-Type: "
                          "image/png')")


def one_image(request: Request) -> ImageData:
    """The one image of a request: a raw body, a multipart body of one part, or JSON
    `{"image": {...}}`."""
    kind, _ = parse_options_header(request.headers.get("content-type"))
    if kind.decode("latin-1") == JSON:
        body = request.json()
        check_fields(body, ("image",), "the request body")
        if "image" not in body:
            raise InvalidArgument("image: an image is required")
        return _json_image(body["image"], "image")
    found, _ = images(request, "image")
    if len(found) != 1:
        raise InvalidArgument(f"image: expected one image, got {len(found)} multipart parts")
    return found[0]


def _base64(text, where: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidArgument(f"{where}: expected base64 text, got {_kind(text)}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{where}: not valid base64") from None


def _json_image(value, where: str) -> ImageData:
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in (
            "png", "jpeg", "raw"):
        raise InvalidArgument(f"{where}: expected {{\"png\": base64}}, {{\"jpeg\": base64}} or "
                              f"{{\"raw\": {{{', '.join(_RAW_FIELDS)}}}}}, got {_kind(value)}")
    key, content = next(iter(value.items()))
    if key != "raw":
        return EncodedImage(_base64(content, f"{where}.{key}"))
    if not isinstance(content, dict):
        raise InvalidArgument(f"{where}.raw: expected an object, got {_kind(content)}")
    check_fields(content, _RAW_FIELDS, f"{where}.raw")
    missing = [name for name in _RAW_FIELDS if name not in content]
    if missing:
        raise InvalidArgument(f"{where}.raw.{missing[0]}: required")
    return RawPixels(_base64(content["pixels"], f"{where}.raw.pixels"),
                     *(integer(content[name], f"{where}.raw.{name}", 0)
                       for name in ("height", "width", "channels")))


class _Part:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.data: list[bytes] = []
        self.header_name = b""
        self.header_value = b""


def _multipart(body: bytes, boundary: bytes | None, field: str) -> list[EncodedImage]:
    if not boundary:
        raise InvalidArgument(f"header 'Content-Type': {MULTIPART} needs a boundary parameter")
    parts: list[_Part] = []
    ended = []

    def header_end() -> None:
        part = parts[-1]
        part.headers[part.header_name.decode("latin-1").lower()] = \
            part.header_value.decode("latin-1")
        part.header_name = part.header_value = b""

    def add(attribute: str):
        def callback(data: bytes, start: int, end: int) -> None:
            part = parts[-1]
            setattr(part, attribute, getattr(part, attribute) + data[start:end])
        return callback

    try:
        MultipartParser(boundary, {
            "on_part_begin": lambda: parts.append(_Part()),
            "on_header_field": add("header_name"),
            "on_header_value": add("header_value"),
            "on_header_end": header_end,
            "on_part_data": lambda data, start, end: parts[-1].data.append(data[start:end]),
            "on_end": lambda: ended.append(True),
        }).write(body)
    except FormParserError as exc:
        raise InvalidArgument(f"the {MULTIPART} body is malformed: {exc}") from None
    if not ended:
        raise InvalidArgument(f"the {MULTIPART} body is truncated: its closing boundary is "
                              "missing")
    found = []
    for i, part in enumerate(parts):
        _, disposition = parse_options_header(part.headers.get("content-disposition"))
        if b"filename" not in disposition and "content-type" not in part.headers:
            name = disposition.get(b"name", b"").decode("latin-1")
            raise InvalidArgument(
                f"{field}[{i}]: multipart part '{name}' is a form field, not a file; send "
                f"images as files (curl -F '{field}=@photo.png') and parameters in the query")
        found.append(EncodedImage(b"".join(part.data)))
    return found


# -- answers ----------------------------------------------------------------------------------------

def preferred(accept: str | None, offered: tuple[str, ...]) -> str:
    """The offered media type the Accept header ranks highest (q-values, exact types before
    `type/*` before `*/*`); the first offered on a tie or without the header."""
    if not accept:
        return offered[0]
    ranges = []
    for item in accept.split(","):
        kind, params = parse_options_header(item)
        try:
            quality = float(params.get(b"q", b"1"))
        except ValueError:
            quality = 0.0
        ranges.append((kind.decode("latin-1"), quality))

    def quality_of(media: str) -> float:
        family = media.split("/")[0] + "/*"
        for pattern in (media, family, "*/*"):
            matches = [q for kind, q in ranges if kind == pattern]
            if matches:
                return max(matches)
        return 0.0

    best = max(offered, key=lambda media: (quality_of(media), -offered.index(media)))
    if quality_of(best) <= 0:
        raise InvalidArgument(f"header 'Accept': this route answers {' or '.join(offered)}, "
                              f"got {accept!r}")
    return best
