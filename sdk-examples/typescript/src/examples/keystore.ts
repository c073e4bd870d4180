// The example key store, a @grpc/grpc-js service audited by auditInterceptor: started on
// 127.0.0.1:0, called (an OK call, an error, a server-streaming call, one cancelled by the
// caller, a batch call, an excluded health check), then its entries are read back from the audit service and checked exactly.

import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import { AuditClient, Outcome, type AuditEntry } from "../index.js";
import { AuditHandle, auditInterceptor, Recorder } from "../interceptor/index.js";
import { check, ok, sameList } from "./check.js";

// dist/examples/ -> keystore/v1/keystore.proto beside package.json.
const PROTO_DIR = fileURLToPath(new URL("../../", import.meta.url));
const SERVICE = "/keystore.v1.KeyStore";
const UUIDV7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

interface Key {
  name: string;
  value: string;
}

type Callback<T> = (err: grpc.ServiceError | null, response?: T) => void;

// === the service ===

/** The key store's handlers; `handled` counts the calls that reached them. */
function keyStore(handled: { calls: number }): grpc.UntypedServiceImplementation {
  const keys = new Map<string, string>();
  return {
    Create(call: grpc.ServerUnaryCall<{ key?: Key }, Key>, callback: grpc.sendUnaryData<Key>) {
      handled.calls++;
      const key = call.request.key ?? { name: "", value: "" };
      AuditHandle.of(call)?.annotate({ event: "KEY_CREATED", category: "KEY_MANAGEMENT", resource: `keys/${key.name}` });
      if (keys.has(key.name)) return callback({ code: grpc.status.ALREADY_EXISTS, details: `key ${key.name} exists` });
      keys.set(key.name, key.value);
      callback(null, key);
    },
    Delete(call: grpc.ServerUnaryCall<{ name: string }, object>, callback: grpc.sendUnaryData<object>) {
      const { name } = call.request;
      AuditHandle.of(call)?.annotate({ event: "KEY_DELETED", category: "KEY_MANAGEMENT", resource: `keys/${name}` });
      if (!keys.delete(name)) return callback({ code: grpc.status.NOT_FOUND, details: `no key ${name}` });
      callback(null, {});
    },
    BatchDelete(call: grpc.ServerUnaryCall<{ names: string[] }, { deleted: string[] }>, callback: grpc.sendUnaryData<{ deleted: string[] }>) {
      const audit = AuditHandle.of(call);
      audit?.annotate({ event: "KEYS_DELETED", category: "KEY_MANAGEMENT" });
      const deleted: string[] = [];
      for (const name of call.request.names) {
        // One entry per operation, sharing the call's request_id.
        const operation = { event: "KEY_DELETED", category: "KEY_MANAGEMENT", resource: `keys/${name}` };
        if (name.startsWith("locked/")) {
          audit?.record({ ...operation, statusCode: grpc.status.PERMISSION_DENIED, statusMessage: `${name} is locked` });
        } else if (keys.delete(name)) {
          deleted.push(name);
          audit?.record(operation);
        } else {
          audit?.record({ ...operation, statusCode: grpc.status.NOT_FOUND, statusMessage: `no key ${name}` });
        }
      }
      callback(null, { deleted });
    },
    List(call: grpc.ServerWritableStream<{ prefix: string }, Key>) {
      AuditHandle.of(call)?.annotate({ event: "KEYS_LISTED", category: "KEY_MANAGEMENT", resource: `keys/${call.request.prefix}*` });
      for (const [name, value] of [...keys].sort()) if (name.startsWith(call.request.prefix)) call.write({ name, value });
      call.end();
    },
    Watch(call: grpc.ServerWritableStream<{ prefix: string }, Key>) {
      AuditHandle.of(call)?.annotate({ event: "KEYS_WATCHED", category: "KEY_MANAGEMENT", resource: `keys/${call.request.prefix}*` });
      for (const [name, value] of [...keys].sort()) if (name.startsWith(call.request.prefix)) call.write({ name, value });
      // Open until the caller cancels.
    },
  };
}

/** A tiny grpc.health.v1 (to show an excluded method), hand-written: SERVING for everything. */
const HEALTH: grpc.ServiceDefinition = {
  Check: {
    path: "/grpc.health.v1.Health/Check",
    requestStream: false,
    responseStream: false,
    requestSerialize: (value: Buffer) => value,
    requestDeserialize: (bytes: Buffer) => bytes,
    responseSerialize: (value: Buffer) => value,
    responseDeserialize: (bytes: Buffer) => bytes,
  },
};

