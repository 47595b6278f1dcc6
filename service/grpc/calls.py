"""Per-call state of the gRPC front end: what the call turned out to be about (for the
interceptor's metric labels) and its deadline."""

from __future__ import annotations

import contextvars
import time
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


current_call: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "current_call", default=None
)


def note_call(model: str, version: str) -> None:
    """Label the current call with the model version the core resolved it to."""
    info = current_call.get()
    if info is not None:
        info.model, info.version = model, version


def deadline_of(context) -> float | None:
    """The call's deadline on the monotonic clock, or None."""
    remaining = context.time_remaining()
    return time.monotonic() + remaining if remaining is not None else None
