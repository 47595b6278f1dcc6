"""Per-call state of the gRPC front end: what the call turned out to be about (for the
interceptor's metric labels) and its deadline."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc


@dataclass
class CallInfo:
    """model/version are set only once the model is found, so that names made up by clients cannot
    blow up the metrics' label sets."""

    model: str = ""
    version: str = ""
    code: grpc.StatusCode = grpc.StatusCode.OK
    started: float = 0.0
    token: object = None
    # Streams of requests (ModelStreamInfer): records one request as
    # record_request(model, version, code, started).
    record_request: Callable[[str, str, grpc.StatusCode, float], None] | None = None


current_call: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "current_call", default=None
)


def note_call(model: str, version: str) -> None:
    """Label the current call with the model version the core resolved it to."""
    info = current_call.get()
    if info is not None:
        info.model, info.version = model, version


def note_stream_request(model: str, version: str, code: grpc.StatusCode, started: float) -> None:
    """Count and time one request of the current stream (started: time.perf_counter())."""
    info = current_call.get()
    if info is not None and info.record_request is not None:
        info.record_request(model, version, code, started)


def deadline_of(context) -> float | None:
    """The call's deadline on the monotonic clock, or None."""
    remaining = context.time_remaining()
    return time.monotonic() + remaining if remaining is not None else None
