// auditInterceptor(): a @grpc/grpc-js server interceptor (grpc-js 1.10 or later) that records
// one audit entry per call, unary and streaming alike.

import { isIPv6 } from "node:net";
import {
  Metadata,
  ServerInterceptingCall,
  status as Status,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
  type StatusObject,
} from "@grpc/grpc-js";

import { auditEntry, durationFromMs, outcomeFor } from "../entry.js";
import { toCaller, type CallerFields } from "../entry.js";
import type { Caller } from "../gen/audit/v1/entry_pb.js";
import { uuidv7 } from "../uuid.js";
import { AuditHandle } from "./handle.js";
import type { Recorder } from "./recorder.js";

/**
 * What happens to a call whose entry cannot be recorded:
 * - `{ mode: "open" }` (the default): the call never waits for the audit trail; its entry is
 *   queued and delivered in the background, or dropped and counted when the queue is full.
 * - `{ mode: "closed", deadlineMs }`: an unaudited call must not succeed (Vault's rule). The
 *   call is refused with UNAVAILABLE before its handler runs while the audit service is known to
 *   be unreachable or the queue is full; otherwise its final status is held until its entries
 *   are stored, and becomes UNAVAILABLE if that takes longer than `deadlineMs`. Messages a
 *   streaming handler already sent are not taken back.
 */
export type FailureMode = { mode: "open" } | { mode: "closed"; deadlineMs: number };

export interface AuditInterceptorOptions {
  /** Fail-open by default; see `FailureMode`. */
  failure?: FailureMode;
  /**
   * Methods not audited: a full method (`/grpc.health.v1.Health/Check`) or a prefix ending in
   * `*` (`/grpc.health.v1.Health/*`).
   */
  exclude?: readonly string[];
  /**
   * The caller's principal, from the request metadata (set by an authentication interceptor in
   * front, a verified token, ...). Handlers can also set it with `AuditHandle.annotate`.
   */
  principal?: (metadata: Metadata, call: ServerInterceptingCallInterface) => string | undefined;
  /** Takes the principal from the metadata header `name`, as sent: trust it only behind a proxy that sets it. */
  principalFromHeader?: string;
}

const REQUEST_ID = "x-request-id";
const UNAVAILABLE_DETAILS = "audit trail unavailable";

/**
 * A grpc-js server interceptor recording, per call: the full method; the caller (peer address,
 * SPIFFE ID and subject of a verified client certificate, principal, user agent); the gRPC
 * status code and message; the latency; and the request id, the caller's `x-request-id` or a
 * generated UUIDv7, returned in the `x-request-id` response header (or trailer, for a
 * trailers-only response). A call that ends without a status (cancelled, connection lost) is
 * recorded as CANCELLED, or DEADLINE_EXCEEDED once its deadline has passed. Handlers reach the call's `AuditHandle` with `AuditHandle.of(call)`.
 *
 * ```ts
 * const recorder = new Recorder(AuditClient.connect("unix:/run/audit.sock"), { source: "keystore" });
 * const server = new grpc.Server({
 *   interceptors: [auditInterceptor(recorder, { principalFromHeader: "x-user", exclude: ["/grpc.health.v1.Health/*"] })],
 * });
 * ```
 */
