// AuditClient: the audit.v1.AuditService over Connect's gRPC transport for Node, with
// client-chosen ids and retries for writes, paging for queries and resuming subscriptions.

import { isIP, connect as netConnect } from "node:net";
import { connect as tlsConnect } from "node:tls";
import type { SecureClientSessionOptions } from "node:http2";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import { AuditError, Code } from "./errors.js";
import { toEntry, type EntryLike } from "./entry.js";
import { uuidv7 } from "./uuid.js";
import { AuditEntrySchema, type AuditEntry } from "./gen/audit/v1/entry_pb.js";
import {
  AuditService,
  FilterSchema,
  Order,
  StartPositionSchema,
  type GetCheckpointResponse,
  QueryRequestSchema,
  type QueryResponse,
  type RecordBatchResponse,
  type RecordResponse,
  type StartPosition,
} from "./gen/audit/v1/service_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";

/** A filter as plain fields (every field of `audit.v1.Filter` is optional). */
export type FilterInit = MessageInitShape<typeof FilterSchema>;

/** TLS settings; `ca` alone is TLS, `ca` with `cert` and `key` is mutual TLS. PEM contents. */
export interface TlsOptions {
  /** CA certificates that verify the server (default: Node's trusted roots). */
  ca?: string | Buffer;
  /** The client certificate chain, for mutual TLS. */
  cert?: string | Buffer;
  /** The client certificate's private key, for mutual TLS. */
  key?: string | Buffer;
  /** The name the server certificate must carry (default: the host of the address). */
  serverName?: string;
}

/** How writes are retried on UNAVAILABLE and DEADLINE_EXCEEDED. */
export interface RetryOptions {
  /** Attempts in all, the first one included (default 5; 1 never retries). */
  maxAttempts?: number;
  /** Wait before the first retry, doubled after each (default 100 ms). */
  initialBackoffMs?: number;
  /** Longest wait between attempts (default 2 s). */
  maxBackoffMs?: number;
}

export interface ClientOptions {
  /** TLS or mutual TLS (also implied by an `https://` address). */
  tls?: TlsOptions | true;
  /** The `source` of entries that leave it empty, e.g. `billing-api`. */
  source?: string;
  /** Deadline of each attempt of a unary call (default 5 s). */
  timeoutMs?: number;
  retry?: RetryOptions;
}

export interface CallOptions {
  /** Stops the call (and its retries); the promise rejects with CANCELED. */
  signal?: AbortSignal;
  /** Deadline of each attempt, overriding the client's. */
  timeoutMs?: number;
}

export interface QueryOptions extends CallOptions {
  /** Entries per page (the server's default when 0, capped at its maximum). */
  pageSize?: number;
  /** `Order.ASCENDING` (default, oldest first) or `Order.DESCENDING`. */
  order?: Order;
}

/** Where a subscription begins: "now" (default), after a sequence, or at a receive time. */
export type Start = "now" | { afterSequence: bigint } | { receivedTime: Date };

export interface SubscribeOptions {
  start?: Start;
  /** Ends the subscription: the iterator finishes without error. */
  signal?: AbortSignal;
  /** Consecutive failed attempts before giving up (default 10; `Infinity` never gives up). */
  maxConsecutiveFailures?: number;
  /** Wait before the first reconnection, doubled after each failed attempt (default 100 ms). */
  initialBackoffMs?: number;
  /** Longest wait between attempts (default 5 s). */
  maxBackoffMs?: number;
  /**
   * Reopens the underlying stream after this long, resuming where it was (default: never). For
   * networks that cut long-lived streams; it also shows resumption at work.
   */
  streamLifetimeMs?: number;
}

// === impl AuditClient ===

/**
 * A client of the audit service. Connects lazily, on the first call, to `HOST:PORT`
 * (plaintext), `http://HOST:PORT`, `https://HOST:PORT` (TLS) or `unix:/path/to/audit.sock`.
 *
 * ```ts
 * const audit = AuditClient.connect("unix:/run/audit/audit.sock", { source: "billing-api" });
 * await audit.record({ method: "/billing.v1.Invoices/Create", resource: "invoices/7" });
 * for await (const entry of audit.query({ resource: "invoices/*" })) console.log(entry.sequence);
 * audit.close();
 * ```
 */
