package audit

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io/ioutil"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	auditv1 "example.com/auditsdk/audit/v1"
)

// ServiceName is the gRPC name of the audit service, also its name for health checks.
const ServiceName = "audit.v1.AuditService"

const (
	// defaultConnectTimeout bounds Dial when its context has no deadline.
	defaultConnectTimeout = 5 * time.Second
	// HTTP/2 pings on idle connections, so a subscription notices a peer that vanished without
	// closing the connection (a partition, a killed machine) instead of waiting forever.
	keepAliveInterval = 20 * time.Second
	keepAliveTimeout  = 10 * time.Second
)

var reconnectBackoff = backoff.Config{
	BaseDelay:  100 * time.Millisecond,
	Multiplier: 1.6,
	Jitter:     0.2,
	MaxDelay:   5 * time.Second,
}

// Client is a client of the audit service. It is safe for concurrent use; share one per
// process. Close it when done.
type Client struct {
	conn   *grpc.ClientConn
	owned  bool
	raw    auditv1.AuditServiceClient
	health healthpb.HealthClient
	retry  RetryPolicy
}

// RetryPolicy says how Record and RecordBatch retry a call that failed with UNAVAILABLE or
// DEADLINE_EXCEEDED. Retrying is safe: the client sets every entry's id (and the batch's
// request_id) before the first attempt, and the server stores an id only once.
type RetryPolicy struct {
	// MaxAttempts is the most attempts per call, the first included (default 5; 1 never
	// retries).
	MaxAttempts int
	// InitialBackoff is the wait after the first failure; it doubles up to MaxBackoff
	// (defaults 100 ms and 2 s).
	InitialBackoff, MaxBackoff time.Duration
	// AttemptTimeout bounds one attempt, so a hung server costs one attempt, not the call
	// (default 5 s; the context's deadline, when sooner, wins).
	AttemptTimeout time.Duration
}

// DefaultRetryPolicy is the policy of a client without WithRetry.
var DefaultRetryPolicy = RetryPolicy{
	MaxAttempts:    5,
	InitialBackoff: 100 * time.Millisecond,
	MaxBackoff:     2 * time.Second,
	AttemptTimeout: 5 * time.Second,
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = DefaultRetryPolicy.MaxAttempts
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = DefaultRetryPolicy.InitialBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = DefaultRetryPolicy.MaxBackoff
	}
	if p.MaxBackoff < p.InitialBackoff {
		p.MaxBackoff = p.InitialBackoff
	}
	if p.AttemptTimeout <= 0 {
		p.AttemptTimeout = DefaultRetryPolicy.AttemptTimeout
	}
	return p
}

// Option configures Dial.
type Option func(*options)

type options struct {
	tls        *tls.Config
	lazy       bool
	retry      RetryPolicy
	dial       []grpc.DialOption
	userAgent  string
	hasTimeout bool
	timeout    time.Duration
}

// WithTLS connects over TLS with config: its RootCAs verify the server and, for mutual TLS,
// its Certificates are the client's own. See TLSConfig to load them from PEM files.
func WithTLS(config *tls.Config) Option { return func(o *options) { o.tls = config } }

// WithRetry sets how Record and RecordBatch retry (DefaultRetryPolicy otherwise).
func WithRetry(policy RetryPolicy) Option { return func(o *options) { o.retry = policy } }

// WithLazyConnect makes Dial return at once and connect on the first call, so it fails only
// for an invalid address.
func WithLazyConnect() Option { return func(o *options) { o.lazy = true } }

// WithConnectTimeout bounds how long Dial waits for the connection when its context has no
// deadline (default 5 s).
func WithConnectTimeout(d time.Duration) Option {
	return func(o *options) { o.hasTimeout, o.timeout = true, d }
}

// WithDialOptions adds grpc-go dial options (interceptors, a custom dialer, ...).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

