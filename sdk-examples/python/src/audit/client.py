"""`AuditClient`: the audit service from Python, over the generated stubs.

    from audit import AuditClient, new_entry, new_filter

    with AuditClient("127.0.0.1:50051") as client:          # or "unix:/run/audit.sock"
        receipt = client.record(new_entry(source="billing-api", method="/billing.v1.Billing/Charge"))
        for entry in client.query(new_filter(source="billing-api")):
            print(entry.sequence, entry.method)
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from audit.builder import Order, timestamp
from audit.errors import RETRYABLE_CODES, AuditError
from audit.uuid7 import uuid7_str
from audit.v1 import entry_pb2, service_pb2, service_pb2_grpc

__all__ = [
    "AuditClient",
    "RetryPolicy",
    "Start",
    "Subscription",
    "TlsConfig",
    "channel_for",
]

SERVICE_NAME = "audit.v1.AuditService"

# HTTP/2 pings on idle connections, so that a subscription notices a peer that vanished
# without closing the connection (a partition, a killed machine) instead of waiting forever.
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]

# What `record` and `record_batch` retry: the entry may or may not be stored, and storing it
# again is harmless because its id is the client's.
_RECORD_RETRY_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)

_T = TypeVar("_T")

Start = int | datetime | None
"""Where a subscription begins: `None` with the next entry committed ("now"), an `int` after
that sequence (`0` replays the whole log), a `datetime` at that receive time."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often to try again after a retryable failure, and how long to wait in between.

    `attempts` is the most consecutive failed attempts before giving up (`None`: never give
    up). Waits double from `initial_backoff` up to `max_backoff` seconds, with jitter.
    """

    attempts: int | None = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0

    @classmethod
    def never(cls) -> RetryPolicy:
        """One attempt, no retry."""
        return cls(attempts=1)

    @classmethod
    def forever(cls) -> RetryPolicy:
        """Retries without end (for a tail that must outlive outages)."""
        return cls(attempts=None)

    def backoff(self, failures: int) -> float:
        """The wait after `failures` consecutive failures (1 for the first)."""
        wait = min(self.initial_backoff * 2.0 ** (failures - 1), self.max_backoff)
        return wait * random.uniform(0.8, 1.0)

    def gives_up_after(self, failures: int) -> bool:
        return self.attempts is not None and failures >= self.attempts


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the server: the CA that signs its certificate (`None`: the system's roots) and,
    for mutual TLS, the client's certificate chain and private key, all PEM.
    `server_name` overrides the name checked in the server's certificate."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        """Reads the PEM files: `ca` for the server's CA, `cert` and `key` for mutual TLS."""

        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return cls(read(ca), read(cert), read(key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def options(self) -> list[tuple[str, Any]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def target_of(address: str) -> tuple[str, bool]:
    """The gRPC target for `address`, and whether it asks for TLS: `host:port`, `http://` or
    `https://host:port` (TLS with the system's roots), `unix:/path` or `unix:///path`."""
    if address.startswith("unix:"):
        return address, False
    if address.startswith("https://"):
        return address.removeprefix("https://").rstrip("/"), True
    return address.removeprefix("http://").rstrip("/"), False


def channel_for(address: str, tls: TlsConfig | None = None) -> grpc.Channel:
    """A channel to the audit server at `address` (see `AuditClient`); TLS when `tls` is given or
    the address is `https://`."""
    target, wants_tls = target_of(address)
    if tls is None and wants_tls:
        tls = TlsConfig()
    if tls is None:
        return grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
    if target.startswith("unix:"):
        raise ValueError("TLS over a Unix socket is not supported; the socket is already local")
    return grpc.secure_channel(target, tls.credentials(), options=_CHANNEL_OPTIONS + tls.options())


def start_position(start: Start) -> service_pb2.StartPosition | None:
    """The `StartPosition` for `start` (`None` for "now")."""
    if start is None:
        return None
    if isinstance(start, datetime):
        return service_pb2.StartPosition(received_time=timestamp(start))
    if isinstance(start, bool) or start < 0:
        raise ValueError(f"a subscription starts after a sequence >= 0, not {start!r}")
    return service_pb2.StartPosition(after_sequence=start)


def with_ids(entries: Iterable[entry_pb2.AuditEntry]) -> list[entry_pb2.AuditEntry]:
    """Copies of `entries`, each with a client-chosen UUIDv7 id where it had none, so that
    sending them again cannot store them twice."""
    result = []
    for entry in entries:
        copy = entry_pb2.AuditEntry()
        copy.CopyFrom(entry)
        if not copy.id:
            copy.id = uuid7_str()
        result.append(copy)
    return result


class AuditClient:
    """A client of `audit.v1.AuditService`. Thread-safe; one channel, reconnected as needed.

    `address` is `host:port`, `unix:/path/to/audit.sock`, or `https://host:port`; pass `tls`
    for TLS or mutual TLS (`TlsConfig.from_files(ca=..., cert=..., key=...)`). `timeout` bounds
    each attempt of a call, in seconds; `retry` says how unary calls are retried.

    Calls raise `AuditError` (with `.code` and `.field_violations`) when the server refuses them
    or cannot be reached within the retry policy.
    """

    def __init__(
        self,
        address: str,
        *,
        tls: TlsConfig | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy = RetryPolicy(),
        channel: grpc.Channel | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.retry = retry
        self._channel = channel if channel is not None else channel_for(address, tls)
        self._owns_channel = channel is None
        self.stub: Any = service_pb2_grpc.AuditServiceStub(self._channel)
        """The generated stub, for calls this class does not wrap."""
        # Its stubs declare no methods: the methods are added when it is created.
        self._health: Any = health_pb2_grpc.HealthStub(self._channel)

    @classmethod
    def from_channel(cls, channel: grpc.Channel, **kwargs: Any) -> AuditClient:
        """A client over an existing channel (with its own credentials, options or
        interceptors); closing the client leaves the channel open."""
        return cls("(channel)", channel=channel, **kwargs)

    @property
    def channel(self) -> grpc.Channel:
        return self._channel

    def close(self) -> None:
        """Closes the channel (if the client created it)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> AuditClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Waits until the channel is connected; raises `AuditError(UNAVAILABLE)` after
        `timeout` seconds (the client's timeout by default)."""
        wait = self.timeout if timeout is None else timeout
        try:
            grpc.channel_ready_future(self._channel).result(timeout=wait)
        except grpc.FutureTimeoutError:
            raise AuditError(
                grpc.StatusCode.UNAVAILABLE, f"cannot connect to {self.address} within {wait:g} s"
            ) from None

    # === recording ===

    def record(self, entry: entry_pb2.AuditEntry) -> service_pb2.RecordResponse:
        """Records one entry and returns its receipt (id, sequence, entry hash). A return means
        the entry is durable. The entry gets a UUIDv7 id when it has none, so the retries on
        `UNAVAILABLE` and deadline errors cannot store it twice. The caller's message is not
        modified."""
        (entry,) = with_ids([entry])
        request = service_pb2.RecordRequest(entry=entry)
        response: service_pb2.RecordResponse = self._call(self.stub.Record, request)
        return response

    def record_batch(
        self, entries: Iterable[entry_pb2.AuditEntry], *, request_id: str = ""
    ) -> service_pb2.RecordBatchResponse:
        """Records the entries of one call atomically (all or none), sharing `request_id` (a
        UUIDv7 when empty). Ids are filled in as for `record`; the receipt lists ids and
        sequences in request order. A bad entry fails the batch with `INVALID_ARGUMENT` whose
        `field_violations` name it (`entries[2].method`)."""
        request = service_pb2.RecordBatchRequest(
            request_id=request_id or uuid7_str(), entries=with_ids(entries)
        )
        response: service_pb2.RecordBatchResponse = self._call(self.stub.RecordBatch, request)
        return response

    # === reading ===

    def query_page(self, request: service_pb2.QueryRequest) -> service_pb2.QueryResponse:
        """One page of a query; most callers want `query`, which follows page tokens."""
        response: service_pb2.QueryResponse = self._call(self.stub.Query, request)
        return response

    def query(
        self,
        filter: service_pb2.Filter | None = None,
        *,
        order: Order = Order.ASCENDING,
        page_size: int = 0,
        limit: int | None = None,
    ) -> Iterator[entry_pb2.AuditEntry]:
        """The entries matching `filter` (every entry when `None`), oldest first unless
        `order` is `DESCENDING`, fetched `page_size` at a time (0: the server's default)
        following page tokens, up to `limit` entries. Lazy: pages are fetched as you iterate."""
        remaining = limit
        token = ""
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size or remaining, remaining)
            page = self.query_page(
                service_pb2.QueryRequest(
                    filter=filter,
                    page_size=size,
                    page_token=token,
                    order=int(order),  # type: ignore[arg-type]
                )
            )
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
    ) -> Subscription:
        """The entries matching `filter` from `start` on, live, as an iterator that reconnects
        after a drop and resumes after the last entry or heartbeat it saw: no gap, no
        duplicate. Stop it with `close()` (or `with client.subscribe(...) as entries:`)."""
        return Subscription(self.stub, filter or service_pb2.Filter(), start, retry)

    # === everything else ===

    def checkpoint(self, size: int = 0) -> service_pb2.GetCheckpointResponse:
        """The newest signed checkpoint (or the one of `size` entries) and the server's key."""
        request = service_pb2.GetCheckpointRequest(size=size)
        response: service_pb2.GetCheckpointResponse = self._call(self.stub.GetCheckpoint, request)
        return response

    def health(self, service: str = "") -> str:
        """The serving status of `service` (`""`: the server; `"audit.v1.AuditService"`) from
        `grpc.health.v1.Health/Check`: `SERVING`, `NOT_SERVING`, or `SERVICE_UNKNOWN`."""
        try:
            response: health_pb2.HealthCheckResponse = self._call(
                self._health.Check, health_pb2.HealthCheckRequest(service=service)
            )
        except AuditError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def _call(self, method: Callable[..., _T], request: object) -> _T:
        """Calls a unary `method`, retrying as `self.retry` says on the codes where sending the
        same request again is safe."""
        failures = 0
        while True:
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as rpc_error:
                error = AuditError.from_rpc_error(rpc_error)
                failures += 1
                if error.code not in _RECORD_RETRY_CODES or self.retry.gives_up_after(failures):
                    raise error from None
                time.sleep(self.retry.backoff(failures))


class Subscription(Iterator[entry_pb2.AuditEntry]):
    """A live stream of the entries matching a filter, in sequence order, that reconnects
    after drops and resumes after the last sequence it saw, so the consumer sees no gap and no
    duplicate.

    Iterating yields entries; it ends when `close()` is called (from any thread) and raises
    `AuditError` on a refusal (`PERMISSION_DENIED`, `INVALID_ARGUMENT`, ...) or once the retry
    policy gives up. A drop is a retryable status or the server ending the stream (as it does
    when shutting down). The resume point is the greater of the last entry's sequence and the
    last heartbeat's; a subscription that started "now" or at a time and dropped before either
    resumes from its original start.
    """

    def __init__(
        self, stub: Any, filter: service_pb2.Filter, start: Start, retry: RetryPolicy
    ) -> None:
        self._stub = stub
        self._filter = filter
        self._start = start
        self._retry = retry
        self._lock = threading.Lock()
        self._call: Any = None
        self._closed = False
        self._reconnects = 0
        self.resume_after: int | None = start if isinstance(start, int) else None
        """Every matching entry up to this sequence has been delivered (or skipped by the
        filter); `None` before the first entry or heartbeat of a subscription that did not
        start at a sequence."""
        self._entries = self._run()

    @property
    def reconnects(self) -> int:
        """How many times the stream was opened again after a drop."""
        return self._reconnects

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> entry_pb2.AuditEntry:
        return next(self._entries)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the subscription: the iteration ends (at once, if it is waiting)."""
        with self._lock:
            self._closed = True
            call = self._call
        if call is not None:
            call.cancel()

    def reconnect(self) -> None:
        """Ends the current stream as a dropped connection would; the subscription opens a new
        one and resumes after the last sequence it saw."""
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def _run(self) -> Iterator[entry_pb2.AuditEntry]:
        failures = 0
        while True:
            start = self.resume_after if self.resume_after is not None else self._start
            request = service_pb2.SubscribeRequest(
                filter=self._filter, start=start_position(start)
            )
            received = False
            failure: AuditError | None = None
            with self._lock:
                if self._is_closed():
                    return
                self._call = call = self._stub.Subscribe(request)
            try:
                for message in call:
                    received = True
                    kind = message.WhichOneof("message")
                    last = self.resume_after
                    if kind == "entry":
                        entry: entry_pb2.AuditEntry = message.entry
                        # Never yield a sequence twice, even if a server replays from before
                        # the resume point.
                        if last is not None and entry.sequence <= last:
                            continue
                        self.resume_after = entry.sequence
                        yield entry
                    elif kind == "heartbeat":
                        if last is None or message.heartbeat.sequence > last:
                            self.resume_after = message.heartbeat.sequence
            except grpc.RpcError as rpc_error:
                failure = AuditError.from_rpc_error(rpc_error)
            except GeneratorExit:
                # The consumer dropped the iterator without closing it: end the stream too.
                call.cancel()
                raise
            finally:
                with self._lock:
                    self._call = None
                    closed = self._is_closed()
                if closed:
                    call.cancel()
            if closed:
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
            self._reconnects += 1
            # A stream that delivered something is reopened at once; repeated failures back off.
            if not received:
                self._sleep(self._retry.backoff(failures))

    def _is_closed(self) -> bool:
        return self._closed

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._closed and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
