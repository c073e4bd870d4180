"""Entries and filters from keyword arguments, so nobody assembles protobuf by hand."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import grpc
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from audit.v1 import entry_pb2, service_pb2


class Outcome(enum.IntEnum):
    """How an audited call ended (`audit.v1.Outcome`)."""

    UNSPECIFIED = entry_pb2.OUTCOME_UNSPECIFIED
    SUCCESS = entry_pb2.OUTCOME_SUCCESS
    DENIED = entry_pb2.OUTCOME_DENIED
    ERROR = entry_pb2.OUTCOME_ERROR

    @classmethod
    def of(cls, code: grpc.StatusCode) -> Outcome:
        """The outcome of a call that ended with `code`: `OK` is a success, `UNAUTHENTICATED`
        and `PERMISSION_DENIED` are denials, anything else an error."""
        if code == grpc.StatusCode.OK:
            return cls.SUCCESS
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return cls.DENIED
        return cls.ERROR


class Level(enum.IntEnum):
    """Severity of an entry (`audit.v1.Level`); the server stores `INFO` when unspecified."""

    UNSPECIFIED = entry_pb2.LEVEL_UNSPECIFIED
    DEBUG = entry_pb2.LEVEL_DEBUG
    INFO = entry_pb2.LEVEL_INFO
    WARNING = entry_pb2.LEVEL_WARNING
    ERROR = entry_pb2.LEVEL_ERROR
    CRITICAL = entry_pb2.LEVEL_CRITICAL


class Order(enum.IntEnum):
    """Order of query results, by sequence."""

    ASCENDING = service_pb2.ORDER_ASCENDING
    DESCENDING = service_pb2.ORDER_DESCENDING


def status_code_number(code: grpc.StatusCode | int) -> int:
    """The number of a gRPC status code (`grpc.StatusCode.NOT_FOUND` is 5)."""
    if isinstance(code, grpc.StatusCode):
        number = code.value[0]
        assert isinstance(number, int)
        return number
    return int(code)


def status_code_of(number: int) -> grpc.StatusCode:
    """The `grpc.StatusCode` numbered `number` (`UNKNOWN` for a number that is none)."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for `when` (a naive datetime is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(when)
    return message


def new_entry(
    *,
    method: str,
    source: str = "",
    outcome: Outcome | None = None,
    status: grpc.StatusCode | int = grpc.StatusCode.OK,
    status_message: str = "",
    id: str = "",
    request_id: str = "",
    time: datetime | None = None,
    event: str = "",
    category: str = "",
    resource: str = "",
    level: Level = Level.UNSPECIFIED,
    principal: str = "",
    role: str = "",
    session_id: str = "",
    user_agent: str = "",
    peer_address: str = "",
    spiffe_id: str = "",
    certificate_subject: str = "",
    unix_peer: entry_pb2.UnixPeer | None = None,
    latency: timedelta | float | None = None,
    details: Mapping[str, object] | None = None,
    labels: Mapping[str, str] | None = None,
) -> entry_pb2.AuditEntry:
    """An `AuditEntry` for a call to `method` (`/package.Service/Method`).

    The server requires `source`, `method` and an outcome. `outcome` defaults to the outcome of
    `status` (`OK`, so a success, by default). Fields left empty (`id`, `request_id`, `time`,
    `level`) are filled in by the client (`id`) or the server. `latency` is a `timedelta` or
    seconds; `details` holds JSON-like values (str, int, float, bool, None, lists and dicts).
    A caller is set when any of its fields is given; `unix_peer` replaces a network peer.

        entry = new_entry(source="billing-api", method="/billing.v1.Billing/Charge",
                          principal="alice", resource="invoices/42",
                          status=grpc.StatusCode.PERMISSION_DENIED, status_message="no")
        # outcome DENIED, status_code 7
    """
    code = status_code_number(status)
    entry = entry_pb2.AuditEntry(
        id=id,
        request_id=request_id,
        source=source,
        method=method,
        event=event,
        category=category,
        resource=resource,
        level=int(level),  # type: ignore[arg-type]  # an IntEnum of the same numbers
        outcome=int(outcome if outcome is not None else Outcome.of(status_code_of(code))),  # type: ignore[arg-type]
        status_code=code,
        status_message=status_message,
        labels=dict(labels or {}),
    )
    if time is not None:
        entry.time.CopyFrom(timestamp(time))
    caller = entry_pb2.Caller(
        principal=principal, role=role, session_id=session_id, user_agent=user_agent
    )
    if unix_peer is not None:
        caller.unix.CopyFrom(unix_peer)
    elif peer_address or spiffe_id or certificate_subject:
        caller.network.CopyFrom(
            entry_pb2.NetworkPeer(
                address=peer_address, spiffe_id=spiffe_id, certificate_subject=certificate_subject
            )
        )
    if caller.ByteSize() > 0:
        entry.caller.CopyFrom(caller)
    if latency is not None:
        entry.latency.CopyFrom(duration(latency))
    if details:
        values: Any = dict(details)
        entry.details.update(values)
    return entry


def duration(value: timedelta | float) -> duration_pb2.Duration:
    """A protobuf Duration from a `timedelta` or seconds."""
    message = duration_pb2.Duration()
    if isinstance(value, timedelta):
        message.FromTimedelta(value)
    else:
        message.FromNanoseconds(round(value * 1e9))
    return message


def new_filter(
    *,
    request_id: str = "",
    source: str = "",
    method: str = "",
    principal: str = "",
    spiffe_id: str = "",
    outcomes: Iterable[Outcome] = (),
    status_codes: Iterable[grpc.StatusCode | int] = (),
    event: str = "",
    category: str = "",
    resource: str = "",
    min_level: Level = Level.UNSPECIFIED,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    labels: Mapping[str, str] | None = None,
) -> service_pb2.Filter:
    """A `Filter` for `query` and `subscribe`: every given field must match (AND), a list
    matches any of its values (OR). `method`, `spiffe_id` and `resource` are exact, or a prefix
    when they end with `*`. No argument matches every entry."""
    message = service_pb2.Filter(
        request_id=request_id,
        source=source,
        method=method,
        principal=principal,
        spiffe_id=spiffe_id,
        outcomes=[int(o) for o in outcomes],  # type: ignore[misc]  # an IntEnum of the same numbers
        status_codes=[status_code_number(c) for c in status_codes],
        event=event,
        category=category,
        resource=resource,
        min_level=int(min_level),  # type: ignore[arg-type]
        labels=dict(labels or {}),
    )
    if start_time is not None:
        message.start_time.CopyFrom(timestamp(start_time))
    if end_time is not None:
        message.end_time.CopyFrom(timestamp(end_time))
    return message
