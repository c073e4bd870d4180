// Command audit-example records, batches, queries, subscribes and health-checks against an
// audit server.
//
// Usage:
//
//	audit-example HOST:PORT|unix:/path/to/audit.sock
//
// It prints one line per step and exits non-zero when the server did not behave as expected.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	auditv1 "example.com/auditsdk/audit/v1"
)

const (
	callTimeout      = 5 * time.Second
	subscribeTimeout = 10 * time.Second
)

// errContract reports a server that answered, but not as the contract says.
var errContract = errors.New("unexpected answer")

func failf(format string, args ...interface{}) error {
	return fmt.Errorf("%w: "+format, append([]interface{}{errContract}, args...)...)
}

func ok(step, detail string) {
	fmt.Printf("ok    %-10s %s\n", step, detail)
}

// newID returns n random bytes, hex-encoded.
func newID(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

type example struct {
	audit  auditv1.AuditServiceClient
	health healthpb.HealthClient
	source string
	runID  string
}

// newEntry returns an entry with the fields every example entry shares.
func (e *example) newEntry(method, event, category, resource string) *auditv1.AuditEntry {
	return &auditv1.AuditEntry{
		Source:     e.source,
		Method:     method,
		Event:      event,
		Category:   category,
		Resource:   resource,
		Level:      auditv1.Level_LEVEL_INFO,
		Outcome:    auditv1.Outcome_OUTCOME_SUCCESS,
		StatusCode: int32(codes.OK),
		Caller: &auditv1.Caller{
			Peer:      &auditv1.Caller_Network{Network: &auditv1.NetworkPeer{Address: "127.0.0.1:40000"}},
			Principal: "alice@example.com",
			UserAgent: "grpc-go/" + grpc.Version + " " + runtime.Version(),
		},
		Latency: durationpb.New(12 * time.Millisecond),
		Labels:  map[string]string{"run": e.runID, "language": "go"},
	}
}

func (e *example) recordOne(ctx context.Context) (*auditv1.RecordResponse, error) {
	entry := e.newEntry("/billing.v1.InvoiceService/CreateInvoice", "INVOICE_CREATED", "BILLING", "invoices/INV-1001")
	details, err := structpb.NewStruct(map[string]interface{}{"invoice": "INV-1001", "amount_cents": 4200, "paid": false})
	if err != nil {
		return nil, err
	}
	entry.Details = details
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := e.audit.Record(ctx, &auditv1.RecordRequest{Entry: entry})
	if err != nil {
		return nil, fmt.Errorf("Record: %w", err)
	}
	if resp.GetId() == "" || resp.GetSequence() == 0 {
		return nil, failf("Record returned id=%q sequence=%d", resp.GetId(), resp.GetSequence())
	}
	ok("record", fmt.Sprintf("id=%s sequence=%d", resp.GetId(), resp.GetSequence()))
	return resp, nil
}

func (e *example) recordBatch(ctx context.Context, requestID string) (*auditv1.RecordBatchResponse, error) {
	// One entry per operation of one audited call, all sharing the call's request_id.
	var entries []*auditv1.AuditEntry
	for _, key := range []string{"keys/alpha", "keys/beta", "keys/gamma"} {
		entries = append(entries, e.newEntry("/kms.v1.KeyService/DeleteKeys", "KEY_DELETED", "KEY_MANAGEMENT", key))
	}
	// The caller was not allowed to delete the last key.
	entries[2].Outcome = auditv1.Outcome_OUTCOME_DENIED
	entries[2].StatusCode = int32(codes.PermissionDenied)
	entries[2].StatusMessage = "not allowed to delete keys/gamma"

	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := e.audit.RecordBatch(ctx, &auditv1.RecordBatchRequest{RequestId: requestID, Entries: entries})
	if err != nil {
		return nil, fmt.Errorf("RecordBatch: %w", err)
	}
	if resp.GetRequestId() != requestID {
		return nil, failf("RecordBatch request_id=%q, want %q", resp.GetRequestId(), requestID)
	}
	seqs := resp.GetSequences()
	if len(resp.GetIds()) != 3 || len(seqs) != 3 {
		return nil, failf("RecordBatch returned %d ids and %d sequences, want 3 and 3", len(resp.GetIds()), len(seqs))
	}
	if !(seqs[0] < seqs[1] && seqs[1] < seqs[2]) {
		return nil, failf("RecordBatch sequences %v are not strictly increasing", seqs)
	}
	ok("batch", fmt.Sprintf("request_id=%s sequences=%v", requestID, seqs))
	return resp, nil
}

// queryAll returns every matching entry, oldest first, following next_page_token (two per
// page, to show paging).
func (e *example) queryAll(ctx context.Context, filter *auditv1.Filter) ([]*auditv1.AuditEntry, error) {
	var entries []*auditv1.AuditEntry
	token := ""
	for page := 0; page < 100; page++ {
		callCtx, cancel := context.WithTimeout(ctx, callTimeout)
		resp, err := e.audit.Query(callCtx, &auditv1.QueryRequest{
			Filter:    filter,
			PageSize:  2,
			PageToken: token,
			Order:     auditv1.Order_ORDER_ASCENDING,
		})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("Query: %w", err)
		}
		entries = append(entries, resp.GetEntries()...)
		token = resp.GetNextPageToken()
		if token == "" {
			return entries, nil
		}
	}
	return nil, failf("Query kept returning next_page_token after 100 pages")
}

