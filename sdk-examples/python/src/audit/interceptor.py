"""Automatic auditing of grpcio servers: one audit entry per call.

    recorder = Recorder(AuditClient("127.0.0.1:50051"), source="keystore")
    interceptor = AuditInterceptor(
        recorder,
        principal=principal_from_metadata("x-user"),
        exclude=["/grpc.health.v1.Health/*"],
    )
    server = grpc.server(ThreadPoolExecutor(8), interceptors=[interceptor])
    # asyncio: grpc.aio.server(interceptors=[AsyncAuditInterceptor(recorder)])

Per call, the entry holds the full method; the caller (the peer address from the connection,
the SPIFFE ID and certificate subject of a TLS client certificate, the principal from a
configurable function, the user agent); the gRPC status code and message the call ended with
(unary and streaming, returned, set with `context.set_code` or raised with `context.abort`; an
exception is `UNKNOWN`, a call cancelled by its client or its deadline `CANCELLED`); the latency;
and the `request_id`: the caller's `x-request-id` metadata when it is 1 to 128 visible ASCII
characters, or a generated UUIDv7, which the handler sees in its invocation metadata and which
is returned in the `x-request-id` response metadata (initial metadata when the call sends any,
and trailing metadata always).

A handler adds per-operation entries and describes the call through `AuditHandle.current()`.

Failure modes: fail-open (the default), a call never waits for the audit trail; its entries are
queued and delivered in the background, or dropped and counted when the queue is full.
Fail-closed (`fail_closed=deadline`), an unaudited call must not succeed: while the recorder
knows the audit service is unreachable or its queue is full, calls are refused with
`UNAVAILABLE` ("audit trail unavailable") before the handler runs (the refusal is queued as the
call's entry); otherwise the handler runs and the call's status is held until its entries are
stored, and becomes `UNAVAILABLE` if that does not happen within `deadline` seconds. Messages a
streaming handler already sent are not taken back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import logging
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import grpc
import grpc.aio

from audit.builder import Outcome, duration, new_entry, status_code_number, timestamp
from audit.recorder import Recorder
from audit.uuid7 import uuid7_str
from audit.v1 import entry_pb2

__all__ = [
    "AsyncAuditInterceptor",
    "AuditHandle",
    "AuditInterceptor",
    "CallInfo",
    "principal_from_metadata",
]

_log = logging.getLogger("audit.interceptor")

REQUEST_ID = "x-request-id"
AUDIT_UNAVAILABLE = "audit trail unavailable"

_current: contextvars.ContextVar[AuditHandle | None] = contextvars.ContextVar(
    "audit_handle", default=None
)


@dataclass(frozen=True)
class CallInfo:
    """What is known about a call when it starts, for the principal function."""

    method: str
    """The full method, `/package.Service/Method`."""
    metadata: Mapping[str, str]
    """The caller's text metadata (the last value of each key)."""
    peer: str
    """The peer as gRPC names it: `ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`, `unix:...`."""
    auth_context: Mapping[str, Sequence[bytes]] = field(default_factory=dict)
    """The TLS facts of the connection (`x509_common_name`, `x509_subject_alternative_name`)."""


PrincipalFn = Callable[[CallInfo], "str | None"]


def principal_from_metadata(key: str) -> PrincipalFn:
    """Takes the principal from the metadata `key` as sent. Trust it only when something in
    front of the service (a proxy, an authentication interceptor) sets it."""
    key = key.lower()
    return lambda info: info.metadata.get(key)


# === AuditHandle ===


