//! [`Subscription`]: a live stream of entries that survives dropped connections.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use audit_proto::pb;
use futures::Stream;
use pb::audit_service_client::AuditServiceClient;
use pb::start_position::Position;
use pb::subscribe_response::Message;
use tonic::transport::Channel;

use crate::Error;

/// Where a subscription begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// With the next entry committed after the subscription opens.
    #[default]
    Now,
    /// With the first entry whose sequence is greater than this one; `AfterSequence(0)` replays
    /// the whole log.
    AfterSequence(u64),
    /// With the first entry the server received at or after this instant.
    ReceivedTime(prost_types::Timestamp),
}

impl Start {
    fn to_proto(self) -> Option<pb::StartPosition> {
        let position = match self {
            Start::Now => return None,
            Start::AfterSequence(sequence) => Position::AfterSequence(sequence),
            Start::ReceivedTime(time) => Position::ReceivedTime(time),
        };
        Some(pb::StartPosition {
            position: Some(position),
        })
    }
}

/// When a [`Subscription`] reconnects after its stream drops, and when it gives up.
///
/// A drop is a transport error, a [retryable](Error::is_retryable) status (`UNAVAILABLE`,
/// `RESOURCE_EXHAUSTED` when the server has too many subscribers, …), or the server ending the
/// stream (as it does when shutting down). Other errors (`INVALID_ARGUMENT`,
/// `PERMISSION_DENIED`, `UNAUTHENTICATED`, …) end the subscription at once.
///
/// Waits between attempts double from `initial_backoff` up to `max_backoff`. An attempt that
/// received anything (an entry or a heartbeat) resets the count of consecutive failures and the
/// wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    initial_backoff: Duration,
    max_backoff: Duration,
    max_consecutive_failures: Option<u32>,
}

impl Default for RetryPolicy {
    /// 100 ms doubling up to 5 s, giving up after 10 consecutive failures (about half a
    /// minute of outage).
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_consecutive_failures: Some(10),
        }
    }
}

impl RetryPolicy {
    /// Retries forever (for `audit tail` and forwarders), with the default waits.
    pub fn unlimited() -> Self {
        RetryPolicy {
            max_consecutive_failures: None,
            ..Self::default()
        }
    }

    /// Never reconnects: the first drop ends the subscription with an error.
    pub fn never() -> Self {
        RetryPolicy {
            max_consecutive_failures: Some(0),
            ..Self::default()
        }
    }

    /// Gives up after `failures` consecutive failed attempts (`None`: never gives up).
    pub fn max_consecutive_failures(mut self, failures: Option<u32>) -> Self {
        self.max_consecutive_failures = failures;
        self
    }

    /// Sets the first wait and the longest wait between attempts.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }
}

/// A stream of the entries matching a filter, in sequence order, that reconnects after drops
/// and resumes after the last sequence it saw, so the consumer sees no gap and no duplicate.
///
/// Yields `Ok(entry)` for each entry, and at most one `Err`, after which it ends: a
/// non-retryable status, or the last failure once the [`RetryPolicy`] gives up.
///
/// The resume point is the greater of the last entry's sequence and the last heartbeat's (a
/// heartbeat says every matching entry up to its sequence has been sent). A subscription that
/// started at [`Start::Now`] or [`Start::ReceivedTime`] and drops before its first entry or
/// heartbeat has no sequence yet, so it resumes from its original start.
pub struct Subscription {
    stream: Pin<Box<dyn Stream<Item = Result<pb::AuditEntry, Error>> + Send>>,
    progress: Arc<Progress>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("resume_after", &self.resume_after())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(
        client: AuditServiceClient<Channel>,
        filter: pb::Filter,
        start: Start,
        policy: RetryPolicy,
    ) -> Self {
        let progress = Arc::new(Progress::default());
        if let Start::AfterSequence(sequence) = start {
            progress.set(sequence);
        }
        let stream = Box::pin(run(client, filter, start, policy, progress.clone()));
        Subscription { stream, progress }
    }

    /// The sequence after which a new subscription would resume: every matching entry up to it
    /// has been delivered (or skipped by the filter). `None` before the first entry or heartbeat
    /// of a subscription that did not start at a sequence.
    pub fn resume_after(&self) -> Option<u64> {
        self.progress.get()
    }
}

