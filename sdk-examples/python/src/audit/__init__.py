"""Client and server interceptor for the audit service (`audit.v1.AuditService`).

The whole public surface is here:

- `AuditClient`: `record`, `record_batch` (client-chosen UUIDv7 ids, retried on `UNAVAILABLE`
  and deadline errors), `query` (an iterator following page tokens), `subscribe` (an iterator
  that resumes after drops with no gap and no duplicate), `health`, `checkpoint`; over
  `host:port`, `unix:/path`, TLS and mutual TLS (`TlsConfig`).
- `AsyncAuditClient` and `AsyncSubscription`: the same for asyncio (grpc.aio).
- `new_entry` and `new_filter`: messages from keyword arguments; `Outcome`, `Level`, `Order`.
- `AuditError`: the gRPC code, message and `field_violations` (from `google.rpc.BadRequest`).
- `AuditInterceptor` (grpc) and `AsyncAuditInterceptor` (grpc.aio): one audit entry per call,
  delivered by a background `Recorder`; `AuditHandle.current()` in a handler adds per-operation
  entries sharing the call's `request_id`.
- `uuid7`: RFC 9562 UUIDv7.

The generated messages and stubs are in `audit.v1` (`entry_pb2`, `service_pb2`,
`service_pb2_grpc`), generated from `proto/audit/v1/*.proto` with `buf generate`; do not edit
those modules by hand.
"""

from audit.aio import AsyncAuditClient, AsyncSubscription
from audit.builder import Level, Order, Outcome, new_entry, new_filter
from audit.client import AuditClient, RetryPolicy, Start, Subscription, TlsConfig
from audit.errors import AuditError, FieldViolation
from audit.interceptor import (
    AsyncAuditInterceptor,
    AuditHandle,
    AuditInterceptor,
    CallInfo,
    principal_from_metadata,
)
from audit.recorder import Recorder, RecorderStats
from audit.uuid7 import uuid7

__all__ = [
    "AsyncAuditClient",
    "AsyncAuditInterceptor",
    "AsyncSubscription",
    "AuditClient",
    "AuditError",
    "AuditHandle",
    "AuditInterceptor",
    "CallInfo",
    "FieldViolation",
    "Level",
    "Order",
    "Outcome",
    "Recorder",
    "RecorderStats",
    "RetryPolicy",
    "Start",
    "Subscription",
    "TlsConfig",
    "new_entry",
    "new_filter",
    "principal_from_metadata",
    "uuid7",
]
