#!/usr/bin/env python3
"""Record, batch, query, subscribe and health-check against an audit server.

Usage: python example.py HOST:PORT|unix:/path/to/audit.sock

Prints one line per step and exits non-zero when the server did not behave as expected.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from typing import NoReturn

import grpc
from google.protobuf import duration_pb2, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from audit.v1 import entry_pb2, service_pb2, service_pb2_grpc

CALL_TIMEOUT_S = 5.0
SUBSCRIBE_TIMEOUT_S = 10.0


class ExampleFailed(Exception):
    """The server answered, but not as the contract says."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ExampleFailed(message)


def ok(step: str, detail: str) -> None:
    print(f"ok    {step:<10} {detail}", flush=True)


def new_entry(source: str, run_id: str, **fields: object) -> entry_pb2.AuditEntry:
    """An entry with the fields every example entry shares; `fields` adds or overrides."""
    entry = entry_pb2.AuditEntry(
        source=source,
        method="/billing.v1.InvoiceService/CreateInvoice",
        event="INVOICE_CREATED",
        category="BILLING",
        level=entry_pb2.LEVEL_INFO,
        outcome=entry_pb2.OUTCOME_SUCCESS,
        status_code=0,  # grpc.StatusCode.OK
        caller=entry_pb2.Caller(
            network=entry_pb2.NetworkPeer(address="127.0.0.1:40000"),
            principal="alice@example.com",
            user_agent=f"grpc-python/{grpc.__version__}",
        ),
        latency=duration_pb2.Duration(nanos=12_000_000),
        labels={"run": run_id, "language": "python"},
    )
    for name, value in fields.items():
        if isinstance(value, (entry_pb2.Caller, duration_pb2.Duration, struct_pb2.Struct)):
            getattr(entry, name).CopyFrom(value)
        else:
            setattr(entry, name, value)
    return entry


def record_one(stub: service_pb2_grpc.AuditServiceStub, source: str, run_id: str) -> service_pb2.RecordResponse:
    details = struct_pb2.Struct()
    details.update({"invoice": "INV-1001", "amount_cents": 4200, "paid": False})
    entry = new_entry(source, run_id, resource="invoices/INV-1001")
    entry.details.CopyFrom(details)
    response: service_pb2.RecordResponse = stub.Record(
        service_pb2.RecordRequest(entry=entry), timeout=CALL_TIMEOUT_S
    )
    check(response.id != "", f"Record returned an empty id: {response}")
    check(response.sequence > 0, f"Record returned sequence {response.sequence}, want > 0")
    ok("record", f"id={response.id} sequence={response.sequence}")
    return response


def record_batch(
    stub: service_pb2_grpc.AuditServiceStub, source: str, run_id: str, request_id: str
) -> service_pb2.RecordBatchResponse:
    # One entry per operation of one audited call, all sharing the call's request_id.
    keys = ["keys/alpha", "keys/beta", "keys/gamma"]
    entries = [
        new_entry(
            source,
            run_id,
            method="/kms.v1.KeyService/DeleteKeys",
            event="KEY_DELETED",
            category="KEY_MANAGEMENT",
            resource=key,
        )
        for key in keys
    ]
    # The caller was not allowed to delete the last key.
    entries[2].outcome = entry_pb2.OUTCOME_DENIED
    entries[2].status_code = grpc.StatusCode.PERMISSION_DENIED.value[0]
    entries[2].status_message = "not allowed to delete keys/gamma"
    response: service_pb2.RecordBatchResponse = stub.RecordBatch(
        service_pb2.RecordBatchRequest(request_id=request_id, entries=entries),
        timeout=CALL_TIMEOUT_S,
    )
    check(response.request_id == request_id, f"RecordBatch request_id={response.request_id!r}, want {request_id!r}")
    check(len(response.ids) == 3, f"RecordBatch returned {len(response.ids)} ids, want 3")
    check(len(response.sequences) == 3, f"RecordBatch returned {len(response.sequences)} sequences, want 3")
    sequences = list(response.sequences)
    check(sequences == sorted(set(sequences)), f"RecordBatch sequences {sequences} are not strictly increasing")
    ok("batch", f"request_id={request_id} sequences={sequences}")
    return response


def query_all(stub: service_pb2_grpc.AuditServiceStub, query_filter: service_pb2.Filter) -> list[entry_pb2.AuditEntry]:
    """Every matching entry, oldest first, following next_page_token (two per page, to show paging)."""
    entries: list[entry_pb2.AuditEntry] = []
    token = ""
    for _ in range(100):  # bounded: a handful of entries needs a handful of pages
        page: service_pb2.QueryResponse = stub.Query(
            service_pb2.QueryRequest(
                filter=query_filter, page_size=2, page_token=token, order=service_pb2.ORDER_ASCENDING
            ),
            timeout=CALL_TIMEOUT_S,
        )
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries
    raise ExampleFailed("Query kept returning next_page_token after 100 pages")