impl Stream for Subscription {
    type Item = Result<pb::AuditEntry, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

/// The resume point, shared between the stream and [`Subscription::resume_after`].
#[derive(Debug)]
struct Progress(AtomicU64);

impl Progress {
    /// Stands for "no sequence yet"; no log reaches it.
    const NONE: u64 = u64::MAX;

    fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&s| s != Self::NONE)
    }

    fn set(&self, sequence: u64) {
        self.0.store(sequence, Ordering::Relaxed);
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress(AtomicU64::new(Self::NONE))
    }
}

fn run(
    client: AuditServiceClient<Channel>,
    filter: pb::Filter,
    start: Start,
    policy: RetryPolicy,
    progress: Arc<Progress>,
) -> impl Stream<Item = Result<pb::AuditEntry, Error>> + Send {
    async_stream::stream! {
        let mut failures: u32 = 0;
        let mut backoff = policy.initial_backoff;
        loop {
            let start = match progress.get() {
                Some(sequence) => Start::AfterSequence(sequence),
                None => start,
            };
            let request = pb::SubscribeRequest {
                filter: Some(filter.clone()),
                start: start.to_proto(),
            };
            let mut received = false;
            // `None` after the server ended the stream cleanly.
            let mut failure: Option<Error> = None;
            match client.clone().subscribe(request).await {
                Err(status) => failure = Some(status.into()),
                Ok(response) => {
                    let mut messages = response.into_inner();
                    loop {
                        match messages.message().await {
                            Ok(Some(message)) => {
                                received = true;
                                let last = progress.get();
                                match message.message {
                                    Some(Message::Entry(entry)) => {
                                        // Never yield a sequence twice, even if a server
                                        // replays from before the resume point.
                                        if last.is_some_and(|last| entry.sequence <= last) {
                                            continue;
                                        }
                                        progress.set(entry.sequence);
                                        yield Ok(entry);
                                    }
                                    Some(Message::Heartbeat(heartbeat))
                                        if last.is_none_or(|last| heartbeat.sequence > last) =>
                                    {
                                        progress.set(heartbeat.sequence);
                                    }
                                    Some(Message::Heartbeat(_)) => {}
                                    None => {}
                                }
                            }
                            Ok(None) => break,
                            Err(status) => {
                                failure = Some(status.into());
                                break;
                            }
                        }
                    }
                }
            }

            if let Some(error) = &failure
                && !error.is_retryable()
            {
                yield Err(failure.expect("checked just above"));
                return;
            }
            if received {
                failures = 0;
                backoff = policy.initial_backoff;
            }
            failures += 1;
            if policy.max_consecutive_failures.is_some_and(|max| failures > max) {
                yield Err(failure.unwrap_or(Error::SubscriptionEnded { attempts: failures }));
                return;
            }
            let resume = match progress.get() {
                Some(sequence) => format!("after #{sequence}"),
                None => "from the start position".to_string(),
            };
            match &failure {
                Some(error) => tracing::warn!(
                    "subscription dropped ({}); resuming {resume} in {backoff:?}",
                    crate::render::escape(&error.to_string())
                ),
                None => tracing::info!("server ended the subscription; resuming {resume} in {backoff:?}"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(policy.max_backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions() {
        assert_eq!(Start::Now.to_proto(), None);
        assert_eq!(
            Start::AfterSequence(0).to_proto().unwrap().position,
            Some(Position::AfterSequence(0))
        );
    }

    #[test]
    fn progress_tracks_sequences() {
        let progress = Progress::default();
        assert_eq!(progress.get(), None);
        progress.set(0);
        assert_eq!(progress.get(), Some(0));
        progress.set(42);
        assert_eq!(progress.get(), Some(42));
    }

    #[test]
    fn policies() {
        assert_eq!(RetryPolicy::unlimited().max_consecutive_failures, None);
        assert_eq!(RetryPolicy::never().max_consecutive_failures, Some(0));
        let policy = RetryPolicy::default().backoff(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(policy.max_backoff, Duration::from_secs(2));
    }
}
