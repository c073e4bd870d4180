// Record, batch, query, subscribe and health-check against an audit server.
//
// Usage: node dist/example.js HOST:PORT|unix:/path/to/audit.sock
//
// Prints one line per step and exits non-zero when the server did not behave as expected.

import { randomUUID } from "node:crypto";
import { connect as connectSocket } from "node:net";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import {
  AuditEntrySchema,
  Level,
  Outcome,
  type AuditEntry,
} from "./gen/audit/v1/entry_pb.js";
import {
  AuditService,
  Order,
  FilterSchema,
  type RecordBatchResponse,
  type RecordResponse,
} from "./gen/audit/v1/service_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";

const CALL_TIMEOUT_MS = 5_000;
const SUBSCRIBE_TIMEOUT_MS = 10_000;

type AuditClient = Client<typeof AuditService>;

/** The server answered, but not as the contract says. */
class ExampleFailed extends Error {}

function check(condition: boolean, message: string): asserts condition {
  if (!condition) {
    throw new ExampleFailed(message);
  }
}

function ok(step: string, detail: string): void {
  console.log(`ok    ${step.padEnd(10)} ${detail}`);
}

const sameList = <T>(a: readonly T[], b: readonly T[]): boolean =>
  a.length === b.length && a.every((value, i) => value === b[i]);

/** An entry with the fields every example entry shares; `fields` adds or overrides. */
function newEntry(
  source: string,
  runId: string,
  fields: Partial<Pick<AuditEntry, "method" | "event" | "category" | "resource" | "details">> = {},
): AuditEntry {
  return create(AuditEntrySchema, {
    source,
    method: "/billing.v1.InvoiceService/CreateInvoice",
    event: "INVOICE_CREATED",
    category: "BILLING",
    level: Level.INFO,
    outcome: Outcome.SUCCESS,
    statusCode: 0, // OK
    caller: {
      peer: { case: "network", value: { address: "127.0.0.1:40000" } },
      principal: "alice@example.com",
      userAgent: `connect-es/node-${process.versions.node}`,
    },
    latency: create(DurationSchema, { nanos: 12_000_000 }),
    labels: { run: runId, language: "typescript" },
    ...fields,
  });
}

async function recordOne(client: AuditClient, source: string, runId: string): Promise<RecordResponse> {
  const entry = newEntry(source, runId, {
    resource: "invoices/INV-1001",
    details: { invoice: "INV-1001", amount_cents: 4200, paid: false },
  });
  const response = await client.record({ entry }, { timeoutMs: CALL_TIMEOUT_MS });
  check(response.id !== "", `Record returned an empty id`);
  check(response.sequence > 0n, `Record returned sequence ${response.sequence}, want > 0`);
  ok("record", `id=${response.id} sequence=${response.sequence}`);
  return response;
}

async function recordBatch(
  client: AuditClient,
  source: string,
  runId: string,
  requestId: string,
): Promise<RecordBatchResponse> {
  // One entry per operation of one audited call, all sharing the call's request_id.
  const entries = ["keys/alpha", "keys/beta", "keys/gamma"].map((resource) =>
    newEntry(source, runId, {
      method: "/kms.v1.KeyService/DeleteKeys",
      event: "KEY_DELETED",
      category: "KEY_MANAGEMENT",
      resource,
    }),
  );
  // The caller was not allowed to delete the last key.
  entries[2]!.outcome = Outcome.DENIED;
  entries[2]!.statusCode = Code.PermissionDenied;
  entries[2]!.statusMessage = "not allowed to delete keys/gamma";
  const response = await client.recordBatch({ requestId, entries }, { timeoutMs: CALL_TIMEOUT_MS });
  check(response.requestId === requestId, `RecordBatch request_id=${response.requestId}, want ${requestId}`);
  check(response.ids.length === 3, `RecordBatch returned ${response.ids.length} ids, want 3`);
  check(response.sequences.length === 3, `RecordBatch returned ${response.sequences.length} sequences, want 3`);
  const [a, b, c] = response.sequences as [bigint, bigint, bigint];
  check(a < b && b < c, `RecordBatch sequences ${response.sequences.join(",")} are not strictly increasing`);
  ok("batch", `request_id=${requestId} sequences=[${response.sequences.join(", ")}]`);
  return response;
}

