// Unit tests of the pieces that need no server: node --test dist/test/

import assert from "node:assert/strict";
import { test } from "node:test";
import { BinaryWriter } from "@bufbuild/protobuf/wire";

import { auditEntry, Code, codeName, decodeBadRequest, Outcome, outcomeFor, uuidv7 } from "../index.js";

test("uuidv7 has version 7, variant 10 and the time in its first 48 bits", () => {
  const ms = Date.UTC(2026, 0, 2, 3, 4, 5, 678);
  const id = uuidv7(ms);
  assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(parseInt(id.replaceAll("-", "").slice(0, 12), 16), ms);
});

test("uuidv7 ids of one process increase strictly, even within a millisecond or when the clock steps back", () => {
  const ms = Date.now() + 60_000;
  const ids = [uuidv7(ms), ...Array.from({ length: 5000 }, () => uuidv7(ms)), uuidv7(ms - 1000)];
  for (let i = 1; i < ids.length; i++) assert.ok(ids[i - 1]! < ids[i]!, `${ids[i - 1]} < ${ids[i]}`);
});

test("decodeBadRequest reads google.rpc.BadRequest field violations", () => {
  const violation = (field: string, description: string) =>
    new BinaryWriter().tag(1, 2).string(field).tag(2, 2).string(description).finish();
  const writer = new BinaryWriter();
  writer.tag(1, 2).bytes(violation("entries[1].method", "required"));
  writer.tag(9, 0).uint32(7); // unknown fields are skipped
  writer.tag(1, 2).bytes(violation("entries[2].source", "too long"));
  assert.deepEqual(decodeBadRequest(writer.finish()), [
    { field: "entries[1].method", description: "required" },
    { field: "entries[2].source", description: "too long" },
  ]);
});

test("outcomes and code names follow gRPC", () => {
  assert.equal(outcomeFor(Code.PermissionDenied), Outcome.DENIED);
  assert.equal(outcomeFor(Code.Unauthenticated), Outcome.DENIED);
  assert.equal(outcomeFor(Code.NotFound), Outcome.ERROR);
  assert.equal(outcomeFor(0), Outcome.SUCCESS);
  assert.equal(codeName(Code.InvalidArgument), "INVALID_ARGUMENT");
  assert.equal(codeName(Code.DeadlineExceeded), "DEADLINE_EXCEEDED");
});

test("auditEntry builds the protobuf from plain fields", () => {
  const entry = auditEntry({
    method: "/kms.v1.KeyService/DeleteKey",
    statusCode: Code.PermissionDenied,
    caller: { address: "10.0.0.1:5000", principal: "alice" },
    latencyMs: 1500.25,
    details: { key: "k" },
    time: new Date(1_000),
  });
  assert.equal(entry.outcome, Outcome.DENIED);
  assert.equal(entry.caller?.peer.case, "network");
  assert.equal(entry.caller?.principal, "alice");
  assert.equal(entry.latency?.seconds, 1n);
  assert.equal(entry.latency?.nanos, 500_250_000);
  assert.equal(entry.time?.seconds, 1n);
  assert.deepEqual(entry.details, { key: "k" });
});
