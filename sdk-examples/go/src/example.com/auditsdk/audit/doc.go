// Package audit is the idiomatic Go client of the audit service (audit.v1.AuditService), a
// small layer over the generated package auditv1.
//
// Connect with Dial (host:port, unix:/path, TLS and mutual TLS through options), build entries
// with NewEntry instead of assembling protobuf by hand, and record them with Client.Record and
// Client.RecordBatch: both fill in client-chosen UUIDv7 ids, so retrying after UNAVAILABLE or a
// timed-out attempt never stores an entry twice. Client.Query returns an iterator that follows
// page tokens; Client.Subscribe returns one that resumes after a dropped connection from the
// last entry or heartbeat it saw, with no gap and no duplicate, until its context is cancelled.
// Refused entries come back as *Error, whose Violations name the refused fields (decoded from
// the google.rpc.BadRequest in the status details).
//
//	client, err := audit.Dial(ctx, "127.0.0.1:50051")
//	if err != nil { ... }
//	defer client.Close()
//	receipt, err := client.Record(ctx, audit.NewEntry("billing-api", "/billing.v1.Billing/Charge").
//		Resource("invoices/42").Principal("alice").Build())
//
// Package auditinterceptor (next to this one) audits the calls of a grpc-go server with it.
package audit
