"""The one map from the error hierarchy to gRPC status codes: each class's canonical status name is
a gRPC code's name."""

from __future__ import annotations

import grpc

from service.errors import ServiceError


def status_of(exc: ServiceError) -> grpc.StatusCode:
    return grpc.StatusCode[exc.status]
