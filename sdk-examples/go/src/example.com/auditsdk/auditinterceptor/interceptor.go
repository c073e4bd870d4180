// Package auditinterceptor audits every call of a grpc-go server, the Go counterpart of the
// Rust client's AuditLayer: one entry per call with the full method, the caller (peer address
// or Unix peer credentials, SPIFFE ID and certificate subject under mutual TLS, the principal
// from a configurable function, the user agent), the gRPC status code and message, the
// latency, and the request_id: the caller's x-request-id metadata, or a generated UUIDv7,
// returned in the x-request-id response header either way. Unary and streaming calls.
//
//	client, _ := audit.Dial(ctx, "unix:/run/audit/audit.sock", audit.WithLazyConnect())
//	recorder := auditinterceptor.NewRecorder(client, auditinterceptor.RecorderConfig{Source: "keystore"})
//	defer recorder.Close(shutdownCtx)
//	auditor := auditinterceptor.New(recorder,
//		auditinterceptor.PrincipalFromMetadata("x-user"),
//		auditinterceptor.Exclude("/grpc.health.v1.Health/*"))
//	server := grpc.NewServer(
//		grpc.ChainUnaryInterceptor(auditor.Unary()),
//		grpc.ChainStreamInterceptor(auditor.Stream()))
//
// Handlers describe their call and add one entry per operation of a batch call (sharing the
// call's request_id) through the Handle in their context (FromContext). The call's entry and
// its operations are delivered together, in one atomic RecordBatch, when the call ends.
//
// Failure modes: fail-open (the default), the call never waits for the audit trail; its entries
// are queued and delivered in the background with retries, and dropped and counted
// (Stats.Dropped) when the queue is full. Fail-closed (FailClosed), an unaudited call must not
// succeed: a call is refused with UNAVAILABLE "audit trail unavailable" before its handler runs
// when the recorder knows the audit service is unreachable or its queue is full (the refusal
// is itself queued as the call's entry), and a call whose entries are not stored within the
// deadline ends with that status instead of its own. Messages a streaming handler already sent
// are not taken back, and entries stored after the deadline still record what the handler did.
package auditinterceptor

import (
	"context"
	"crypto/x509"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"example.com/auditsdk/audit"
	auditv1 "example.com/auditsdk/audit/v1"
)

// RequestIDHeader is the metadata key carrying a call's request_id, in both directions.
const RequestIDHeader = "x-request-id"

// unavailable is the status of a fail-closed call whose entries could not be stored.
var unavailable = status.Error(codes.Unavailable, "audit trail unavailable")

// Interceptor audits calls; its Unary and Stream methods give the grpc-go interceptors.
type Interceptor struct {
	recorder  *Recorder
	deadline  time.Duration // > 0: fail-closed
	excluded  []string
	principal func(context.Context) string
}

// Option configures an Interceptor.
type Option func(*Interceptor)

// FailClosed refuses calls with UNAVAILABLE unless their entries are stored within deadline
// (see the package documentation). Fail-open without it.
func FailClosed(deadline time.Duration) Option {
	return func(i *Interceptor) { i.deadline = deadline }
}

// Exclude does not audit these methods: full methods ("/grpc.health.v1.Health/Check") or
// prefixes ending in "*" ("/grpc.health.v1.Health/*").
func Exclude(methods ...string) Option {
	return func(i *Interceptor) { i.excluded = append(i.excluded, methods...) }
}

// Principal takes the caller's principal from the call's context (its metadata, the peer's
// certificate, what an authentication interceptor in front of this one stored, ...). Unset by
// default; handlers can also set it with Handle.Annotate.
func Principal(extract func(ctx context.Context) string) Option {
	return func(i *Interceptor) { i.principal = extract }
}

// PrincipalFromMetadata takes the caller's principal from the metadata key, as sent. Trust it
// only when something in front of the service (a proxy, an authentication layer) sets it.
func PrincipalFromMetadata(key string) Option {
	return Principal(func(ctx context.Context) string {
		md, _ := metadata.FromIncomingContext(ctx)
		if values := md.Get(key); len(values) > 0 {
			return values[0]
		}
		return ""
	})
}

// New returns an interceptor that records through recorder, fail-open unless told otherwise.
func New(recorder *Recorder, opts ...Option) *Interceptor {
	i := &Interceptor{recorder: recorder}
	for _, opt := range opts {
		opt(i)
	}
	return i
}

// Recorder is the recorder entries go to.
func (i *Interceptor) Recorder() *Recorder { return i.recorder }

// Unary is the interceptor for unary calls.
func (i *Interceptor) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req interface{}, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp interface{}, err error) {
		if i.isExcluded(info.FullMethod) {
			return handler(ctx, req)
		}
		c := i.begin(ctx, info.FullMethod)
		ctx = withHandle(ctx, c.handle)
		_ = grpc.SetHeader(ctx, metadata.Pairs(RequestIDHeader, c.handle.RequestID()))
		if err := c.refuse(); err != nil {
			return nil, err
		}
		defer c.recoverPanic()
		resp, err = handler(ctx, req)
		if err = c.finish(err); err != nil {
			return nil, err
		}
		return resp, nil
	}
}

