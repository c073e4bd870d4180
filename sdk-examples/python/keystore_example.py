#!/usr/bin/env python3
"""Serve the example key store behind the SDK's audit interceptor, call it, and check the audit
trail it left on the audit server.

Usage: python keystore_example.py HOST:PORT|unix:/path/to/audit.sock

Runs the key store twice on 127.0.0.1:0, on a `grpc.server` with `AuditInterceptor` and on a
`grpc.aio.server` with `AsyncAuditInterceptor`; each time it makes an OK call, calls that fail
(INVALID_ARGUMENT with BadRequest details, NOT_FOUND), a streaming call (and one that fails
mid-stream), a batch call and an excluded health check, then queries the audit server and
checks every stored entry. Then it checks the failure modes against an audit server that does
not answer: fail-closed refuses calls, fail-open serves them and counts what it drops.
Exits non-zero on any deviation.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import NoReturn, cast

import grpc
import grpc.aio
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import keystore
from audit import (
    AsyncAuditInterceptor,
    AuditClient,
    AuditError,
    AuditInterceptor,
    Outcome,
    Recorder,
    RetryPolicy,
    new_filter,
    principal_from_metadata,
)
from audit.v1 import entry_pb2

EXCLUDED = ["/grpc.health.v1.Health/*"]
# Nothing listens on port 1 of localhost: connections are refused at once.
UNREACHABLE = "127.0.0.1:1"


class ExampleFailed(Exception):
    """The interceptor or the audit server did not behave as documented."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ExampleFailed(message)


def ok(step: str, detail: str) -> None:
    print(f"ok    {step:<10} {detail}", flush=True)


# === the two kinds of server ===


class Served:
    """A key store serving on 127.0.0.1:0; `stop()` stops it."""

    port: int

    def stop(self) -> None:
        raise NotImplementedError


class ThreadServer(Served):
    def __init__(self, interceptor: AuditInterceptor, store: keystore.KeyStore) -> None:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[interceptor])
        self._server.add_generic_rpc_handlers((keystore.sync_handler(store),))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=1).wait(2)


