// Command keystore-example serves the example key store (package keystore) audited by
// auditinterceptor, calls it, and checks with the audit client that the audit server at
// ADDRESS stored exactly the expected entries.
//
// Usage:
//
//	keystore-example HOST:PORT|unix:/path/to/audit.sock
//
// The key store listens on 127.0.0.1:0 and on a Unix socket in a temporary directory, both
// removed on exit. The calls: Create (OK, with the caller's x-request-id), Create (OK, with a
// generated request_id), Delete of a missing key (NOT_FOUND), List (a server-streaming call),
// BatchDelete of three keys, one missing (one entry for the call and one per key, sharing the
// request_id), Create over the Unix socket (the caller's kernel credentials), Create over
// mutual TLS with audit.Dial's TLS options (the caller's SPIFFE ID and certificate subject),
// and a health check (excluded from auditing). Then fail-closed and fail-open against an unreachable audit
// service. It prints one line per step and exits with status 1 at the first deviation.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/ioutil"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"example.com/auditsdk/audit"
	auditv1 "example.com/auditsdk/audit/v1"
	"example.com/auditsdk/auditinterceptor"
	"example.com/auditsdk/keystore"
)

const callTimeout = 5 * time.Second

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// errContract reports a deviation from what the interceptor promises.
var errContract = errors.New("unexpected")

func failf(format string, args ...interface{}) error {
	return fmt.Errorf("%w: "+format, append([]interface{}{errContract}, args...)...)
}

func ok(step, detail string) { fmt.Printf("ok    %-12s %s\n", step, detail) }

func newID(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// service is a key store server audited by an interceptor, on TCP and a Unix socket.
type service struct {
	store    *keystore.Store
	server   *grpc.Server
	tcp      net.Listener
	socket   string
	recorder *auditinterceptor.Recorder
}

func serve(recorder *auditinterceptor.Recorder, dir string, opts ...auditinterceptor.Option) (*service, error) {
	return serveWith(auditinterceptor.PeerCredentials(), recorder, dir, opts...)
}

func serveWith(creds credentials.TransportCredentials, recorder *auditinterceptor.Recorder, dir string, opts ...auditinterceptor.Option) (*service, error) {
	auditor := auditinterceptor.New(recorder, opts...)
	server := grpc.NewServer(
		grpc.Creds(creds),
		grpc.ChainUnaryInterceptor(auditor.Unary()),
		grpc.ChainStreamInterceptor(auditor.Stream()),
	)
	store := keystore.NewStore()
	store.Register(server)
	healthpb.RegisterHealthServer(server, health.NewServer())
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &service{store: store, server: server, tcp: tcp, recorder: recorder}
	go func() { _ = server.Serve(tcp) }()
	if dir != "" {
		s.socket = filepath.Join(dir, "keystore.sock")
		unixListener, err := net.Listen("unix", s.socket)
		if err != nil {
			server.Stop()
			return nil, err
		}
		go func() { _ = server.Serve(unixListener) }()
	}
	return s, nil
}

// connection is a client connection that remembers its local address (the caller address
// the interceptor should record).
type connection struct {
	*grpc.ClientConn
	mu    sync.Mutex
	local string
}

func dial(ctx context.Context, network, address string) (*connection, error) {
	c := &connection{}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, "passthrough:///"+address, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, target string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, network, target)
			if err == nil {
				c.mu.Lock()
				c.local = conn.LocalAddr().String()
				c.mu.Unlock()
			}
			return conn, err
		}))
	if err != nil {
		return nil, err
	}
	c.ClientConn = conn
	return c, nil
}

func (c *connection) localAddress() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.local
}

// expected is one entry the audit server must hold.
type expected struct {
	method, event, resource string
	code                    codes.Code
	message                 string
	requestID               string
	principal               string
	// address is the caller's network address; "" for the Unix socket call.
	address string
	unix    bool
	// tls: the caller presented the example's client certificate.
	tls bool
}

