#!/usr/bin/env python3
"""Record, batch, query, subscribe and health-check against an audit server, with `AuditClient`.

Usage: python example.py HOST:PORT|unix:/path/to/audit.sock

Prints one line per step and exits non-zero when the server (or the client) did not behave as
expected.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from datetime import timedelta
from typing import NoReturn

import grpc

from audit import (
    AsyncAuditClient,
    AuditClient,
    AuditError,
    Level,
    Order,
    Outcome,
    Subscription,
    new_entry,
    new_filter,
)
from audit.v1 import entry_pb2, service_pb2

CALL_TIMEOUT_S = 5.0
SUBSCRIBE_TIMEOUT_S = 10.0
PAGED_ENTRIES = 25
PAGE_SIZE = 7


class ExampleFailed(Exception):
    """The server answered, but not as the contract says."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ExampleFailed(message)


def ok(step: str, detail: str) -> None:
    print(f"ok    {step:<10} {detail}", flush=True)


def invoice_entry(source: str, run_id: str, **fields: object) -> entry_pb2.AuditEntry:
    """An entry with the fields every example entry shares; `fields` adds or overrides."""
    values: dict[str, object] = {
        "source": source,
        "method": "/billing.v1.InvoiceService/CreateInvoice",
        "event": "INVOICE_CREATED",
        "category": "BILLING",
        "level": Level.INFO,
        "peer_address": "127.0.0.1:40000",
        "principal": "alice@example.com",
        "user_agent": f"grpc-python/{grpc.__version__}",
        "latency": timedelta(milliseconds=12),
        "labels": {"run": run_id, "language": "python"},
    }
    values.update(fields)
    return new_entry(**values)  # type: ignore[arg-type]


def take(subscription: Subscription, count: int, timeout: float) -> list[entry_pb2.AuditEntry]:
    """The next `count` entries of `subscription`, or ExampleFailed after `timeout` seconds (the
    subscription is then closed)."""
    entries: list[entry_pb2.AuditEntry] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def consume() -> None:
        try:
            for entry in subscription:
                entries.append(entry)
                if len(entries) == count:
                    return
        except BaseException as error:  # reported below, in the caller's thread
            errors.append(error)
        finally:
            done.set()

    threading.Thread(target=consume, daemon=True).start()
    if not done.wait(timeout):
        subscription.close()
        raise ExampleFailed(f"Subscribe delivered {len(entries)} of {count} entries within {timeout:.0f} s")
    if errors:
        raise errors[0]
    check(len(entries) == count, f"the subscription ended after {len(entries)} of {count} entries")
    return entries


def record_one(client: AuditClient, source: str, run_id: str) -> service_pb2.RecordResponse:
    entry = invoice_entry(
        source,
        run_id,
        resource="invoices/INV-1001",
        details={"invoice": "INV-1001", "amount_cents": 4200, "paid": False},
    )
    receipt = client.record(entry)
    check(receipt.id != "", f"Record returned an empty id: {receipt}")
    check(uuid.UUID(receipt.id).version == 7, f"the client did not choose a UUIDv7 id: {receipt.id}")
    check(entry.id == "", "record() changed the caller's entry")
    check(receipt.sequence > 0, f"Record returned sequence {receipt.sequence}, want > 0")
    again = client.record(_with_id(entry, receipt.id))
    check(
        (again.id, again.sequence) == (receipt.id, receipt.sequence),
        f"recording id {receipt.id} again gave sequence {again.sequence}, want {receipt.sequence} (idempotent)",
    )
    ok("record", f"id={receipt.id} sequence={receipt.sequence}; the same id again stores nothing new")
    return receipt


def _with_id(entry: entry_pb2.AuditEntry, id: str) -> entry_pb2.AuditEntry:
    copy = entry_pb2.AuditEntry()
    copy.CopyFrom(entry)
    copy.id = id
    return copy