class AuditHandle:
    """The audit trail of one call in progress. Inside a handler audited by an interceptor,
    `AuditHandle.current()` returns it; use it to add one entry per operation of a batch call
    (all sharing the call's `request_id`) and to describe the call's own entry.

        audit = AuditHandle.current()       # None when the call is not audited
        if audit is not None:
            audit.annotate(event="KEYS_DELETED", category="KEY_MANAGEMENT")
            for name in names:
                audit.record_operation(event="KEY_DELETED", resource=f"keys/{name}")

    The call's entry and its operations are delivered together, in one atomic `RecordBatch`,
    when the call ends.
    """

    def __init__(self, template: entry_pb2.AuditEntry, recorder: Recorder) -> None:
        self._template = template
        self._recorder = recorder
        self._lock = threading.Lock()
        self._call = entry_pb2.AuditEntry()
        self._call.CopyFrom(template)
        self._operations: list[entry_pb2.AuditEntry] = []
        self._finished = False

    @staticmethod
    def current() -> AuditHandle | None:
        """The handle of the audited call being served, or None outside one."""
        return _current.get()

    @property
    def request_id(self) -> str:
        """The call's `request_id`: the caller's `x-request-id`, or the one generated for it."""
        return self._template.request_id

    @property
    def method(self) -> str:
        return self._template.method

    @property
    def caller(self) -> entry_pb2.Caller:
        """The caller as the interceptor saw it: peer, principal, user agent (a copy)."""
        caller = entry_pb2.Caller()
        caller.CopyFrom(self._template.caller)
        return caller

    def annotate(self, **fields: Any) -> None:
        """Sets fields of the call's own entry: the keyword arguments of `new_entry`
        (`event`, `category`, `resource`, `principal` once authenticated, `details`, `labels`,
        ...). The interceptor sets the status, outcome and latency when the call ends."""
        change = new_entry(method=self.method, **fields)
        change.ClearField("outcome")
        with self._lock:
            self._call.MergeFrom(change)

    def operation(self, **fields: Any) -> entry_pb2.AuditEntry:
        """A new operation entry with the call's facts (source, method, request id, caller,
        time now) and `fields` (the keyword arguments of `new_entry`: `event`, `resource`,
        `status`, `status_message`, ...); pass it to `record`."""
        entry = entry_pb2.AuditEntry()
        entry.CopyFrom(self._template)
        entry.time.CopyFrom(timestamp(datetime.now(timezone.utc)))
        entry.MergeFrom(new_entry(method=self.method, **fields))
        return entry

    def record(self, entry: entry_pb2.AuditEntry) -> None:
        """Adds one operation's entry. Its `request_id` becomes the call's; an empty `method` or
        `caller` is taken from the call. Recorded with the call's own entry when the call ends
        (or on its own, if the call has already ended)."""
        if not entry.method:
            entry.method = self._template.method
        if not entry.HasField("caller"):
            entry.caller.CopyFrom(self._template.caller)
        entry.request_id = self._template.request_id
        with self._lock:
            if not self._finished:
                self._operations.append(entry)
                return
        self._recorder.record([entry], self.request_id)

    def record_operation(self, **fields: Any) -> None:
        """`record(operation(**fields))`."""
        self.record(self.operation(**fields))

    def _finish(self) -> tuple[entry_pb2.AuditEntry, list[entry_pb2.AuditEntry]]:
        with self._lock:
            self._finished = True
            operations, self._operations = self._operations, []
            return self._call, operations


# === what both interceptors share ===


@dataclass
class _Call:
    """The pending entry of one call, recorded exactly once."""

    handle: AuditHandle
    recorder: Recorder
    fail_closed: float | None
    start: float = field(default_factory=time.monotonic)
    finished: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def finish(
        self, code: grpc.StatusCode, message: str, *, wait: bool = True
    ) -> concurrent.futures.Future[bool] | None:
        """Queues the call's entry with its status, together with its operations. Returns
        None when nothing must wait, else a future telling whether the entries were stored
        (fail-closed)."""
        with self.lock:
            if self.finished:
                return None
            self.finished = True
        latency = time.monotonic() - self.start
        call, operations = self.handle._finish()
        call.outcome = int(Outcome.of(code))  # type: ignore[assignment]
        call.status_code = status_code_number(code)
        call.status_message = message
        call.latency.CopyFrom(duration(latency))
        closed = self.fail_closed is not None and wait
        ack = self.recorder.enqueue([call, *operations], self.handle.request_id, wait=closed)
        if not closed:
            return None
        if ack is None:  # dropped: the queue is full
            done: concurrent.futures.Future[bool] = concurrent.futures.Future()
            done.set_result(False)
            return done
        return ack

    def cancelled(self) -> None:
        """The call ended before its status was known: cancelled by its client, its deadline,
        or its connection."""
        self.finish(grpc.StatusCode.CANCELLED, "the call ended before its status was sent", wait=False)