// operation reports whether w is a per-operation entry of the batch call (no latency of its
// own).
func (w expected) operation() bool {
	return w.method == keystore.MethodBatchDelete && w.event == "KEY_DELETED"
}

func (w expected) key() string { return w.method + " " + w.event + " " + w.resource }

type example struct {
	client *audit.Client
	source string
	dir    string
	certs  *certificates
}

func (e *example) callAudited(ctx context.Context) error {
	recorder := auditinterceptor.NewRecorder(e.client, auditinterceptor.RecorderConfig{Source: e.source})
	defer func() {
		closeCtx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		_ = recorder.Close(closeCtx)
	}()
	svc, err := serve(recorder, e.dir,
		auditinterceptor.PrincipalFromMetadata("x-user"),
		auditinterceptor.Exclude("/grpc.health.v1.Health/*"))
	if err != nil {
		return err
	}
	defer svc.server.Stop()
	conn, err := dial(ctx, "tcp", svc.tcp.Addr().String())
	if err != nil {
		return fmt.Errorf("connecting to the key store: %w", err)
	}
	defer conn.Close()
	keys := keystore.NewClient(conn)
	callCtx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	as := func(user string) context.Context { return metadata.AppendToOutgoingContext(callCtx, "x-user", user) }
	address := conn.localAddress()
	var want []expected

	// An OK call that brings its own request_id: kept and returned.
	sentID := "keystore-" + newID(8)
	var header metadata.MD
	if err := keys.Create(metadata.AppendToOutgoingContext(as("alice"), auditinterceptor.RequestIDHeader, sentID), "alpha", grpc.Header(&header)); err != nil {
		return fmt.Errorf("Create(alpha): %w", err)
	}
	if got := header.Get(auditinterceptor.RequestIDHeader); len(got) != 1 || got[0] != sentID {
		return failf("Create returned x-request-id %v, want the one sent, %s", got, sentID)
	}
	want = append(want, expected{keystore.MethodCreate, "KEY_CREATED", "keys/alpha", codes.OK, "", sentID, "alice", address, false, false})

	// An OK call without a request_id: one is generated and returned.
	generated, err := requestIDOf(func(opt grpc.CallOption) error { return keys.Create(as("alice"), "beta", opt) })
	if err != nil {
		return fmt.Errorf("Create(beta): %w", err)
	}
	if !uuidPattern.MatchString(generated) {
		return failf("generated x-request-id %q is not a UUIDv7", generated)
	}
	want = append(want, expected{keystore.MethodCreate, "KEY_CREATED", "keys/beta", codes.OK, "", generated, "alice", address, false, false})
	ok("unary", fmt.Sprintf("Create alpha (x-request-id kept: %s), Create beta (generated: %s)", sentID, generated))

	// An error status.
	deleteID, err := requestIDOf(func(opt grpc.CallOption) error { return keys.Delete(as("bob"), "ghost", opt) })
	if status.Code(err) != codes.NotFound {
		return failf("Delete(ghost) returned %v, want NOT_FOUND", err)
	}
	want = append(want, expected{keystore.MethodDelete, "KEY_DELETED", "keys/ghost", codes.NotFound, "key ghost does not exist", deleteID, "bob", address, false, false})
	ok("error", fmt.Sprintf("Delete ghost: %s", status.Code(err)))

	// A server-streaming call.
	var names []string
	listID, err := requestIDOf(func(opt grpc.CallOption) (err error) { names, err = keys.List(as("carol"), "", opt); return err })
	if err != nil {
		return fmt.Errorf("List: %w", err)
	}
	if strings.Join(names, ",") != "alpha,beta" {
		return failf("List returned %v, want [alpha beta]", names)
	}
	want = append(want, expected{keystore.MethodList, "KEYS_LISTED", "keys/*", codes.OK, "", listID, "carol", address, false, false})
	ok("stream", fmt.Sprintf("List streamed %v", names))

	// A batch call: one entry for the call, one per key, all sharing the request_id.
	var deleted, missing int
	batchID, err := requestIDOf(func(opt grpc.CallOption) (err error) {
		deleted, missing, err = keys.BatchDelete(as("alice"), []string{"alpha", "beta", "ghost"}, opt)
		return err
	})
	if err != nil {
		return fmt.Errorf("BatchDelete: %w", err)
	}
	if deleted != 2 || missing != 1 {
		return failf("BatchDelete deleted %d and missed %d, want 2 and 1", deleted, missing)
	}
	want = append(want,
		expected{keystore.MethodBatchDelete, "KEYS_BATCH_DELETED", "", codes.OK, "", batchID, "alice", address, false, false},
		expected{keystore.MethodBatchDelete, "KEY_DELETED", "keys/alpha", codes.OK, "", batchID, "alice", address, false, false},
		expected{keystore.MethodBatchDelete, "KEY_DELETED", "keys/beta", codes.OK, "", batchID, "alice", address, false, false},
		expected{keystore.MethodBatchDelete, "KEY_DELETED", "keys/ghost", codes.NotFound, "key ghost does not exist", batchID, "alice", address, false, false},
	)
	ok("batch", fmt.Sprintf("BatchDelete alpha, beta, ghost: %d deleted, %d missing (request_id %s)", deleted, missing, batchID))

	// Over the Unix socket: the caller is this process, from the kernel's peer credentials.
	unixConn, err := dial(ctx, "unix", svc.socket)
	if err != nil {
		return fmt.Errorf("connecting to the key store's socket: %w", err)
	}
	defer unixConn.Close()
	unixID, err := requestIDOf(func(opt grpc.CallOption) error {
		return keystore.NewClient(unixConn).Create(as("dave"), "gamma", opt)
	})
	if err != nil {
		return fmt.Errorf("Create(gamma) over the socket: %w", err)
	}
	want = append(want, expected{keystore.MethodCreate, "KEY_CREATED", "keys/gamma", codes.OK, "", unixID, "dave", "", true, false})
	ok("unix", "Create gamma over "+svc.socket)

	// Over mutual TLS, dialled with the audit client's TLS options: the caller's SPIFFE ID and
	// certificate subject come from its verified certificate.
	mtls, err := e.serveMutualTLS(ctx, recorder)
	if err != nil {
		return err
	}
	defer mtls.server.Stop()
	tlsID, tlsAddress, err := e.callOverMutualTLS(ctx, mtls)
	if err != nil {
		return err
	}
	want = append(want, expected{keystore.MethodCreate, "KEY_CREATED", "keys/delta", codes.OK, "", tlsID, "erin", tlsAddress, false, true})

	// Excluded: not audited.
	if _, err := healthpb.NewHealthClient(conn).Check(callCtx, &healthpb.HealthCheckRequest{}); err != nil {
		return fmt.Errorf("Health.Check: %w", err)
	}

	flushCtx, cancelFlush := context.WithTimeout(ctx, 10*time.Second)
	defer cancelFlush()
	if err := recorder.Flush(flushCtx); err != nil {
		return fmt.Errorf("flushing the recorder: %w", err)
	}
	if stats := recorder.Stats(); stats.Recorded != uint64(len(want)) || stats.Dropped != 0 || stats.Failed != 0 {
		return failf("recorder stats %+v, want %d recorded, none dropped or failed", stats, len(want))
	}
	return e.checkStored(ctx, want, batchID)
}

