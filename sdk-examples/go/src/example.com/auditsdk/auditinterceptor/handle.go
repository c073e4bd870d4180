package auditinterceptor

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"example.com/auditsdk/audit"
	auditv1 "example.com/auditsdk/audit/v1"
)

// Handle is the audit trail of one call in progress, in the context of a handler served
// behind an Interceptor. A handler uses it to describe its call's entry (event, resource, the
// principal once authenticated) and to add one entry per operation of a batch call, all
// sharing the call's request_id (as in SPIRE's audit log):
//
//	func (s *server) BatchDelete(ctx context.Context, names *structpb.ListValue) (*structpb.Struct, error) {
//		h := auditinterceptor.FromContext(ctx) // nil when not audited: its methods do nothing
//		h.Annotate(func(e *audit.Entry) { e.Event("KEYS_BATCH_DELETED") })
//		for _, name := range names.GetValues() {
//			err := s.delete(name.GetStringValue())
//			h.Record(h.Operation().Event("KEY_DELETED").Resource("keys/" + name.GetStringValue()).StatusOf(err).Build())
//		}
//		...
//	}
//
// Its methods are safe for concurrent use, and do nothing on a nil Handle.
type Handle struct {
	// template holds the facts of the call (source, method, request_id, caller, time), the
	// start of every entry of the call. Never changed after newHandle.
	template *auditv1.AuditEntry
	recorder *Recorder

	mu         sync.Mutex
	call       *audit.Entry
	operations []*auditv1.AuditEntry
	// finished is set once the call's entry is queued; later operations are queued alone.
	finished bool
}

type handleKey struct{}

func newHandle(template *auditv1.AuditEntry, recorder *Recorder) *Handle {
	return &Handle{template: template, recorder: recorder, call: audit.EntryFrom(template)}
}

func withHandle(ctx context.Context, h *Handle) context.Context {
	return context.WithValue(ctx, handleKey{}, h)
}

// FromContext is the Handle of the call ctx belongs to, nil when it is not audited (excluded,
// or not behind an Interceptor).
func FromContext(ctx context.Context) *Handle {
	h, _ := ctx.Value(handleKey{}).(*Handle)
	return h
}

// RequestID is the call's request_id: the caller's x-request-id, or the one generated for the
// call (returned to the caller in the x-request-id response header).
func (h *Handle) RequestID() string {
	if h == nil {
		return ""
	}
	return h.template.RequestId
}

// Method is the call's full method, "/package.Service/Method".
func (h *Handle) Method() string {
	if h == nil {
		return ""
	}
	return h.template.Method
}

// Caller is a copy of the caller as the interceptor saw it.
func (h *Handle) Caller() *auditv1.Caller {
	if h == nil {
		return nil
	}
	return proto.Clone(h.template.Caller).(*auditv1.Caller)
}

// Operation starts an operation entry with the call's facts filled in (source, method,
// request_id, caller, time now) and a success outcome; add what the operation did and pass
// it to Record.
func (h *Handle) Operation() *audit.Entry {
	if h == nil {
		return audit.NewEntry("", "")
	}
	return audit.EntryFrom(h.template).Time(time.Now()).Outcome(auditv1.Outcome_OUTCOME_SUCCESS)
}

// Record adds one operation's entry. Its request_id becomes the call's; an empty method or
// caller is the call's. It is recorded with the call's own entry when the call ends (or at
// once, if it has ended).
func (h *Handle) Record(entry *auditv1.AuditEntry) {
	if h == nil || entry == nil {
		return
	}
	entry = proto.Clone(entry).(*auditv1.AuditEntry)
	if entry.Method == "" {
		entry.Method = h.template.Method
	}
	if entry.Caller == nil {
		entry.Caller = proto.Clone(h.template.Caller).(*auditv1.Caller)
	}
	entry.RequestId = h.template.RequestId
	h.mu.Lock()
	if h.finished {
		h.mu.Unlock()
		h.recorder.Record(h.template.RequestId, entry)
		return
	}
	h.operations = append(h.operations, entry)
	h.mu.Unlock()
}

// Annotate changes the call's own entry, for example to name its event and resource, or the
// principal the handler authenticated. The interceptor sets status, outcome and latency when
// the call ends, over whatever is set here.
func (h *Handle) Annotate(change func(entry *audit.Entry)) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	change(h.call)
}

// finish takes the call's entry and the operations recorded so far.
func (h *Handle) finish() (*audit.Entry, []*auditv1.AuditEntry) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.finished = true
	operations := h.operations
	h.operations = nil
	return h.call, operations
}
