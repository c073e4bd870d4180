package audit

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "example.com/auditsdk/audit/v1"
)

// Start says where a subscription begins: Now, AfterSequence or ReceivedSince.
type Start struct {
	position *auditv1.StartPosition
	sequence uint64
	hasSeq   bool
}

// Now starts with the next entry committed after the subscription opens.
func Now() Start { return Start{} }

// AfterSequence starts with the first entry whose sequence is greater than sequence;
// AfterSequence(0) replays the whole log.
func AfterSequence(sequence uint64) Start {
	return Start{
		position: &auditv1.StartPosition{Position: &auditv1.StartPosition_AfterSequence{AfterSequence: sequence}},
		sequence: sequence,
		hasSeq:   true,
	}
}

// ReceivedSince starts with the first entry the server received at or after t.
func ReceivedSince(t time.Time) Start {
	return Start{position: &auditv1.StartPosition{
		Position: &auditv1.StartPosition_ReceivedTime{ReceivedTime: timestamppb.New(t)},
	}}
}

// SubscribeOptions say when a Subscription reconnects after its stream drops and when it
// gives up. The zero value is the default: waits of 100 ms doubling up to 5 s, giving up after
// 10 consecutive failures (about half a minute of outage).
type SubscribeOptions struct {
	// InitialBackoff and MaxBackoff bound the wait between attempts.
	InitialBackoff, MaxBackoff time.Duration
	// MaxConsecutiveFailures is how many failed attempts in a row end the subscription
	// (0: the default, 10; negative: never give up). An attempt that received anything, an
	// entry or a heartbeat, resets the count and the wait.
	MaxConsecutiveFailures int
}

