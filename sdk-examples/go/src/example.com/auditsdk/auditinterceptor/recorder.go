package auditinterceptor

import (
	"context"
	"errors"
	"log"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"example.com/auditsdk/audit"
	auditv1 "example.com/auditsdk/audit/v1"
)

// RecorderConfig are the settings of a Recorder. Only Source is required; zero values take
// the defaults.
type RecorderConfig struct {
	// Source is the application name (for example "billing-api"), the source of every entry
	// that does not name one.
	Source string
	// QueueCapacity is how many calls may wait for delivery (default 4096). When the queue is
	// full, new calls' entries are dropped and counted in Stats.Dropped: memory stays bounded
	// while the audit service is slow or down.
	QueueCapacity int
	// DrainSize is how many queued calls one drain sends concurrently (default 64).
	DrainSize int
	// MaxBatchEntries is the most entries sent in one RecordBatch (default 1000, the server's
	// default limit). A call with more is sent in several batches, not atomic together.
	MaxBatchEntries int
	// AttemptTimeout bounds one delivery attempt (default 5 s), so a hung audit server cannot
	// stall the queue forever.
	AttemptTimeout time.Duration
	// InitialBackoff and MaxBackoff are the pause after the first failed attempt and the
	// longest pause between attempts (default 100 ms doubling up to 5 s).
	InitialBackoff, MaxBackoff time.Duration
	// Logf reports delivery trouble (unreachable, refused entries, a full queue): once per
	// change of state, not per entry. Default log.Printf.
	Logf func(format string, args ...interface{})
}

func (c RecorderConfig) withDefaults() RecorderConfig {
	if c.QueueCapacity <= 0 {
		c.QueueCapacity = 4096
	}
	if c.DrainSize <= 0 {
		c.DrainSize = 64
	}
	if c.MaxBatchEntries <= 0 {
		c.MaxBatchEntries = 1000
	}
	if c.AttemptTimeout <= 0 {
		c.AttemptTimeout = 5 * time.Second
	}
	if c.InitialBackoff <= 0 {
		c.InitialBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Second
	}
	if c.MaxBackoff < c.InitialBackoff {
		c.MaxBackoff = c.InitialBackoff
	}
	if c.Logf == nil {
		c.Logf = log.Printf
	}
	return c
}

// Stats are the counters of a Recorder, in entries.
type Stats struct {
	// Recorded entries were acknowledged (stored durably) by the audit service.
	Recorded uint64
	// Dropped entries were lost because the queue was full or the recorder was closed.
	Dropped uint64
	// Failed entries were refused for good by the audit service (INVALID_ARGUMENT, ...); each
	// refusal is logged.
	Failed uint64
	// Queued is how many calls wait in the queue now.
	Queued int
}

// Recorder delivers audit entries to the audit service from a background goroutine: a
// bounded queue, drained in RecordBatch calls (one per audited call, so a call's entries are
// stored atomically), retried with exponential backoff until the service accepts them. Every
// entry gets a client-chosen UUIDv7 id when queued, so a retry never stores it twice.
//
// A Recorder is safe for concurrent use. Close it before exiting to deliver what is queued.
type Recorder struct {
	client *audit.Client
	config RecorderConfig
	queue  chan item

	// mu guards closed against a send racing Close; senders hold it shared.
	mu     sync.RWMutex
	closed bool
	// stop ends delivery attempts (Close past its deadline); done is closed when run returns.
	stop     context.Context
	stopNow  context.CancelFunc
	done     chan struct{}
	recorded atomic.Uint64
	dropped  atomic.Uint64
	failed   atomic.Uint64
	// unreachable is set from a failed delivery attempt until the next successful one.
	unreachable atomic.Bool
	// dropping is set while entries are dropped, so a full queue is logged once.
	dropping atomic.Bool
}

// item is one audited call's entries, or a flush marker (flushed set) or the end (stop set).
type item struct {
	requestID string
	entries   []*auditv1.AuditEntry
	// ack, when set, is told whether the entries were stored (fail-closed calls wait on it).
	ack     chan bool
	flushed chan struct{}
	stop    bool
}

