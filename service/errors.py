"""The one error hierarchy of the service.

Every error a client can cause or see is a `ServiceError` subclass carrying its gRPC status code and
a message written for the client (naming the field, what was expected and what came). The gRPC
front end maps them to statuses in exactly one place (`service.grpc.interceptor`); anything else
that escapes becomes INTERNAL with a generic message and a logged traceback.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServiceError):
    """The server or model cannot take the call now (not ready, loading, shutting down)."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServiceError):
    code = grpc.StatusCode.CANCELLED


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ModelLoadError(ServiceError):
    """A model could not be loaded: bad config, missing or corrupt file, failed warm-up. The
    repository's content, not the request, is at fault."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ModelSkipped(ModelLoadError):
    """The model cannot run on this server's device (instance_kind gpu on a CPU-only server): it
    is not served here, which is no fault of the repository."""


class InferenceFailed(ServiceError):
    """The runtime failed on a batch. The client sees a generic message; the cause is logged."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, model: str):
        super().__init__(f"inference failed for model '{model}'; the server log has details")