// === the example ===

interface KeyStoreClient extends grpc.Client {
  Create(request: { key: Key }, metadata: grpc.Metadata, callback: Callback<Key>): grpc.ClientUnaryCall;
  Delete(request: { name: string }, metadata: grpc.Metadata, callback: Callback<object>): grpc.ClientUnaryCall;
  BatchDelete(request: { names: string[] }, metadata: grpc.Metadata, callback: Callback<{ deleted: string[] }>): grpc.ClientUnaryCall;
  List(request: { prefix: string }, metadata: grpc.Metadata): grpc.ClientReadableStream<Key>;
  Watch(request: { prefix: string }, metadata: grpc.Metadata): grpc.ClientReadableStream<Key>;
}

/** Calls a unary method; resolves to its error (or null), its response, and the x-request-id header or trailer. */
function unary<T>(
  start: (metadata: grpc.Metadata, callback: Callback<T>) => grpc.ClientUnaryCall,
  metadata: grpc.Metadata,
): Promise<{ error: grpc.ServiceError | null; response: T | undefined; requestId: string }> {
  return new Promise((resolve) => {
    let requestId = "";
    const call = start(metadata, (error, response) => {
      requestId ||= String(error?.metadata?.get("x-request-id")[0] ?? "");
      // Let the status event run first (it carries the trailers).
      setImmediate(() => resolve({ error, response, requestId }));
    });
    call.on("metadata", (headers) => (requestId ||= String(headers.get("x-request-id")[0] ?? "")));
    call.on("status", (status) => (requestId ||= String(status.metadata.get("x-request-id")[0] ?? "")));
  });
}

function user(name: string, requestId?: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set("x-user", name);
  if (requestId !== undefined) metadata.set("x-request-id", requestId);
  return metadata;
}

interface Running {
  client: KeyStoreClient;
  port: number;
  handled: { calls: number };
  stop(): Promise<void>;
}

/** Starts the key store behind `interceptor` on 127.0.0.1:0, with a client for it. */
async function startKeyStore(interceptor: grpc.ServerInterceptor): Promise<Running> {
  const server = new grpc.Server({ interceptors: [interceptor] });
  const definition = protoLoader.loadSync("keystore/v1/keystore.proto", { includeDirs: [PROTO_DIR], defaults: true });
  const pkg = grpc.loadPackageDefinition(definition) as unknown as {
    keystore: { v1: { KeyStore: grpc.ServiceClientConstructor } };
  };
  const handled = { calls: 0 };
  server.addService(pkg.keystore.v1.KeyStore.service, keyStore(handled));
  server.addService(HEALTH, { Check: (_: unknown, callback: grpc.sendUnaryData<Buffer>) => callback(null, Buffer.from([0x08, 0x01])) });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))),
  );
  const client = new pkg.keystore.v1.KeyStore(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as KeyStoreClient;
  return {
    client,
    port,
    handled,
    async stop() {
      client.close();
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      server.forceShutdown();
    },
  };
}

const create = (client: KeyStoreClient, name: string) =>
  unary<Key>((m, cb) => client.Create({ key: { name, value: "v" } }, m, cb), user("alice"));

