// Command audit-example records, batches, queries, subscribes and health-checks against an
// audit server with the idiomatic client, package audit.
//
// Usage:
//
//	audit-example HOST:PORT|unix:/path/to/audit.sock
//
// It prints one line per step and exits non-zero when the server or the client did not
// behave as expected.
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

	"example.com/auditsdk/audit"
	auditv1 "example.com/auditsdk/audit/v1"
)

const (
	callTimeout      = 5 * time.Second
	subscribeTimeout = 10 * time.Second
	// pagedEntries is more than the two pages of pageSize that the paging step asks for.
	pagedEntries = 25
	pageSize     = 10
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

type example struct {
	address string
	client  *audit.Client
	source  string
	runID   string
}

// newEntry starts an entry with the fields every example entry shares.
func (e *example) newEntry(method, event, category, resource string) *audit.Entry {
	return audit.NewEntry(e.source, method).
		Event(event).
		Category(category).
		Resource(resource).
		Level(auditv1.Level_LEVEL_INFO).
		Status(codes.OK, "").
		PeerAddress("127.0.0.1:40000").
		Principal("alice@example.com").
		UserAgent("grpc-go/"+grpc.Version+" "+runtime.Version()).
		Latency(12*time.Millisecond).
		Label("run", e.runID).
		Label("language", "go")
}

func (e *example) recordOne(ctx context.Context) (*auditv1.RecordResponse, error) {
	entry := e.newEntry("/billing.v1.InvoiceService/CreateInvoice", "INVOICE_CREATED", "BILLING", "invoices/INV-1001").
		Detail("invoice", "INV-1001").
		Detail("amount_cents", 4200).
		Detail("paid", false).
		Build()
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := e.client.Record(ctx, entry)
	if err != nil {
		return nil, err
	}
	if !uuidV7(resp.GetId()) || resp.GetSequence() == 0 {
		return nil, failf("Record returned id=%q sequence=%d, want the client's UUIDv7 and a sequence", resp.GetId(), resp.GetSequence())
	}
	// The id was chosen by the client, so recording the same entry again (a retry) stores
	// nothing new and returns the first sequence.
	again, err := e.client.Record(ctx, audit.EntryFrom(entry).ID(resp.GetId()).Build())
	if err != nil {
		return nil, err
	}
	if again.GetId() != resp.GetId() || again.GetSequence() != resp.GetSequence() {
		return nil, failf("recording id %s again returned sequence %d, want %d", resp.GetId(), again.GetSequence(), resp.GetSequence())
	}
	ok("record", fmt.Sprintf("id=%s sequence=%d (recorded again: same sequence)", resp.GetId(), resp.GetSequence()))
	return resp, nil
}

func uuidV7(id string) bool {
	return len(id) == 36 && id[14] == '7'
}

func (e *example) recordBatch(ctx context.Context, requestID string) (*auditv1.RecordBatchResponse, error) {
	// One entry per operation of one audited call, all sharing the call's request_id.
	var entries []*auditv1.AuditEntry
	for _, key := range []string{"keys/alpha", "keys/beta"} {
		entries = append(entries, e.newEntry("/kms.v1.KeyService/DeleteKeys", "KEY_DELETED", "KEY_MANAGEMENT", key).Build())
	}
	// The caller was not allowed to delete the last key.
	entries = append(entries, e.newEntry("/kms.v1.KeyService/DeleteKeys", "KEY_DELETED", "KEY_MANAGEMENT", "keys/gamma").
		Status(codes.PermissionDenied, "not allowed to delete keys/gamma").Build())
	if entries[2].GetOutcome() != auditv1.Outcome_OUTCOME_DENIED {
		return nil, failf("Status(PERMISSION_DENIED) set outcome %s, want OUTCOME_DENIED", entries[2].GetOutcome())
	}

	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := e.client.RecordBatch(ctx, requestID, entries)
	if err != nil {
		return nil, err
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
	for _, id := range resp.GetIds() {
		if !uuidV7(id) {
			return nil, failf("RecordBatch stored id %q, want the client's UUIDv7", id)
		}
	}
	ok("batch", fmt.Sprintf("request_id=%s sequences=%v", requestID, seqs))
	return resp, nil
}

// refused: invalid entries come back as *audit.Error naming the refused field, from the
// google.rpc.BadRequest in the status details.
func (e *example) refused(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	_, err := e.client.Record(ctx, audit.NewEntry("", "/kms.v1.KeyService/DeleteKeys").Build())
	var refusal *audit.Error
	if !errors.As(err, &refusal) || refusal.Code != codes.InvalidArgument {
		return failf("Record without a source returned %v, want INVALID_ARGUMENT", err)
	}
	if _, found := refusal.Violation("entry.source"); !found {
		if _, found = refusal.Violation("source"); !found {
			return failf("Record without a source: violations %+v do not name source", refusal.Violations)
		}
	}
	good := e.newEntry("/kms.v1.KeyService/DeleteKeys", "KEY_DELETED", "KEY_MANAGEMENT", "keys/x").Build()
	bad := audit.EntryFrom(good).Method("").Build()
	_, err = e.client.RecordBatch(ctx, "", []*auditv1.AuditEntry{good, bad})
	violations := audit.Violations(err)
	found := false
	for _, v := range violations {
		found = found || v.Field == "entries[1].method"
	}
	if !found {
		return failf("RecordBatch with entries[1] lacking a method returned %v, want a violation of entries[1].method", err)
	}
	ok("refused", fmt.Sprintf("%v | %v", refusal.Violations, violations))
	return nil
}

func ids(entries []*auditv1.AuditEntry) []string {
	out := []string{}
	for _, entry := range entries {
		out = append(out, entry.GetId())
	}
	return out
}

// queryAll returns every matching entry, oldest first, two per page to show paging.
func (e *example) queryAll(ctx context.Context, filter *auditv1.Filter) ([]*auditv1.AuditEntry, error) {
	return e.client.Query(ctx, filter, audit.QueryOptions{PageSize: 2}).All()
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
	if got := first.GetCaller(); got.GetNetwork().GetAddress() != "127.0.0.1:40000" || got.GetPrincipal() != "alice@example.com" {
		return failf("caller came back as %v", got)
	}
	if got := first.GetLatency().AsDuration(); got != 12*time.Millisecond {
		return failf("latency came back as %s", got)
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

// paging: more entries than one page come back whole, in order, over several pages; a
// limit stops early; descending order reverses. Returns the last sequence recorded.
func (e *example) paging(ctx context.Context) (uint64, error) {
	var entries []*auditv1.AuditEntry
	for i := 0; i < pagedEntries; i++ {
		entries = append(entries, e.newEntry("/kms.v1.KeyService/ListKeys", "KEY_READ", "KEY_MANAGEMENT", fmt.Sprintf("keys/k%02d", i)).
			Label("step", "paging").Build())
	}
	recordCtx, cancel := context.WithTimeout(ctx, callTimeout)
	batch, err := e.client.RecordBatch(recordCtx, "", entries)
	cancel()
	if err != nil {
		return 0, err
	}
	filter := &auditv1.Filter{Source: e.source, Labels: map[string]string{"step": "paging"}}
	all := e.client.Query(ctx, filter, audit.QueryOptions{PageSize: pageSize})
	got, err := all.All()
	if err != nil {
		return 0, err
	}
	wantPages := (pagedEntries + pageSize - 1) / pageSize
	if !reflect.DeepEqual(ids(got), batch.GetIds()) || all.Pages() != wantPages {
		return 0, failf("Query over %d entries, %d per page, returned %d entries in %d pages, want all of them in %d pages",
			pagedEntries, pageSize, len(got), all.Pages(), wantPages)
	}
	limited, err := e.client.Query(ctx, filter, audit.QueryOptions{PageSize: pageSize, Limit: 7}).All()
	if err != nil {
		return 0, err
	}
	if !reflect.DeepEqual(ids(limited), batch.GetIds()[:7]) {
		return 0, failf("Query with limit 7 returned %d entries, want the first 7", len(limited))
	}
	newest, err := e.client.Query(ctx, filter, audit.QueryOptions{Order: auditv1.Order_ORDER_DESCENDING, PageSize: pageSize, Limit: 3}).All()
	if err != nil {
		return 0, err
	}
	wantNewest := []string{batch.GetIds()[24], batch.GetIds()[23], batch.GetIds()[22]}
	if !reflect.DeepEqual(ids(newest), wantNewest) {
		return 0, failf("Query descending with limit 3 returned %v, want %v", ids(newest), wantNewest)
	}
	ok("paging", fmt.Sprintf("%d entries in %d pages of %d, limit 7, newest 3 descending", len(got), all.Pages(), pageSize))
	return batch.GetSequences()[pagedEntries-1], nil
}

func (e *example) subscribeLive(ctx context.Context, afterSequence uint64) (uint64, error) {
	// Resume right after the last sequence we saw, so nothing can slip in between opening the
	// stream and recording: the server replays what is stored after it, then goes live.
	ctx, cancel := context.WithTimeout(ctx, subscribeTimeout)
	defer cancel()
	sub := e.client.Subscribe(ctx, &auditv1.Filter{Source: e.source}, audit.AfterSequence(afterSequence), audit.SubscribeOptions{})
	// Subscribe returns once the server has accepted the stream, so "now" cannot miss it either.
	fromNow := e.client.Subscribe(ctx, &auditv1.Filter{Source: e.source}, audit.Now(), audit.SubscribeOptions{})
	defer fromNow.Close()
	recordCtx, recordCancel := context.WithTimeout(ctx, callTimeout)
	live, err := e.client.Record(recordCtx,
		e.newEntry("/billing.v1.InvoiceService/CreateInvoice", "INVOICE_PAID", "BILLING", "invoices/INV-1001").Build())
	recordCancel()
	if err != nil {
		return 0, err
	}
	if !sub.Next() {
		if errors.Is(sub.Err(), context.DeadlineExceeded) {
			return 0, failf("Subscribe delivered no entry within %s", subscribeTimeout)
		}
		return 0, fmt.Errorf("Subscribe: %w", sub.Err())
	}
	entry := sub.Entry()
	if entry.GetId() != live.GetId() || entry.GetSequence() != live.GetSequence() {
		return 0, failf("Subscribe delivered id=%s sequence=%d first, want the new entry id=%s sequence=%d",
			entry.GetId(), entry.GetSequence(), live.GetId(), live.GetSequence())
	}
	if entry.GetEvent() != "INVOICE_PAID" {
		return 0, failf("Subscribe delivered event %q", entry.GetEvent())
	}
	if !fromNow.Next() || fromNow.Entry().GetId() != live.GetId() {
		return 0, failf("a subscription from now did not deliver the entry recorded after it opened first (%v)", fromNow.Err())
	}
	// Cancelling the context ends the subscription, without an error.
	cancel()
	if sub.Next() || sub.Err() != nil {
		return 0, failf("after cancel, Subscribe went on (err %v)", sub.Err())
	}
	ok("subscribe", fmt.Sprintf("received id=%s sequence=%d recorded after the stream opened (%d heartbeats before it), also from now; cancel ends it",
		entry.GetId(), entry.GetSequence(), sub.Heartbeats()))
	return entry.GetSequence(), nil
}

// subscribeResumed: a subscription through a proxy whose connections are cut in the middle
// resumes from the last entry it saw, with no gap and no duplicate.
func (e *example) subscribeResumed(ctx context.Context, afterSequence uint64) error {
	proxy, err := newProxy(e.address)
	if err != nil {
		return err
	}
	defer proxy.Close()
	// Retries up to 3 s, comfortably longer than the outage below plus grpc-go's reconnect.
	viaProxy, err := audit.Dial(ctx, proxy.Address(), audit.WithRetry(audit.RetryPolicy{
		MaxAttempts: 10, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 400 * time.Millisecond,
	}))
	if err != nil {
		return err
	}
	defer viaProxy.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*subscribeTimeout)
	defer cancel()
	filter := &auditv1.Filter{Source: e.source, Labels: map[string]string{"step": "resume"}}
	sub := viaProxy.Subscribe(ctx, filter, audit.AfterSequence(afterSequence), audit.SubscribeOptions{})
	defer sub.Close()

	var recorded, received []string
	record := func(n int) error {
		for i := 0; i < n; i++ {
			recordCtx, cancel := context.WithTimeout(ctx, callTimeout)
			resp, err := e.client.Record(recordCtx, e.newEntry("/kms.v1.KeyService/RotateKey", "KEY_ROTATED", "KEY_MANAGEMENT",
				fmt.Sprintf("keys/r%d", len(recorded))).Label("step", "resume").Build())
			cancel()
			if err != nil {
				return err
			}
			recorded = append(recorded, resp.GetId())
		}
		return nil
	}
	receive := func(n int) error {
		for i := 0; i < n; i++ {
			if !sub.Next() {
				return failf("the subscription ended after %d of %d entries: %v", len(received), len(recorded), sub.Err())
			}
			received = append(received, sub.Entry().GetId())
		}
		return nil
	}
	if err := record(3); err != nil {
		return err
	}
	if err := receive(3); err != nil {
		return err
	}
	cut := proxy.Cut()
	// Recorded while the subscription's connection is down.
	if err := record(3); err != nil {
		return err
	}
	if err := receive(3); err != nil {
		return err
	}
	if err := record(2); err != nil {
		return err
	}
	if err := receive(2); err != nil {
		return err
	}
	// The server goes away for a moment: a Record through the proxy retries until it is back
	// (without retries it would fail at once with UNAVAILABLE), and the subscription, also
	// through the proxy, gets the entry once it has reconnected.
	proxy.SetDown(true)
	back := time.AfterFunc(400*time.Millisecond, func() { proxy.SetDown(false) })
	defer back.Stop()
	started := time.Now()
	recordCtx, cancelRecord := context.WithTimeout(ctx, callTimeout)
	retried, err := viaProxy.Record(recordCtx, e.newEntry("/kms.v1.KeyService/RotateKey", "KEY_ROTATED", "KEY_MANAGEMENT",
		fmt.Sprintf("keys/r%d", len(recorded))).Label("step", "resume").Build())
	cancelRecord()
	if err != nil {
		return failf("Record while the server was away for 400 ms failed after %s instead of retrying: %v", time.Since(started), err)
	}
	outage := time.Since(started)
	recorded = append(recorded, retried.GetId())
	if err := receive(1); err != nil {
		return err
	}
	if !reflect.DeepEqual(received, recorded) {
		return failf("the resumed subscription delivered %v, want %v", received, recorded)
	}
	if cut == 0 || sub.Reconnects() == 0 {
		return failf("the subscription did not reconnect (%d connections cut, %d reconnects)", cut, sub.Reconnects())
	}
	resume, _ := sub.ResumeAfter()
	ok("resume", fmt.Sprintf("%d entries in order across %d cut connection(s), an outage and %d reconnect(s): no gap, no duplicate (resume point #%d); Record retried through the outage (%s)",
		len(received), cut, sub.Reconnects(), resume, outage.Round(time.Millisecond)))
	return nil
}

func (e *example) checkHealth(ctx context.Context) error {
	for _, service := range []string{"", audit.ServiceName} {
		callCtx, cancel := context.WithTimeout(ctx, callTimeout)
		serving, err := e.client.Health(callCtx, service)
		cancel()
		if err != nil {
			return err
		}
		if serving != healthpb.HealthCheckResponse_SERVING {
			return failf("health of %q is %s, want SERVING", service, serving)
		}
		name := service
		if name == "" {
			name = "(server)"
		}
		ok("health", fmt.Sprintf("%s: %s", name, serving))
	}
	return nil
}

func run(address string) error {
	ctx := context.Background()
	// Plaintext on loopback or the Unix socket; audit.WithTLS(config) for TLS and mutual TLS.
	client, err := audit.Dial(ctx, address)
	if err != nil {
		return err
	}
	defer client.Close()

	runID := newID(6)
	e := &example{address: address, client: client, source: "go-example-" + runID, runID: runID}
	fmt.Printf("connected to %s, source %s\n", address, e.source)
	single, err := e.recordOne(ctx)
	if err != nil {
		return err
	}
	batch, err := e.recordBatch(ctx, audit.NewUUIDv7())
	if err != nil {
		return err
	}
	if err := e.refused(ctx); err != nil {
		return err
	}
	if err := e.queryBack(ctx, single, batch); err != nil {
		return err
	}
	last, err := e.paging(ctx)
	if err != nil {
		return err
	}
	last, err = e.subscribeLive(ctx, last)
	if err != nil {
		return err
	}
	if err := e.subscribeResumed(ctx, last); err != nil {
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