class _Policy:
    def __init__(
        self,
        recorder: Recorder,
        *,
        principal: PrincipalFn | None = None,
        exclude: Iterable[str] = (),
        fail_closed: float | None = None,
    ) -> None:
        self.recorder = recorder
        self.principal = principal
        self.excluded = tuple(exclude)
        self.fail_closed = fail_closed

    def audits(self, method: str) -> bool:
        """Whether `method` is audited: it matches no exclusion, a full method or a prefix
        ending in `*`."""
        for pattern in self.excluded:
            if method == pattern or (pattern.endswith("*") and method.startswith(pattern[:-1])):
                return False
        return True

    def begin(self, method: str, context: Any) -> tuple[_Call, list[tuple[str, str]]]:
        """Gathers the facts of a call starting with `context`: its `_Call`, and the
        invocation metadata the handler sees (with the call's `x-request-id`)."""
        raw = tuple(context.invocation_metadata() or ())
        metadata = {k: v for k, v in raw if isinstance(v, str)}
        request_id = metadata.get(REQUEST_ID, "")
        if not _valid_request_id(request_id):
            request_id = uuid7_str()
        seen = [(k, v) for k, v in raw if k != REQUEST_ID]
        seen.append((REQUEST_ID, request_id))
        peer = context.peer() or ""
        auth = dict(context.auth_context() or {})
        info = CallInfo(method, metadata, peer, auth)
        caller = _caller_of(info)
        if self.principal is not None:
            try:
                caller.principal = self.principal(info) or ""
            except Exception:  # auditing never fails a call of its own accord
                _log.exception("the principal function failed for %s", method)
        template = entry_pb2.AuditEntry(
            source=self.recorder.source, method=method, request_id=request_id, caller=caller
        )
        template.time.CopyFrom(timestamp(datetime.now(timezone.utc)))
        handle = AuditHandle(template, self.recorder)
        return _Call(handle, self.recorder, self.fail_closed), seen

    def refuses(self) -> bool:
        """Fail-closed and the audit trail is known to be down: do not run the handler."""
        return self.fail_closed is not None and not self.recorder.is_available()


def _valid_request_id(value: str) -> bool:
    return 0 < len(value) <= 128 and all(33 <= ord(c) <= 126 for c in value)


def _caller_of(info: CallInfo) -> entry_pb2.Caller:
    """The caller's peer from the connection, and its user agent. A Unix-socket peer is left
    unset: grpcio does not expose the peer's credentials."""
    caller = entry_pb2.Caller(user_agent=info.metadata.get("user-agent", ""))
    kind, _, address = info.peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        caller.network.address = urllib.parse.unquote(address)  # ipv6:%5B::1%5D:5000
        for san in info.auth_context.get("x509_subject_alternative_name", ()):
            text = san.decode("utf-8", "replace")
            if text.startswith("spiffe://"):
                caller.network.spiffe_id = text
                break
        for cn in info.auth_context.get("x509_common_name", ()):
            caller.network.certificate_subject = "CN=" + cn.decode("utf-8", "replace")
            break
    return caller


def _details_text(details: object) -> str:
    if isinstance(details, bytes):
        return details.decode("utf-8", "replace")
    return details if isinstance(details, str) else ""


