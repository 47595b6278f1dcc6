"""The one place where errors become gRPC statuses, and where every RPC is counted and timed.

It also refuses new calls once the server drains, and counts the calls in flight so that shutdown
can wait for them. A stream of requests (ModelStreamInfer) is counted request by request, through
`calls.note_stream_request`; the stream itself only when it fails as a whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from service.core.inference import DRAINING_MESSAGE
from service.grpc.calls import CallInfo, current_call
from service.grpc.status import error_status
from service.metrics import CallRecorder, Metrics

# Infrastructure services stay outside: health must answer during drain, and neither is counted.
_PASS_THROUGH = ("/grpc.health.v1.", "/grpc.reflection.")


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, draining: Callable[[], bool], metrics: Metrics):
        self._draining = draining
        self.calls = CallRecorder(metrics, "grpc")
        self._wrapped: dict[str, tuple[object, object]] = {}  # wrapped handlers per method

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_PASS_THROUGH):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method.rsplit("/", 1)[-1], handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, rpc: str, handler):
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(rpc, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(rpc, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream_of_requests(rpc, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(self, rpc, behaviour):
        async def unary(request, context):
            info = await self._begin(context)
            try:
                return await behaviour(request, context)
            except BaseException as exc:  # noqa: BLE001 - every outcome is mapped and counted
                await self._fail(exc, info, context)
            finally:
                self._end(rpc, info)

        return unary

    def _wrap_stream(self, rpc, behaviour):
        async def unary_stream(request, context):
            info = await self._begin(context)
            try:
                async for item in behaviour(request, context):
                    yield item
            except BaseException as exc:  # noqa: BLE001
                await self._fail(exc, info, context)
            finally:
                self._end(rpc, info)

        return unary_stream

    def _wrap_stream_of_requests(self, rpc, behaviour):
        async def stream_stream(requests, context):
            info = await self._begin(context)
            info.record_request = (lambda model, version, code, started:
                                   self.calls.observe(model, version, rpc, code.name, started))
            try:
                async for item in behaviour(requests, context):
                    yield item
            except BaseException as exc:  # noqa: BLE001
                await self._fail(exc, info, context)
            finally:
                current_call.reset(info.token)
                if info.code == grpc.StatusCode.OK:
                    self.calls.leave()  # its requests were counted one by one
                else:
                    self.calls.end(info.model, info.version, rpc, info.code.name, info.started)

        return stream_stream

    async def _begin(self, context) -> CallInfo:
        if self._draining():
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)
        info = CallInfo(started=self.calls.begin())
        info.token = current_call.set(info)
        return info

    @staticmethod
    async def _fail(exc: BaseException, info: CallInfo, context) -> None:
        """Give the call the status `exc` stands for; always raises."""
        if getattr(exc, "model", ""):  # raised after the core resolved the model
            info.model, info.version = exc.model, exc.version
        if isinstance(exc, asyncio.CancelledError):
            info.code = grpc.StatusCode.CANCELLED
            raise exc
        if isinstance(exc, grpc.aio.AbortError):  # the handler set its own status
            info.code = context.code() or grpc.StatusCode.UNKNOWN
            raise exc
        info.code, message = error_status(exc)
        await context.abort(info.code, message)

    def _end(self, rpc: str, info: CallInfo) -> None:
        current_call.reset(info.token)
        self.calls.end(info.model, info.version, rpc, info.code.name, info.started)
