"""In-process tests of the client and the interceptors against a fake audit service: retries
keep the entry's id, subscriptions resume from heartbeats and server-ended streams, refusals
name their fields, interceptors record exceptions, codes set by handlers, cancellations, request
ids and TLS identities.

Run: .venv/bin/python -m unittest discover -s tests
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf import any_pb2, struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from audit import (
    AsyncAuditInterceptor,
    AuditClient,
    AuditError,
    AuditHandle,
    AuditInterceptor,
    Outcome,
    Recorder,
    RetryPolicy,
    TlsConfig,
    new_entry,
    new_filter,
    uuid7,
)
from audit.v1 import entry_pb2, service_pb2, service_pb2_grpc

QUICK = RetryPolicy(attempts=5, initial_backoff=0.01, max_backoff=0.05)


class FakeAudit(service_pb2_grpc.AuditServiceServicer):  # type: ignore[misc]
    """An AuditService whose answers each test scripts."""

    def __init__(self) -> None:
        self.records: list[entry_pb2.AuditEntry] = []
        self.batches: list[service_pb2.RecordBatchRequest] = []
        self.record_failures: list[grpc.StatusCode] = []
        self.subscribe_requests: list[service_pb2.SubscribeRequest] = []
        self.streams: list[list[service_pb2.SubscribeResponse] | grpc.StatusCode] = []
        self.pages: dict[str, service_pb2.QueryResponse] = {}
        self.lock = threading.Lock()
        self.batch_arrived = threading.Condition(self.lock)

    def Record(self, request: service_pb2.RecordRequest, context: grpc.ServicerContext) -> service_pb2.RecordResponse:
        self.records.append(request.entry)
        if not request.entry.method:
            status = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="invalid entry")
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field="entry.method", description="required")
                    ]
                )
            )
            status.details.append(detail)
            context.abort_with_status(rpc_status.to_status(status))
        if self.record_failures:
            context.abort(self.record_failures.pop(0), "try again")
        return service_pb2.RecordResponse(id=request.entry.id, sequence=len(self.records))

    def RecordBatch(self, request: service_pb2.RecordBatchRequest, context: grpc.ServicerContext) -> service_pb2.RecordBatchResponse:
        with self.lock:
            self.batches.append(request)
            self.batch_arrived.notify_all()
        return service_pb2.RecordBatchResponse(request_id=request.request_id, ids=[e.id for e in request.entries])

    def Query(self, request: service_pb2.QueryRequest, context: grpc.ServicerContext) -> service_pb2.QueryResponse:
        return self.pages[request.page_token]

    def Subscribe(self, request: service_pb2.SubscribeRequest, context: grpc.ServicerContext) -> Iterator[service_pb2.SubscribeResponse]:
        self.subscribe_requests.append(request)
        script = self.streams.pop(0) if self.streams else []
        if isinstance(script, grpc.StatusCode):
            context.abort(script, "refused")
        yield from script
        if not self.streams:  # the last stream stays open until the client goes
            while context.is_active():
                time.sleep(0.01)

    def wait_batches(self, count: int, timeout: float = 5) -> list[service_pb2.RecordBatchRequest]:
        with self.lock:
            self.batch_arrived.wait_for(lambda: len(self.batches) >= count, timeout)
            return list(self.batches)


def entry_message(sequence: int) -> service_pb2.SubscribeResponse:
    return service_pb2.SubscribeResponse(entry=entry_pb2.AuditEntry(sequence=sequence))


def heartbeat(sequence: int) -> service_pb2.SubscribeResponse:
    return service_pb2.SubscribeResponse(heartbeat=service_pb2.Heartbeat(sequence=sequence))


class FakeServer:
    def __init__(
        self,
        credentials: grpc.ServerCredentials | None = None,
        interceptors: list[Any] | None = None,
        port: int = 0,
    ) -> None:
        self.fake = FakeAudit()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=interceptors or [])
        service_pb2_grpc.add_AuditServiceServicer_to_server(self.fake, self.server)
        if credentials is None:
            self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(0).wait(2)


class ClientTest(unittest.TestCase):
    def setUp(self) -> None:
        self.server = FakeServer()
        self.client = AuditClient(self.server.address, retry=QUICK, timeout=2)

    def tearDown(self) -> None:
        self.client.close()
        self.server.stop()

    def test_record_retries_unavailable_with_the_same_id(self) -> None:
        self.server.fake.record_failures = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED]
        receipt = self.client.record(new_entry(source="s", method="/a.B/C"))
        ids = [e.id for e in self.server.fake.records]
        self.assertEqual(len(ids), 3)
        self.assertEqual(len(set(ids)), 1)
        self.assertEqual(uuid.UUID(ids[0]).version, 7)
        self.assertEqual(receipt.id, ids[0])

    def test_refusal_names_the_field_and_is_not_retried(self) -> None:
        with self.assertRaises(AuditError) as caught:
            self.client.record(new_entry(source="s", method=""))
        error = caught.exception
        self.assertEqual(error.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual([(v.field, v.description) for v in error.field_violations], [("entry.method", "required")])
        self.assertEqual(str(error), "INVALID_ARGUMENT: invalid entry (entry.method: required)")
        self.assertEqual(len(self.server.fake.records), 1)

    def test_record_gives_up_after_the_policy(self) -> None:
        self.server.fake.record_failures = [grpc.StatusCode.UNAVAILABLE] * 10
        with self.assertRaises(AuditError) as caught:
            self.client.record(new_entry(source="s", method="/a.B/C"))
        self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(len(self.server.fake.records), QUICK.attempts)

    def test_query_follows_page_tokens_up_to_the_limit(self) -> None:
        fake = self.server.fake
        fake.pages = {
            "": service_pb2.QueryResponse(entries=[entry_pb2.AuditEntry(sequence=s) for s in (1, 2)], next_page_token="p2"),
            "p2": service_pb2.QueryResponse(entries=[entry_pb2.AuditEntry(sequence=s) for s in (3, 4)], next_page_token="p3"),
            "p3": service_pb2.QueryResponse(entries=[entry_pb2.AuditEntry(sequence=5)]),
        }
        self.assertEqual([e.sequence for e in self.client.query(new_filter(source="s"))], [1, 2, 3, 4, 5])
        self.assertEqual([e.sequence for e in self.client.query(limit=3)], [1, 2, 3])

    def test_subscribe_resumes_from_the_last_heartbeat_without_duplicates(self) -> None:
        fake = self.server.fake
        fake.streams = [
            [entry_message(5), heartbeat(9)],  # then the server ends the stream
            [heartbeat(3), entry_message(9), entry_message(10)],  # a replay from before: skipped
        ]
        with self.client.subscribe(new_filter(source="s")) as subscription:
            got = [next(subscription).sequence, next(subscription).sequence]
            self.assertEqual(subscription.resume_after, 10)
        self.assertEqual(got, [5, 10])
        starts = [r.start.after_sequence if r.HasField("start") else None for r in fake.subscribe_requests]
        self.assertEqual(starts, [None, 9])

    def test_subscribe_survives_a_server_restart(self) -> None:
        """A real dropped connection: the server goes away mid-stream and comes back on the
        same port; the subscription reconnects and resumes after the last entry."""
        self.server.fake.streams = [[entry_message(1), entry_message(2)]]  # then stays open
        subscription = self.client.subscribe(start=0, retry=RetryPolicy(attempts=50, initial_backoff=0.05, max_backoff=0.2))
        self.assertEqual([next(subscription).sequence, next(subscription).sequence], [1, 2])
        self.server.server.stop(0).wait(2)
        restarted = FakeServer(port=self.server.port)
        restarted.fake.streams = [[entry_message(2), entry_message(3)]]
        try:
            self.assertEqual(next(subscription).sequence, 3)
            self.assertEqual(restarted.fake.subscribe_requests[0].start.after_sequence, 2)
            self.assertGreaterEqual(subscription.reconnects, 1)
        finally:
            subscription.close()
            restarted.stop()

    def test_subscribe_ends_on_a_refusal(self) -> None:
        self.server.fake.streams = [grpc.StatusCode.PERMISSION_DENIED]
        with self.assertRaises(AuditError) as caught:
            next(self.client.subscribe(start=0))
        self.assertEqual(caught.exception.code, grpc.StatusCode.PERMISSION_DENIED)

    def test_subscribe_gives_up_after_consecutive_failures(self) -> None:
        self.server.fake.streams = [grpc.StatusCode.UNAVAILABLE] * 3 + [[]]
        subscription = self.client.subscribe(start=7, retry=RetryPolicy(attempts=3, initial_backoff=0.01))
        with self.assertRaises(AuditError):
            next(subscription)
        self.assertEqual([r.start.after_sequence for r in self.server.fake.subscribe_requests], [7, 7, 7])

    def test_close_ends_a_waiting_subscription(self) -> None:
        subscription = self.client.subscribe(start=0)
        ended = threading.Event()

        def consume() -> None:
            for _ in subscription:
                pass
            ended.set()

        threading.Thread(target=consume, daemon=True).start()
        time.sleep(0.2)
        subscription.close()
        self.assertTrue(ended.wait(2))


class InterceptorTest(unittest.TestCase):
    """The interceptors on a small service, recording into the fake audit service."""

    def setUp(self) -> None:
        self.audit = FakeServer()
        self.client = AuditClient(self.audit.address)
        self.recorder = Recorder(self.client, source="svc")

    def tearDown(self) -> None:
        self.recorder.close(1)
        self.client.close()
        self.audit.stop()

    def entries(self, calls: int) -> list[list[entry_pb2.AuditEntry]]:
        self.assertTrue(self.recorder.flush(5))
        batches = self.audit.fake.wait_batches(calls)
        self.assertEqual(len(batches), calls)
        # Calls delivered in one drain arrive in any order; each call's time says when it began.
        batches.sort(key=lambda b: b.entries[0].time.ToNanoseconds())
        return [list(b.entries) for b in batches]

    def handlers(self) -> grpc.GenericRpcHandler:
        def fail(request: struct_pb2.Struct, context: grpc.ServicerContext) -> struct_pb2.Struct:
            raise ValueError("boom")

        def not_found(request: struct_pb2.Struct, context: grpc.ServicerContext) -> struct_pb2.Struct:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details("no such thing")
            return struct_pb2.Struct()

        def batch(request: struct_pb2.Struct, context: grpc.ServicerContext) -> struct_pb2.Struct:
            audit = AuditHandle.current()
            assert audit is not None
            self.seen_request_id = dict(context.invocation_metadata())["x-request-id"]
            audit.annotate(event="BATCH", principal="bob")
            for name in ("a", "b"):
                audit.record_operation(resource=name, status=grpc.StatusCode.PERMISSION_DENIED)
            return struct_pb2.Struct()

        def endless(request: struct_pb2.Struct, context: grpc.ServicerContext) -> Iterator[struct_pb2.Struct]:
            while True:
                yield struct_pb2.Struct()
                time.sleep(0.01)

        def handler(function: Any) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                function, struct_pb2.Struct.FromString, struct_pb2.Struct.SerializeToString
            )

        return grpc.method_handlers_generic_handler(
            "t.T",
            {
                "Fail": handler(fail),
                "NotFound": handler(not_found),
                "Batch": handler(batch),
                "Skip": handler(not_found),
                "Endless": grpc.unary_stream_rpc_method_handler(
                    endless, struct_pb2.Struct.FromString, struct_pb2.Struct.SerializeToString
                ),
            },
        )

    def call(self, channel: grpc.Channel, method: str, metadata: tuple[tuple[str, str | bytes], ...] = ()) -> grpc.Call:
        stub = channel.unary_unary(method, struct_pb2.Struct.SerializeToString, struct_pb2.Struct.FromString)
        try:
            _, call = stub.with_call(struct_pb2.Struct(), timeout=5, metadata=metadata)
            return call
        except grpc.RpcError as error:
            return error  # type: ignore[return-value]  # a failed call is also a grpc.Call

    def test_sync_interceptor(self) -> None:
        interceptor = AuditInterceptor(self.recorder, exclude=["/t.T/Skip"])
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[interceptor])
        server.add_generic_rpc_handlers((self.handlers(),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                failed = self.call(channel, "/t.T/Fail", (("x-request-id", "not valid"),))
                self.call(channel, "/t.T/NotFound")
                ok = self.call(channel, "/t.T/Batch", (("x-request-id", "req-7"),))
                self.call(channel, "/t.T/Skip")
                stream = channel.unary_stream("/t.T/Endless", struct_pb2.Struct.SerializeToString, struct_pb2.Struct.FromString)(struct_pb2.Struct())
                next(stream)
                stream.cancel()
                calls = self.entries(4)
        finally:
            server.stop(0)
        (fail,), (not_found,), batch, (cancelled,) = calls
        self.assertEqual((fail.method, fail.status_code, fail.outcome), ("/t.T/Fail", 2, Outcome.ERROR))
        self.assertIn("boom", fail.status_message)
        self.assertEqual(uuid.UUID(fail.request_id).version, 7)  # the invalid one was replaced
        self.assertEqual(dict(failed.trailing_metadata())["x-request-id"], fail.request_id)
        self.assertEqual((not_found.status_code, not_found.status_message), (5, "no such thing"))
        self.assertTrue(not_found.caller.network.address.startswith("127.0.0.1:"))
        self.assertEqual([e.request_id for e in batch], ["req-7"] * 3)
        self.assertEqual(self.seen_request_id, "req-7")
        self.assertEqual(dict(ok.initial_metadata())["x-request-id"], "req-7")
        self.assertEqual([(e.event, e.resource, e.outcome) for e in batch], [("BATCH", "", Outcome.SUCCESS), ("", "a", Outcome.DENIED), ("", "b", Outcome.DENIED)])
        self.assertEqual({e.caller.principal for e in batch}, {"bob", ""})
        self.assertEqual((cancelled.method, cancelled.status_code), ("/t.T/Endless", grpc.StatusCode.CANCELLED.value[0]))

    def test_async_interceptor(self) -> None:
        async def fail(request: struct_pb2.Struct, context: Any) -> struct_pb2.Struct:
            raise ValueError("boom")

        async def endless(request: struct_pb2.Struct, context: Any) -> Any:
            while True:
                yield struct_pb2.Struct()
                await asyncio.sleep(0.01)

        async def scenario() -> None:
            server = grpc.aio.server(interceptors=[AsyncAuditInterceptor(self.recorder)])
            server.add_generic_rpc_handlers(
                (
                    grpc.method_handlers_generic_handler(
                        "t.T",
                        {
                            "Fail": grpc.unary_unary_rpc_method_handler(fail, struct_pb2.Struct.FromString, struct_pb2.Struct.SerializeToString),
                            "Endless": grpc.unary_stream_rpc_method_handler(endless, struct_pb2.Struct.FromString, struct_pb2.Struct.SerializeToString),
                        },
                    ),
                )
            )
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with self.assertRaises(grpc.RpcError):
                    await channel.unary_unary("/t.T/Fail", struct_pb2.Struct.SerializeToString, struct_pb2.Struct.FromString)(struct_pb2.Struct())
                stream = channel.unary_stream("/t.T/Endless", struct_pb2.Struct.SerializeToString, struct_pb2.Struct.FromString)(struct_pb2.Struct())
                await stream.read()
                stream.cancel()
                await asyncio.sleep(0.3)
            await server.stop(0.5)

        asyncio.run(scenario())
        (failed,), (cancelled,) = self.entries(2)
        self.assertEqual((failed.status_code, failed.outcome), (2, Outcome.ERROR))
        self.assertIn("boom", failed.status_message)
        self.assertEqual(cancelled.status_code, grpc.StatusCode.CANCELLED.value[0])


@unittest.skipIf(shutil.which("openssl") is None, "openssl is needed to make certificates")
class MutualTlsTest(unittest.TestCase):
    """AuditClient over mutual TLS; the interceptor takes the caller's SPIFFE ID from its
    client certificate."""

    def test_mutual_tls(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            make_certificates(d)
            sink = FakeServer()
            recorder = Recorder(AuditClient(sink.address), source="tls")
            credentials = grpc.ssl_server_credentials(
                [((d / "server.key").read_bytes(), (d / "server.pem").read_bytes())],
                root_certificates=(d / "ca.pem").read_bytes(),
                require_client_auth=True,
            )
            server = FakeServer(credentials, interceptors=[AuditInterceptor(recorder)])
            tls = TlsConfig.from_files(ca=d / "ca.pem", cert=d / "client.pem", key=d / "client.key", server_name="localhost")
            try:
                with AuditClient(server.address, tls=tls, timeout=5) as client:
                    client.record(new_entry(source="s", method="/a.B/C"))
                with AuditClient(server.address, tls=TlsConfig.from_files(ca=d / "ca.pem", server_name="localhost"), retry=RetryPolicy.never()) as anonymous:
                    with self.assertRaises(AuditError):
                        anonymous.record(new_entry(source="s", method="/a.B/C"))
                self.assertTrue(recorder.flush(5))
                (batch,) = sink.fake.wait_batches(1)
                peer = batch.entries[0].caller.network
                self.assertEqual(peer.spiffe_id, "spiffe://example.org/tester")
                self.assertEqual(peer.certificate_subject, "CN=tester")
            finally:
                recorder.close(1)
                server.stop()
                sink.stop()


def make_certificates(d: Path) -> None:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca")
    for name, san in [("server", "DNS:localhost,IP:127.0.0.1"), ("client", "URI:spiffe://example.org/tester")]:
        cn = "localhost" if name == "server" else "tester"
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")


class CallerTest(unittest.TestCase):
    def test_peer_addresses(self) -> None:
        from audit.interceptor import CallInfo, _caller_of

        def address(peer: str) -> str:
            return _caller_of(CallInfo("/a.B/C", {}, peer)).network.address

        self.assertEqual(address("ipv4:127.0.0.1:5000"), "127.0.0.1:5000")
        self.assertEqual(address("ipv6:%5B::1%5D:5000"), "[::1]:5000")
        self.assertFalse(_caller_of(CallInfo("/a.B/C", {}, "unix:/run/x.sock")).HasField("network"))


class Uuid7Test(unittest.TestCase):
    def test_layout_and_order(self) -> None:
        ids = [uuid7() for _ in range(5000)]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), len(ids))
        self.assertTrue(all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids))
        millis = ids[0].int >> 80
        self.assertLess(abs(millis - time.time() * 1000), 5000)


if __name__ == "__main__":
    unittest.main()