def record_batch(client: AuditClient, source: str, run_id: str, request_id: str) -> service_pb2.RecordBatchResponse:
    # One entry per operation of one audited call, all sharing the call's request_id.
    keys = ["keys/alpha", "keys/beta", "keys/gamma"]
    entries = [
        invoice_entry(
            source,
            run_id,
            method="/kms.v1.KeyService/DeleteKeys",
            event="KEY_DELETED",
            category="KEY_MANAGEMENT",
            resource=key,
        )
        for key in keys[:2]
    ]
    # The caller was not allowed to delete the last key.
    entries.append(
        invoice_entry(
            source,
            run_id,
            method="/kms.v1.KeyService/DeleteKeys",
            event="KEY_DELETED",
            category="KEY_MANAGEMENT",
            resource=keys[2],
            status=grpc.StatusCode.PERMISSION_DENIED,
            status_message="not allowed to delete keys/gamma",
        )
    )
    check(int(entries[2].outcome) == int(Outcome.DENIED), "new_entry did not derive DENIED from PERMISSION_DENIED")
    response = client.record_batch(entries, request_id=request_id)
    check(response.request_id == request_id, f"RecordBatch request_id={response.request_id!r}, want {request_id!r}")
    check(len(response.ids) == 3, f"RecordBatch returned {len(response.ids)} ids, want 3")
    check(len(response.sequences) == 3, f"RecordBatch returned {len(response.sequences)} sequences, want 3")
    sequences = list(response.sequences)
    check(sequences == sorted(set(sequences)), f"RecordBatch sequences {sequences} are not strictly increasing")
    ok("batch", f"request_id={request_id} sequences={sequences}")
    return response


def query_back(
    client: AuditClient,
    source: str,
    run_id: str,
    single: service_pb2.RecordResponse,
    batch: service_pb2.RecordBatchResponse,
) -> None:
    by_request = list(client.query(new_filter(request_id=batch.request_id), page_size=2))
    check(
        [e.id for e in by_request] == list(batch.ids),
        f"query(request_id) returned ids {[e.id for e in by_request]}, want {list(batch.ids)}",
    )
    check(
        [e.sequence for e in by_request] == list(batch.sequences),
        f"query(request_id) returned sequences {[e.sequence for e in by_request]}, want {list(batch.sequences)}",
    )
    check(
        [e.resource for e in by_request] == ["keys/alpha", "keys/beta", "keys/gamma"],
        f"query(request_id) returned resources {[e.resource for e in by_request]}",
    )
    denied = list(
        client.query(new_filter(request_id=batch.request_id, outcomes=[Outcome.DENIED]), page_size=2)
    )
    check(
        [e.resource for e in denied] == ["keys/gamma"],
        f"query(request_id, outcomes=[DENIED]) returned {[e.resource for e in denied]}, want ['keys/gamma']",
    )

    by_source = list(client.query(new_filter(source=source), page_size=2))
    want_ids = [single.id, *batch.ids]
    check(
        [e.id for e in by_source] == want_ids,
        f"query(source) returned ids {[e.id for e in by_source]}, want {want_ids}",
    )
    first = by_source[0]
    check(first.sequence == single.sequence, f"recorded entry has sequence {first.sequence}, want {single.sequence}")
    check(first.request_id != "", "the server did not fill request_id of the recorded entry")
    check(first.HasField("received_time"), "the server did not fill received_time")
    check(first.HasField("recorder"), "the server did not fill recorder")
    check(first.caller.network.address == "127.0.0.1:40000", f"caller came back as {first.caller}")
    check(first.latency.ToTimedelta() == timedelta(milliseconds=12), f"latency came back as {first.latency}")
    details = dict(first.details.items())
    check(
        details == {"invoice": "INV-1001", "amount_cents": 4200.0, "paid": False},
        f"details came back as {details}",
    )
    check(dict(first.labels) == {"run": run_id, "language": "python"}, f"labels came back as {dict(first.labels)}")
    newest = list(client.query(new_filter(source=source), order=Order.DESCENDING, limit=2))
    check(
        [e.id for e in newest] == [batch.ids[2], batch.ids[1]],
        f"query(source, DESCENDING, limit=2) returned {[e.id for e in newest]}",
    )
    ok(
        "query",
        f"{len(by_request)} entries for request_id, 1 denied, {len(by_source)} for source {source}; "
        f"recorder={first.recorder.WhichOneof('peer')} details and labels intact; newest first with a limit",
    )