export async function keystoreExample(audit: AuditClient, address: string, runId: string): Promise<void> {
  const source = `typescript-keystore-${runId}`;
  const recorder = new Recorder(AuditClient.connect(address), { source });
  const { client, port, stop } = await startKeyStore(
    auditInterceptor(recorder, { principalFromHeader: "x-user", exclude: ["/grpc.health.v1.Health/*"] }),
  );
  try {
    // 1. OK, with the caller's x-request-id: kept and returned.
    const createId = `create-${runId}`;
    for (const name of ["alpha", "beta"]) {
      const created = await unary<Key>((m, cb) => client.Create({ key: { name, value: "v" } }, m, cb), user("alice", name === "alpha" ? createId : undefined));
      check(created.error === null, `Create ${name} failed: ${created.error?.message}`);
      if (name === "alpha") check(created.requestId === createId, `Create returned x-request-id ${created.requestId}, want ${createId}`);
    }
    // 2. An error status: NOT_FOUND, a trailers-only response that still carries x-request-id.
    const missing = await unary<object>((m, cb) => client.Delete({ name: "missing" }, m, cb), user("bob"));
    check(missing.error?.code === grpc.status.NOT_FOUND, `Delete missing: ${missing.error?.message ?? "OK"}, want NOT_FOUND`);
    check(UUIDV7.test(missing.requestId), `Delete missing returned x-request-id "${missing.requestId}", want a generated UUIDv7`);
    // 3. A server-streaming call.
    const listed: string[] = [];
    await new Promise<void>((resolve, reject) => {
      const stream = client.List({ prefix: "" }, user("alice"));
      stream.on("data", (key: Key) => listed.push(key.name));
      stream.on("error", reject);
      stream.on("end", () => resolve());
    });
    check(sameList(listed, ["alpha", "beta"]), `List streamed [${listed.join(", ")}], want [alpha, beta]`);
    // 4. A server-streaming call the caller cancels after the first message.
    await new Promise<void>((resolve, reject) => {
      const stream = client.Watch({ prefix: "al" }, user("alice"));
      stream.once("data", () => stream.cancel());
      stream.on("error", (err: grpc.ServiceError) => (err.code === grpc.status.CANCELLED ? resolve() : reject(err)));
      stream.on("end", () => reject(new Error("Watch ended by itself")));
    });
    // 5. A batch call: one entry per operation, sharing the call's generated request id.
    const batch = await unary<{ deleted: string[] }>((m, cb) => client.BatchDelete({ names: ["alpha", "beta", "locked/gamma"] }, m, cb), user("carol"));
    check(batch.error === null, `BatchDelete failed: ${batch.error?.message}`);
    check(sameList(batch.response?.deleted ?? [], ["alpha", "beta"]), `BatchDelete deleted [${batch.response?.deleted.join(", ")}]`);
    check(UUIDV7.test(batch.requestId), `BatchDelete returned x-request-id "${batch.requestId}", want a generated UUIDv7`);
    // 6. Excluded: not audited.
    const health = await unary<Buffer>(
      (m, cb) => client.makeUnaryRequest("/grpc.health.v1.Health/Check", (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), m, cb),
      new grpc.Metadata(),
    );
    check(health.error === null, `Health/Check failed: ${health.error?.message}`);

    check(await recorder.flush(10_000), "the recorder did not deliver the entries within 10 s");
    const stats = recorder.stats();
    check(stats.dropped === 0 && stats.rejected === 0, `recorder dropped ${stats.dropped} and had ${stats.rejected} refused`);

    // The server learns of the cancelled Watch asynchronously: wait (up to 5 s) for all nine.
    let stored: AuditEntry[] = [];
    for (const end = Date.now() + 5_000; ; ) {
      stored = [];
      for await (const entry of audit.query({ source })) stored.push(entry);
      if (stored.length >= 9 || Date.now() > end) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
      await recorder.flush(1_000);
    }
    const describe = (e: AuditEntry) =>
      `${e.method.slice(SERVICE.length + 1)} ${e.resource || "-"} ${Outcome[e.outcome]} ${e.statusCode} ${e.caller?.principal}`;
    const want = [
      `Create keys/alpha SUCCESS 0 alice`,
      `Create keys/beta SUCCESS 0 alice`,
      `Delete keys/missing ERROR 5 bob`,
      `List keys/* SUCCESS 0 alice`,
      `Watch keys/al* ERROR 1 alice`,
      `BatchDelete - SUCCESS 0 carol`,
      `BatchDelete keys/alpha SUCCESS 0 carol`,
      `BatchDelete keys/beta SUCCESS 0 carol`,
      `BatchDelete keys/locked/gamma DENIED 7 carol`,
    ];
    // Calls of one drain may be stored in any order among themselves: compare sorted.
    const got = stored.map(describe).sort();
    check(sameList(got, [...want].sort()), `stored entries:\n  ${got.join("\n  ")}\nwant:\n  ${[...want].sort().join("\n  ")}`);

    const byKey = new Map(stored.map((e) => [`${e.method}|${e.resource}`, e]));
    const entry = (method: string, resource: string) => byKey.get(`${SERVICE}/${method}|${resource}`)!;
    check(entry("Create", "keys/alpha").requestId === createId, `Create alpha stored request_id ${entry("Create", "keys/alpha").requestId}, want ${createId}`);
    const notFound = entry("Delete", "keys/missing");
    check(notFound.requestId === missing.requestId && notFound.statusMessage === "no key missing", `Delete missing stored request_id=${notFound.requestId} message="${notFound.statusMessage}"`);
    const batchEntries = stored.filter((e) => e.method === `${SERVICE}/BatchDelete`);
    check(
      batchEntries.every((e) => e.requestId === batch.requestId),
      `BatchDelete entries have request ids [${batchEntries.map((e) => e.requestId).join(", ")}], want all ${batch.requestId}`,
    );
    const addresses = new Set(stored.map((e) => (e.caller?.peer.case === "network" ? e.caller.peer.value.address : "")));
    const [callerAddress] = addresses;
    check(
      addresses.size === 1 && /^127\.0\.0\.1:\d+$/.test(callerAddress ?? "") && callerAddress !== `127.0.0.1:${port}`,
      `caller addresses [${[...addresses].join(", ")}], want the client's one 127.0.0.1:port`,
    );
    const operations = batchEntries.filter((e) => e.resource !== "");
    check(stored.every((e) => e.time !== undefined), "an entry has no time");
    check(
      stored.every((e) => operations.includes(e) || e.latency !== undefined),
      "a call's entry has no latency (only the batch's per-operation entries may lack it)",
    );
    check(stored.every((e) => (e.caller?.userAgent ?? "").startsWith("grpc-node-js/")), "an entry lacks the caller's user agent");
    ok(
      "audited",
      `key store on 127.0.0.1:${port}: ${stored.length} entries as expected (OK, NOT_FOUND, stream, cancelled stream, batch of 3 sharing ` +
        `request_id ${batch.requestId}, health excluded), caller ${callerAddress}`,
    );
  } finally {
    await stop();
    await recorder.close(5_000);
  }
}