// TLSConfig loads a TLS client configuration from PEM files: caFile verifies the server
// (empty: the system's roots), certFile and keyFile are the client certificate for mutual TLS
// (empty: no client certificate). serverName overrides the name checked in the server's
// certificate (empty: the host of the address).
func TLSConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	config := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := ioutil.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("audit: reading CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("audit: no PEM certificate in %s", caFile)
		}
		config.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("audit: loading client certificate: %w", err)
		}
		config.Certificates = []tls.Certificate{cert}
	}
	return config, nil
}

// Dial connects to the audit server at address: "host:port" (also "http://host:port"),
// "https://host:port" (TLS with the system's roots unless WithTLS says otherwise), or
// "unix:/path/to/audit.sock" ("unix:///path" too) for the server's Unix socket. Unless
// WithLazyConnect is given it waits for the connection (5 s at most when ctx has no deadline)
// and fails when the server cannot be reached. A dropped connection is re-established by
// grpc-go on the next call.
func Dial(ctx context.Context, address string, opts ...Option) (*Client, error) {
	o := options{timeout: defaultConnectTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	target, dialOpts, err := dialTarget(address, &o)
	if err != nil {
		return nil, err
	}
	if !o.lazy {
		if _, ok := ctx.Deadline(); !ok || o.hasTimeout {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, o.timeout)
			defer cancel()
		}
		dialOpts = append(dialOpts, grpc.WithBlock(), grpc.WithReturnConnectionError())
	}
	conn, err := grpc.DialContext(ctx, target, append(dialOpts, o.dial...)...)
	if err != nil {
		return nil, fmt.Errorf("audit: cannot connect to %s: %w", address, err)
	}
	c := NewClient(conn, WithRetry(o.retry))
	c.owned = true
	return c, nil
}

// dialTarget turns address into a grpc-go target and the dial options it needs.
func dialTarget(address string, o *options) (string, []grpc.DialOption, error) {
	opts := []grpc.DialOption{
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                keepAliveInterval,
			Timeout:             keepAliveTimeout,
			PermitWithoutStream: true,
		}),
		// grpc-go waits 1 s, then 1.6 s, ... before reconnecting, and fails calls at once in
		// between: longer than Record's retries last. Reconnect sooner, as the Rust client does.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           reconnectBackoff,
			MinConnectTimeout: defaultConnectTimeout,
		}),
	}
	if path, ok := unixPath(address); ok {
		if path == "" {
			return "", nil, fmt.Errorf("audit: invalid address %q: no socket path", address)
		}
		// The authority is unused on a socket; "localhost" is what servers expect there.
		opts = append(opts, grpc.WithInsecure(), grpc.WithContextDialer(
			func(ctx context.Context, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			}))
		return "passthrough:///localhost", opts, nil
	}
	hostPort := address
	config := o.tls
	switch {
	case strings.HasPrefix(address, "https://"):
		hostPort = strings.TrimPrefix(address, "https://")
		if config == nil {
			config = &tls.Config{MinVersion: tls.VersionTLS12}
		}
	case strings.HasPrefix(address, "http://"):
		hostPort = strings.TrimPrefix(address, "http://")
	}
	hostPort = strings.TrimSuffix(hostPort, "/")
	if _, _, err := net.SplitHostPort(hostPort); err != nil {
		return "", nil, fmt.Errorf("audit: invalid address %q: %w", address, err)
	}
	if config != nil {
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(config)))
	} else {
		opts = append(opts, grpc.WithInsecure())
	}
	return hostPort, opts, nil
}

// unixPath returns the socket path of a "unix:" address.
func unixPath(address string) (string, bool) {
	if rest := strings.TrimPrefix(address, "unix://"); rest != address {
		return rest, true
	}
	if rest := strings.TrimPrefix(address, "unix:"); rest != address {
		return rest, true
	}
	return "", false
}