func ids(entries []*auditv1.AuditEntry) []string {
	out := []string{}
	for _, entry := range entries {
		out = append(out, entry.GetId())
	}
	return out
}

func (e *example) queryBack(ctx context.Context, single *auditv1.RecordResponse, batch *auditv1.RecordBatchResponse) error {
	byRequest, err := e.queryAll(ctx, &auditv1.Filter{RequestId: batch.GetRequestId()})
	if err != nil {
		return err
	}
	if !reflect.DeepEqual(ids(byRequest), batch.GetIds()) {
		return failf("Query(request_id) returned ids %v, want %v", ids(byRequest), batch.GetIds())
	}
	for i, entry := range byRequest {
		if entry.GetSequence() != batch.GetSequences()[i] || entry.GetRequestId() != batch.GetRequestId() {
			return failf("Query(request_id) entry %d has sequence %d request_id %q, want %d %q",
				i, entry.GetSequence(), entry.GetRequestId(), batch.GetSequences()[i], batch.GetRequestId())
		}
	}
	denied, err := e.queryAll(ctx, &auditv1.Filter{
		RequestId: batch.GetRequestId(),
		Outcomes:  []auditv1.Outcome{auditv1.Outcome_OUTCOME_DENIED},
	})
	if err != nil {
		return err
	}
	if len(denied) != 1 || denied[0].GetResource() != "keys/gamma" {
		return failf("Query(request_id, outcomes=[DENIED]) returned %v, want the keys/gamma entry", ids(denied))
	}

	bySource, err := e.queryAll(ctx, &auditv1.Filter{Source: e.source})
	if err != nil {
		return err
	}
	wantIDs := append([]string{single.GetId()}, batch.GetIds()...)
	if !reflect.DeepEqual(ids(bySource), wantIDs) {
		return failf("Query(source) returned ids %v, want %v", ids(bySource), wantIDs)
	}
	first := bySource[0]
	switch {
	case first.GetSequence() != single.GetSequence():
		return failf("recorded entry has sequence %d, want %d", first.GetSequence(), single.GetSequence())
	case first.GetRequestId() == "":
		return failf("the server did not fill request_id of the recorded entry")
	case first.GetReceivedTime() == nil:
		return failf("the server did not fill received_time")
	case first.GetRecorder() == nil:
		return failf("the server did not fill recorder")
	}
	wantDetails := map[string]interface{}{"invoice": "INV-1001", "amount_cents": 4200.0, "paid": false}
	if got := first.GetDetails().AsMap(); !reflect.DeepEqual(got, wantDetails) {
		return failf("details came back as %v", got)
	}
	if got := first.GetLabels(); got["run"] != e.runID || got["language"] != "go" {
		return failf("labels came back as %v", got)
	}
	recorder := "none"
	switch first.GetRecorder().GetPeer().(type) {
	case *auditv1.Recorder_Network:
		recorder = "network"
	case *auditv1.Recorder_Unix:
		recorder = "unix"
	}
	ok("query", fmt.Sprintf("%d entries for request_id, %d denied, %d for source %s; recorder=%s details and labels intact",
		len(byRequest), len(denied), len(bySource), e.source, recorder))
	return nil
}

