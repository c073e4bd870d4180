// audit-sdk: the idiomatic TypeScript client of audit.v1.AuditService. The interceptor for
// @grpc/grpc-js servers is in "audit-sdk/grpc-js"; the generated messages in "audit-sdk/gen/...".

export {
  AuditClient,
  Subscription,
  type CallOptions,
  type ClientOptions,
  type FilterInit,
  type QueryOptions,
  type RetryOptions,
  type Start,
  type SubscribeOptions,
  type TlsOptions,
} from "./client.js";
export { AuditError, Code, codeName, decodeBadRequest, type FieldViolation } from "./errors.js";
export { auditEntry, outcomeFor, toEntry, type CallerFields, type EntryFields, type EntryLike } from "./entry.js";
export { uuidv7 } from "./uuid.js";
export { Level, Outcome, type AuditEntry, type Caller } from "./gen/audit/v1/entry_pb.js";
export { Order, type RecordBatchResponse, type RecordResponse } from "./gen/audit/v1/service_pb.js";
export { HealthCheckResponse_ServingStatus as ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