def subscribe_live(client: AuditClient, source: str, run_id: str, after_sequence: int) -> None:
    # Resume right after the last sequence we saw, so nothing can slip between opening the
    # stream and recording: the server replays what is stored after it, then goes live.
    with client.subscribe(new_filter(source=source), after_sequence) as subscription:
        live = client.record(invoice_entry(source, run_id, event="INVOICE_PAID", resource="invoices/INV-1001"))
        (entry,) = take(subscription, 1, SUBSCRIBE_TIMEOUT_S)
        check(
            entry.id == live.id and entry.sequence == live.sequence,
            f"Subscribe delivered id={entry.id} sequence={entry.sequence} first, "
            f"want the new entry id={live.id} sequence={live.sequence}",
        )
        check(entry.event == "INVOICE_PAID", f"Subscribe delivered event {entry.event!r}")
        check(subscription.resume_after == live.sequence, f"resume_after is {subscription.resume_after}")
    ok("subscribe", f"received id={entry.id} sequence={entry.sequence} recorded after the stream opened")


def refused_fields(client: AuditClient, source: str) -> None:
    """Errors say which field was refused, from the google.rpc.BadRequest details."""
    try:
        client.record(new_entry(source=source, method=""))
        raise ExampleFailed("Record accepted an entry without a method")
    except AuditError as error:
        check(error.code == grpc.StatusCode.INVALID_ARGUMENT, f"Record without a method: {error}")
        fields = [v.field for v in error.field_violations]
        check(fields == ["entry.method"], f"Record without a method refused fields {fields}, want ['entry.method']")
        single = str(error)
    good = new_entry(source=source, method="/kms.v1.KeyService/DeleteKeys")
    try:
        client.record_batch([good, new_entry(source="", method="/kms.v1.KeyService/DeleteKeys")])
        raise ExampleFailed("RecordBatch accepted an entry without a source")
    except AuditError as error:
        fields = [v.field for v in error.field_violations]
        check(fields == ["entries[1].source"], f"RecordBatch refused fields {fields}, want ['entries[1].source']")
        check(not error.retryable, f"{error.code.name} should not be retryable")
    stored = list(client.query(new_filter(source=source, method="/kms.v1.KeyService/DeleteKeys")))
    check(len(stored) == 3, f"a refused batch stored something: {len(stored)} entries, want the 3 of before")
    ok("refused", f"{single}; batch refused {fields[0]} and stored nothing")


def paging(client: AuditClient, run_id: str) -> tuple[str, list[int]]:
    """More entries than one page, read back through several pages."""
    source = f"python-paging-{run_id}"
    sequences: list[int] = []
    for index in range(0, PAGED_ENTRIES, 10):
        batch = client.record_batch(
            [
                new_entry(source=source, method="/kms.v1.KeyService/RotateKey", resource=f"keys/k{i:02}")
                for i in range(index, min(index + 10, PAGED_ENTRIES))
            ]
        )
        sequences.extend(batch.sequences)
    first_page = client.query_page(
        service_pb2.QueryRequest(filter=new_filter(source=source), page_size=PAGE_SIZE)
    )
    check(
        len(first_page.entries) == PAGE_SIZE and first_page.next_page_token != "",
        f"a page of {PAGE_SIZE} of {PAGED_ENTRIES} entries has {len(first_page.entries)} and token "
        f"{first_page.next_page_token!r}",
    )
    entries = list(client.query(new_filter(source=source), page_size=PAGE_SIZE))
    got = [e.sequence for e in entries]
    check(got == sequences, f"query over {-(-PAGED_ENTRIES // PAGE_SIZE)} pages returned sequences {got}, want {sequences}")
    check(
        [e.resource for e in entries] == [f"keys/k{i:02}" for i in range(PAGED_ENTRIES)],
        "query over pages returned the entries out of order",
    )
    limited = [e.sequence for e in client.query(new_filter(source=source), page_size=PAGE_SIZE, limit=10)]
    check(limited == sequences[:10], f"query(limit=10) returned {limited}")
    backwards = [e.sequence for e in client.query(new_filter(source=source), order=Order.DESCENDING, page_size=4)]
    check(backwards == sequences[::-1], f"query(DESCENDING) returned {backwards}")
    ok("paging", f"{len(entries)} entries in pages of {PAGE_SIZE}, oldest and newest first, and a limit of 10")
    return source, sequences


