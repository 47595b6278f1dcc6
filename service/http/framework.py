"""A small ASGI layer for the REST front end: routes, requests, responses, and the rules every call
shares with gRPC, applied here in one place: the drain, API keys, the body-size limit, request and
response compression, the error map and the request metrics.

It is written for the infer path: a route lookup is one dict hit or a handful of precompiled
regexes, a request is read into one buffer, and a large response made of several parts (a JSON
header and raw tensors) is sent part by part under one Content-Length, so no part is copied to join
them; a small one is joined, one socket write instead of one per part.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import orjson

from service.auth import ApiKeys
from service.core.inference import DRAINING_MESSAGE
from service.errors import (
    DeadlineExceeded, InvalidArgument, PayloadTooLarge, ServiceError, Unavailable,
)
from service.http.status import RETRY_AFTER_S, error_body, status_of
from service.metrics import CallRecorder, Metrics

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error; the server log has details"
CARRIER = "header 'Authorization"
JSON = "application/json"
Body = bytes | list[bytes] | AsyncIterator[bytes]
# uvicorn writes each body message to the socket at once (a send call, a TCP segment): a small
# body's parts cost less joined, a large body's less sent as they are (no copy).
JOIN_UP_TO_BYTES = 64 * 1024


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes
    params: dict[str, str]   # from the route's {placeholders}
    model: str = ""          # the model version the call resolved to, for the metric labels
    version: str = ""

    def note(self, model: str, version: str) -> None:
        self.model, self.version = model, version

    def json(self) -> dict:
        """The body as a JSON object; an empty body is an empty object."""
        if not self.body:
            return {}
        try:
            value = orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise InvalidArgument(
                f"the request body must be a JSON object, got {type(value).__name__}")
        return value


@dataclass(slots=True)
class Response:
    status: int = 200
    body: Body = b""
    content_type: str = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    compressible: bool = False  # compressed when the client accepts gzip or deflate


def json_response(value, status: int = 200, compressible: bool = False) -> Response:
    return Response(status, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY),
                    compressible=compressible)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    call: str              # the metric label, the same name as the gRPC call where there is one
    admin: bool = False    # needs an admin key
    health: bool = False   # answers during the drain, public unless public_health is off, not counted
    public: bool = False   # never needs a key (static pages; they call keyed routes themselves)
    cancellable: bool = False  # a client that disconnects cancels the call (and its queued work)


class ClientGone(Exception):
    """The client disconnected before its answer: there is nobody to send it to."""


class NoRoute(Exception):
    def __init__(self, allowed: list[str]):
        self.allowed = allowed


class Router:
    def __init__(self) -> None:
        self._static: dict[str, dict[str, Route]] = {}
        self._dynamic: list[tuple[re.Pattern, dict[str, Route]]] = []

    def add(self, method: str, template: str, handler: Handler, call: str, **flags) -> None:
        route = Route(method, template, handler, call, **flags)
        if "{" not in template:
            self._static.setdefault(template, {})[method] = route
            return
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")
        for known, methods in self._dynamic:
            if known.pattern == regex.pattern:
                methods[method] = route
                return
        self._dynamic.append((regex, {method: route}))

    def routes(self) -> list[Route]:
        return [r for methods in self._static.values() for r in methods.values()] + \
               [r for _, methods in self._dynamic for r in methods.values()]

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        methods, params = self._static.get(path), {}
        if methods is None:
            for regex, candidates in self._dynamic:
                found = regex.match(path)
                if found:
                    methods, params = candidates, found.groupdict()
                    break
            else:
                raise NoRoute([])
        route = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
        if route is None:
            raise NoRoute(sorted(methods))
        return route, params


class HttpApp:
    """The ASGI application: every route's call goes through `__call__`."""

    def __init__(self, router: Router, metrics: Metrics, draining: Callable[[], bool],
                 keys: ApiKeys, public_health: bool, max_body_bytes: int):
        self.router = router
        self.calls = CallRecorder(metrics, "http")
        self._draining = draining
        self._keys = keys if keys.enabled else None
        self._public_health = public_health
        self._max_body = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan and websockets: nothing to do here
            return
        method, path = scope["method"], scope["path"]
        try:
            route, params = self.router.match(method, path)
        except NoRoute as missing:
            await self._send(send, _no_route(method, path, missing.allowed), "", method)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        counted = not route.health
        started = self.calls.begin() if counted else 0.0
        request = Request(method, path, {}, headers, b"", params)
        code = "OK"
        try:
            try:
                response = await self._respond(route, request, scope, receive)
            except ServiceError as exc:
                code = exc.status
                if exc.model:
                    request.note(exc.model, exc.version)
                response = _error(exc)
            except ClientGone:
                code = "CANCELLED"
                return
            except Exception:  # noqa: BLE001 - a fault of ours: generic message, logged cause
                code = "INTERNAL"
                log.exception("unexpected error in %s %s", method, path)
                response = Response(500, error_body(INTERNAL_MESSAGE))
            sending = self._send(send, response, headers.get("accept-encoding", ""), method)
            if route.cancellable and not isinstance(response.body, (bytes, list)):
                # A stream computes as it goes: a client that disconnects stops the computing.
                sending = _cancelled_on_disconnect(sending, receive)
            try:
                await sending
            except ServiceError as exc:  # a streamed body failed after its status line went out
                code = exc.status
                log.error("streamed response of %s %s failed: %s", method, path, exc.message)
                raise
            except ClientGone:  # mid-stream: the rest is not computed
                code = "CANCELLED"
        finally:
            if counted:
                self.calls.end(request.model, request.version, route.call, code, started)

    async def _respond(self, route: Route, request: Request, scope, receive) -> Response:
        if route.health:
            if self._keys and not self._public_health:
                self._authorize(route, request)
        else:
            if self._draining():
                raise Unavailable(DRAINING_MESSAGE)
            if self._keys and not route.public:
                self._authorize(route, request)
        if scope["query_string"]:
            request.query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        request.body = _decoded(request.headers.get("content-encoding"),
                                await self._read_body(request, receive), self._max_body)
        if not route.cancellable:
            return await route.handler(request)
        return await _cancelled_on_disconnect(route.handler(request), receive)

    def _authorize(self, route: Route, request: Request) -> None:
        self._keys.authorize(request.headers.get("authorization"), route.call, route.admin,
                             CARRIER)

    async def _read_body(self, request: Request, receive) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            raise _too_large(int(declared), self._max_body)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise _too_large(size, self._max_body)
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    @staticmethod
    async def _send(send, response: Response, accept_encoding: str, method: str) -> None:
        headers = [(b"content-type", response.content_type.encode())] + response.headers
        body = response.body
        if response.compressible and accept_encoding:
            body, encoding = _compressed(body, accept_encoding)
            if encoding:
                headers.append((b"content-encoding", encoding))
        if isinstance(body, (bytes, list)):
            parts = [body] if isinstance(body, bytes) else body
            length = sum(len(part) for part in parts)
            if len(parts) > 1 and length <= JOIN_UP_TO_BYTES:
                parts = [b"".join(parts)]
            headers.append((b"content-length", str(length).encode()))
            await send({"type": "http.response.start", "status": response.status,
                        "headers": headers})
            if method == "HEAD":
                parts = []
            for i, part in enumerate(parts):
                await send({"type": "http.response.body", "body": part,
                            "more_body": i < len(parts) - 1})
            if not parts:
                await send({"type": "http.response.body", "body": b""})
            return
        # A stream (chunked transfer): the status goes out before the body is computed.
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        async for chunk in body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def _cancelled_on_disconnect(work: Awaitable[Response], receive) -> Response:
    """Run `work`; if the client disconnects first, cancel it (so its queued requests leave the
    batcher at once) and raise ClientGone."""
    task = asyncio.ensure_future(work)
    gone = False

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if gone:
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()