class AsyncServer(Served):
    """A `grpc.aio.server` on an event loop of its own thread."""

    def __init__(self, interceptor: AsyncAuditInterceptor, store: keystore.KeyStore) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def start() -> tuple[grpc.aio.Server, int]:
            server = grpc.aio.server(interceptors=[interceptor])
            server.add_generic_rpc_handlers((keystore.async_handler(store),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        self._server, self.port = asyncio.run_coroutine_threadsafe(start(), self._loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(1), self._loop).result(3)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2)
        self._loop.close()


# === what the calls should leave in the trail ===


@dataclass(frozen=True)
class Want:
    """One expected entry."""

    method: str
    code: grpc.StatusCode
    resource: str
    event: str


def request_id_of(call: grpc.Call, streaming_or_failed: bool = False) -> str:
    """The `x-request-id` the interceptor returned: in the initial metadata of a call that sent
    a response, and in the trailing metadata of every call."""
    trailing = dict(call.trailing_metadata() or ())
    request_id = str(trailing.get("x-request-id", ""))
    check(request_id != "", f"no x-request-id in the trailing metadata: {trailing}")
    if not streaming_or_failed:
        initial = dict(call.initial_metadata() or ())
        check(
            initial.get("x-request-id") == request_id,
            f"x-request-id {initial.get('x-request-id')!r} in the initial metadata, {request_id!r} in the trailers",
        )
    return request_id


def as_call(error: grpc.RpcError) -> grpc.Call:
    """grpc's errors for calls are also `grpc.Call`s, with their status and metadata."""
    return cast(grpc.Call, error)


def failed_call(action: Callable[[], object], code: grpc.StatusCode) -> grpc.RpcError:
    try:
        action()
    except grpc.RpcError as error:
        got = as_call(error).code()
        check(got == code, f"the call failed with {got}, want {code.name}")
        return error
    raise ExampleFailed(f"the call succeeded, want {code.name}")


def exercise(client: keystore.KeyStoreClient, given_request_id: str) -> dict[str, list[Want]]:
    """Makes the calls; the entries each should leave, by the request id it was told."""
    wants: dict[str, list[Want]] = {}

    response, call = client.create("alpha", request_id=given_request_id)
    check(dict(response.items()).get("created_by") == "alice", f"CreateKey answered {response}")
    request_id = request_id_of(call)
    check(request_id == given_request_id, f"x-request-id {request_id!r} returned, want the one sent {given_request_id!r}")
    wants[request_id] = [Want(keystore.CREATE, grpc.StatusCode.OK, "keys/alpha", "KEY_CREATED")]

    _, call = client.create("beta")
    request_id = request_id_of(call)
    check(uuid.UUID(request_id).version == 7, f"generated x-request-id {request_id!r} is not a UUIDv7")
    wants[request_id] = [Want(keystore.CREATE, grpc.StatusCode.OK, "keys/beta", "KEY_CREATED")]

    error = failed_call(lambda: client.create("Not A Name"), grpc.StatusCode.INVALID_ARGUMENT)
    fields = [v.field for v in AuditError.from_rpc_error(error).field_violations]
    check(fields == ["name"], f"CreateKey refused fields {fields}, want ['name']")
    wants[request_id_of(as_call(error), True)] = [
        Want(keystore.CREATE, grpc.StatusCode.INVALID_ARGUMENT, "keys/Not A Name", "KEY_CREATED")
    ]

    error = failed_call(lambda: client.delete("nope"), grpc.StatusCode.NOT_FOUND)
    wants[request_id_of(as_call(error), True)] = [Want(keystore.DELETE, grpc.StatusCode.NOT_FOUND, "keys/nope", "KEY_DELETED")]

    stream = client.list("")
    names = [str(dict(key.items())["name"]) for key in stream]
    check(names == ["alpha", "beta"], f"ListKeys streamed {names}")
    assert isinstance(stream, grpc.Call)
    wants[request_id_of(stream, True)] = [Want(keystore.LIST, grpc.StatusCode.OK, "keys/*", "KEYS_LISTED")]

    stream = client.list("", limit=1)
    streamed: list[str] = []

    def drain() -> None:
        streamed.extend(str(dict(key.items())["name"]) for key in stream)

    error = failed_call(drain, grpc.StatusCode.RESOURCE_EXHAUSTED)
    check(streamed == ["alpha"], f"ListKeys(limit=1) streamed {streamed} before failing")
    wants[request_id_of(as_call(error), True)] = [Want(keystore.LIST, grpc.StatusCode.RESOURCE_EXHAUSTED, "keys/*", "KEYS_LISTED")]

    response, call = client.batch_delete(["alpha", "beta", "gone"])
    result = json_format.MessageToDict(response)
    check(
        result == {"deleted": ["alpha", "beta"], "missing": ["gone"]},
        f"BatchDeleteKeys answered {result}",
    )
    wants[request_id_of(call)] = [
        Want(keystore.BATCH_DELETE, grpc.StatusCode.OK, "", "KEYS_DELETED"),
        Want(keystore.BATCH_DELETE, grpc.StatusCode.OK, "keys/alpha", "KEY_DELETED"),
        Want(keystore.BATCH_DELETE, grpc.StatusCode.OK, "keys/beta", "KEY_DELETED"),
        Want(keystore.BATCH_DELETE, grpc.StatusCode.NOT_FOUND, "keys/gone", "KEY_DELETED"),
    ]
    return wants


def check_trail(
    audit: AuditClient, source: str, wants: dict[str, list[Want]], server_port: int
) -> list[entry_pb2.AuditEntry]:
    """The stored entries of `source` are exactly `wants`, with the caller and timing facts."""
    entries = list(audit.query(new_filter(source=source), page_size=4))
    want_count = sum(len(w) for w in wants.values())
    check(len(entries) == want_count, f"{len(entries)} entries stored for {source}, want {want_count}")
    by_request: dict[str, list[entry_pb2.AuditEntry]] = {}
    for entry in entries:
        by_request.setdefault(entry.request_id, []).append(entry)
    check(
        set(by_request) == set(wants),
        f"entries carry request ids {sorted(by_request)}, want {sorted(wants)}",
    )
    addresses = {entry.caller.network.address for entry in entries}
    check(len(addresses) == 1, f"one client connection, but callers {addresses}")
    (address,) = addresses
    host, _, port = address.rpartition(":")
    check(
        host == "127.0.0.1" and port.isdigit() and int(port) != server_port,
        f"caller address {address!r}, want the client's 127.0.0.1:PORT",
    )
    for request_id, want in wants.items():
        got = by_request[request_id]
        shown = [(e.method, e.status_code, e.resource, e.event) for e in got]
        expected = [(w.method, w.code.value[0], w.resource, w.event) for w in want]
        check(shown == expected, f"request {request_id}: entries {shown}, want {expected}")
        for entry, w in zip(got, want):
            check(int(entry.outcome) == int(Outcome.of(w.code)), f"{entry.resource or entry.method}: outcome {entry.outcome}")
            check(entry.caller.principal == "alice", f"principal {entry.caller.principal!r}, want 'alice'")
            check("grpc-python" in entry.caller.user_agent, f"user agent {entry.caller.user_agent!r}")
            check(entry.HasField("time") and entry.id != "", "an entry without time or id")
        call_entry = got[0]
        check(call_entry.HasField("latency"), f"the call entry of {request_id} has no latency")
        if want[0].code != grpc.StatusCode.OK and call_entry.status_message == "":
            raise ExampleFailed(f"the failed call {request_id} has no status message")
    return entries


def audited_keystore(address: str, run_id: str, flavor: str) -> None:
    source = f"keystore-py-{flavor}-{run_id}"
    store = keystore.KeyStore()
    audit = AuditClient(address)
    recorder = Recorder(audit, source=source)
    principal = principal_from_metadata("x-user")
    server: Served
    if flavor == "grpc":
        server = ThreadServer(AuditInterceptor(recorder, principal=principal, exclude=EXCLUDED), store)
    else:
        server = AsyncServer(AsyncAuditInterceptor(recorder, principal=principal, exclude=EXCLUDED), store)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            wants = exercise(keystore.KeyStoreClient(channel, "alice"), f"req-{flavor}-{run_id}")
            if flavor == "grpc":
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]
                check(status.status == health_pb2.HealthCheckResponse.SERVING, f"key store health {status}")
    finally:
        server.stop()
    delivered = recorder.close(timeout=10)
    stats = recorder.stats()
    want_count = sum(len(w) for w in wants.values())
    check(delivered, f"the recorder did not deliver its queue within 10 s: {stats}")
    check(
        (stats.recorded, stats.dropped, stats.failed) == (want_count, 0, 0),
        f"recorder counters {stats}, want {want_count} recorded, none dropped or failed",
    )
    try:
        entries = check_trail(audit, source, wants, server.port)
    finally:
        audit.close()
    batch = next(ids for ids, w in wants.items() if len(w) > 1)
    ok(
        flavor,
        f"{len(wants)} calls, {len(entries)} entries (health excluded); batch {batch} has 4 entries; "
        f"caller {entries[0].caller.network.address}",
    )


