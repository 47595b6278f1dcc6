"""API keys on gRPC: the one rule of service.auth, checked in this interceptor."""

from __future__ import annotations

import grpc

from service.auth import ApiKeys
from service.errors import ServiceError
from service.grpc.status import status_of

ADMIN_METHODS = frozenset({
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
    "/inference.GRPCInferenceService/SystemSharedMemoryRegister",
    "/inference.GRPCInferenceService/SystemSharedMemoryUnregister",
})
PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
CARRIER = "metadata 'authorization"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: ApiKeys, public_health: bool):
        self._keys = keys
        self._public_health = public_health

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or (self._public_health and method.startswith(PUBLIC_PREFIXES)):
            return handler
        values = [v for k, v in handler_call_details.invocation_metadata or ()
                  if k == "authorization"]
        credential = None
        if values:
            credential = values[0] if isinstance(values[0], str) else values[0].decode(
                errors="replace")
        try:
            self._keys.authorize(credential, method.rsplit("/", 1)[-1],
                                 method in ADMIN_METHODS, CARRIER)
        except ServiceError as refusal:
            return _refusing(handler, status_of(refusal), refusal.message)
        return handler


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
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            abort_stream, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(
        abort, request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)