def query_back(
    stub: service_pb2_grpc.AuditServiceStub,
    source: str,
    run_id: str,
    single: service_pb2.RecordResponse,
    batch: service_pb2.RecordBatchResponse,
) -> None:
    by_request = query_all(stub, service_pb2.Filter(request_id=batch.request_id))
    check(
        [e.id for e in by_request] == list(batch.ids),
        f"Query(request_id) returned ids {[e.id for e in by_request]}, want {list(batch.ids)}",
    )
    check(
        [e.sequence for e in by_request] == list(batch.sequences),
        f"Query(request_id) returned sequences {[e.sequence for e in by_request]}, want {list(batch.sequences)}",
    )
    check(
        [e.resource for e in by_request] == ["keys/alpha", "keys/beta", "keys/gamma"],
        f"Query(request_id) returned resources {[e.resource for e in by_request]}",
    )
    denied = query_all(
        stub, service_pb2.Filter(request_id=batch.request_id, outcomes=[entry_pb2.OUTCOME_DENIED])
    )
    check(
        [e.resource for e in denied] == ["keys/gamma"],
        f"Query(request_id, outcomes=[DENIED]) returned {[e.resource for e in denied]}, want ['keys/gamma']",
    )

    by_source = query_all(stub, service_pb2.Filter(source=source))
    want_ids = [single.id, *batch.ids]
    check(
        [e.id for e in by_source] == want_ids,
        f"Query(source) returned ids {[e.id for e in by_source]}, want {want_ids}",
    )
    first = by_source[0]
    check(first.sequence == single.sequence, f"recorded entry has sequence {first.sequence}, want {single.sequence}")
    check(first.request_id != "", "the server did not fill request_id of the recorded entry")
    check(first.HasField("received_time"), "the server did not fill received_time")
    check(first.HasField("recorder"), "the server did not fill recorder")
    details = dict(first.details.items())
    check(
        details == {"invoice": "INV-1001", "amount_cents": 4200.0, "paid": False},
        f"details came back as {details}",
    )
    check(dict(first.labels) == {"run": run_id, "language": "python"}, f"labels came back as {dict(first.labels)}")
    ok(
        "query",
        f"{len(by_request)} entries for request_id, 1 denied, {len(by_source)} for source {source}; "
        f"recorder={first.recorder.WhichOneof('peer')} details and labels intact",
    )


def subscribe_live(
    stub: service_pb2_grpc.AuditServiceStub, source: str, run_id: str, after_sequence: int
) -> None:
    # Resume right after the last sequence we saw, so nothing can slip between opening the
    # stream and recording: the server replays what is stored after it, then goes live.
    request = service_pb2.SubscribeRequest(
        filter=service_pb2.Filter(source=source),
        start=service_pb2.StartPosition(after_sequence=after_sequence),
    )
    stream = stub.Subscribe(request, timeout=SUBSCRIBE_TIMEOUT_S)
    try:
        stream.initial_metadata()  # the server has accepted the subscription
        live = stub.Record(
            service_pb2.RecordRequest(
                entry=new_entry(source, run_id, event="INVOICE_PAID", resource="invoices/INV-1001")
            ),
            timeout=CALL_TIMEOUT_S,
        )
        heartbeats = 0
        messages: Iterator[service_pb2.SubscribeResponse] = stream
        for message in messages:
            kind = message.WhichOneof("message")
            if kind == "heartbeat":
                heartbeats += 1
                continue
            if kind != "entry":
                raise ExampleFailed(f"Subscribe sent an empty message: {message}")
            entry = message.entry
            check(
                entry.id == live.id and entry.sequence == live.sequence,
                f"Subscribe delivered id={entry.id} sequence={entry.sequence} first, "
                f"want the new entry id={live.id} sequence={live.sequence}",
            )
            check(entry.event == "INVOICE_PAID", f"Subscribe delivered event {entry.event!r}")
            ok(
                "subscribe",
                f"received id={entry.id} sequence={entry.sequence} recorded after the stream opened "
                f"({heartbeats} heartbeats before it)",
            )
            return
        raise ExampleFailed("Subscribe ended before delivering the new entry")
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise ExampleFailed(f"Subscribe delivered no entry within {SUBSCRIBE_TIMEOUT_S:.0f} s") from err
        raise
    finally:
        stream.cancel()


def check_health(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "audit.v1.AuditService"]:
        response: health_pb2.HealthCheckResponse = health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S
        )
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        check(
            response.status == health_pb2.HealthCheckResponse.SERVING,
            f"health of {service!r} is {status}, want SERVING",
        )
        ok("health", f"{service or '(server)'}: {status}")


def run(address: str) -> None:
    run_id = uuid.uuid4().hex[:12]
    source = f"python-example-{run_id}"
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT_S)
        except grpc.FutureTimeoutError as err:
            raise ExampleFailed(f"could not connect to {address} within {CALL_TIMEOUT_S:.0f} s") from err
        print(f"connected to {address}, source {source}", flush=True)
        stub = service_pb2_grpc.AuditServiceStub(channel)
        single = record_one(stub, source, run_id)
        batch = record_batch(stub, source, run_id, request_id=str(uuid.uuid4()))
        query_back(stub, source, run_id, single, batch)
        subscribe_live(stub, source, run_id, after_sequence=batch.sequences[-1])
        check_health(channel)


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
    except grpc.RpcError as err:
        fail(f"{err.code().name}: {err.details()}")
    print(f"python example passed in {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv)
