"""`Recorder`: delivers audit entries to the audit service from a background thread, so that
audited calls never wait for it (unless the interceptor is fail-closed).

The unit of the queue is one audited call: its own entry plus the entries its handler added,
all sharing the call's `request_id`, delivered as one atomic `RecordBatch` (the server refuses a
batch whose entries carry different request ids, so calls cannot share one). A drain takes up
to `drain_size` queued calls and sends their batches concurrently, so the server's group commit
shares one fsync among them; calls of one drain may be stored in any order among themselves,
and each entry's `time` (when its call began) keeps the order in which they happened.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import grpc

from audit.builder import timestamp
from audit.client import AuditClient, RetryPolicy
from audit.errors import RETRYABLE_CODES, AuditError
from audit.uuid7 import uuid7_str
from audit.v1 import entry_pb2, service_pb2

__all__ = ["Recorder", "RecorderStats"]

_log = logging.getLogger("audit.recorder")


@dataclass(frozen=True)
class RecorderStats:
    """Counters of a `Recorder`, in entries (`queued` in calls)."""

    recorded: int
    """Entries the audit service acknowledged (stored durably)."""
    dropped: int
    """Entries dropped because the queue was full or the recorder was closed."""
    failed: int
    """Entries the audit service refused for good (e.g. `INVALID_ARGUMENT`); each is logged."""
    queued: int
    """Calls waiting in the queue now."""


@dataclass
class _Batch:
    request_id: str
    entries: list[entry_pb2.AuditEntry]
    # Told whether the entries were stored (fail-closed calls wait for it).
    ack: concurrent.futures.Future[bool] | None


class Recorder:
    """A bounded queue of audited calls, drained by a background thread in `RecordBatch`es
    retried with backoff until the audit service accepts them. Every entry gets a UUIDv7 id
    before it is queued, so a retry never stores it twice.

        recorder = Recorder(AuditClient("unix:/run/audit.sock"), source="keystore")
        ...                                   # serve with AuditInterceptor(recorder)
        recorder.close(timeout=5)             # deliver what is queued, then stop
        print(recorder.stats())

    `queue_capacity` calls may wait (default 4096); beyond that, new calls' entries are dropped
    and counted (`stats().dropped`), so memory stays bounded while the service is slow or down.
    `attempt_timeout` bounds one delivery attempt, so a hung server cannot stall the queue.
    """

    def __init__(
        self,
        client: AuditClient,
        source: str,
        *,
        queue_capacity: int = 4096,
        drain_size: int = 64,
        max_batch_entries: int = 1000,
        attempt_timeout: float = 5.0,
        backoff: RetryPolicy = RetryPolicy(attempts=None, initial_backoff=0.1, max_backoff=5.0),
    ) -> None:
        self.source = source
        self._client = client
        self._queue: queue.Queue[_Batch | threading.Event] = queue.Queue(
            max(1, queue_capacity)
        )
        self._drain_size = max(1, drain_size)
        self._max_batch_entries = max(1, max_batch_entries)
        self._attempt_timeout = attempt_timeout
        self._backoff = backoff
        self._lock = threading.Lock()
        self._recorded = 0
        self._dropped = 0
        self._failed = 0
        # False from a failed delivery attempt until the next successful one.
        self._reachable = True
        # True while entries are being dropped, so a full queue is logged once, not per call.
        self._dropping = False
        self._closed = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"audit-recorder-{source}", daemon=True)
        self._thread.start()

    # === the producer side ===

    def record(self, entries: Iterable[entry_pb2.AuditEntry], request_id: str = "") -> bool:
        """Queues the entries of one call without waiting. `request_id` (a UUIDv7 when empty) is
        set on every entry; empty `id`, `source` and `time` are filled in. Returns False when
        they were dropped because the queue is full."""
        return self.enqueue(list(entries), request_id) is not None

    def enqueue(
        self, entries: list[entry_pb2.AuditEntry], request_id: str, *, wait: bool = False
    ) -> concurrent.futures.Future[bool] | None:
        """Queues one call's entries; with `wait`, returns a future told whether they were
        stored. Returns None (and counts the entries as dropped) when the queue is full."""
        ack: concurrent.futures.Future[bool] = concurrent.futures.Future()
        if not entries:
            ack.set_result(True)
            return ack
        request_id = request_id or uuid7_str()
        now = timestamp(datetime.now(timezone.utc))
        for entry in entries:
            entry.request_id = request_id
            if not entry.id:
                entry.id = uuid7_str()
            if not entry.source:
                entry.source = self.source
            if not entry.HasField("time"):
                entry.time.CopyFrom(now)
        batch = _Batch(request_id, entries, ack if wait else None)
        try:
            if self._closed:
                raise queue.Full
            self._queue.put_nowait(batch)
        except queue.Full:
            with self._lock:
                self._dropped += len(entries)
                first = not self._dropping
                self._dropping = True
                total = self._dropped
            if first:
                _log.warning("audit queue is full: dropping entries until it drains (%d dropped)", total)
            return None
        if self._dropping:
            with self._lock:
                if self._dropping:
                    self._dropping = False
                    _log.warning("audit queue accepts entries again (%d dropped)", self._dropped)
        return ack

    def is_available(self) -> bool:
        """Whether a new entry can be expected to reach the audit service soon: the last
        delivery attempt succeeded (or none failed yet) and the queue has room. A fail-closed
        interceptor refuses calls without running them while this is False."""
        return self._reachable and not self._queue.full() and not self._closed

    def stats(self) -> RecorderStats:
        """The counters so far."""
        with self._lock:
            return RecorderStats(self._recorded, self._dropped, self._failed, self._queue.qsize())

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until everything queued before this call is delivered (or refused for good),
        at most `timeout` seconds; returns whether it was. While the audit service is
        unreachable this waits for it, so give a timeout."""
        done = threading.Event()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                self._queue.put(done, timeout=0.05)
                break
            except queue.Full:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
        return done.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float | None = 5.0) -> bool:
        """Stops accepting entries, delivers what is queued (for at most `timeout` seconds) and
        stops the thread. Returns whether everything queued was delivered; what was not is
        counted as dropped."""
        self._closed = True
        delivered = self.flush(timeout)
        # The thread now counts what is left as dropped instead of sending it, and ends once
        # the queue is empty.
        self._stopping.set()
        self._thread.join(timeout=2.0)
        return delivered

    # === the background thread ===

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            batches: list[_Batch] = []
            flushes: list[threading.Event] = []
            while True:
                if isinstance(item, threading.Event):
                    # Everything queued before the flush is in `batches`: answer once sent.
                    flushes.append(item)
                    break
                batches.append(item)
                if len(batches) >= self._drain_size:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if self._stopping.is_set():
                self._drop(batches)
            else:
                self._deliver(batches)
            for done in flushes:
                done.set()

    def _drop(self, batches: list[_Batch]) -> None:
        for batch in batches:
            _ack(batch, False)
        with self._lock:
            self._dropped += sum(len(batch.entries) for batch in batches)

    def _deliver(self, batches: list[_Batch]) -> None:
        """Sends `batches` concurrently, retrying those that fail with a retryable error (with
        backoff) until none is left or the recorder is closing."""
        failures = 0
        while batches:
            attempts = [(batch, self._send(batch)) for batch in batches]
            retry: list[_Batch] = []
            last_error: AuditError | None = None
            for batch, futures in attempts:
                error = _outcome(futures)
                if error is None:
                    with self._lock:
                        self._recorded += len(batch.entries)
                    _ack(batch, True)
                elif error.code in RETRYABLE_CODES:
                    last_error = error
                    retry.append(batch)
                else:
                    with self._lock:
                        self._failed += len(batch.entries)
                    _log.error(
                        "the audit service refused %d entries of request %s; they are not recorded: %s",
                        len(batch.entries), batch.request_id, error,
                    )
                    _ack(batch, False)
            if last_error is None:
                if not self._reachable:
                    self._reachable = True
                    _log.warning("audit service reachable again; queued entries delivered")
                return
            if self._reachable:
                self._reachable = False
                _log.warning("audit service unreachable; retrying with backoff: %s", last_error)
            failures += 1
            if self._stopping.wait(self._backoff.backoff(failures)):
                self._drop(retry)
                return
            batches = retry

    def _send(self, batch: _Batch) -> list[Any]:
        """Starts sending one call's entries, in chunks of at most `max_batch_entries` (which
        are then not atomic together); the futures of the chunks."""
        return [
            self._client.stub.RecordBatch.future(
                service_pb2.RecordBatchRequest(
                    request_id=batch.request_id,
                    entries=batch.entries[i : i + self._max_batch_entries],
                ),
                timeout=self._attempt_timeout,
            )
            for i in range(0, len(batch.entries), self._max_batch_entries)
        ]


def _outcome(futures: list[Any]) -> AuditError | None:
    """The first error among the chunk futures of one batch, or None when all succeeded."""
    for future in futures:
        try:
            future.result()
        except grpc.RpcError as error:
            return AuditError.from_rpc_error(error)
    return None


def _ack(batch: _Batch, stored: bool) -> None:
    if batch.ack is not None and not batch.ack.done():
        batch.ack.set_result(stored)
