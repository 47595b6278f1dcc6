"""The one error hierarchy of the service.

Every error a client can cause or see is a `ServiceError` subclass with a message written for the
client (naming the field, what was expected and what came) and a canonical status name (Google's
API error model, which the Open Inference Protocol shares), the one vocabulary of the metrics'
`code` label whatever the protocol. The classes know no protocol: each front end maps them to its
own codes in exactly one place (`service.grpc.status`, `service.http.status`), with the same
messages; anything else that escapes becomes the protocol's internal error with a generic message
and a logged traceback.

`StartupError` is apart: it never reaches a client. It stops the process at start with one line
(`serve: ...`) naming what is wrong with its settings or surroundings.
"""

from __future__ import annotations


class ServiceError(Exception):
    """`model` and `version` name the model version the call resolved to, once it is known (the
    front ends label their metrics with them); empty before that."""

    status = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
        self.model = ""
        self.version = ""


class InvalidArgument(ServiceError):
    """The request itself is wrong: a field, a shape, a datatype, a value."""

    status = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    """The model or version named is not served."""

    status = "NOT_FOUND"


class Unavailable(ServiceError):
    """The server or model cannot take the call now (not ready, loading, shutting down)."""

    status = "UNAVAILABLE"


class ResourceExhausted(ServiceError):
    """A bound is reached: a full queue, a message over the size limit."""

    status = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ServiceError):
    """The call's deadline passed before its result was ready."""

    status = "DEADLINE_EXCEEDED"


class Unauthenticated(ServiceError):
    """No API key, or one that is not configured."""

    status = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    """A valid key whose role may not make this call."""

    status = "PERMISSION_DENIED"


class AlreadyExists(ServiceError):
    """The name is taken: a shared-memory region registered twice under one name."""

    status = "ALREADY_EXISTS"


class Unimplemented(ServiceError):
    """A call of the protocol this server does not offer (CUDA shared memory)."""

    status = "UNIMPLEMENTED"


class PayloadTooLarge(ResourceExhausted):
    """A request body over the message-size limit (HTTP tells it apart from a full queue)."""


class ModelLoadError(ServiceError):
    """A model could not be loaded: bad config, missing or corrupt file, failed warm-up. The
    repository's content, not the request, is at fault."""

    status = "FAILED_PRECONDITION"


class ModelSkipped(ModelLoadError):
    """The model cannot run on this server's device (instance_kind gpu on a CPU-only server): it
    is not served here, which is no fault of the repository."""


class InferenceFailed(ServiceError):
    """The runtime failed on a batch. The client sees a generic message; the cause is logged."""

    def __init__(self, model: str):
        super().__init__(f"inference failed for model '{model}'; the server log has details")


class StartupError(Exception):
    """The server cannot start as configured: a busy port, a missing model repository, an
    unusable device, an unreadable TLS or key file."""