/** Every matching entry, oldest first, following nextPageToken (two per page, to show paging). */
async function queryAll(
  client: AuditClient,
  filter: MessageInitShape<typeof FilterSchema>,
): Promise<AuditEntry[]> {
  const entries: AuditEntry[] = [];
  let pageToken = "";
  for (let page = 0; page < 100; page++) {
    const response = await client.query(
      { filter, pageSize: 2, pageToken, order: Order.ASCENDING },
      { timeoutMs: CALL_TIMEOUT_MS },
    );
    entries.push(...response.entries);
    pageToken = response.nextPageToken;
    if (pageToken === "") {
      return entries;
    }
  }
  throw new ExampleFailed("Query kept returning next_page_token after 100 pages");
}

async function queryBack(
  client: AuditClient,
  source: string,
  runId: string,
  single: RecordResponse,
  batch: RecordBatchResponse,
): Promise<void> {
  const byRequest = await queryAll(client, { requestId: batch.requestId });
  check(
    sameList(byRequest.map((e) => e.id), batch.ids),
    `Query(request_id) returned ids [${byRequest.map((e) => e.id).join(", ")}], want [${batch.ids.join(", ")}]`,
  );
  check(
    sameList(byRequest.map((e) => e.sequence), batch.sequences),
    `Query(request_id) returned sequences [${byRequest.map((e) => e.sequence).join(", ")}]`,
  );
  check(
    sameList(byRequest.map((e) => e.resource), ["keys/alpha", "keys/beta", "keys/gamma"]),
    `Query(request_id) returned resources [${byRequest.map((e) => e.resource).join(", ")}]`,
  );
  const denied = await queryAll(client, { requestId: batch.requestId, outcomes: [Outcome.DENIED] });
  check(
    sameList(denied.map((e) => e.resource), ["keys/gamma"]),
    `Query(request_id, outcomes=[DENIED]) returned [${denied.map((e) => e.resource).join(", ")}], want [keys/gamma]`,
  );

  const bySource = await queryAll(client, { source });
  const wantIds = [single.id, ...batch.ids];
  check(
    sameList(bySource.map((e) => e.id), wantIds),
    `Query(source) returned ids [${bySource.map((e) => e.id).join(", ")}], want [${wantIds.join(", ")}]`,
  );
  const first = bySource[0]!;
  check(first.sequence === single.sequence, `recorded entry has sequence ${first.sequence}, want ${single.sequence}`);
  check(first.requestId !== "", "the server did not fill request_id of the recorded entry");
  check(first.receivedTime !== undefined, "the server did not fill received_time");
  check(first.recorder !== undefined, "the server did not fill recorder");
  // Struct is a map: compare with sorted keys, not in wire order.
  const details = JSON.stringify(first.details ?? {}, Object.keys(first.details ?? {}).sort());
  check(details === `{"amount_cents":4200,"invoice":"INV-1001","paid":false}`, `details came back as ${details}`);
  check(
    first.labels["run"] === runId && first.labels["language"] === "typescript",
    `labels came back as ${JSON.stringify(first.labels)}`,
  );
  ok(
    "query",
    `${byRequest.length} entries for request_id, ${denied.length} denied, ${bySource.length} for source ${source}; ` +
      `recorder=${first.recorder?.peer.case} details and labels intact`,
  );
}

/** Rejects after `ms` with `message`; the timer does not keep the process alive. */
function deadline(ms: number, message: string): Promise<never> {
  return new Promise((_, reject) => setTimeout(() => reject(new ExampleFailed(message)), ms).unref());
}

