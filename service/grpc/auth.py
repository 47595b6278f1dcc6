"""API-key authentication, checked in this one interceptor.

Clients send `authorization: Bearer <key>`. Inference keys may call everything but the repository
RPCs that change what is served; admin keys may call everything. Keys are compared as SHA-256
digests in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import grpc

from service.errors import StartupError
from service.settings import ServerSettings

ADMIN_METHODS = frozenset({
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
})
PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
_BEARER = "bearer "


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _read_keys(setting: str, path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        text = path.read_text()
    except OSError as exc:
        raise StartupError(f"{setting} {path}: {exc.strerror}") from exc
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.startswith("#")]


class ApiKeys:
    def __init__(self, inference: list[str], admin: list[str]):
        self._inference = [_digest(k) for k in inference]
        self._admin = [_digest(k) for k in admin]

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ApiKeys:
        return cls(
            [k.get_secret_value() for k in settings.api_keys]
            + _read_keys("api_keys_file", settings.api_keys_file),
            [k.get_secret_value() for k in settings.admin_keys]
            + _read_keys("admin_keys_file", settings.admin_keys_file),
        )

    @property
    def enabled(self) -> bool:
        return bool(self._inference or self._admin)

    @staticmethod
    def _match(digest: bytes, keys: list[bytes]) -> bool:
        # Compare against every key so timing says nothing about which (if any) matched.
        found = False
        for key in keys:
            found |= hmac.compare_digest(digest, key)
        return found

    def role(self, presented: str) -> str | None:
        digest = _digest(presented)
        if self._match(digest, self._admin):
            return "admin"
        if self._match(digest, self._inference):
            return "inference"
        return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: ApiKeys, public_health: bool):
        self._keys = keys
        self._public_health = public_health

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or (self._public_health and method.startswith(PUBLIC_PREFIXES)):
            return handler
        refusal = self._refusal(method, handler_call_details.invocation_metadata or ())
        return handler if refusal is None else _refusing(handler, *refusal)

    def _refusal(self, method: str, metadata) -> tuple[grpc.StatusCode, str] | None:
        values = [v for k, v in metadata if k == "authorization"]
        if not values:
            return (grpc.StatusCode.UNAUTHENTICATED,
                    "missing API key: send metadata 'authorization: Bearer <key>'")
        header = values[0] if isinstance(values[0], str) else values[0].decode(errors="replace")
        if not header.lower().startswith(_BEARER):
            return (grpc.StatusCode.UNAUTHENTICATED,
                    "authorization metadata must be 'Bearer <key>'")
        role = self._keys.role(header[len(_BEARER):].strip())
        if role is None:
            return grpc.StatusCode.UNAUTHENTICATED, "invalid API key"
        if method in ADMIN_METHODS and role != "admin":
            rpc = method.rsplit("/", 1)[-1]
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"{rpc} needs an admin key; this key may only run inference")
        return None


def _refusing(handler, code: grpc.StatusCode, message: str):
    """A handler of the same kind as `handler` that only aborts."""
    async def abort(request, context):
        await context.abort(code, message)

    async def abort_stream(request, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            abort_stream, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(
        abort, request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)
