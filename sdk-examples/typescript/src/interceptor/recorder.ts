// Recorder: delivers the entries of audited calls to the audit service in the background,
// through a bounded queue, so that the calls never wait for it (unless fail-closed).
//
// The unit of the queue is one audited call: its own entry plus the entries its handler added,
// all sharing the call's request_id, delivered as one atomic RecordBatch (the server refuses a
// batch whose entries carry different request ids, so calls cannot share a batch). A drain takes
// up to `drainSize` queued calls and sends their batches concurrently; the server's group commit
// then shares one fsync among them, so calls of one drain may be stored in any order among
// themselves (each entry's `time`, when the call began, keeps the order they happened in).

import type { AuditClient } from "../client.js";
import { AuditError, Code } from "../errors.js";
import type { AuditEntry } from "../gen/audit/v1/entry_pb.js";

export interface RecorderOptions {
  /** The `source` of every entry that does not name one, e.g. `keystore`. Required. */
  source: string;
  /** Calls that may wait for delivery (default 4096); beyond it entries are dropped and counted. */
  queueCapacity?: number;
  /** Queued calls one drain sends concurrently (default 64). */
  drainSize?: number;
  /** Most entries in one RecordBatch (default 1000, the server's default limit). */
  maxBatchEntries?: number;
  /** Deadline of each delivery attempt (default 5 s). */
  attemptTimeoutMs?: number;
  /** First wait after a failed delivery, doubled up to `maxBackoffMs` (defaults 100 ms, 5 s). */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Told about each failed delivery and each drop (default: a line on stderr). */
  onError?: (error: AuditError, entries: readonly AuditEntry[]) => void;
}

/** Counters of a Recorder, for metrics. */
export interface RecorderStats {
  /** Calls waiting for delivery now. */
  queued: number;
  /** Entries stored by the audit service. */
  delivered: number;
  /** Entries dropped because the queue was full. */
  dropped: number;
  /** Entries the audit service refused (INVALID_ARGUMENT, ...): never retried. */
  rejected: number;
  /** Delivery attempts that failed and were retried. */
  retries: number;
}

/** One queued call. `settle` tells a fail-closed call whether its entries were stored. */
interface Pending {
  requestId: string;
  entries: AuditEntry[];
  settle?: (stored: boolean) => void;
}

export class Recorder {
  readonly source: string;
  private readonly queue: Pending[] = [];
  private readonly capacity: number;
  private readonly drainSize: number;
  private readonly maxBatchEntries: number;
  private readonly attemptTimeoutMs: number;
  private readonly initialBackoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly onError: (error: AuditError, entries: readonly AuditEntry[]) => void;
  private readonly counters = { delivered: 0, dropped: 0, rejected: 0, retries: 0 };
  private draining = false;
  private inFlight = 0;
  private unreachable = false;
  private idleWaiters: (() => void)[] = [];
  private closed = false;
  private abandoned = false;

  constructor(
    private readonly client: AuditClient,
    options: RecorderOptions,
  ) {
    this.source = options.source;
    this.capacity = Math.max(1, options.queueCapacity ?? 4096);
    this.drainSize = Math.max(1, options.drainSize ?? 64);
    this.maxBatchEntries = Math.max(1, options.maxBatchEntries ?? 1000);
    this.attemptTimeoutMs = options.attemptTimeoutMs ?? 5_000;
    this.initialBackoffMs = options.initialBackoffMs ?? 100;
    this.maxBackoffMs = Math.max(this.initialBackoffMs, options.maxBackoffMs ?? 5_000);
    this.onError =
      options.onError ??
      ((error, entries) => console.error(`audit: ${entries.length} entries not delivered: ${error.message}`));
  }

  /** A snapshot of the counters. */
  stats(): RecorderStats {
    return { queued: this.queue.length + this.inFlight, ...this.counters };
  }