// NewClient wraps an existing connection (the caller keeps ownership: Close does not close
// it). Only WithRetry is used from opts.
func NewClient(conn *grpc.ClientConn, opts ...Option) *Client {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return &Client{
		conn:   conn,
		raw:    auditv1.NewAuditServiceClient(conn),
		health: healthpb.NewHealthClient(conn),
		retry:  o.retry.withDefaults(),
	}
}

// Close closes the connection Dial opened.
func (c *Client) Close() error {
	if !c.owned {
		return nil
	}
	return c.conn.Close()
}

// Conn is the underlying connection.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Raw is the generated client, for the calls this type does not wrap (checkpoints, proofs).
func (c *Client) Raw() auditv1.AuditServiceClient { return c.raw }

// Record stores one entry (a copy: entry is not changed) with a UUIDv7 id when it has none,
// retrying after UNAVAILABLE and timed-out attempts. A nil error means the entry is durable;
// the receipt holds its id and sequence (of the first recording, for a retried id). An
// invalid entry fails with an *Error whose Violations name the refused fields.
func (c *Client) Record(ctx context.Context, entry *auditv1.AuditEntry) (*auditv1.RecordResponse, error) {
	request := &auditv1.RecordRequest{Entry: withID(entry)}
	var response *auditv1.RecordResponse
	err := c.withRetry(ctx, "Record", func(ctx context.Context) (err error) {
		response, err = c.raw.Record(ctx, request)
		return err
	})
	return response, err
}

// RecordBatch stores the entries of one call atomically (all or none), sharing requestID (a
// UUIDv7 when empty, chosen before the first attempt so a retry repeats it). Entries without
// an id get a UUIDv7; the entries passed are not changed. Retries as Record does. The receipt
// lists ids and sequences in request order; a refused item fails the whole batch with
// Violations naming "entries[i].field".
func (c *Client) RecordBatch(ctx context.Context, requestID string, entries []*auditv1.AuditEntry) (*auditv1.RecordBatchResponse, error) {
	if requestID == "" {
		requestID = NewUUIDv7()
	}
	request := &auditv1.RecordBatchRequest{RequestId: requestID}
	for _, entry := range entries {
		request.Entries = append(request.Entries, withID(entry))
	}
	var response *auditv1.RecordBatchResponse
	err := c.withRetry(ctx, "RecordBatch", func(ctx context.Context) (err error) {
		response, err = c.raw.RecordBatch(ctx, request)
		return err
	})
	return response, err
}

// withID returns a copy of entry with a UUIDv7 id when it has none.
func withID(entry *auditv1.AuditEntry) *auditv1.AuditEntry {
	if entry == nil {
		return nil
	}
	entry = proto.Clone(entry).(*auditv1.AuditEntry)
	if entry.Id == "" {
		entry.Id = NewUUIDv7()
	}
	return entry
}

// withRetry runs call until it succeeds, fails for good, or the policy gives up.
func (c *Client) withRetry(ctx context.Context, method string, call func(context.Context) error) error {
	backoff := c.retry.InitialBackoff
	for attempt := 1; ; attempt++ {
		attemptCtx, cancel := context.WithTimeout(ctx, c.retry.AttemptTimeout)
		err := call(attemptCtx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || !retryable(status.Code(err)) || attempt >= c.retry.MaxAttempts {
			return wrapError(method, err)
		}
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return wrapError(method, err)
		case <-timer.C:
		}
		if backoff *= 2; backoff > c.retry.MaxBackoff {
			backoff = c.retry.MaxBackoff
		}
	}
}

// Health is the serving status of service ("" for the whole server, ServiceName for the audit
// service) from grpc.health.v1.Health/Check; a service the server does not know is
// SERVICE_UNKNOWN.
func (c *Client) Health(ctx context.Context, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	response, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if status.Code(err) == codes.NotFound {
		return healthpb.HealthCheckResponse_SERVICE_UNKNOWN, nil
	}
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, wrapError("Health.Check", err)
	}
	return response.GetStatus(), nil
}
