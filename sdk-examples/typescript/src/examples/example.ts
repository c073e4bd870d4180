// Record, batch, query (with paging), subscribe (live and resumed), refused fields and health
// against an audit server, with the idiomatic client; then the same server from a plain
// @grpc/grpc-js client, and an example key store audited by the grpc-js interceptor.
//
// Usage: node dist/examples/example.js HOST:PORT|unix:/path/to/audit.sock
//
// Prints one line per step and exits non-zero when the server did not behave as expected.

import { randomUUID } from "node:crypto";

import {
  AuditClient,
  AuditError,
  Code,
  Level,
  Order,
  Outcome,
  ServingStatus,
  type AuditEntry,
  type EntryFields,
  type RecordBatchResponse,
  type RecordResponse,
} from "../index.js";
import { check, deadline, ExampleFailed, ok, sameList } from "./check.js";
import { grpcJsInterop } from "./grpc-js-client.js";
import { failureModes, keystoreExample } from "./keystore.js";

const SUBSCRIBE_TIMEOUT_MS = 10_000;
const UUIDV7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** An entry with the fields every example entry shares; `fields` adds or overrides. */
function newEntry(runId: string, fields: Partial<EntryFields> = {}): EntryFields {
  return {
    method: "/billing.v1.InvoiceService/CreateInvoice",
    event: "INVOICE_CREATED",
    category: "BILLING",
    level: Level.INFO,
    statusCode: 0, // OK, so the outcome is SUCCESS
    caller: {
      address: "127.0.0.1:40000",
      principal: "alice@example.com",
      userAgent: `audit-sdk/node-${process.versions.node}`,
    },
    latencyMs: 12,
    labels: { run: runId, language: "typescript" },
    ...fields,
  };
}

async function recordOne(audit: AuditClient, runId: string): Promise<RecordResponse> {
  const response = await audit.record(
    newEntry(runId, {
      resource: "invoices/INV-1001",
      details: { invoice: "INV-1001", amount_cents: 4200, paid: false },
    }),
  );
  check(UUIDV7.test(response.id), `Record returned id ${response.id}, want the client's UUIDv7`);
  check(response.sequence > 0n, `Record returned sequence ${response.sequence}, want > 0`);
  ok("record", `id=${response.id} sequence=${response.sequence}`);
  return response;
}

async function recordBatch(audit: AuditClient, runId: string, requestId: string): Promise<RecordBatchResponse> {
  // One entry per operation of one audited call, all sharing the call's request_id; the caller
  // was not allowed to delete the last key.
  const entries = ["keys/alpha", "keys/beta", "keys/gamma"].map((resource) =>
    newEntry(runId, { method: "/kms.v1.KeyService/DeleteKeys", event: "KEY_DELETED", category: "KEY_MANAGEMENT", resource }),
  );
  entries[2] = { ...entries[2]!, statusCode: Code.PermissionDenied, statusMessage: "not allowed to delete keys/gamma" };
  const response = await audit.recordBatch(entries, { requestId });
  check(response.requestId === requestId, `RecordBatch request_id=${response.requestId}, want ${requestId}`);
  check(response.ids.length === 3, `RecordBatch returned ${response.ids.length} ids, want 3`);
  check(response.ids.every((id) => UUIDV7.test(id)), `RecordBatch ids [${response.ids.join(", ")}] are not UUIDv7`);
  check(response.sequences.length === 3, `RecordBatch returned ${response.sequences.length} sequences, want 3`);
  const [a, b, c] = response.sequences as [bigint, bigint, bigint];
  check(a < b && b < c, `RecordBatch sequences ${response.sequences.join(",")} are not strictly increasing`);
  ok("batch", `request_id=${requestId} sequences=[${response.sequences.join(", ")}]`);
  return response;
}

async function collect(entries: AsyncIterable<AuditEntry>): Promise<AuditEntry[]> {
  const all: AuditEntry[] = [];
  for await (const entry of entries) all.push(entry);
  return all;
}