async function subscribeLive(
  client: AuditClient,
  source: string,
  runId: string,
  afterSequence: bigint,
): Promise<void> {
  // Resume right after the last sequence we saw, so nothing can slip between opening the
  // stream and recording: the server replays what is stored after it, then goes live.
  const abort = new AbortController();
  let opened!: () => void;
  const headersReceived = new Promise<void>((resolve) => (opened = resolve));
  const stream = client
    .subscribe(
      { filter: { source }, start: { position: { case: "afterSequence", value: afterSequence } } },
      { signal: abort.signal, timeoutMs: SUBSCRIBE_TIMEOUT_MS, onHeader: () => opened() },
    )
    [Symbol.asyncIterator]();
  try {
    let next = stream.next(); // starts the call
    next.catch(() => {}); // handled below; keeps Node from reporting it early
    await Promise.race([
      headersReceived,
      next.then(() => {}),
      deadline(SUBSCRIBE_TIMEOUT_MS, "Subscribe was not accepted in time"),
    ]);
    const live = await client.record(
      { entry: newEntry(source, runId, { event: "INVOICE_PAID", resource: "invoices/INV-1001" }) },
      { timeoutMs: CALL_TIMEOUT_MS },
    );
    let heartbeats = 0;
    for (;;) {
      const result = await next;
      if (result.done) {
        throw new ExampleFailed("Subscribe ended before delivering the new entry");
      }
      const message = result.value.message;
      if (message.case === "heartbeat") {
        heartbeats++;
        next = stream.next();
        continue;
      }
      if (message.case !== "entry") {
        throw new ExampleFailed("Subscribe sent an empty message");
      }
      const entry = message.value;
      check(
        entry.id === live.id && entry.sequence === live.sequence,
        `Subscribe delivered id=${entry.id} sequence=${entry.sequence} first, ` +
          `want the new entry id=${live.id} sequence=${live.sequence}`,
      );
      check(entry.event === "INVOICE_PAID", `Subscribe delivered event ${entry.event}`);
      ok(
        "subscribe",
        `received id=${entry.id} sequence=${entry.sequence} recorded after the stream opened ` +
          `(${heartbeats} heartbeats before it)`,
      );
      return;
    }
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.DeadlineExceeded) {
      throw new ExampleFailed(`Subscribe delivered no entry within ${SUBSCRIBE_TIMEOUT_MS / 1000} s`);
    }
    throw err;
  } finally {
    // Cancel the stream, then read its end: Connect releases the call (and clears the
    // timeoutMs timer, which would otherwise keep Node alive until it fires) once the
    // cancellation has been read.
    abort.abort();
    for (let i = 0; i < 1000; i++) {
      const result = await stream.next().catch(() => ({ done: true }) as const);
      if (result.done) break;
    }
  }
}

async function checkHealth(health: Client<typeof Health>): Promise<void> {
  for (const service of ["", "audit.v1.AuditService"]) {
    const response = await health.check({ service }, { timeoutMs: CALL_TIMEOUT_MS });
    const status = HealthCheckResponse_ServingStatus[response.status];
    check(
      response.status === HealthCheckResponse_ServingStatus.SERVING,
      `health of "${service}" is ${status}, want SERVING`,
    );
    ok("health", `${service || "(server)"}: ${status}`);
  }
}

async function run(address: string): Promise<void> {
  const runId = randomUUID().replaceAll("-", "").slice(0, 12);
  const source = `typescript-example-${runId}`;
  // gRPC over HTTP/2 (h2c: plaintext, loopback or a Unix socket), the protocol tonic speaks.
  // One HTTP/2 connection, closed when done so that Node can exit right away.
  const socketPath = address.startsWith("unix:") ? address.slice("unix:".length) : undefined;
  const baseUrl = socketPath === undefined ? `http://${address}` : "http://localhost";
  const connection = new Http2SessionManager(
    baseUrl,
    undefined,
    socketPath === undefined ? undefined : { createConnection: () => connectSocket(socketPath) },
  );
  const transport = createGrpcTransport({ baseUrl, sessionManager: connection });
  const client = createClient(AuditService, transport);
  console.log(`talking to ${address}, source ${source}`);
  try {
    const single = await recordOne(client, source, runId);
    const batch = await recordBatch(client, source, runId, randomUUID());
    await queryBack(client, source, runId, single, batch);
    await subscribeLive(client, source, runId, batch.sequences[2]!);
    await checkHealth(createClient(Health, transport));
  } finally {
    connection.abort();
  }
}

async function main(argv: string[]): Promise<number> {
  const address = argv[2];
  if (argv.length !== 3 || address === undefined) {
    console.error(`usage: node dist/example.js HOST:PORT|unix:/path/to/audit.sock`);
    return 2;
  }
  const started = performance.now();
  try {
    await run(address);
  } catch (err) {
    if (err instanceof ExampleFailed) {
      console.error(`FAIL  ${err.message}`);
    } else if (err instanceof ConnectError) {
      console.error(`FAIL  ${Code[err.code]}: ${err.rawMessage}`);
    } else {
      console.error("FAIL ", err);
    }
    return 1;
  }
  console.log(`typescript example passed in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  return 0;
}

process.exitCode = await main(process.argv);
