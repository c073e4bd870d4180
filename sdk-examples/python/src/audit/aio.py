"""`AsyncAuditClient`: `AuditClient` for asyncio, over `grpc.aio`.

    async with AsyncAuditClient("unix:/run/audit.sock") as client:
        await client.record(new_entry(source="billing-api", method="/billing.v1.Billing/Charge"))
        async for entry in client.query(new_filter(source="billing-api")):
            ...
        async with client.subscribe(new_filter(source="billing-api"), 0) as entries:
            async for entry in entries:
                ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from audit.builder import Order
from audit.client import (
    _CHANNEL_OPTIONS,
    _RECORD_RETRY_CODES,
    RetryPolicy,
    Start,
    TlsConfig,
    start_position,
    target_of,
    with_ids,
)
from audit.errors import RETRYABLE_CODES, AuditError
from audit.uuid7 import uuid7_str
from audit.v1 import entry_pb2, service_pb2, service_pb2_grpc

__all__ = ["AsyncAuditClient", "AsyncSubscription"]

_T = TypeVar("_T")


def aio_channel_for(address: str, tls: TlsConfig | None = None) -> grpc.aio.Channel:
    """`channel_for` for asyncio."""
    target, wants_tls = target_of(address)
    if tls is None and wants_tls:
        tls = TlsConfig()
    if tls is None:
        return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
    if target.startswith("unix:"):
        raise ValueError("TLS over a Unix socket is not supported; the socket is already local")
    return grpc.aio.secure_channel(target, tls.credentials(), options=_CHANNEL_OPTIONS + tls.options())


class AsyncAuditClient:
    """`AuditClient` with `async` methods: the same addresses, TLS, timeouts, retries, ids and
    errors. Create it inside the event loop that uses it."""

    def __init__(
        self,
        address: str,
        *,
        tls: TlsConfig | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.retry = retry
        self._channel = aio_channel_for(address, tls)
        self.stub: Any = service_pb2_grpc.AuditServiceStub(self._channel)
        self._health: Any = health_pb2_grpc.HealthStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncAuditClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def record(self, entry: entry_pb2.AuditEntry) -> service_pb2.RecordResponse:
        """See `AuditClient.record`."""
        (entry,) = with_ids([entry])
        response: service_pb2.RecordResponse = await self._call(
            self.stub.Record, service_pb2.RecordRequest(entry=entry)
        )
        return response

    async def record_batch(
        self, entries: Iterable[entry_pb2.AuditEntry], *, request_id: str = ""
    ) -> service_pb2.RecordBatchResponse:
        """See `AuditClient.record_batch`."""
        request = service_pb2.RecordBatchRequest(
            request_id=request_id or uuid7_str(), entries=with_ids(entries)
        )
        response: service_pb2.RecordBatchResponse = await self._call(self.stub.RecordBatch, request)
        return response

    async def query(
        self,
        filter: service_pb2.Filter | None = None,
        *,
        order: Order = Order.ASCENDING,
        page_size: int = 0,
        limit: int | None = None,
    ) -> AsyncIterator[entry_pb2.AuditEntry]:
        """See `AuditClient.query`: an async iterator following page tokens."""
        remaining = limit
        token = ""
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size or remaining, remaining)
            request = service_pb2.QueryRequest(
                filter=filter, page_size=size, page_token=token, order=int(order)  # type: ignore[arg-type]
            )
            page: service_pb2.QueryResponse = await self._call(self.stub.Query, request)
            for entry in page.entries:
                if remaining is not None:
                    if remaining == 0:
                        return
                    remaining -= 1
                yield entry
            token = page.next_page_token
            if not token:
                return

    def subscribe(
        self,
        filter: service_pb2.Filter | None = None,
        start: Start = None,
        *,
        retry: RetryPolicy = RetryPolicy(attempts=10),
    ) -> AsyncSubscription:
        """See `AuditClient.subscribe`: an async iterator that resumes after drops."""
        return AsyncSubscription(self.stub, filter or service_pb2.Filter(), start, retry)

    async def health(self, service: str = "") -> str:
        """See `AuditClient.health`."""
        try:
            response: health_pb2.HealthCheckResponse = await self._call(
                self._health.Check, health_pb2.HealthCheckRequest(service=service)
            )
        except AuditError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def _call(self, method: Callable[..., Awaitable[_T]], request: object) -> _T:
        failures = 0
        while True:
            try:
                return await method(request, timeout=self.timeout)
            except grpc.RpcError as rpc_error:
                error = AuditError.from_rpc_error(rpc_error)
                failures += 1
                if error.code not in _RECORD_RETRY_CODES or self.retry.gives_up_after(failures):
                    raise error from None
                await asyncio.sleep(self.retry.backoff(failures))


class AsyncSubscription:
    """`Subscription` for asyncio: `async for entry in subscription`; `close()` ends it,
    `reconnect()` drops the current stream and resumes after the last sequence seen."""

    def __init__(self, stub: Any, filter: service_pb2.Filter, start: Start, retry: RetryPolicy) -> None:
        self._stub = stub
        self._filter = filter
        self._start = start
        self._retry = retry
        self._call: Any = None
        self._closed = False
        self._dropping = False
        self.reconnects = 0
        self.resume_after: int | None = start if isinstance(start, int) else None
        self._entries = self._run()

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> entry_pb2.AuditEntry:
        return await self._entries.__anext__()

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the subscription: the iteration ends."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    def reconnect(self) -> None:
        """Ends the current stream as a dropped connection would."""
        if self._call is not None:
            self._dropping = True
            self._call.cancel()

    def _is_closed(self) -> bool:
        return self._closed

    async def _run(self) -> AsyncIterator[entry_pb2.AuditEntry]:
        failures = 0
        while not self._is_closed():
            start = self.resume_after if self.resume_after is not None else self._start
            request = service_pb2.SubscribeRequest(filter=self._filter, start=start_position(start))
            received = False
            failure: AuditError | None = None
            self._call = call = self._stub.Subscribe(request)
            try:
                async for message in call:
                    received = True
                    kind = message.WhichOneof("message")
                    last = self.resume_after
                    if kind == "entry":
                        if last is not None and message.entry.sequence <= last:
                            continue
                        self.resume_after = message.entry.sequence
                        yield message.entry
                    elif kind == "heartbeat" and (last is None or message.heartbeat.sequence > last):
                        self.resume_after = message.heartbeat.sequence
            except grpc.RpcError as rpc_error:
                failure = AuditError.from_rpc_error(rpc_error)
            except asyncio.CancelledError:
                # Our own cancel (close or reconnect) ends the stream; any other cancels the task.
                if not (self._is_closed() or self._dropping):
                    raise
                failure = AuditError(grpc.StatusCode.CANCELLED, "stream dropped")
            finally:
                self._call = None
                self._dropping = False
                if self._is_closed():
                    call.cancel()
            if self._is_closed():
                return
            if failure is not None and failure.code not in RETRYABLE_CODES:
                raise failure
            if received:
                failures = 0
            failures += 1
            if self._retry.gives_up_after(failures):
                raise failure or AuditError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the subscription ended and could not be resumed after {failures} attempts",
                )
            self.reconnects += 1
            if not received:
                await asyncio.sleep(self._retry.backoff(failures))