// serveMutualTLS serves the key store over TLS requiring client certificates from a
// throwaway CA, audited through recorder.
func (e *example) serveMutualTLS(ctx context.Context, recorder *auditinterceptor.Recorder) (*service, error) {
	certs, err := writeCertificates(e.dir)
	if err != nil {
		return nil, err
	}
	e.certs = certs
	serverCert, err := tls.LoadX509KeyPair(certs.serverCert, certs.serverKey)
	if err != nil {
		return nil, err
	}
	caPEM, err := ioutil.ReadFile(certs.ca)
	if err != nil {
		return nil, err
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AppendCertsFromPEM(caPEM)
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
		MinVersion:   tls.VersionTLS12,
	})
	return serveWith(creds, recorder, "",
		auditinterceptor.PrincipalFromMetadata("x-user"),
		auditinterceptor.Exclude("/grpc.health.v1.Health/*"))
}

// callOverMutualTLS connects with audit.Dial and audit.TLSConfig (CA, client certificate and
// key), checks health through the audit client, then calls Create on the same connection.
// It returns the call's request_id and the client's address.
func (e *example) callOverMutualTLS(ctx context.Context, svc *service) (requestID, address string, err error) {
	config, err := audit.TLSConfig(e.certs.ca, e.certs.clientCert, e.certs.clientKey, "")
	if err != nil {
		return "", "", err
	}
	var mu sync.Mutex
	client, err := audit.Dial(ctx, svc.tcp.Addr().String(), audit.WithTLS(config), audit.WithDialOptions(
		grpc.WithContextDialer(func(ctx context.Context, target string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "tcp", target)
			if err == nil {
				mu.Lock()
				address = conn.LocalAddr().String()
				mu.Unlock()
			}
			return conn, err
		})))
	if err != nil {
		return "", "", fmt.Errorf("connecting over mutual TLS: %w", err)
	}
	defer client.Close()
	callCtx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if serving, err := client.Health(callCtx, ""); err != nil || serving != healthpb.HealthCheckResponse_SERVING {
		return "", "", failf("health over mutual TLS: %s %v", serving, err)
	}
	requestID, err = requestIDOf(func(opt grpc.CallOption) error {
		return keystore.NewClient(client.Conn()).Create(metadata.AppendToOutgoingContext(callCtx, "x-user", "erin"), "delta", opt)
	})
	if err != nil {
		return "", "", fmt.Errorf("Create(delta) over mutual TLS: %w", err)
	}
	mu.Lock()
	defer mu.Unlock()
	ok("mtls", fmt.Sprintf("audit.Dial with audit.TLSConfig: health SERVING, Create delta as %s", clientSPIFFEID))
	return requestID, address, nil
}