  /**
   * Whether a new call's entries would be accepted now: the queue has room and the last
   * delivery did not fail. A fail-closed interceptor refuses calls while this is false.
   */
  get accepting(): boolean {
    return !this.closed && !this.unreachable && this.queue.length + this.inFlight < this.capacity;
  }

  /**
   * Queues one call's entries. Returns false, counting them as dropped, when the queue is full
   * (or the recorder closed). `settle` is told whether they were stored.
   */
  enqueue(requestId: string, entries: AuditEntry[], settle?: (stored: boolean) => void): boolean {
    if (entries.length === 0) return true;
    for (const entry of entries) if (entry.source === "") entry.source = this.source;
    if (this.closed || this.queue.length + this.inFlight >= this.capacity) {
      this.counters.dropped += entries.length;
      this.onError(new AuditError(Code.Unavailable, "audit queue full: entries dropped"), entries);
      settle?.(false);
      return false;
    }
    const pending: Pending = { requestId, entries };
    if (settle !== undefined) pending.settle = settle;
    this.queue.push(pending);
    if (!this.draining) void this.drain();
    return true;
  }

  /** Resolves once every queued entry is delivered or refused, or after `timeoutMs`. */
  async flush(timeoutMs = 10_000): Promise<boolean> {
    if (this.queue.length === 0 && this.inFlight === 0) return true;
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.idleWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /**
   * Stops accepting entries and delivers what is queued, waiting up to `timeoutMs`; what is
   * still undelivered then is given up and counted as dropped. Resolves to whether everything
   * was delivered. Call it before the process exits: retry timers do not keep Node alive.
   */
  async close(timeoutMs = 10_000): Promise<boolean> {
    this.closed = true;
    const delivered = await this.flush(timeoutMs);
    if (!delivered) {
      this.abandoned = true;
      for (const pending of this.queue.splice(0)) this.giveUp(pending);
    }
    return delivered;
  }

  private giveUp(pending: Pending): void {
    this.counters.dropped += pending.entries.length;
    pending.settle?.(false);
  }

  private async drain(): Promise<void> {
    this.draining = true;
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.drainSize);
        this.inFlight += batch.length;
        await Promise.all(batch.map((pending) => this.deliver(pending)));
      }
    } finally {
      this.draining = false;
    }
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const wake of waiters) wake();
  }

  /**
   * Sends one call's entries until they are stored or refused; retryable failures wait and
   * retry (safe: the ids are the client's). A call with more than `maxBatchEntries` entries is
   * sent as several batches sharing its request id, atomic each.
   */
  private async deliver(pending: Pending): Promise<void> {
    try {
      for (let start = 0; start < pending.entries.length; start += this.maxBatchEntries) {
        const chunk = pending.entries.slice(start, start + this.maxBatchEntries);
        if (!(await this.deliverChunk(pending, chunk))) return;
      }
      pending.settle?.(true);
    } finally {
      this.inFlight--;
    }
  }

  /** Whether `chunk` was stored; false after a refusal or when given up (already counted). */
  private async deliverChunk(pending: Pending, chunk: AuditEntry[]): Promise<boolean> {
    let backoff = this.initialBackoffMs;
    for (;;) {
      try {
        const receipt = await this.client.recordBatch(chunk, { requestId: pending.requestId, timeoutMs: this.attemptTimeoutMs });
        this.counters.delivered += receipt.ids.length;
        this.unreachable = false;
        return true;
      } catch (err) {
        const error = AuditError.from(err);
        if (!error.retryable) {
          this.counters.rejected += chunk.length;
          this.onError(error, chunk);
          pending.settle?.(false);
          return false;
        }
        this.unreachable = true;
        if (this.abandoned) {
          this.counters.dropped += chunk.length;
          pending.settle?.(false);
          return false;
        }
        this.counters.retries++;
        await new Promise((resolve) => setTimeout(resolve, backoff).unref());
        backoff = Math.min(backoff * 2, this.maxBackoffMs);
      }
    }
  }
}
