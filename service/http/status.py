"""The one map from the error hierarchy to HTTP statuses (Google's API error model), and the JSON
error body every REST route answers with."""

from __future__ import annotations

import orjson

from service.errors import PayloadTooLarge, ServiceError

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
# Seconds a client should wait before retrying a call refused for load or a drain.
RETRY_AFTER_S = {"RESOURCE_EXHAUSTED": 1, "UNAVAILABLE": 1}


def status_of(exc: ServiceError) -> int:
    if isinstance(exc, PayloadTooLarge):
        return 413
    return HTTP_STATUS.get(exc.status, 500)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