export function auditInterceptor(recorder: Recorder, options: AuditInterceptorOptions = {}): ServerInterceptor {
  const failure = options.failure ?? { mode: "open" };
  const exclude = options.exclude ?? [];
  const header = options.principalFromHeader;
  const principalOf =
    options.principal ??
    (header === undefined ? undefined : (metadata: Metadata) => metadata.get(header).map(String)[0]);

  return (methodDescriptor, call) => {
    const method = methodDescriptor.path;
    if (exclude.some((pattern) => matches(pattern, method))) return new ServerInterceptingCall(call);

    const time = new Date();
    const started = performance.now();
    let handle: AuditHandle | undefined;
    let headersSent = false;
    let finished = false;
    let refused = false;

    /** Queues the call's entries; resolves to whether they were stored (fail-closed only). */
    const finish = (code: number, details: string): Promise<boolean> => {
      finished = true;
      if (handle === undefined) return Promise.resolve(true); // refused before its metadata
      const { annotation, operations } = handle.take();
      const { principal, caller: annotatedCaller, ...fields } = annotation;
      const entry = auditEntry({
        ...fields,
        method,
        requestId: handle.requestId,
        time,
        statusCode: code,
        statusMessage: code === Status.OK ? "" : details,
        outcome: outcomeFor(code),
      });
      entry.latency = durationFromMs(performance.now() - started);
      entry.caller = annotatedCaller === undefined ? handle.caller : toCaller(annotatedCaller);
      if (principal !== undefined) entry.caller.principal = principal;
      const entries = [entry, ...operations];
      if (failure.mode === "open" || refused) {
        recorder.enqueue(handle.requestId, entries);
        return Promise.resolve(true);
      }
      return new Promise((resolve) => {
        const timer = setTimeout(() => resolve(false), failure.deadlineMs);
        recorder.enqueue(handle!.requestId, entries, (stored) => {
          clearTimeout(timer);
          resolve(stored);
        });
      });
    };

    // eslint-disable-next-line prefer-const
    let intercepting: ServerInterceptingCall;
    intercepting = new ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, nextMetadata) {
            const requestId = validRequestId(metadata.get(REQUEST_ID)[0]) ?? uuidv7();
            const caller = callerOf(call, metadata, principalOf?.(metadata, call));
            handle = new AuditHandle(requestId, method, caller, time, (id, entries) => recorder.enqueue(id, entries));
            AuditHandle.attach(metadata, handle);
            if (failure.mode === "closed" && !recorder.accepting) {
              // The handler never runs; the refusal is the call's entry, queued without waiting.
              refused = true;
              intercepting.sendStatus({ code: Status.UNAVAILABLE, details: UNAVAILABLE_DETAILS });
              return;
            }
            nextMetadata(metadata);
          },
          onCancel() {
            // Ended without a status through this interceptor: the client cancelled, the
            // connection was lost, or grpc-js answered by itself (deadline, undecodable request).
            if (finished) return;
            const deadline = call.getDeadline();
            const at = deadline instanceof Date ? deadline.getTime() : deadline;
            if (Number.isFinite(at) && Date.now() >= at) void finish(Status.DEADLINE_EXCEEDED, "deadline exceeded");
            else void finish(Status.CANCELLED, "cancelled");
          },
        });
      },
      sendMetadata(metadata, next) {
        headersSent = true;
        if (handle !== undefined) metadata.set(REQUEST_ID, handle.requestId);
        next(metadata);
      },
      sendStatus(status, next) {
        let final = status;
        if (!headersSent && handle !== undefined) {
          // Trailers-only response: the request id goes with the status.
          const metadata = status.metadata?.clone() ?? new Metadata();
          metadata.set(REQUEST_ID, handle.requestId);
          final = { ...status, metadata };
        }
        if (finished) return next(final);
        void finish(status.code, status.details).then((stored) =>
          next(stored ? final : { code: Status.UNAVAILABLE, details: UNAVAILABLE_DETAILS, metadata: final.metadata ?? null }),
        );
      },
    });
    return intercepting;
  };
}

/** Whether `method` is `pattern`, or starts with it when it ends in `*`. */
function matches(pattern: string, method: string): boolean {
  return pattern.endsWith("*") ? method.startsWith(pattern.slice(0, -1)) : method === pattern;
}

/** A caller's `x-request-id` is kept when it is 1 to 128 visible ASCII characters. */
function validRequestId(value: string | Buffer | undefined): string | undefined {
  if (typeof value !== "string") return undefined;
  return /^[\x21-\x7e]{1,128}$/.test(value) ? value : undefined;
}

function callerOf(call: ServerInterceptingCallInterface, metadata: Metadata, principal: string | undefined): Caller {
  const fields: CallerFields = {};
  const info = call.getConnectionInfo();
  if (info.remoteAddress !== undefined && info.remotePort !== undefined) {
    fields.address = isIPv6(info.remoteAddress) ? `[${info.remoteAddress}]:${info.remotePort}` : `${info.remoteAddress}:${info.remotePort}`;
  } else if (call.getPeer() !== "unknown") {
    fields.address = call.getPeer();
  }
  const certificate = call.getAuthContext().sslPeerCertificate;
  if (certificate !== undefined) {
    const spiffe = certificate.subjectaltname?.split(/,\s*/).find((name) => name.startsWith("URI:spiffe://"));
    if (spiffe !== undefined) fields.spiffeId = spiffe.slice("URI:".length);
    fields.certificateSubject = Object.entries(certificate.subject ?? {})
      .map(([key, value]) => `${key}=${String(value)}`)
      .join(",");
  }
  if (principal !== undefined) fields.principal = principal;
  const agent = metadata.get("user-agent")[0];
  if (typeof agent === "string") fields.userAgent = agent;
  return toCaller(fields);
}

export type { StatusObject };