async function queryBack(
  audit: AuditClient,
  source: string,
  runId: string,
  single: RecordResponse,
  batch: RecordBatchResponse,
): Promise<void> {
  // Two per page, so each query below follows next_page_token.
  const byRequest = await collect(audit.query({ requestId: batch.requestId }, { pageSize: 2 }));
  check(
    sameList(byRequest.map((e) => e.id), batch.ids),
    `query(request_id) returned ids [${byRequest.map((e) => e.id).join(", ")}], want [${batch.ids.join(", ")}]`,
  );
  check(
    sameList(byRequest.map((e) => e.sequence), batch.sequences),
    `query(request_id) returned sequences [${byRequest.map((e) => e.sequence).join(", ")}]`,
  );
  check(
    sameList(byRequest.map((e) => e.resource), ["keys/alpha", "keys/beta", "keys/gamma"]),
    `query(request_id) returned resources [${byRequest.map((e) => e.resource).join(", ")}]`,
  );
  check(
    sameList(byRequest.map((e) => e.outcome), [Outcome.SUCCESS, Outcome.SUCCESS, Outcome.DENIED]),
    `query(request_id) returned outcomes [${byRequest.map((e) => Outcome[e.outcome]).join(", ")}], want SUCCESS, SUCCESS, DENIED`,
  );
  const denied = await collect(audit.query({ requestId: batch.requestId, outcomes: [Outcome.DENIED] }, { pageSize: 2 }));
  check(
    sameList(denied.map((e) => e.resource), ["keys/gamma"]),
    `query(request_id, outcomes=[DENIED]) returned [${denied.map((e) => e.resource).join(", ")}], want [keys/gamma]`,
  );

  const bySource = await collect(audit.query({ source }, { pageSize: 2 }));
  const wantIds = [single.id, ...batch.ids];
  check(
    sameList(bySource.map((e) => e.id), wantIds),
    `query(source) returned ids [${bySource.map((e) => e.id).join(", ")}], want [${wantIds.join(", ")}]`,
  );
  const first = bySource[0]!;
  check(first.sequence === single.sequence, `recorded entry has sequence ${first.sequence}, want ${single.sequence}`);
  check(first.requestId !== "", "the server did not fill request_id of the recorded entry");
  check(first.receivedTime !== undefined, "the server did not fill received_time");
  check(first.recorder !== undefined, "the server did not fill recorder");
  check(first.latency?.nanos === 12_000_000, `latency came back as ${first.latency?.seconds} s ${first.latency?.nanos} ns, want 12 ms`);
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

/** More entries than fit a page: query() follows the page tokens, in both orders. */
async function queryPaging(audit: AuditClient, runId: string): Promise<void> {
  const requestId = randomUUID();
  const resources = Array.from({ length: 23 }, (_, i) => `keys/k${String(i).padStart(2, "0")}`);
  const batch = await audit.recordBatch(
    resources.map((resource) => newEntry(runId, { source: `typescript-paging-${runId}`, event: "KEY_ROTATED", resource })),
    { requestId },
  );
  let pages = 0;
  let pageToken = "";
  do {
    const page = await audit.queryPage({ filter: { requestId }, pageSize: 5, pageToken });
    pages++;
    pageToken = page.nextPageToken;
  } while (pageToken !== "" && pages < 100);
  check(pages === 5, `23 entries came in ${pages} pages of 5, want 5`);
  const ascending = await collect(audit.query({ requestId }, { pageSize: 5 }));
  check(sameList(ascending.map((e) => e.id), batch.ids), `query(pageSize 5) returned ${ascending.length} entries, not the batch's 23 in order`);
  const descending = await collect(audit.query({ requestId }, { pageSize: 5, order: Order.DESCENDING }));
  check(
    sameList(descending.map((e) => e.id), [...batch.ids].reverse()),
    `query(pageSize 5, DESCENDING) returned ${descending.length} entries, not the batch's 23 newest first`,
  );
  ok("paging", `23 entries over ${pages} pages of 5, ascending and descending`);
}

/** An entry recorded after subscribing arrives; aborting the signal ends the loop. */
async function subscribeLive(audit: AuditClient, source: string, runId: string, afterSequence: bigint): Promise<void> {
  // Start right after the last sequence we saw, so nothing can slip between opening the stream
  // and recording: the server replays what is stored after it, then goes live.
  const stop = new AbortController();
  const subscription = audit.subscribe({ source }, { start: { afterSequence }, signal: stop.signal });
  const live = await audit.record(newEntry(runId, { event: "INVOICE_PAID", resource: "invoices/INV-1001" }));
  const first = (async () => {
    for await (const entry of subscription) {
      stop.abort(); // the loop ends after this entry, with no error
      return entry;
    }
    return undefined;
  })();
  const entry = await Promise.race([first, deadline(SUBSCRIBE_TIMEOUT_MS, "subscribe delivered nothing within 10 s")]);
  check(entry !== undefined, "subscribe ended before delivering the new entry");
  check(
    entry.id === live.id && entry.sequence === live.sequence,
    `subscribe delivered id=${entry.id} sequence=${entry.sequence} first, want the new entry id=${live.id} sequence=${live.sequence}`,
  );
  check(entry.event === "INVOICE_PAID", `subscribe delivered event ${entry.event}`);
  ok("subscribe", `received id=${entry.id} sequence=${entry.sequence} recorded after subscribing; abort ended it`);
}

/**
 * A subscription whose stream is reopened every 250 ms while entries are recorded: every entry
 * arrives once, in order, across the reconnections.
 */
async function subscribeResumed(audit: AuditClient, runId: string): Promise<void> {
  const source = `typescript-resume-${runId}`;
  const stop = new AbortController();
  const subscription = audit.subscribe(
    { source },
    { start: { afterSequence: 0n }, signal: stop.signal, streamLifetimeMs: 250 },
  );
  const count = 12;
  const received: AuditEntry[] = [];
  const reading = (async () => {
    for await (const entry of subscription) {
      received.push(entry);
      if (received.length === count) stop.abort();
    }
  })();
  const recorded: string[] = [];
  try {
    for (let i = 0; i < count; i++) {
      recorded.push((await audit.record(newEntry(runId, { source, event: "TICK", resource: `ticks/${i}` }))).id);
      await new Promise((resolve) => setTimeout(resolve, 90));
    }
    await Promise.race([reading, deadline(SUBSCRIBE_TIMEOUT_MS, `resumed subscription delivered ${received.length} of ${count} entries in 10 s`)]);
  } finally {
    stop.abort();
  }
  check(
    sameList(received.map((e) => e.id), recorded),
    `resumed subscription delivered [${received.map((e) => e.resource).join(", ")}], want ticks/0..${count - 1} once each`,
  );
  check(subscription.reconnects >= 2, `the stream was reopened ${subscription.reconnects} times, want at least 2`);
  ok(
    "resume",
    `${count} entries once each, in order, across ${subscription.reconnects} reconnections (resume after #${subscription.resumeAfter})`,
  );
}

/** The server names the refused fields (google.rpc.BadRequest in grpc-status-details-bin). */
async function refusedFields(audit: AuditClient, runId: string): Promise<void> {
  const expectRefusal = async (what: string, call: () => Promise<unknown>): Promise<AuditError> => {
    try {
      await call();
    } catch (err) {
      check(err instanceof AuditError, `${what}: threw ${String(err)}, want an AuditError`);
      check(err.code === Code.InvalidArgument, `${what}: ${err.message}, want INVALID_ARGUMENT`);
      return err;
    }
    throw new ExampleFailed(`${what} was accepted, want INVALID_ARGUMENT`);
  };
  const one = await expectRefusal("record without a method", () => audit.record(newEntry(runId, { method: "" })));
  check(
    one.fieldViolations.some((v) => v.field === "entry.method" || v.field === "method"),
    `record without a method: violations ${JSON.stringify(one.fieldViolations)}, want the method named`,
  );
  const batch = await expectRefusal("batch with a bad second entry", () =>
    audit.recordBatch([newEntry(runId), newEntry(runId, { method: "" })]),
  );
  check(
    batch.fieldViolations.some((v) => v.field === "entries[1].method"),
    `batch with a bad second entry: violations ${JSON.stringify(batch.fieldViolations)}, want entries[1].method`,
  );
  ok("refused", `${one.fieldViolations.map((v) => v.field).join(", ")} and ${batch.fieldViolations.map((v) => v.field).join(", ")} named`);
}

async function checkHealth(audit: AuditClient): Promise<void> {
  for (const service of ["", "audit.v1.AuditService"]) {
    const status = await audit.health(service);
    check(status === ServingStatus.SERVING, `health of "${service}" is ${ServingStatus[status]}, want SERVING`);
    ok("health", `${service || "(server)"}: ${ServingStatus[status]}`);
  }
}

async function run(address: string): Promise<void> {
  const runId = randomUUID().replaceAll("-", "").slice(0, 12);
  const source = `typescript-example-${runId}`;
  const audit = AuditClient.connect(address, { source });
  console.log(`talking to ${address}, source ${source}`);
  try {
    const single = await recordOne(audit, runId);
    const batch = await recordBatch(audit, runId, randomUUID());
    await queryBack(audit, source, runId, single, batch);
    await queryPaging(audit, runId);
    await subscribeLive(audit, source, runId, batch.sequences[2]!);
    await subscribeResumed(audit, runId);
    await refusedFields(audit, runId);
    await checkHealth(audit);
    await grpcJsInterop(address, runId);
    await keystoreExample(audit, address, runId);
    await failureModes(runId);
  } finally {
    audit.close();
  }
}

async function main(argv: string[]): Promise<number> {
  const address = argv[2];
  if (argv.length !== 3 || address === undefined) {
    console.error(`usage: node dist/examples/example.js HOST:PORT|unix:/path/to/audit.sock`);
    return 2;
  }
  const started = performance.now();
  try {
    await run(address);
  } catch (err) {
    console.error(err instanceof ExampleFailed || err instanceof AuditError ? `FAIL  ${err.message}` : ["FAIL ", err]);
    return 1;
  }
  console.log(`typescript example passed in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  return 0;
}

process.exitCode = await main(process.argv);
