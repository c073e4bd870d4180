// AuditError: what a call to the audit service failed with, and which fields it refused.

import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";

export { Code };

/** One field the server refused, from `google.rpc.BadRequest` (`entries[1].method`). */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

const BAD_REQUEST = "google.rpc.BadRequest";
const UNREACHABLE = new Set(["ENOENT", "ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "EAI_AGAIN", "ENOTFOUND"]);

/**
 * A failed call: the gRPC status `code` (Connect's `Code`, the same numbers as gRPC), the
 * server's message, and the refused fields when the server sent `google.rpc.BadRequest` details
 * in `grpc-status-details-bin` (as it does for `INVALID_ARGUMENT`).
 */
export class AuditError extends Error {
  override readonly name = "AuditError";
  readonly code: Code;
  /** The status message as the server sent it. */
  readonly rawMessage: string;
  readonly fieldViolations: readonly FieldViolation[];

  constructor(code: Code, rawMessage: string, fieldViolations: readonly FieldViolation[] = [], cause?: unknown) {
    const fields = fieldViolations.map((v) => `${v.field}: ${v.description}`).join("; ");
    super(`${codeName(code)}: ${rawMessage}${fields && !rawMessage.includes(fields) ? ` (${fields})` : ""}`, { cause });
    this.code = code;
    this.rawMessage = rawMessage;
    this.fieldViolations = fieldViolations;
  }

  /** UNAVAILABLE or DEADLINE_EXCEEDED: trying again may work (and is safe with a client id). */
  get retryable(): boolean {
    return this.code === Code.Unavailable || this.code === Code.DeadlineExceeded;
  }

  /** Any error as an AuditError (Connect errors keep their code and details). */
  static from(err: unknown): AuditError {
    if (err instanceof AuditError) return err;
    const connect = ConnectError.from(err);
    const violations: FieldViolation[] = [];
    for (const detail of connect.details) {
      if ("type" in detail && detail.type === BAD_REQUEST && detail.value instanceof Uint8Array) {
        violations.push(...decodeBadRequest(detail.value));
      }
    }
    // A socket that cannot connect is UNAVAILABLE, as in gRPC (Connect says INTERNAL for a
    // missing Unix socket, as when the server is restarting).
    const system = (connect.cause as { code?: unknown } | undefined)?.code;
    const code = typeof system === "string" && UNREACHABLE.has(system) ? Code.Unavailable : connect.code;
    return new AuditError(code, connect.rawMessage, violations, err);
  }
}

/** `UNAVAILABLE`, `INVALID_ARGUMENT`, ... as gRPC spells them. */
export function codeName(code: Code): string {
  return (code as number) === 0 ? "OK" : Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/**
 * Decodes `google.rpc.BadRequest { repeated FieldViolation field_violations = 1; }` with
 * `FieldViolation { string field = 1; string description = 2; }` by hand: two messages do not
 * justify generating google/rpc.
 */
export function decodeBadRequest(bytes: Uint8Array): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [number, wireType] = reader.tag();
    if (number === 1 && wireType === WireType.LengthDelimited) {
      const inner = new BinaryReader(reader.bytes());
      let field = "";
      let description = "";
      while (inner.pos < inner.len) {
        const [n, w] = inner.tag();
        if (n === 1 && w === WireType.LengthDelimited) field = inner.string();
        else if (n === 2 && w === WireType.LengthDelimited) description = inner.string();
        else inner.skip(w);
      }
      violations.push({ field, description });
    } else {
      reader.skip(wireType);
    }
  }
  return violations;
}