// NewRecorder starts the goroutine that delivers entries through client.
func NewRecorder(client *audit.Client, config RecorderConfig) *Recorder {
	config = config.withDefaults()
	stop, stopNow := context.WithCancel(context.Background())
	r := &Recorder{
		client:  client,
		config:  config,
		queue:   make(chan item, config.QueueCapacity),
		stop:    stop,
		stopNow: stopNow,
		done:    make(chan struct{}),
	}
	go r.run()
	return r
}

// Source is the application name entries are recorded under.
func (r *Recorder) Source() string { return r.config.Source }

// Record queues the entries of one call without waiting. requestID is set on every entry (a
// UUIDv7 when empty); empty source, id and time are filled in, on the entries given, which
// belong to the recorder from then on. It returns false when the entries were dropped because
// the queue is full or the recorder is closed.
func (r *Recorder) Record(requestID string, entries ...*auditv1.AuditEntry) bool {
	return r.enqueue(requestID, entries, nil)
}

func (r *Recorder) enqueue(requestID string, entries []*auditv1.AuditEntry, ack chan bool) bool {
	if len(entries) == 0 {
		return true
	}
	if requestID == "" {
		requestID = audit.NewUUIDv7()
	}
	now := timestamppb.Now()
	for _, entry := range entries {
		entry.RequestId = requestID
		if entry.Id == "" {
			entry.Id = audit.NewUUIDv7()
		}
		if entry.Source == "" {
			entry.Source = r.config.Source
		}
		if entry.Time == nil {
			entry.Time = now
		}
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if !r.closed {
		select {
		case r.queue <- item{requestID: requestID, entries: entries, ack: ack}:
			if r.dropping.Load() && r.dropping.Swap(false) {
				r.config.Logf("audit: queue accepts entries again (%d dropped so far)", r.dropped.Load())
			}
			return true
		default:
		}
	}
	total := r.dropped.Add(uint64(len(entries)))
	if !r.dropping.Swap(true) {
		r.config.Logf("audit: queue full or closed: dropping entries until it drains (%d dropped so far)", total)
	}
	return false
}

// Available reports whether a new entry can be expected to reach the audit service soon: the
// last delivery attempt succeeded (or none failed yet) and the queue has room. A fail-closed
// interceptor refuses calls without running them while it is false.
func (r *Recorder) Available() bool {
	return !r.unreachable.Load() && len(r.queue) < cap(r.queue)
}

// Stats returns the counters so far.
func (r *Recorder) Stats() Stats {
	return Stats{
		Recorded: r.recorded.Load(),
		Dropped:  r.dropped.Load(),
		Failed:   r.failed.Load(),
		Queued:   len(r.queue),
	}
}

// ErrClosed is returned by Flush on a closed recorder.
var ErrClosed = errors.New("audit recorder closed")

// Flush waits until everything queued before it has been delivered (or refused for good), or
// ctx ends. While the audit service is unreachable this waits for it: bound ctx.
func (r *Recorder) Flush(ctx context.Context) error {
	flushed := make(chan struct{})
	r.mu.RLock()
	if r.closed {
		r.mu.RUnlock()
		return ErrClosed
	}
	select {
	case r.queue <- item{flushed: flushed}:
		r.mu.RUnlock()
	case <-ctx.Done():
		r.mu.RUnlock()
		return ctx.Err()
	}
	select {
	case <-flushed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops accepting entries, delivers those queued until ctx ends, then abandons the rest
// (counted as dropped) and stops the goroutine. It returns ctx's error when entries were
// abandoned.
func (r *Recorder) Close(ctx context.Context) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		<-r.done
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	// The queue may be full: the goroutine is draining it, so this send waits at most for
	// that, unless ctx ends first.
	select {
	case r.queue <- item{stop: true}:
	case <-ctx.Done():
		r.stopNow()
		<-r.done
		r.abandon()
		return ctx.Err()
	}
	select {
	case <-r.done:
		r.stopNow()
		return nil
	case <-ctx.Done():
		r.stopNow()
		<-r.done
		r.abandon()
		return ctx.Err()
	}
}

// abandon counts what is still queued after the goroutine stopped as dropped.
func (r *Recorder) abandon() {
	for {
		select {
		case it := <-r.queue:
			r.dropped.Add(uint64(len(it.entries)))
			answer(it, false)
		default:
			return
		}
	}
}

// run drains the queue until the stop marker or until stopped.
func (r *Recorder) run() {
	defer close(r.done)
	for {
		var first item
		select {
		case first = <-r.queue:
		case <-r.stop.Done():
			return
		}
		batch := []item{}
		var marker *item
		for next, ok := first, true; ok; {
			if next.flushed != nil || next.stop {
				// Everything queued before the marker is in batch: answer once it is sent.
				marker = &next
				break
			}
			batch = append(batch, next)
			if len(batch) >= r.config.DrainSize {
				break
			}
			select {
			case next = <-r.queue:
			default:
				ok = false
			}
		}
		r.deliver(batch)
		if marker != nil {
			if marker.stop {
				return
			}
			close(marker.flushed)
		}
	}
}

// deliver sends batch concurrently, retrying what fails with a transient error, with backoff,
// until nothing is left or the recorder is stopped.
func (r *Recorder) deliver(batch []item) {
	backoff := r.config.InitialBackoff
	for len(batch) > 0 {
		errs := make([]error, len(batch))
		var wg sync.WaitGroup
		for i := range batch {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				errs[i] = r.send(batch[i])
			}(i)
		}
		wg.Wait()
		var retry []item
		var lastErr error
		for i, it := range batch {
			count := uint64(len(it.entries))
			switch err := errs[i]; {
			case err == nil:
				r.recorded.Add(count)
				answer(it, true)
			case retryable(status.Code(err)):
				lastErr = err
				retry = append(retry, it)
			default:
				r.failed.Add(count)
				r.config.Logf("audit: the audit service refused %d entries of request %s; they are not recorded: %v",
					count, it.requestID, err)
				answer(it, false)
			}
		}
		if lastErr == nil {
			if r.unreachable.Swap(false) {
				r.config.Logf("audit: audit service reachable again; queued entries delivered")
			}
			return
		}
		if !r.unreachable.Swap(true) {
			r.config.Logf("audit: audit service unreachable, retrying with backoff: %v", lastErr)
		}
		timer := time.NewTimer(backoff)
		select {
		case <-r.stop.Done():
			timer.Stop()
			for _, it := range retry {
				r.dropped.Add(uint64(len(it.entries)))
			}
			return
		case <-timer.C:
		}
		if backoff *= 2; backoff > r.config.MaxBackoff {
			backoff = r.config.MaxBackoff
		}
		batch = retry
	}
}

// send records one call's entries, in chunks of at most MaxBatchEntries.
func (r *Recorder) send(it item) error {
	for start := 0; start < len(it.entries); start += r.config.MaxBatchEntries {
		end := start + r.config.MaxBatchEntries
		if end > len(it.entries) {
			end = len(it.entries)
		}
		ctx, cancel := context.WithTimeout(r.stop, r.config.AttemptTimeout)
		_, err := r.client.Raw().RecordBatch(ctx, &auditv1.RecordBatchRequest{
			RequestId: it.requestID,
			Entries:   it.entries[start:end],
		})
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// retryable reports whether a delivery that failed with code may succeed later.
func retryable(code codes.Code) bool {
	switch code {
	case codes.Unavailable, codes.Unknown, codes.Internal, codes.Canceled, codes.Aborted,
		codes.DeadlineExceeded, codes.ResourceExhausted:
		return true
	}
	return false
}

func answer(it item, stored bool) {
	if it.ack != nil {
		it.ack <- stored // buffered, one answer per item
	}
}
