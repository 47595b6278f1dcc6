"""The one map from the error hierarchy to gRPC status codes."""

from __future__ import annotations

import grpc

from service import errors

STATUS: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.InferenceFailed: grpc.StatusCode.INTERNAL,
}


def status_of(exc: errors.ServiceError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL
