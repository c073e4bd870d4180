package audit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "example.com/auditsdk/audit/v1"
)

// Entry builds an auditv1.AuditEntry. Setters return the builder, so calls chain:
//
//	entry := audit.NewEntry("billing-api", "/billing.v1.Billing/Charge").
//		Status(codes.OK, "").
//		Principal("alice").
//		Resource("invoices/42").
//		Label("region", "eu-west-1").
//		Detail("amount_cents", 1250).
//		Build()
//
// Only source, method and outcome are required by the server. Fields left empty (id,
// request_id, time, level) are filled in: the id by Client.Record, the others by the server.
// The zero Entry is not usable; start with NewEntry or EntryFrom.
type Entry struct {
	entry *auditv1.AuditEntry
}

// NewEntry starts an entry for a call to method ("/package.Service/Method") audited by the
// application source (for example "billing-api"). The outcome defaults to success.
func NewEntry(source, method string) *Entry {
	return &Entry{entry: &auditv1.AuditEntry{
		Source:  source,
		Method:  method,
		Outcome: auditv1.Outcome_OUTCOME_SUCCESS,
	}}
}

// EntryFrom starts a builder from a copy of entry.
func EntryFrom(entry *auditv1.AuditEntry) *Entry {
	if entry == nil {
		return &Entry{entry: &auditv1.AuditEntry{}}
	}
	return &Entry{entry: proto.Clone(entry).(*auditv1.AuditEntry)}
}

// Build returns the entry built so far (a copy: the builder can go on and be built again).
func (e *Entry) Build() *auditv1.AuditEntry {
	return proto.Clone(e.entry).(*auditv1.AuditEntry)
}

// ID sets the entry's id, a UUID. A client-chosen id makes retries idempotent: the server
// stores an id once. Client.Record sets a UUIDv7 when it is empty.
func (e *Entry) ID(id string) *Entry { e.entry.Id = id; return e }

// RequestID sets the identifier shared by all entries of one audited call.
func (e *Entry) RequestID(requestID string) *Entry { e.entry.RequestId = requestID; return e }

// Time sets when the audited action happened (the server uses its receive time otherwise).
func (e *Entry) Time(t time.Time) *Entry { e.entry.Time = timestamppb.New(t); return e }

// Source sets the application that emitted the entry.
func (e *Entry) Source(source string) *Entry { e.entry.Source = source; return e }

// Method sets the full gRPC method of the audited call.
func (e *Entry) Method(method string) *Entry { e.entry.Method = method; return e }

// Event sets what happened, for example "KEY_DELETED".
func (e *Entry) Event(event string) *Entry { e.entry.Event = event; return e }

// Category sets the family of the event, for example "KEY_MANAGEMENT".
func (e *Entry) Category(category string) *Entry { e.entry.Category = category; return e }

// Resource sets what the action touched, for example "keys/my-key".
func (e *Entry) Resource(resource string) *Entry { e.entry.Resource = resource; return e }

// Level sets the severity (the server stores LEVEL_INFO when unset).
func (e *Entry) Level(level auditv1.Level) *Entry { e.entry.Level = level; return e }

// Outcome sets how the call ended. Status and StatusOf set it from the status code.
func (e *Entry) Outcome(outcome auditv1.Outcome) *Entry { e.entry.Outcome = outcome; return e }

// Status sets the gRPC status code and message of the audited call, and the outcome that
// goes with the code: success for OK, denied for UNAUTHENTICATED and PERMISSION_DENIED, an
// error otherwise.
func (e *Entry) Status(code codes.Code, message string) *Entry {
	e.entry.StatusCode = int32(code)
	e.entry.StatusMessage = message
	e.entry.Outcome = OutcomeOf(code)
	return e
}

// StatusOf sets status code, message and outcome from the error a handler returned (nil is
// OK; errors without a gRPC status are UNKNOWN, context errors CANCELLED or
// DEADLINE_EXCEEDED).
func (e *Entry) StatusOf(err error) *Entry {
	s := statusOf(err)
	return e.Status(s.Code(), s.Message())
}

// OutcomeOf is the outcome of a call that ended with code.
func OutcomeOf(code codes.Code) auditv1.Outcome {
	switch code {
	case codes.OK:
		return auditv1.Outcome_OUTCOME_SUCCESS
	case codes.Unauthenticated, codes.PermissionDenied:
		return auditv1.Outcome_OUTCOME_DENIED
	default:
		return auditv1.Outcome_OUTCOME_ERROR
	}
}

// statusOf is the gRPC status of err, seeing through wrapping.
func statusOf(err error) *status.Status {
	if err == nil {
		return status.New(codes.OK, "")
	}
	var withStatus interface{ GRPCStatus() *status.Status }
	if errors.As(err, &withStatus) {
		return withStatus.GRPCStatus()
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, err.Error())
	}
	return status.New(codes.Unknown, err.Error())
}

func (e *Entry) caller() *auditv1.Caller {
	if e.entry.Caller == nil {
		e.entry.Caller = &auditv1.Caller{}
	}
	return e.entry.Caller
}

// Principal sets the authenticated user or service account of the caller.
func (e *Entry) Principal(principal string) *Entry { e.caller().Principal = principal; return e }

// Role sets the role the caller acted in.
func (e *Entry) Role(role string) *Entry { e.caller().Role = role; return e }

// SessionID sets the session the call belongs to.
func (e *Entry) SessionID(sessionID string) *Entry { e.caller().SessionId = sessionID; return e }

// UserAgent sets the caller's user agent.
func (e *Entry) UserAgent(userAgent string) *Entry { e.caller().UserAgent = userAgent; return e }

// PeerAddress sets the caller as a network peer at address ("ip:port"), replacing any peer set
// before.
func (e *Entry) PeerAddress(address string) *Entry {
	e.caller().Peer = &auditv1.Caller_Network{Network: &auditv1.NetworkPeer{Address: address}}
	return e
}

// NetworkPeer sets the caller as this network peer (address, SPIFFE ID, certificate subject).
func (e *Entry) NetworkPeer(peer *auditv1.NetworkPeer) *Entry {
	e.caller().Peer = &auditv1.Caller_Network{Network: peer}
	return e
}

// UnixPeer sets the caller as a local process connected over a Unix socket.
func (e *Entry) UnixPeer(peer *auditv1.UnixPeer) *Entry {
	e.caller().Peer = &auditv1.Caller_Unix{Unix: peer}
	return e
}

// Latency sets how long the audited call took.
func (e *Entry) Latency(latency time.Duration) *Entry {
	e.entry.Latency = durationpb.New(latency)
	return e
}

// Label adds a key/value label, searchable with Filter.Labels.
func (e *Entry) Label(key, value string) *Entry {
	if e.entry.Labels == nil {
		e.entry.Labels = map[string]string{}
	}
	e.entry.Labels[key] = value
	return e
}

// Detail adds one field of the free-form details: nil, bools, numbers, strings,
// []interface{} and map[string]interface{} of those (see structpb.NewValue). Any other value
// is stored as its fmt.Sprint text.
func (e *Entry) Detail(key string, value interface{}) *Entry {
	if e.entry.Details == nil {
		e.entry.Details = &structpb.Struct{Fields: map[string]*structpb.Value{}}
	}
	v, err := structpb.NewValue(value)
	if err != nil {
		v = structpb.NewStringValue(fmt.Sprint(value))
	}
	e.entry.Details.Fields[key] = v
	return e
}