def failure_modes(run_id: str) -> None:
    """Against an audit server that refuses connections: fail-closed refuses, fail-open serves."""
    quick = RetryPolicy(attempts=None, initial_backoff=0.05, max_backoff=0.2)
    unreachable = AuditClient(UNREACHABLE, timeout=1)

    store = keystore.KeyStore()
    recorder = Recorder(unreachable, source=f"keystore-py-closed-{run_id}", backoff=quick)
    server = ThreadServer(AuditInterceptor(recorder, fail_closed=0.5), store)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            client = keystore.KeyStoreClient(channel, "alice")
            started = time.monotonic()
            error = failed_call(lambda: client.create("k1"), grpc.StatusCode.UNAVAILABLE)
            waited = time.monotonic() - started
            details = as_call(error).details()
            check(details == "audit trail unavailable", f"refused with {details!r}")
            check(0.4 <= waited < 3, f"the fail-closed call waited {waited:.2f} s, want the 0.5 s deadline")
            # The handler ran (its effect stays), but the caller was told UNAVAILABLE.
            _expect_key(store, "k1", True)
            # The recorder has seen the audit service refuse a connection: it is known down.
            known_down = time.monotonic() + 5
            while recorder.is_available() and time.monotonic() < known_down:
                time.sleep(0.01)
            started = time.monotonic()
            failed_call(lambda: client.create("k2"), grpc.StatusCode.UNAVAILABLE)
            refused_in = time.monotonic() - started
            check(refused_in < 0.4, f"the known-down trail still waited {refused_in:.2f} s")
            _expect_key(store, "k2", False)
    finally:
        server.stop()
    recorder.close(timeout=0.2)
    closed_stats = recorder.stats()

    recorder = Recorder(unreachable, source=f"keystore-py-open-{run_id}", queue_capacity=1, backoff=quick)
    server = ThreadServer(AuditInterceptor(recorder), keystore.KeyStore())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            client = keystore.KeyStoreClient(channel, "alice")
            for name in ["a", "b", "c", "d"]:
                client.create(name)
    finally:
        server.stop()
    check(recorder.stats().dropped >= 1, f"a full queue dropped nothing: {recorder.stats()}")
    recorder.close(timeout=0.2)
    open_stats = recorder.stats()
    check(
        open_stats.recorded == 0 and open_stats.dropped == 4,
        f"fail-open counters {open_stats}, want the 4 calls dropped (none could be delivered)",
    )
    unreachable.close()
    ok(
        "failure",
        f"fail-closed: UNAVAILABLE after the deadline ({waited:.2f} s), then at once without running "
        f"({refused_in:.3f} s), {closed_stats.dropped} undelivered; fail-open: 4 calls served, "
        f"{open_stats.dropped} entries dropped and counted",
    )


def _expect_key(store: keystore.KeyStore, name: str, present: bool) -> None:
    names = [key["name"] for key in store.list(name, 0)]
    check((name in names) == present, f"key {name} {'missing' if present else 'created'} in the store")


def fail(message: str) -> NoReturn:
    print(f"FAIL  {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        print(f"usage: {argv[0]} HOST:PORT|unix:/path/to/audit.sock", file=sys.stderr)
        sys.exit(2)
    # The recorder logs when the audit service becomes unreachable and when it drops entries.
    logging.basicConfig(level=logging.WARNING, format="      log: %(name)s: %(message)s")
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:12]
    try:
        for flavor in ["grpc", "grpc.aio"]:
            audited_keystore(argv[1], run_id, flavor)
        failure_modes(run_id)
    except (ExampleFailed, AuditError) as err:
        fail(str(err))
    except grpc.RpcError as err:
        fail(f"unexpected call failure: {err}")
    print(f"python key store example passed in {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv)