// requestIDOf runs call and returns the x-request-id the server sent back, and call's error.
func requestIDOf(call func(grpc.CallOption) error) (string, error) {
	var header metadata.MD
	err := call(grpc.Header(&header))
	if got := header.Get(auditinterceptor.RequestIDHeader); len(got) == 1 && got[0] != "" {
		return got[0], err
	}
	if err == nil {
		err = failf("no x-request-id in the response header")
	}
	return "", err
}

// checkStored queries the audit server for the entries of this run and compares them with
// want, exactly.
func (e *example) checkStored(ctx context.Context, want []expected, batchID string) error {
	stored, err := e.client.Query(ctx, &auditv1.Filter{Source: e.source}, audit.QueryOptions{}).All()
	if err != nil {
		return err
	}
	if len(stored) != len(want) {
		var got []string
		for _, entry := range stored {
			got = append(got, entry.GetMethod()+" "+entry.GetEvent()+" "+entry.GetResource())
		}
		return failf("the audit server holds %d entries for %s, want %d: %v", len(stored), e.source, len(want), got)
	}
	byKey := map[string]*auditv1.AuditEntry{}
	for _, entry := range stored {
		byKey[entry.GetMethod()+" "+entry.GetEvent()+" "+entry.GetResource()] = entry
	}
	var batchSequences []uint64
	for _, w := range want {
		entry := byKey[w.key()]
		if entry == nil {
			return failf("no stored entry for %s", w.key())
		}
		if err := check(entry, w); err != nil {
			return err
		}
		if w.requestID == batchID {
			batchSequences = append(batchSequences, entry.GetSequence())
		}
	}
	sort.Slice(batchSequences, func(i, j int) bool { return batchSequences[i] < batchSequences[j] })
	for i := 1; i < len(batchSequences); i++ {
		if batchSequences[i] != batchSequences[i-1]+1 {
			return failf("the batch call's entries have sequences %v, not one atomic RecordBatch", batchSequences)
		}
	}
	ok("stored", fmt.Sprintf("%d entries exactly as expected (batch call: %d entries sharing request_id %s, sequences %v)",
		len(want), len(batchSequences), batchID, batchSequences))
	return nil
}