func (e *example) subscribeLive(ctx context.Context, afterSequence uint64) error {
	// Resume right after the last sequence we saw, so nothing can slip between opening the
	// stream and recording: the server replays what is stored after it, then goes live.
	ctx, cancel := context.WithTimeout(ctx, subscribeTimeout)
	defer cancel() // also cancels the stream
	stream, err := e.audit.Subscribe(ctx, &auditv1.SubscribeRequest{
		Filter: &auditv1.Filter{Source: e.source},
		Start:  &auditv1.StartPosition{Position: &auditv1.StartPosition_AfterSequence{AfterSequence: afterSequence}},
	})
	if err != nil {
		return fmt.Errorf("Subscribe: %w", err)
	}
	if _, err := stream.Header(); err != nil { // the server has accepted the subscription
		return fmt.Errorf("Subscribe: %w", err)
	}
	recordCtx, recordCancel := context.WithTimeout(ctx, callTimeout)
	live, err := e.audit.Record(recordCtx, &auditv1.RecordRequest{
		Entry: e.newEntry("/billing.v1.InvoiceService/CreateInvoice", "INVOICE_PAID", "BILLING", "invoices/INV-1001"),
	})
	recordCancel()
	if err != nil {
		return fmt.Errorf("Record: %w", err)
	}
	heartbeats := 0
	for {
		msg, err := stream.Recv()
		if status.Code(err) == codes.DeadlineExceeded {
			return failf("Subscribe delivered no entry within %s", subscribeTimeout)
		}
		if err != nil {
			return fmt.Errorf("Subscribe: %w", err)
		}
		switch m := msg.GetMessage().(type) {
		case *auditv1.SubscribeResponse_Heartbeat:
			heartbeats++
		case *auditv1.SubscribeResponse_Entry:
			entry := m.Entry
			if entry.GetId() != live.GetId() || entry.GetSequence() != live.GetSequence() {
				return failf("Subscribe delivered id=%s sequence=%d first, want the new entry id=%s sequence=%d",
					entry.GetId(), entry.GetSequence(), live.GetId(), live.GetSequence())
			}
			if entry.GetEvent() != "INVOICE_PAID" {
				return failf("Subscribe delivered event %q", entry.GetEvent())
			}
			ok("subscribe", fmt.Sprintf("received id=%s sequence=%d recorded after the stream opened (%d heartbeats before it)",
				entry.GetId(), entry.GetSequence(), heartbeats))
			return nil
		default:
			return failf("Subscribe sent an empty message")
		}
	}
}

func (e *example) checkHealth(ctx context.Context) error {
	for _, service := range []string{"", "audit.v1.AuditService"} {
		callCtx, cancel := context.WithTimeout(ctx, callTimeout)
		resp, err := e.health.Check(callCtx, &healthpb.HealthCheckRequest{Service: service})
		cancel()
		if err != nil {
			return fmt.Errorf("Health.Check(%q): %w", service, err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return failf("health of %q is %s, want SERVING", service, resp.GetStatus())
		}
		name := service
		if name == "" {
			name = "(server)"
		}
		ok("health", fmt.Sprintf("%s: %s", name, resp.GetStatus()))
	}
	return nil
}

func run(address string) error {
	ctx := context.Background()
	dialCtx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	// Plaintext HTTP/2 on loopback; use grpc.WithTransportCredentials for TLS.
	conn, err := grpc.DialContext(dialCtx, address, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		return fmt.Errorf("could not connect to %s within %s: %w", address, callTimeout, err)
	}
	defer conn.Close()

	runID := newID(6)
	e := &example{
		audit:  auditv1.NewAuditServiceClient(conn),
		health: healthpb.NewHealthClient(conn),
		source: "go-example-" + runID,
		runID:  runID,
	}
	fmt.Printf("connected to %s, source %s\n", address, e.source)
	single, err := e.recordOne(ctx)
	if err != nil {
		return err
	}
	batch, err := e.recordBatch(ctx, newUUID())
	if err != nil {
		return err
	}
	if err := e.queryBack(ctx, single, batch); err != nil {
		return err
	}
	if err := e.subscribeLive(ctx, batch.GetSequences()[2]); err != nil {
		return err
	}
	return e.checkHealth(ctx)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: audit-example HOST:PORT|unix:/path/to/audit.sock")
		os.Exit(2)
	}
	started := time.Now()
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL  %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("go example passed in %.1f s\n", time.Since(started).Seconds())
}