async def within_deadline(deadline: float | None, work: Awaitable, model: str):
    """Await `work`, cancelling it when the deadline (time.monotonic) passes: HTTP has no timer of
    its own that would, as gRPC's does, so a request whose deadline passes in the queue leaves it
    here and never reaches compute."""
    if deadline is None:
        return await work
    try:
        async with asyncio.timeout(deadline - time.monotonic()):
            return await work
    except TimeoutError:
        raise DeadlineExceeded(f"the deadline passed before model '{model}' answered") from None


def _decoded(encoding: str | None, body: bytes, limit: int) -> bytes:
    """The body without its Content-Encoding (gzip or deflate), never inflated past `limit`."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidArgument(f"header 'Content-Encoding': expected gzip or deflate, got "
                              f"{encoding!r}")
    # deflate means a zlib stream (RFC 9110); a bare deflate stream is accepted too.
    for wbits in ((31,) if encoding == "gzip" else (15, -15)):
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(data) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"the request body inflates past the {limit}-byte limit "
                                  "(max_message_bytes)")
        if not inflater.eof:
            raise InvalidArgument(f"the {encoding} request body is truncated")
        return data
    raise InvalidArgument(f"the request body is not valid {encoding} data")


def _compressed(body: Body, accept: str) -> tuple[Body, bytes | None]:
    if isinstance(body, list):
        body = b"".join(body)
    if not isinstance(body, bytes):
        return body, None
    accepted = {part.split(";")[0].strip() for part in accept.split(",")}
    if "gzip" in accepted:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        return compressor.compress(body) + compressor.flush(), b"gzip"
    if "deflate" in accepted:
        return zlib.compress(body), b"deflate"
    return body, None


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body has {size} bytes, more than the {limit}-byte "
                           "limit (max_message_bytes)")


def _error(exc: ServiceError) -> Response:
    headers = []
    retry = RETRY_AFTER_S.get(exc.status)
    if retry is not None:
        headers.append((b"retry-after", str(retry).encode()))
    if exc.status == "UNAUTHENTICATED":
        headers.append((b"www-authenticate", b"Bearer"))
    return Response(status_of(exc), error_body(exc.message), headers=headers)


def _no_route(method: str, path: str, allowed: list[str]) -> Response:
    if allowed:
        return Response(405, error_body(f"{method} {path}: method not allowed; use "
                                        f"{' or '.join(allowed)}"),
                        headers=[(b"allow", ", ".join(allowed).encode())])
    return Response(404, error_body(f"no route {path}; the REST API is described at "
                                    "/openapi.json"))