func check(entry *auditv1.AuditEntry, w expected) error {
	wrong := func(field string, got, expected interface{}) error {
		return failf("%s: %s is %v, want %v", w.key(), field, got, expected)
	}
	switch {
	case codes.Code(entry.GetStatusCode()) != w.code:
		return wrong("status_code", codes.Code(entry.GetStatusCode()), w.code)
	case entry.GetStatusMessage() != w.message:
		return wrong("status_message", entry.GetStatusMessage(), w.message)
	case entry.GetOutcome() != audit.OutcomeOf(w.code):
		return wrong("outcome", entry.GetOutcome(), audit.OutcomeOf(w.code))
	case entry.GetRequestId() != w.requestID:
		return wrong("request_id", entry.GetRequestId(), w.requestID)
	case entry.GetCategory() != keystore.Category:
		return wrong("category", entry.GetCategory(), keystore.Category)
	case entry.GetCaller().GetPrincipal() != w.principal:
		return wrong("principal", entry.GetCaller().GetPrincipal(), w.principal)
	case !strings.HasPrefix(entry.GetCaller().GetUserAgent(), "grpc-go/"):
		return wrong("user_agent", entry.GetCaller().GetUserAgent(), "grpc-go/...")
	case !w.operation() && (entry.GetLatency() == nil || entry.GetLatency().AsDuration() <= 0):
		return wrong("latency", entry.GetLatency(), "a positive duration")
	case entry.GetTime() == nil:
		return wrong("time", nil, "the call's start")
	case !uuidPattern.MatchString(entry.GetId()):
		return wrong("id", entry.GetId(), "a client-chosen UUIDv7")
	}
	if w.unix {
		unix := entry.GetCaller().GetUnix()
		self, _ := os.Executable()
		if unix == nil || unix.GetUid() != uint32(os.Getuid()) || unix.GetPid() != uint32(os.Getpid()) || unix.GetBinaryPath() != self {
			return wrong("caller.unix", unix, fmt.Sprintf("uid %d pid %d binary %s", os.Getuid(), os.Getpid(), self))
		}
	} else if got := entry.GetCaller().GetNetwork().GetAddress(); got != w.address {
		return wrong("caller.network.address", got, w.address)
	}
	network := entry.GetCaller().GetNetwork()
	wantSPIFFE, wantSubject := "", ""
	if w.tls {
		wantSPIFFE, wantSubject = clientSPIFFEID, "CN=keystore-client,O=example"
	}
	if network.GetSpiffeId() != wantSPIFFE || network.GetCertificateSubject() != wantSubject {
		return wrong("caller.network spiffe_id, certificate_subject", network.GetSpiffeId()+" "+network.GetCertificateSubject(), wantSPIFFE+" "+wantSubject)
	}
	return nil
}

