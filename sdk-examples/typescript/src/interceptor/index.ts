// audit-sdk/grpc-js: automatic auditing of @grpc/grpc-js servers.

export { auditInterceptor, type AuditInterceptorOptions, type FailureMode } from "./interceptor.js";
export { AuditHandle, type Annotation } from "./handle.js";
export { Recorder, type RecorderOptions, type RecorderStats } from "./recorder.js";