def subscribe_resumed(client: AuditClient, source: str, sequences: list[int]) -> None:
    """A subscription whose stream is dropped mid-replay resumes after the last entry it
    delivered: no gap, no duplicate."""
    start = sequences[0] - 1
    with client.subscribe(new_filter(source=source), start) as subscription:
        first = take(subscription, 10, SUBSCRIBE_TIMEOUT_S)
        subscription.reconnect()  # as a dropped connection would
        rest = take(subscription, len(sequences) - 10, SUBSCRIBE_TIMEOUT_S)
        check(subscription.reconnects >= 1, "the subscription did not reconnect")
        live = [
            client.record(new_entry(source=source, method="/kms.v1.KeyService/RotateKey", resource="keys/live"))
            for _ in range(3)
        ]
        subscription.reconnect()
        after = take(subscription, 3, SUBSCRIBE_TIMEOUT_S)
        reconnects = subscription.reconnects
    got = [e.sequence for e in first + rest + after]
    want = sequences + [r.sequence for r in live]
    check(got == want, f"the resumed subscription delivered {got}, want {want} (no gap, no duplicate)")
    check(reconnects >= 2, f"the subscription reconnected {reconnects} times, want 2")
    ok("resume", f"{len(got)} entries across {reconnects + 1} streams, no gap and no duplicate")


async def with_asyncio(address: str, run_id: str) -> None:
    """The same calls from asyncio, with AsyncAuditClient."""
    source = f"python-asyncio-{run_id}"
    async with AsyncAuditClient(address, timeout=CALL_TIMEOUT_S) as client:
        batch = await client.record_batch(
            [new_entry(source=source, method="/kms.v1.KeyService/RotateKey", resource=f"keys/a{i}") for i in range(5)]
        )
        single = await client.record(new_entry(source=source, method="/kms.v1.KeyService/RotateKey"))
        want = [*batch.sequences, single.sequence]
        got = [e.sequence async for e in client.query(new_filter(source=source), page_size=2)]
        check(got == want, f"async query returned {got}, want {want}")
        seen: list[int] = []
        async with client.subscribe(new_filter(source=source), 0) as subscription:

            async def collect() -> None:
                async for entry in subscription:
                    seen.append(entry.sequence)
                    if len(seen) == 3:
                        subscription.reconnect()  # as a dropped connection would
                    if len(seen) == len(want):
                        return

            try:
                await asyncio.wait_for(collect(), SUBSCRIBE_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise ExampleFailed(f"async subscription delivered {seen} within {SUBSCRIBE_TIMEOUT_S:.0f} s") from None
            reconnects = subscription.reconnects
        check(seen == want and reconnects == 1, f"async subscription delivered {seen} after {reconnects} reconnects")
        status = await client.health("audit.v1.AuditService")
        check(status == "SERVING", f"async health is {status}")
    ok("asyncio", f"{len(want)} entries recorded, queried over pages and subscribed across a reconnect")


def check_health(client: AuditClient) -> None:
    for service in ["", "audit.v1.AuditService"]:
        status = client.health(service)
        check(status == "SERVING", f"health of {service!r} is {status}, want SERVING")
        ok("health", f"{service or '(server)'}: {status}")
    unknown = client.health("no.such.Service")
    check(unknown == "SERVICE_UNKNOWN", f"health of an unknown service is {unknown}")


def run(address: str) -> None:
    run_id = uuid.uuid4().hex[:12]
    source = f"python-example-{run_id}"
    with AuditClient(address, timeout=CALL_TIMEOUT_S) as client:
        client.wait_ready()
        print(f"connected to {address}, source {source}", flush=True)
        single = record_one(client, source, run_id)
        batch = record_batch(client, source, run_id, request_id=str(uuid.uuid4()))
        query_back(client, source, run_id, single, batch)
        subscribe_live(client, source, run_id, after_sequence=batch.sequences[-1])
        refused_fields(client, source)
        paged_source, sequences = paging(client, run_id)
        subscribe_resumed(client, paged_source, sequences)
        check_health(client)
    asyncio.run(with_asyncio(address, run_id))


def fail(message: str) -> NoReturn:
    print(f"FAIL  {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        print(f"usage: {argv[0]} HOST:PORT|unix:/path/to/audit.sock", file=sys.stderr)
        sys.exit(2)
    started = time.monotonic()
    try:
        run(argv[1])
    except ExampleFailed as err:
        fail(str(err))
    except AuditError as err:
        fail(str(err))
    print(f"python example passed in {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv)
