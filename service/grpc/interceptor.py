"""The one place where errors become gRPC statuses, and where every RPC is counted and timed.

It also refuses new calls once the server drains, and counts the calls in flight so that shutdown
can wait for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

from service.core.inference import DRAINING_MESSAGE
from service.errors import ServiceError
from service.grpc.calls import CallInfo, current_call
from service.grpc.status import status_of
from service.metrics import Metrics

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error; the server log has details"

# Infrastructure services stay outside: health must answer during drain, and neither is counted.
_PASS_THROUGH = ("/grpc.health.v1.", "/grpc.reflection.")


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, draining: Callable[[], bool], metrics: Metrics):
        self._draining = draining
        self._metrics = metrics
        self.active_calls = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Per-call costs kept off the hot path: wrapped handlers per method, metric children per
        # label set (label values are bounded: model and version are set only for real models).
        self._wrapped: dict[str, tuple[object, object]] = {}
        self._counters: dict[tuple, object] = {}
        self._latencies: dict[tuple, object] = {}

    async def wait_idle(self) -> None:
        """Return once no counted call is in flight."""
        await self._idle.wait()

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

    async def _begin(self, context) -> CallInfo:
        if self._draining():
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)
        self.active_calls += 1
        self._idle.clear()
        info = CallInfo(started=time.perf_counter())
        info.token = current_call.set(info)
        return info

    @staticmethod
    async def _fail(exc: BaseException, info: CallInfo, context) -> None:
        """Give the call the status `exc` stands for; always raises."""
        if getattr(exc, "model", ""):  # raised after the core resolved the model
            info.model, info.version = exc.model, exc.version
        if isinstance(exc, ServiceError):
            info.code = status_of(exc)
            await context.abort(info.code, exc.message)
        if isinstance(exc, asyncio.CancelledError):
            info.code = grpc.StatusCode.CANCELLED
            raise exc
        if isinstance(exc, grpc.aio.AbortError):  # the handler set its own status
            info.code = context.code() or grpc.StatusCode.UNKNOWN
            raise exc
        info.code = grpc.StatusCode.INTERNAL
        log.error("unexpected error in RPC", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

    def _end(self, rpc: str, info: CallInfo) -> None:
        current_call.reset(info.token)
        key = (info.model, info.version, rpc)
        counter = self._counters.get(key + (info.code,))
        if counter is None:
            counter = self._counters[key + (info.code,)] = self._metrics.requests.labels(
                *key, info.code.name)
        latency = self._latencies.get(key)
        if latency is None:
            latency = self._latencies[key] = self._metrics.request_latency.labels(*key)
        counter.inc()
        latency.observe(time.perf_counter() - info.started)
        self.active_calls -= 1
        if self.active_calls == 0:
            self._idle.set()
