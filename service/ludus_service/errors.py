"""Domain errors with the gRPC status they map to.

Logic modules raise these; the servicer layer (ludus_service.servicer) turns them into a gRPC status
in one place, so the logic stays testable without a network.
"""
from __future__ import annotations

import grpc


class LudusError(Exception):
    """Base class: a request that cannot be honoured. `field` names the offending input."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class InvalidArgument(LudusError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(LudusError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(LudusError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(LudusError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unimplemented(LudusError):
    """A valid ML-Agents setting this server does not implement yet (e.g. another trainer_type)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Unavailable(LudusError):
    """The server is shutting down; clients retry against the restarted one."""

    code = grpc.StatusCode.UNAVAILABLE


class Internal(LudusError):
    """An unexpected failure (logged server-side); the message names only the exception type."""

    code = grpc.StatusCode.INTERNAL
