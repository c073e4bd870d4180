// AuditHandle: what a handler uses to add to the audit trail of its own call.

import type { Metadata } from "@grpc/grpc-js";

import { auditEntry, toCaller, type CallerFields, type EntryFields } from "../entry.js";
import type { AuditEntry, Caller } from "../gen/audit/v1/entry_pb.js";

/** The fields a handler may set on its call's entry (status, outcome and latency are the interceptor's). */
export type Annotation = Partial<Omit<EntryFields, "method" | "requestId" | "statusCode" | "statusMessage" | "latencyMs" | "outcome">> & {
  /** The principal the handler authenticated, over the one the interceptor found. */
  principal?: string;
};

const handles = new WeakMap<Metadata, AuditHandle>();

/**
 * The audit trail of one call in progress. A handler adds one entry per operation of a batch
 * call (all sharing the call's `requestId`, as in SPIRE's audit log) and describes the call's
 * own entry (event, resource, the principal once authenticated). The call's entry and its
 * operations are delivered together, in one atomic RecordBatch, when the call ends; operations
 * added after that are delivered on their own.
 *
 * ```ts
 * const audit = AuditHandle.of(call); // undefined when not behind auditInterceptor
 * audit?.annotate({ event: "KEYS_DELETED", category: "KEY_MANAGEMENT" });
 * for (const name of call.request.names) {
 *   audit?.record({ event: "KEY_DELETED", resource: `keys/${name}` });
 * }
 * ```
 */
export class AuditHandle {
  private readonly operations: AuditEntry[] = [];
  private annotation: Annotation = {};
  private taken = false;

  /** @internal */
  constructor(
    /** The call's request id: the caller's `x-request-id`, or the generated one returned to it. */
    readonly requestId: string,
    /** `/package.Service/Method`. */
    readonly method: string,
    /** The caller as the interceptor saw it. */
    readonly caller: Caller,
    /** When the call began. */
    readonly time: Date,
    private readonly late: (requestId: string, entries: AuditEntry[]) => void,
  ) {}

  /** The handle of a call served behind `auditInterceptor`: pass the handler's `call`. */
  static of(call: { metadata: Metadata }): AuditHandle | undefined {
    return handles.get(call.metadata);
  }

  /** @internal */
  static attach(metadata: Metadata, handle: AuditHandle): void {
    handles.set(metadata, handle);
  }

  /**
   * Adds one operation's entry: the call's method, caller, request id and the time now, with
   * `fields` over them (its outcome derives from `statusCode`, OK by default).
   */
  record(fields: Partial<EntryFields> & { caller?: CallerFields | Caller }): void {
    const entry = auditEntry({ method: this.method, time: new Date(), caller: this.caller, ...fields, requestId: this.requestId });
    if (fields.caller !== undefined) entry.caller = toCaller(fields.caller);
    if (this.taken) this.late(this.requestId, [entry]);
    else this.operations.push(entry);
  }

  /** Sets fields of the call's own entry (merged with earlier annotations; labels too). */
  annotate(fields: Annotation): void {
    this.annotation = {
      ...this.annotation,
      ...fields,
      labels: { ...this.annotation.labels, ...fields.labels },
    };
  }

  /** @internal The call's annotation and its operations so far; later ones go on their own. */
  take(): { annotation: Annotation; operations: AuditEntry[] } {
    this.taken = true;
    return { annotation: this.annotation, operations: this.operations.splice(0) };
  }
}