// Stream is the interceptor for streaming calls. The entry is recorded when the handler
// returns, with its status.
func (i *Interceptor) Stream() grpc.StreamServerInterceptor {
	return func(srv interface{}, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if i.isExcluded(info.FullMethod) {
			return handler(srv, ss)
		}
		c := i.begin(ss.Context(), info.FullMethod)
		_ = ss.SetHeader(metadata.Pairs(RequestIDHeader, c.handle.RequestID()))
		if err := c.refuse(); err != nil {
			return err
		}
		defer c.recoverPanic()
		err := handler(srv, &auditedStream{ServerStream: ss, ctx: withHandle(ss.Context(), c.handle)})
		return c.finish(err)
	}
}

// auditedStream gives the handler a context holding the call's Handle.
type auditedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *auditedStream) Context() context.Context { return s.ctx }

func (i *Interceptor) isExcluded(method string) bool {
	for _, pattern := range i.excluded {
		if prefix := strings.TrimSuffix(pattern, "*"); prefix != pattern {
			if strings.HasPrefix(method, prefix) {
				return true
			}
		} else if pattern == method {
			return true
		}
	}
	return false
}

// === impl call ===

// call is the pending entry of one audited call.
type call struct {
	interceptor *Interceptor
	handle      *Handle
	start       time.Time
	finished    bool
}

// begin gathers the facts of a call: method, request_id, caller, time.
func (i *Interceptor) begin(ctx context.Context, method string) *call {
	md, _ := metadata.FromIncomingContext(ctx)
	requestID := ""
	if values := md.Get(RequestIDHeader); len(values) > 0 {
		requestID = values[0]
	}
	if requestID == "" {
		requestID = audit.NewUUIDv7()
	}
	caller := callerOf(ctx)
	if i.principal != nil {
		caller.Principal = i.principal(ctx)
	}
	if values := md.Get("user-agent"); len(values) > 0 {
		caller.UserAgent = strings.Join(values, " ")
	}
	start := time.Now()
	template := &auditv1.AuditEntry{
		Source:    i.recorder.Source(),
		Method:    method,
		RequestId: requestID,
		Time:      timestamppb.New(start),
		Caller:    caller,
	}
	return &call{interceptor: i, handle: newHandle(template, i.recorder), start: start}
}

// refuse is the error of a fail-closed call refused before its handler runs, because the
// audit trail is known to be unavailable; the refusal is queued as the call's entry.
func (c *call) refuse() error {
	if c.interceptor.deadline <= 0 || c.interceptor.recorder.Available() {
		return nil
	}
	c.record(unavailable, false)
	return unavailable
}

// finish records the call ended with err and returns the error the caller gets: err, or for
// a fail-closed call whose entries were not stored in time, UNAVAILABLE.
func (c *call) finish(err error) error {
	if !c.record(err, c.interceptor.deadline > 0) {
		return unavailable
	}
	return err
}

// recoverPanic records a handler's panic as INTERNAL, then lets it go on.
func (c *call) recoverPanic() {
	if c.finished {
		return
	}
	if p := recover(); p != nil {
		c.record(status.Error(codes.Internal, "the handler panicked"), false)
		panic(p)
	}
}

// record queues the call's entry with its operations; with wait, it waits for them to be
// stored until the deadline and reports whether they were.
func (c *call) record(err error, wait bool) bool {
	if c.finished {
		return true
	}
	c.finished = true
	builder, operations := c.handle.finish()
	entry := builder.StatusOf(err).Latency(time.Since(c.start)).Build()
	entries := append([]*auditv1.AuditEntry{entry}, operations...)
	recorder := c.interceptor.recorder
	if !wait {
		recorder.enqueue(c.handle.RequestID(), entries, nil)
		return true
	}
	ack := make(chan bool, 1)
	if !recorder.enqueue(c.handle.RequestID(), entries, ack) {
		return false
	}
	timer := time.NewTimer(c.interceptor.deadline)
	defer timer.Stop()
	select {
	case stored := <-ack:
		return stored
	case <-timer.C:
		return false
	}
}

// callerOf is the caller as the transport knows it: a Unix peer (with its kernel credentials
// under PeerCredentials) or a network address, with the SPIFFE ID and subject of a verified
// client certificate.
func callerOf(ctx context.Context) *auditv1.Caller {
	caller := &auditv1.Caller{}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return caller
	}
	if info, ok := p.AuthInfo.(UnixPeerInfo); ok {
		caller.Peer = &auditv1.Caller_Unix{Unix: info.Peer}
		return caller
	}
	if _, ok := p.Addr.(*net.UnixAddr); ok {
		// Without PeerCredentials nothing identifies the process, and an empty UnixPeer
		// would read as uid 0: leave the peer unset.
		return caller
	}
	network := &auditv1.NetworkPeer{}
	if p.Addr != nil {
		network.Address = p.Addr.String()
	}
	if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
		if chains := info.State.VerifiedChains; len(chains) > 0 && len(chains[0]) > 0 {
			leaf := chains[0][0]
			network.SpiffeId = spiffeID(leaf)
			network.CertificateSubject = leaf.Subject.String()
		}
	}
	caller.Peer = &auditv1.Caller_Network{Network: network}
	return caller
}

// spiffeID is the certificate's spiffe:// URI SAN, if it has one.
func spiffeID(cert *x509.Certificate) string {
	for _, uri := range cert.URIs {
		if uri.Scheme == "spiffe" {
			return uri.String()
		}
	}
	return ""
}
