// auditEntry(): an AuditEntry from plain fields, so nobody assembles protobuf by hand.

import { create, isMessage, type JsonObject } from "@bufbuild/protobuf";
import { DurationSchema, timestampFromDate, type Duration } from "@bufbuild/protobuf/wkt";

import {
  AuditEntrySchema,
  CallerSchema,
  Level,
  NetworkPeerSchema,
  Outcome,
  UnixPeerSchema,
  type AuditEntry,
  type Caller,
} from "./gen/audit/v1/entry_pb.js";

/** Who made the audited call. Give `address` (network) or `unix` (local process), not both. */
export interface CallerFields {
  /** Network peer, `ip:port`. */
  address?: string;
  /** SPIFFE ID from the peer's client certificate. */
  spiffeId?: string;
  /** Subject of the peer's client certificate. */
  certificateSubject?: string;
  /** A local process on a Unix socket, by its peer credentials. */
  unix?: { uid: number; gid: number; pid: number; binaryPath?: string };
  principal?: string;
  role?: string;
  sessionId?: string;
  userAgent?: string;
}

/** The fields of an entry, as plain values; see `proto/audit/v1/entry.proto` for each. */
export interface EntryFields {
  /** A UUID; `record()` fills a UUIDv7 when empty, so retries are idempotent. */
  id?: string;
  requestId?: string;
  /** When the action happened; the server uses its receive time when unset. */
  time?: Date;
  /** The application, e.g. `billing-api`. Required (the client's default source fills it). */
  source?: string;
  /** `/package.Service/Method`. Required. */
  method: string;
  event?: string;
  category?: string;
  resource?: string;
  level?: Level;
  /** How the call ended; when unset, derived from `statusCode` (see `outcomeFor`). */
  outcome?: Outcome;
  /** The gRPC status code, 0 (OK) to 16. Default 0. */
  statusCode?: number;
  statusMessage?: string;
  caller?: CallerFields | Caller;
  /** How long the call took, in milliseconds (fractions kept to the nanosecond). */
  latencyMs?: number;
  /** Free-form structured details (a JSON object). */
  details?: JsonObject;
  labels?: Record<string, string>;
}

/** An entry as plain fields or an already built `AuditEntry`. */
export type EntryLike = EntryFields | AuditEntry;

/** SUCCESS for OK (0), DENIED for PERMISSION_DENIED (7) and UNAUTHENTICATED (16), else ERROR. */
export function outcomeFor(statusCode: number): Outcome {
  if (statusCode === 0) return Outcome.SUCCESS;
  if (statusCode === 7 || statusCode === 16) return Outcome.DENIED;
  return Outcome.ERROR;
}

/** Builds an `AuditEntry` from plain fields. */
export function auditEntry(fields: EntryFields): AuditEntry {
  const statusCode = fields.statusCode ?? 0;
  const entry = create(AuditEntrySchema, {
    id: fields.id ?? "",
    requestId: fields.requestId ?? "",
    source: fields.source ?? "",
    method: fields.method,
    event: fields.event ?? "",
    category: fields.category ?? "",
    resource: fields.resource ?? "",
    level: fields.level ?? Level.UNSPECIFIED,
    outcome: fields.outcome ?? outcomeFor(statusCode),
    statusCode,
    statusMessage: fields.statusMessage ?? "",
    labels: { ...fields.labels },
  });
  if (fields.time !== undefined) entry.time = timestampFromDate(fields.time);
  if (fields.caller !== undefined) entry.caller = toCaller(fields.caller);
  if (fields.latencyMs !== undefined) entry.latency = durationFromMs(fields.latencyMs);
  if (fields.details !== undefined) entry.details = fields.details;
  return entry;
}

/** `fields` as an AuditEntry (an AuditEntry is returned as is). */
export function toEntry(fields: EntryLike): AuditEntry {
  return isMessage(fields, AuditEntrySchema) ? fields : auditEntry(fields);
}

export function toCaller(fields: CallerFields | Caller): Caller {
  if (isMessage(fields, CallerSchema)) return fields;
  const caller = create(CallerSchema, {
    principal: fields.principal ?? "",
    role: fields.role ?? "",
    sessionId: fields.sessionId ?? "",
    userAgent: fields.userAgent ?? "",
  });
  if (fields.unix !== undefined) {
    caller.peer = { case: "unix", value: create(UnixPeerSchema, { ...fields.unix, binaryPath: fields.unix.binaryPath ?? "" }) };
  } else if (fields.address !== undefined || fields.spiffeId !== undefined || fields.certificateSubject !== undefined) {
    caller.peer = {
      case: "network",
      value: create(NetworkPeerSchema, {
        address: fields.address ?? "",
        spiffeId: fields.spiffeId ?? "",
        certificateSubject: fields.certificateSubject ?? "",
      }),
    };
  }
  return caller;
}

export function durationFromMs(ms: number): Duration {
  const whole = Math.floor(ms / 1000);
  return create(DurationSchema, { seconds: BigInt(whole), nanos: Math.round((ms - whole * 1000) * 1e6) });
}