// Subscribe returns a live iterator over the entries matching filter (nil: every entry) from
// start, in sequence order. It reconnects after a dropped stream (a transport error,
// UNAVAILABLE, RESOURCE_EXHAUSTED, the server ending the stream as it does on shutdown...) and
// resumes after the greater of the last entry's and the last heartbeat's sequence, so the
// caller sees no gap and no duplicate. Other errors (INVALID_ARGUMENT, PERMISSION_DENIED, ...)
// end it at once.
//
// Subscribe opens the stream before it returns and waits until the server has accepted it,
// so with Now() every entry committed after Subscribe returns is delivered. When the stream
// cannot be opened, Next retries as after a drop. Cancel ctx (or call Close) to stop it:
//
//	ctx, cancel := context.WithCancel(ctx)
//	defer cancel()
//	sub := client.Subscribe(ctx, &auditv1.Filter{Source: "billing-api"}, audit.Now(), audit.SubscribeOptions{})
//	for sub.Next() {
//		handle(sub.Entry())
//	}
//	if err := sub.Err(); err != nil { ... } // nil after cancel
func (c *Client) Subscribe(ctx context.Context, filter *auditv1.Filter, start Start, opts SubscribeOptions) *Subscription {
	if opts.InitialBackoff <= 0 {
		opts.InitialBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	if opts.MaxBackoff < opts.InitialBackoff {
		opts.MaxBackoff = opts.InitialBackoff
	}
	if opts.MaxConsecutiveFailures == 0 {
		opts.MaxConsecutiveFailures = 10
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &Subscription{
		client:  c,
		ctx:     ctx,
		cancel:  cancel,
		filter:  filter,
		start:   start,
		opts:    opts,
		last:    start.sequence,
		hasLast: start.hasSeq,
		backoff: opts.InitialBackoff,
	}
	if s.open() {
		// The server sends the headers once it has registered the subscription.
		if _, err := s.stream.Header(); err != nil {
			s.pending = err
		}
	}
	return s
}

// Subscription is a live stream of entries that survives dropped connections; see
// Client.Subscribe. Call Next until it returns false, then Err. Its methods belong to one
// goroutine; cancel its context from any goroutine to stop it.
type Subscription struct {
	client *Client
	ctx    context.Context
	cancel context.CancelFunc
	filter *auditv1.Filter
	start  Start
	opts   SubscribeOptions

	stream       auditv1.AuditService_SubscribeClient
	streamCancel context.CancelFunc
	// pending is a failure of the stream Subscribe opened, for Next to handle.
	pending error
	// received is set when the current stream delivered anything.
	received bool
	failures int
	backoff  time.Duration

	last    uint64
	hasLast bool
	entry   *auditv1.AuditEntry
	err     error
	ended   bool

	heartbeats, reconnects int
}

// Next waits for the next entry. It returns false once the subscription ends: its context was
// cancelled (Err is nil, or the context's deadline error), or it failed for good (see Err).
func (s *Subscription) Next() bool {
	s.entry = nil
	for !s.ended {
		if err := s.pending; err != nil {
			s.pending = nil
			s.dropped(err)
			continue
		}
		if s.stream == nil && !s.open() {
			continue
		}
		message, err := s.stream.Recv()
		if err != nil {
			s.dropped(err)
			continue
		}
		s.received = true
		switch m := message.GetMessage().(type) {
		case *auditv1.SubscribeResponse_Entry:
			sequence := m.Entry.GetSequence()
			// Never deliver a sequence twice, even if a server replays from before the
			// resume point.
			if s.hasLast && sequence <= s.last {
				continue
			}
			s.last, s.hasLast = sequence, true
			s.entry = m.Entry
			return true
		case *auditv1.SubscribeResponse_Heartbeat:
			s.heartbeats++
			// Every matching entry up to the heartbeat's sequence has been sent.
			if sequence := m.Heartbeat.GetSequence(); !s.hasLast || sequence > s.last {
				s.last, s.hasLast = sequence, true
			}
		}
	}
	return false
}

// open starts a stream from the resume point; false when it failed (left in pending).
func (s *Subscription) open() bool {
	start := s.start.position
	if s.hasLast {
		start = AfterSequence(s.last).position
	}
	ctx, cancel := context.WithCancel(s.ctx)
	stream, err := s.client.raw.Subscribe(ctx, &auditv1.SubscribeRequest{Filter: s.filter, Start: start})
	if err != nil {
		cancel()
		s.pending = err
		return false
	}
	s.stream, s.streamCancel, s.received = stream, cancel, false
	return true
}

// dropped handles the end of the current stream with err (io.EOF: the server ended it):
// gives up, or waits and lets Next reopen.
func (s *Subscription) dropped(err error) {
	if s.streamCancel != nil {
		s.streamCancel()
	}
	s.stream, s.streamCancel = nil, nil
	if ctxErr := s.ctx.Err(); ctxErr != nil {
		s.finish(ctxErr)
		return
	}
	if err != io.EOF && !resumable(status.Code(err)) {
		s.finish(wrapError("Subscribe", err))
		return
	}
	if s.received {
		s.failures, s.backoff = 0, s.opts.InitialBackoff
	}
	s.received = false
	s.failures++
	if max := s.opts.MaxConsecutiveFailures; max >= 0 && s.failures > max {
		if err == io.EOF {
			s.finish(errors.New("audit Subscribe: the server ended the subscription and it could not be resumed"))
		} else {
			s.finish(wrapError("Subscribe", err))
		}
		return
	}
	timer := time.NewTimer(s.backoff)
	select {
	case <-s.ctx.Done():
		timer.Stop()
		s.finish(s.ctx.Err())
		return
	case <-timer.C:
	}
	if s.backoff *= 2; s.backoff > s.opts.MaxBackoff {
		s.backoff = s.opts.MaxBackoff
	}
	s.reconnects++
}

// finish ends the subscription with err; a cancelled context is a requested stop, not an
// error.
func (s *Subscription) finish(err error) {
	s.ended = true
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	s.err = err
	s.cancel()
}

// resumable reports whether a subscription ending with code should be reopened.
func resumable(code codes.Code) bool {
	switch code {
	case codes.Unavailable, codes.Unknown, codes.Internal, codes.Canceled, codes.Aborted,
		codes.DeadlineExceeded, codes.ResourceExhausted:
		return true
	}
	return false
}

// Entry is the entry Next returned true for.
func (s *Subscription) Entry() *auditv1.AuditEntry { return s.entry }

// Err is why the subscription ended: nil when its context was cancelled or Close was called,
// the context's error for a deadline, else the last failure.
func (s *Subscription) Err() error { return s.err }

// Close stops the subscription and releases its stream. Next returns false afterwards.
func (s *Subscription) Close() {
	s.cancel()
	if s.streamCancel != nil {
		s.streamCancel()
	}
	s.stream, s.streamCancel = nil, nil
	s.ended = true
}

// ResumeAfter is the sequence after which a new subscription would resume: every matching
// entry up to it has been delivered (or skipped by the filter). ok is false before the first
// entry or heartbeat of a subscription that did not start at a sequence.
func (s *Subscription) ResumeAfter() (sequence uint64, ok bool) { return s.last, s.hasLast }

// Reconnects is how many times the subscription reopened its stream after a drop.
func (s *Subscription) Reconnects() int { return s.reconnects }

// Heartbeats is how many heartbeats the server has sent so far.
func (s *Subscription) Heartbeats() int { return s.heartbeats }
