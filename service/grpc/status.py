"""The one map from the error hierarchy to gRPC status codes: each class's canonical status name is
a gRPC code's name. Anything else is a fault of ours: INTERNAL with a generic message, the
traceback logged."""

from __future__ import annotations

import logging

import grpc

from service.errors import ServiceError

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error; the server log has details"


def status_of(exc: ServiceError) -> grpc.StatusCode:
    return grpc.StatusCode[exc.status]


def error_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a client gets for `exc`."""
    if isinstance(exc, ServiceError):
        return status_of(exc), exc.message
    log.error("unexpected error in RPC", exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