/**
 * With the audit service unreachable: fail-open serves every call and counts the entries it
 * could not queue; fail-closed answers UNAVAILABLE once the deadline passes, then refuses calls
 * before their handler runs.
 */
export async function failureModes(runId: string): Promise<void> {
  const nowhere = () => AuditClient.connect(`unix:/nonexistent/audit-${runId}.sock`, { retry: { maxAttempts: 1 }, timeoutMs: 500 });
  const quiet = { onError: () => {} };

  const openRecorder = new Recorder(nowhere(), { source: "keystore", queueCapacity: 2, ...quiet });
  const open = await startKeyStore(auditInterceptor(openRecorder));
  try {
    for (const name of ["a", "b", "c", "d"]) {
      const result = await create(open.client, name);
      check(result.error === null, `fail-open Create ${name}: ${result.error?.message}, want OK while the audit service is down`);
    }
    const stats = openRecorder.stats();
    check(stats.dropped === 2 && stats.queued === 2, `fail-open recorder: ${JSON.stringify(stats)}, want 2 queued and 2 dropped`);
  } finally {
    await open.stop();
    await openRecorder.close(0);
  }

  const closedRecorder = new Recorder(nowhere(), { source: "keystore", initialBackoffMs: 50, ...quiet });
  const closed = await startKeyStore(auditInterceptor(closedRecorder, { failure: { mode: "closed", deadlineMs: 300 } }));
  try {
    const held = await create(closed.client, "x");
    check(
      held.error?.code === grpc.status.UNAVAILABLE && held.error.details === "audit trail unavailable",
      `fail-closed Create: ${held.error?.message ?? "OK"}, want UNAVAILABLE audit trail unavailable`,
    );
    check(closed.handled.calls === 1, `fail-closed: the first call reached the handler ${closed.handled.calls} times, want 1`);
    const refused = await create(closed.client, "y");
    check(refused.error?.code === grpc.status.UNAVAILABLE, `fail-closed second Create: ${refused.error?.message ?? "OK"}, want UNAVAILABLE`);
    check(closed.handled.calls === 1, "fail-closed: the handler ran while the audit trail was known to be down");
  } finally {
    await closed.stop();
    await closedRecorder.close(0);
  }
  ok("failure", "audit service down: fail-open served 4 calls (2 queued, 2 dropped and counted); fail-closed held the status 300 ms then UNAVAILABLE, then refused before the handler");
}