def _status_after(context: Any, error: BaseException | None, unknown: str) -> tuple[grpc.StatusCode, str]:
    """The status a call ends with: what the handler set (`set_code`, `abort`), else OK, or
    UNKNOWN after an exception (as grpcio answers it)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code, _details_text(context.details())
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "the call was cancelled"
    if error is not None:
        return grpc.StatusCode.UNKNOWN, unknown.format(error=error, kind=type(error).__name__)
    return grpc.StatusCode.OK, ""


def _with_request_id(metadata: Any, request_id: str) -> list[tuple[str, Any]]:
    items = [(k, v) for k, v in tuple(metadata or ()) if k != REQUEST_ID]
    items.append((REQUEST_ID, request_id))
    return items


class _Context:
    """The servicer context the handler sees: the real one, with the call's `x-request-id`
    in the invocation metadata and in the response metadata it sends."""

    def __init__(self, inner: Any, request_id: str, metadata: list[tuple[str, str]]) -> None:
        self._inner = inner
        self._request_id = request_id
        self._metadata = tuple(metadata)
        self.headers_sent = False
        inner.set_trailing_metadata([(REQUEST_ID, request_id)])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._inner.set_trailing_metadata(_with_request_id(trailing_metadata, self._request_id))

    def send_initial_metadata(self, initial_metadata: Any) -> Any:
        self.headers_sent = True
        return self._inner.send_initial_metadata(_with_request_id(initial_metadata, self._request_id))

    def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = None) -> Any:
        if trailing_metadata is None:  # keeps what set_trailing_metadata set, x-request-id too
            return self._inner.abort(code, details)
        return self._inner.abort(code, details, _with_request_id(trailing_metadata, self._request_id))

    def abort_with_status(self, status: grpc.Status) -> Any:
        metadata = _with_request_id(status.trailing_metadata, self._request_id)
        return self._inner.abort_with_status(_Status(status.code, status.details, tuple(metadata)))


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, Any], ...]


# === grpc (threads) ===


class AuditInterceptor(grpc.ServerInterceptor, _Policy):
    """Audits every call of a `grpc.server` (see the module docs): one entry per call through
    `recorder`. `principal` extracts the caller's principal from a `CallInfo`; `exclude` lists
    methods not audited (full, or a prefix ending in `*`); `fail_closed` is the deadline in
    seconds for a call's entries to be stored (fail-open when None)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.audits(method):
            return handler
        if handler.response_streaming:
            inner = handler.stream_stream if handler.request_streaming else handler.unary_stream
            wrapped_stream = self._streaming(method, inner)
            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            return make(
                wrapped_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        inner = handler.stream_unary if handler.request_streaming else handler.unary_unary
        wrapped = self._unary(method, inner)
        make_unary = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return make_unary(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _start(self, method: str, context: grpc.ServicerContext) -> tuple[_Call, _Context]:
        call, metadata = self.begin(method, context)
        audited = _Context(context, call.handle.request_id, metadata)
        # Runs when the call ends, however it ends; a no-op once the entry is queued.
        context.add_callback(call.cancelled)
        if self.refuses():
            # Do not act while the audit trail is down; the refusal is the call's entry.
            call.finish(grpc.StatusCode.UNAVAILABLE, AUDIT_UNAVAILABLE, wait=False)
            context.abort(grpc.StatusCode.UNAVAILABLE, AUDIT_UNAVAILABLE)
        return call, audited

    def _end(self, call: _Call, context: grpc.ServicerContext, error: BaseException | None) -> None:
        """Records the call's status; fail-closed, turns it into UNAVAILABLE unless stored in
        time."""
        code, message = _status_after(context, error, "Exception calling application: {error}")
        ack = call.finish(code, message)
        if ack is not None and not _stored(ack, call.fail_closed):
            context.abort(grpc.StatusCode.UNAVAILABLE, AUDIT_UNAVAILABLE)

    def _unary(self, method: str, inner: Any) -> Callable[[Any, grpc.ServicerContext], Any]:
        def audited(request: Any, context: grpc.ServicerContext) -> Any:
            call, audited_context = self._start(method, context)
            token = _current.set(call.handle)
            try:
                response = inner(request, audited_context)
            except BaseException as error:
                self._end(call, context, error)
                raise
            finally:
                _current.reset(token)
            self._end(call, context, None)
            if not audited_context.headers_sent:
                audited_context.send_initial_metadata(())
            return response

        return audited

    def _streaming(self, method: str, inner: Any) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        def audited(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call, audited_context = self._start(method, context)
            try:
                token = _current.set(call.handle)
                try:
                    responses = iter(inner(request, audited_context))
                finally:
                    _current.reset(token)
                while True:
                    # The handle is current while the handler's generator runs, not in between.
                    token = _current.set(call.handle)
                    try:
                        response = next(responses)
                    except StopIteration:
                        break
                    finally:
                        _current.reset(token)
                    if not audited_context.headers_sent:
                        audited_context.send_initial_metadata(())
                    yield response
            except GeneratorExit:
                call.cancelled()
                raise
            except BaseException as error:
                self._end(call, context, error)
                raise
            self._end(call, context, None)

        return audited


def _stored(ack: concurrent.futures.Future[bool], deadline: float | None) -> bool:
    try:
        return ack.result(timeout=deadline)
    except concurrent.futures.TimeoutError:
        return False


# === grpc.aio ===


class AsyncAuditInterceptor(grpc.aio.ServerInterceptor, _Policy):
    """`AuditInterceptor` for `grpc.aio.server`: the same entries, options and failure modes,
    for `async def` handlers and async generators."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.audits(method):
            return handler
        if handler.response_streaming:
            inner = handler.stream_stream if handler.request_streaming else handler.unary_stream
            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            return make(
                self._streaming(method, inner),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        inner = handler.stream_unary if handler.request_streaming else handler.unary_unary
        make_unary = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return make_unary(
            self._unary(method, inner),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _start(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[_Call, _Context]:
        call, metadata = self.begin(method, context)
        audited = _Context(context, call.handle.request_id, metadata)
        if self.refuses():
            call.finish(grpc.StatusCode.UNAVAILABLE, AUDIT_UNAVAILABLE, wait=False)
            await context.abort(grpc.StatusCode.UNAVAILABLE, AUDIT_UNAVAILABLE)
        return call, audited

    async def _end(
        self, call: _Call, context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
    ) -> None:
        code, message = _status_after(context, error, "Unexpected {kind}: {error}")
        ack = call.finish(code, message)
        if ack is None:
            return
        try:
            stored = await asyncio.wait_for(asyncio.wrap_future(ack), call.fail_closed)
        except asyncio.TimeoutError:
            stored = False
        if not stored:
            await context.abort(grpc.StatusCode.UNAVAILABLE, AUDIT_UNAVAILABLE)

    def _unary(self, method: str, inner: Any) -> Callable[[Any, Any], Awaitable[Any]]:
        async def audited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call, audited_context = await self._start(method, context)
            _current.set(call.handle)  # the call runs in its own task: no reset needed
            try:
                response = inner(request, audited_context)
                if inspect.isawaitable(response):
                    response = await response
            except asyncio.CancelledError:
                call.cancelled()
                raise
            except BaseException as error:
                await self._end(call, context, error)
                raise
            await self._end(call, context, None)
            if not audited_context.headers_sent:
                await audited_context.send_initial_metadata(())
            return response

        return audited

    def _streaming(self, method: str, inner: Any) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def audited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            call, audited_context = await self._start(method, context)
            _current.set(call.handle)
            try:
                responses = inner(request, audited_context)
                if hasattr(responses, "__aiter__"):
                    async for response in responses:
                        if not audited_context.headers_sent:
                            await audited_context.send_initial_metadata(())
                        yield response
                elif inspect.isawaitable(responses):  # it writes with `await context.write(...)`
                    await responses
                else:  # a plain generator
                    for response in responses:
                        yield response
            except (asyncio.CancelledError, GeneratorExit):
                call.cancelled()
                raise
            except BaseException as error:
                await self._end(call, context, error)
                raise
            await self._end(call, context, None)

        return audited
