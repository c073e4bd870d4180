// A plain @grpc/grpc-js client with its default settings, from the .proto files at run time
// (@grpc/proto-loader): Record then Query, at HOST:PORT or unix:/path alike. grpc-js sends the
// socket path as :authority on a Unix socket; the server accepts it.

import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import { uuidv7 } from "../index.js";
import { check, ok } from "./check.js";

// dist/examples/ -> the repository's proto/.
const PROTO_DIR = fileURLToPath(new URL("../../../../proto/", import.meta.url));

interface PlainEntry {
  id: string;
  sequence: string;
  requestId: string;
  method: string;
  outcome: string;
  recorder?: { peer?: string };
}

type Unary<Req, Res> = (request: Req, options: grpc.CallOptions, callback: (err: grpc.ServiceError | null, response?: Res) => void) => grpc.ClientUnaryCall;

interface PlainAuditClient extends grpc.Client {
  Record: Unary<{ entry: Record<string, unknown> }, { id: string; sequence: string }>;
  Query: Unary<{ filter: Record<string, unknown>; pageSize?: number }, { entries: PlainEntry[]; nextPageToken: string }>;
}

function call<Req, Res>(method: Unary<Req, Res>, client: grpc.Client, request: Req): Promise<Res> {
  return new Promise((resolve, reject) =>
    method.call(client, request, { deadline: Date.now() + 5_000 }, (err, response) =>
      err !== null || response === undefined ? reject(err ?? new Error("no response")) : resolve(response),
    ),
  );
}

export async function grpcJsInterop(address: string, runId: string): Promise<void> {
  const definition = protoLoader.loadSync("audit/v1/service.proto", {
    includeDirs: [PROTO_DIR],
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const audit = grpc.loadPackageDefinition(definition) as unknown as {
    audit: { v1: { AuditService: new (address: string, credentials: grpc.ChannelCredentials) => PlainAuditClient } };
  };
  // Exactly what a Node user would write: the address as given, insecure credentials, no options.
  const client = new audit.audit.v1.AuditService(address, grpc.credentials.createInsecure());
  try {
    const requestId = uuidv7();
    const receipt = await call(client.Record, client, {
      entry: {
        id: uuidv7(),
        requestId,
        source: `typescript-grpc-js-${runId}`,
        method: "/billing.v1.InvoiceService/CreateInvoice",
        outcome: "OUTCOME_SUCCESS",
        labels: { run: runId, client: "grpc-js" },
      },
    });
    check(BigInt(receipt.sequence) > 0n, `grpc-js Record returned sequence ${receipt.sequence}`);
    const page = await call(client.Query, client, { filter: { requestId } });
    check(page.entries.length === 1, `grpc-js Query returned ${page.entries.length} entries, want 1`);
    const entry = page.entries[0]!;
    check(
      entry.id === receipt.id && entry.sequence === receipt.sequence && entry.outcome === "OUTCOME_SUCCESS",
      `grpc-js Query returned id=${entry.id} sequence=${entry.sequence} outcome=${entry.outcome}, want id=${receipt.id} sequence=${receipt.sequence}`,
    );
    ok("grpc-js", `plain @grpc/grpc-js client: Record sequence=${receipt.sequence}, Query found it (recorder ${entry.recorder?.peer})`);
  } finally {
    client.close();
  }
}