// failClosed: with the audit service unreachable, a fail-closed call ends UNAVAILABLE once
// its deadline passes, and the next one is refused before its handler runs.
func (e *example) failClosed(ctx context.Context, unreachable *audit.Client) error {
	recorder := auditinterceptor.NewRecorder(unreachable, auditinterceptor.RecorderConfig{
		Source: e.source + "-closed", InitialBackoff: 50 * time.Millisecond, Logf: func(string, ...interface{}) {},
	})
	defer closeQuickly(ctx, recorder)
	svc, err := serve(recorder, "", auditinterceptor.FailClosed(300*time.Millisecond))
	if err != nil {
		return err
	}
	defer svc.server.Stop()
	conn, err := dial(ctx, "tcp", svc.tcp.Addr().String())
	if err != nil {
		return err
	}
	defer conn.Close()
	keys := keystore.NewClient(conn)
	callCtx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	started := time.Now()
	err = keys.Create(callCtx, "one")
	if s := status.Convert(err); s.Code() != codes.Unavailable || s.Message() != "audit trail unavailable" {
		return failf("fail-closed Create with the audit service down returned %v, want UNAVAILABLE audit trail unavailable", err)
	}
	took := time.Since(started)
	if took < 300*time.Millisecond {
		return failf("fail-closed Create failed after %s, before its 300 ms deadline", took)
	}
	err = keys.Create(callCtx, "two")
	if status.Code(err) != codes.Unavailable {
		return failf("second fail-closed Create returned %v, want UNAVAILABLE", err)
	}
	if names := svc.store.Names(); strings.Join(names, ",") != "one" {
		return failf("the store holds %v: the refused call ran its handler", names)
	}
	ok("fail-closed", fmt.Sprintf("audit service down: UNAVAILABLE at the 300 ms deadline (after %s), then refused before the handler", took.Round(time.Millisecond)))
	return nil
}

// failOpen: with the audit service unreachable and a queue of one call, calls succeed and the
// entries that do not fit are dropped and counted.
func (e *example) failOpen(ctx context.Context, unreachable *audit.Client) error {
	recorder := auditinterceptor.NewRecorder(unreachable, auditinterceptor.RecorderConfig{
		Source: e.source + "-open", QueueCapacity: 1, InitialBackoff: 50 * time.Millisecond, Logf: func(string, ...interface{}) {},
	})
	svc, err := serve(recorder, "")
	if err != nil {
		return err
	}
	defer svc.server.Stop()
	conn, err := dial(ctx, "tcp", svc.tcp.Addr().String())
	if err != nil {
		return err
	}
	defer conn.Close()
	keys := keystore.NewClient(conn)
	callCtx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	const calls = 5
	for i := 0; i < calls; i++ {
		if err := keys.Create(callCtx, fmt.Sprintf("key-%d", i)); err != nil {
			return failf("fail-open Create with the audit service down returned %v, want OK", err)
		}
	}
	during := recorder.Stats()
	if during.Dropped < calls-2 || during.Recorded != 0 {
		return failf("fail-open recorder stats %+v, want at least %d dropped (a queue of 1, one in delivery)", during, calls-2)
	}
	closeQuickly(ctx, recorder)
	if after := recorder.Stats(); after.Dropped != calls || after.Recorded != 0 {
		return failf("after Close the recorder stats are %+v, want all %d dropped", after, calls)
	}
	ok("fail-open", fmt.Sprintf("audit service down: %d calls OK, %d entries dropped at once, %d after Close gave up", calls, during.Dropped, calls))
	return nil
}

func closeQuickly(ctx context.Context, recorder *auditinterceptor.Recorder) {
	closeCtx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_ = recorder.Close(closeCtx)
}

func run(address string) error {
	ctx := context.Background()
	client, err := audit.Dial(ctx, address)
	if err != nil {
		return err
	}
	defer client.Close()
	dir, err := ioutil.TempDir("", "keystore-example-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	e := &example{client: client, source: "go-keystore-" + newID(6), dir: dir}
	fmt.Printf("audit server %s, key store source %s\n", address, e.source)
	if err := e.callAudited(ctx); err != nil {
		return err
	}
	// Port 1 on loopback: nothing listens, so every delivery is refused at once.
	unreachable, err := audit.Dial(ctx, "127.0.0.1:1", audit.WithLazyConnect())
	if err != nil {
		return err
	}
	defer unreachable.Close()
	if err := e.failClosed(ctx, unreachable); err != nil {
		return err
	}
	return e.failOpen(ctx, unreachable)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: keystore-example HOST:PORT|unix:/path/to/audit.sock")
		os.Exit(2)
	}
	started := time.Now()
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL  %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("go keystore example passed in %.1f s\n", time.Since(started).Seconds())
}