export class AuditClient {
  /** The generated Connect client, for the calls this class does not wrap. */
  readonly raw: Client<typeof AuditService>;
  private readonly health_: Client<typeof Health>;
  private readonly session: Http2SessionManager;
  private readonly source: string;
  private readonly timeoutMs: number;
  private readonly retry: Required<RetryOptions>;

  private constructor(session: Http2SessionManager, baseUrl: string, options: ClientOptions) {
    this.session = session;
    const transport = createGrpcTransport({ baseUrl, sessionManager: session });
    this.raw = createClient(AuditService, transport);
    this.health_ = createClient(Health, transport);
    this.source = options.source ?? "";
    this.timeoutMs = options.timeoutMs ?? 5_000;
    this.retry = {
      maxAttempts: Math.max(1, options.retry?.maxAttempts ?? 5),
      initialBackoffMs: options.retry?.initialBackoffMs ?? 100,
      maxBackoffMs: options.retry?.maxBackoffMs ?? 2_000,
    };
  }

  /** A client for `address` (see the class); no connection is made until the first call. */
  static connect(address: string, options: ClientOptions = {}): AuditClient {
    const tls = options.tls === true ? {} : options.tls;
    if (address.startsWith("unix:")) {
      const path = address.slice("unix:".length).replace(/^\/\/(?=\/)/, "");
      const baseUrl = tls === undefined ? "http://localhost" : "https://localhost";
      const createConnection =
        tls === undefined
          ? () => netConnect(path)
          : () => tlsConnect({ path, ...tlsSettings(tls, "localhost") });
      return new AuditClient(new Http2SessionManager(baseUrl, undefined, { createConnection }), baseUrl, options);
    }
    const secure = address.startsWith("https://") || tls !== undefined;
    const hostPort = address.replace(/^https?:\/\//, "").replace(/\/+$/, "");
    const baseUrl = `${secure ? "https" : "http"}://${hostPort}`;
    const host = new URL(baseUrl).hostname.replace(/^\[|\]$/g, "");
    const http2Options: SecureClientSessionOptions = secure ? tlsSettings(tls ?? {}, host) : {};
    return new AuditClient(new Http2SessionManager(baseUrl, undefined, http2Options), baseUrl, options);
  }

  /** Closes the connection (and any open stream). Calls after this reconnect. */
  close(): void {
    this.session.abort();
  }

  /**
   * Records one entry. A resolved promise means the entry is durable. An empty `id` gets a
   * UUIDv7 and an empty `source` the client's, so UNAVAILABLE and DEADLINE_EXCEEDED are retried
   * safely: the server stores an id once and answers a retry with the first receipt.
   * Throws `AuditError` (with `fieldViolations` for a refused entry).
   */
  async record(entry: EntryLike, options: CallOptions = {}): Promise<RecordResponse> {
    const prepared = this.prepare(toEntry(entry));
    return this.withRetries(options, (callOptions) => this.raw.record({ entry: prepared }, callOptions));
  }

  /**
   * Records the entries of one call (one per operation) atomically, sharing `requestId`
   * (a UUIDv7 when not given). Ids are filled and retries are as for `record`.
   */
  async recordBatch(
    entries: readonly EntryLike[],
    options: CallOptions & { requestId?: string } = {},
  ): Promise<RecordBatchResponse> {
    const prepared = entries.map((e) => this.prepare(toEntry(e)));
    const requestId = options.requestId || prepared.find((e) => e.requestId !== "")?.requestId || uuidv7();
    return this.withRetries(options, (callOptions) =>
      this.raw.recordBatch({ requestId, entries: prepared }, callOptions),
    );
  }

  /** Every entry matching `filter`, page after page (following `next_page_token`). */
  async *query(filter: FilterInit = {}, options: QueryOptions = {}): AsyncGenerator<AuditEntry, void, undefined> {
    let pageToken = "";
    do {
      const page = await this.queryPage(
        { filter, pageSize: options.pageSize ?? 0, pageToken, order: options.order ?? Order.ASCENDING },
        options,
      );
      yield* page.entries;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  /** One page of a query, for callers that keep page tokens themselves. Retried when safe. */
  async queryPage(request: MessageInitShape<typeof QueryRequestSchema>, options: CallOptions = {}): Promise<QueryResponse> {
    return this.withRetries(options, (callOptions) => this.raw.query(request, callOptions));
  }

  /**
   * The entries matching `filter` from `start`, in sequence order, as they are committed. The
   * subscription survives dropped streams: it reconnects with backoff and resumes after the
   * greater of the last entry's and the last heartbeat's sequence, so no entry is missed or
   * repeated. Abort `signal` (or leave the loop) to stop.
   */
  subscribe(filter: FilterInit = {}, options: SubscribeOptions = {}): Subscription {
    return new Subscription(this.raw, filter, options);
  }

  /** The newest signed checkpoint (or the one of `size` entries) and the server's key. */
  async checkpoint(size = 0n, options: CallOptions = {}): Promise<GetCheckpointResponse> {
    return this.withRetries(options, (callOptions) => this.raw.getCheckpoint({ size }, callOptions));
  }

  /** `grpc.health.v1` status of `service` ("" for the server as a whole). */
  async health(service = "", options: CallOptions = {}): Promise<HealthCheckResponse_ServingStatus> {
    const response = await this.withRetries(options, (callOptions) => this.health_.check({ service }, callOptions));
    return response.status;
  }

  private prepare(entry: AuditEntry): AuditEntry {
    if (entry.id !== "" && (entry.source !== "" || this.source === "")) return entry;
    const copy = create(AuditEntrySchema, entry);
    if (copy.id === "") copy.id = uuidv7();
    if (copy.source === "") copy.source = this.source;
    return copy;
  }

  private async withRetries<T>(
    options: CallOptions,
    call: (callOptions: { signal?: AbortSignal; timeoutMs: number }) => Promise<T>,
  ): Promise<T> {
    let backoff = this.retry.initialBackoffMs;
    for (let attempt = 1; ; attempt++) {
      try {
        const callOptions: { signal?: AbortSignal; timeoutMs: number } = { timeoutMs: options.timeoutMs ?? this.timeoutMs };
        if (options.signal !== undefined) callOptions.signal = options.signal;
        return await call(callOptions);
      } catch (err) {
        const error = AuditError.from(err);
        if (!error.retryable || attempt >= this.retry.maxAttempts || options.signal?.aborted) throw error;
        await sleep(backoff, options.signal);
        backoff = Math.min(backoff * 2, this.retry.maxBackoffMs);
      }
    }
  }
}

function tlsSettings(tls: TlsOptions, host: string): SecureClientSessionOptions {
  const settings: SecureClientSessionOptions = { ALPNProtocols: ["h2"] };
  // SNI carries host names only (RFC 6066); an IP address is checked against the certificate's IP SANs.
  const serverName = tls.serverName ?? (isIP(host) === 0 ? host : undefined);
  if (serverName !== undefined) settings.servername = serverName;
  if (tls.ca !== undefined) settings.ca = tls.ca;
  if (tls.cert !== undefined) settings.cert = tls.cert;
  if (tls.key !== undefined) settings.key = tls.key;
  return settings;
}

/** Resolves after `ms` (or at once when `signal` aborts); the timer keeps nothing alive. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    timer.unref();
    signal?.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
  });
}

// === impl Subscription ===

/** Codes after which a subscription reconnects; any other error ends it. */
const RESUMABLE = new Set([Code.Unavailable, Code.ResourceExhausted, Code.DeadlineExceeded, Code.Aborted, Code.Internal, Code.Unknown]);

/**
 * A live stream of entries that reconnects after drops; iterate it with `for await`. Ends when
 * its signal aborts or the loop is left; throws an `AuditError` for a status that retrying
 * cannot fix (PERMISSION_DENIED, INVALID_ARGUMENT, ...) or once its retries are used up.
 */
export class Subscription implements AsyncIterable<AuditEntry> {
  private resume: bigint | undefined;
  private reconnects_ = 0;
  private started = false;

  /** @internal */
  constructor(
    private readonly raw: Client<typeof AuditService>,
    private readonly filter: FilterInit,
    private readonly options: SubscribeOptions,
  ) {
    const start = options.start ?? "now";
    if (typeof start === "object" && "afterSequence" in start) this.resume = start.afterSequence;
  }

  /**
   * The sequence after which a new subscription would resume: every matching entry up to it
   * has been delivered. Undefined before the first entry or heartbeat of a subscription that
   * did not start at a sequence.
   */
  get resumeAfter(): bigint | undefined {
    return this.resume;
  }

  /** How many times the underlying stream was reopened. */
  get reconnects(): number {
    return this.reconnects_;
  }

  [Symbol.asyncIterator](): AsyncIterator<AuditEntry> {
    if (this.started) throw new Error("a Subscription can be iterated once");
    this.started = true;
    return this.run();
  }

  private startPosition(): StartPosition | undefined {
    if (this.resume !== undefined) {
      return create(StartPositionSchema, { position: { case: "afterSequence", value: this.resume } });
    }
    const start = this.options.start ?? "now";
    if (typeof start === "object" && "receivedTime" in start) {
      return create(StartPositionSchema, {
        position: { case: "receivedTime", value: timestampFromDate(start.receivedTime) },
      });
    }
    return undefined;
  }

  private async *run(): AsyncGenerator<AuditEntry, void, undefined> {
    const { signal } = this.options;
    const maxFailures = this.options.maxConsecutiveFailures ?? 10;
    const initialBackoff = this.options.initialBackoffMs ?? 100;
    const maxBackoff = Math.max(initialBackoff, this.options.maxBackoffMs ?? 5_000);
    let backoff = initialBackoff;
    let failures = 0;
    for (let attempt = 0; !signal?.aborted; attempt++) {
      if (attempt > 0) this.reconnects_++;
      const stream = new AbortController();
      const stop = () => stream.abort();
      signal?.addEventListener("abort", stop, { once: true });
      let lifetimeEnded = false;
      const lifetime =
        this.options.streamLifetimeMs === undefined
          ? undefined
          : setTimeout(() => ((lifetimeEnded = true), stream.abort()), this.options.streamLifetimeMs);
      lifetime?.unref();
      let received = false;
      let failure: AuditError | undefined;
      try {
        const start = this.startPosition();
        for await (const message of this.raw.subscribe(
          start === undefined ? { filter: this.filter } : { filter: this.filter, start },
          { signal: stream.signal },
        )) {
          received = true;
          const last = this.resume;
          if (message.message.case === "entry") {
            const entry = message.message.value;
            // Never yield a sequence twice, even if a server replays from before the resume point.
            if (last !== undefined && entry.sequence <= last) continue;
            this.resume = entry.sequence;
            yield entry;
          } else if (message.message.case === "heartbeat") {
            const sequence = message.message.value.sequence;
            if (last === undefined || sequence > last) this.resume = sequence;
          }
        }
      } catch (err) {
        if (signal?.aborted) return;
        const error = AuditError.from(err);
        if (!(lifetimeEnded && error.code === Code.Canceled)) failure = error;
      } finally {
        clearTimeout(lifetime);
        signal?.removeEventListener("abort", stop);
        stream.abort();
      }
      if (signal?.aborted) return;
      if (lifetimeEnded && failure === undefined) {
        backoff = initialBackoff;
        failures = 0;
        continue; // our own reopening: no wait
      }
      if (failure !== undefined && !RESUMABLE.has(failure.code)) throw failure;
      if (received) {
        failures = 0;
        backoff = initialBackoff;
      }
      failures++;
      if (failures > maxFailures) {
        throw failure ?? new AuditError(Code.Unavailable, `subscription ended by the server ${failures} times in a row`);
      }
      await sleep(backoff, signal);
      backoff = Math.min(backoff * 2, maxBackoff);
    }
  }
}
