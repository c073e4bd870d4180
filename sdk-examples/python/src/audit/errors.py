"""`AuditError`: what went wrong talking to the audit service, with the fields it refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

# The trailer in which a gRPC server sends a `google.rpc.Status` with details.
STATUS_DETAILS_KEY = "grpc-status-details-bin"

# Codes after which trying again may succeed. For `record`, retrying is safe because every
# entry carries a client-chosen id: the server stores an id once.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
    }
)


@dataclass(frozen=True)
class FieldViolation:
    """One field the server refused: `field` as a path (`entry.method`, `entries[2].source`)
    and `description`, why."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class AuditError(Exception):
    """The audit service answered a call with an error (or could not be reached).

    `code` is the gRPC status code, `message` the server's message, and `field_violations` the
    fields it refused, decoded from the `google.rpc.BadRequest` details of an
    `INVALID_ARGUMENT` answer. `str(error)` shows all three:
    `INVALID_ARGUMENT: invalid entry (entry.method: must not be empty)`.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        self.code = code
        self.message = message
        self.field_violations = field_violations
        super().__init__(self._describe())

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> AuditError:
        """The `AuditError` for a failed call (`grpc.RpcError` raised by a stub, which is also a
        `grpc.Call`), with the `BadRequest` details of its trailers decoded."""
        # The errors grpc raises for calls are also `grpc.Call`s; others have no status.
        call: Any = error
        if not callable(getattr(call, "code", None)):
            return cls(grpc.StatusCode.UNKNOWN, str(error))
        code = call.code()
        message = call.details() or ""
        return cls(
            code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN,
            message if isinstance(message, str) else str(message),
            violations_in(call.trailing_metadata() or ()),
        )

    @property
    def retryable(self) -> bool:
        """Whether the failure may go away on its own (unavailable, deadline, overload, ...);
        refusals that would repeat identically (`INVALID_ARGUMENT`, `PERMISSION_DENIED`, ...)
        are not."""
        return self.code in RETRYABLE_CODES

    def _describe(self) -> str:
        text = self.code.name
        if self.message:
            text += f": {self.message}"
        # Servers often repeat the violations in the message; show only what it lacks.
        missing = [str(v) for v in self.field_violations if str(v) not in self.message]
        if missing:
            text += f" ({'; '.join(missing)})"
        return text


def violations_in(trailing_metadata: object) -> tuple[FieldViolation, ...]:
    """The field violations of the `google.rpc.BadRequest` details in a call's trailing
    metadata (`grpc-status-details-bin`), empty when there are none."""
    violations: list[FieldViolation] = []
    for item in trailing_metadata if isinstance(trailing_metadata, (tuple, list)) else ():
        key, value = item
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
    return tuple(violations)
