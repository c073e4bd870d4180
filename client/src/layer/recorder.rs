//! [`Recorder`]: delivers audit entries to the audit service in the background, so that the
//! audited calls never wait for it (unless the layer is fail-closed).
//!
//! The unit of the queue is one audited call: its own entry plus the entries its handler added,
//! all sharing the call's `request_id`. Each call is delivered as one `RecordBatch`, so a call's
//! entries are stored atomically (the server refuses a batch whose entries carry different
//! request ids, so calls cannot share a batch). A drain takes up to
//! [`RecorderConfig::drain_size`] queued calls and sends their batches concurrently; the
//! server's group commit then shares one fsync among them. Calls delivered in one drain may
//! therefore be stored in any order among themselves; each entry's `time` (when the call began)
//! keeps the order in which they happened.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use audit_proto::pb;
use tokio::sync::{mpsc, oneshot};

use crate::{Client, Error};

/// Settings of a [`Recorder`].
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    source: String,
    queue_capacity: usize,
    drain_size: usize,
    max_batch_entries: usize,
    attempt_timeout: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl RecorderConfig {
    /// Settings for the application `source` (e.g. `billing-api`), which becomes the `source`
    /// of every entry that does not name one.
    pub fn new(source: impl Into<String>) -> Self {
        RecorderConfig {
            source: source.into(),
            queue_capacity: 4096,
            drain_size: 64,
            max_batch_entries: 1000,
            attempt_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// How many calls may wait for delivery (default 4096). When the queue is full, new calls'
    /// entries are dropped and counted in [`RecorderStats::dropped`]: memory stays bounded
    /// while the audit service is slow or down.
    pub fn queue_capacity(mut self, calls: usize) -> Self {
        self.queue_capacity = calls.max(1);
        self
    }

    /// How many queued calls one drain sends concurrently (default 64).
    pub fn drain_size(mut self, calls: usize) -> Self {
        self.drain_size = calls.max(1);
        self
    }

    /// The most entries sent in one `RecordBatch` (default 1000, the server's default limit). A
    /// call with more entries is sent in several batches, which are then not atomic together.
    pub fn max_batch_entries(mut self, entries: usize) -> Self {
        self.max_batch_entries = entries.max(1);
        self
    }

    /// How long one delivery attempt may take before it counts as failed and is retried
    /// (default 5 s), so an audit server that hangs cannot stall the queue forever.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The pause after the first failed attempt and the longest pause between attempts
    /// (default 100 ms doubling up to 5 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// The application name given to [`RecorderConfig::new`].
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Counters of a [`Recorder`], in entries: a snapshot of its atomics, cheap enough to take
/// on every scrape of the host service's metrics ([`Recorder::stats`]).
///
/// Exporting them through the host's own `prometheus-client` registry: a collector reads the
/// snapshot when scraped, so the values are never stale and nothing needs updating.
///
/// ```
/// use audit_client::{Client, Recorder, RecorderConfig};
/// use prometheus_client::collector::Collector;
/// use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
/// use prometheus_client::metrics::counter::ConstCounter;
/// use prometheus_client::metrics::gauge::ConstGauge;
/// use prometheus_client::registry::Registry;
///
/// #[derive(Debug)]
/// struct AuditRecorderMetrics(Recorder);
///
/// impl Collector for AuditRecorderMetrics {
///     fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
///         let stats = self.0.stats();
///         for (name, help, value) in [
///             ("audit_recorder_recorded", "Entries the audit service stored", stats.recorded),
///             ("audit_recorder_dropped", "Entries dropped on a full queue", stats.dropped),
///             ("audit_recorder_failed", "Entries the audit service refused", stats.failed),
///         ] {
///             let counter = ConstCounter::new(value);
///             counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
///         }
///         let queued = ConstGauge::new(stats.queued as i64);
///         let help = "Calls waiting for delivery";
///         queued.encode(encoder.encode_descriptor("audit_recorder_queue_calls", help, None, queued.metric_type())?)?;
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let recorder = Recorder::spawn(
///     Client::connect_lazy("http://127.0.0.1:50051")?,
///     RecorderConfig::new("keystore"),
/// );
/// let mut registry = Registry::default(); // the host service's registry
/// registry.register_collector(Box::new(AuditRecorderMetrics(recorder.clone())));
///
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry)?;
/// assert!(text.contains("audit_recorder_recorded_total 0"), "{text}");
/// assert!(text.contains("audit_recorder_queue_calls 0"), "{text}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Entries the audit service acknowledged (stored durably).
    pub recorded: u64,
    /// Entries dropped because the queue was full (or the recorder had stopped).
    pub dropped: u64,
    /// Entries the audit service refused for good (e.g. `INVALID_ARGUMENT`); each is logged.
    pub failed: u64,
    /// Calls waiting in the queue now.
    pub queued: usize,
}

/// Sends audit entries to the audit service from a background task: a bounded queue, drained
/// in `RecordBatch`es, retried with exponential backoff until the service accepts them. Each
/// entry gets a client-chosen UUIDv7 id, so a retry never stores an entry twice.
///
/// Cheap to clone; clones share one queue and one task. The task ends once every clone is
/// dropped and the queue is delivered.
///
/// ```no_run
/// # async fn example() -> Result<(), audit_client::Error> {
/// use audit_client::{Client, Recorder, RecorderConfig};
///
/// let client = Client::connect_lazy("http://127.0.0.1:50051")?;
/// let recorder = Recorder::spawn(client, RecorderConfig::new("keystore"));
/// // ... serve with `AuditLayer::new(recorder.clone())` ...
/// recorder.flush().await; // deliver what is queued before exiting
/// println!("{:?}", recorder.stats());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Item>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    source: String,
    recorded: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    /// False from a failed delivery attempt until the next successful one.
    reachable: AtomicBool,
    /// True while entries are being dropped, so a full queue is logged once, not per entry.
    dropping: AtomicBool,
}

/// One audited call's entries, sharing `request_id`.
#[derive(Debug)]
struct Batch {
    request_id: String,
    entries: Vec<pb::AuditEntry>,
    /// Told whether the entries were stored (fail-closed calls wait for it).
    ack: Option<oneshot::Sender<bool>>,
}

#[derive(Debug)]
enum Item {
    Batch(Batch),
    Flush(oneshot::Sender<()>),
}

impl Recorder {
    /// Starts the background task (on the current tokio runtime) that delivers entries through
    /// `client`.
    pub fn spawn(client: Client, config: RecorderConfig) -> Self {
        let (queue, receiver) = mpsc::channel(config.queue_capacity);
        let shared = Arc::new(Shared {
            source: config.source.clone(),
            recorded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            reachable: AtomicBool::new(true),
            dropping: AtomicBool::new(false),
        });
        tokio::spawn(run(client, receiver, shared.clone(), config));
        Recorder { queue, shared }
    }

    /// Queues the entries of one call, without waiting. `request_id` is set on every entry
    /// (a UUIDv7 when empty); empty `source`, `id` and `time` are filled in. Returns false when
    /// the entries were dropped because the queue is full.
    pub fn record<E: Into<pb::AuditEntry>>(
        &self,
        request_id: impl Into<String>,
        entries: impl IntoIterator<Item = E>,
    ) -> bool {
        let entries = entries.into_iter().map(Into::into).collect();
        self.enqueue(request_id.into(), entries, None)
    }

    /// Waits until everything queued before this call has been delivered (or refused for good).
    /// While the audit service is unreachable this waits for it; bound it with a timeout.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Item::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// The counters so far: loads of the recorder's atomics (no lock, no allocation), so a
    /// metrics collector may call it on every scrape.
    pub fn stats(&self) -> RecorderStats {
        RecorderStats {
            recorded: self.shared.recorded.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            queued: self.queue.max_capacity() - self.queue.capacity(),
        }
    }

    /// Whether a new entry can be expected to reach the audit service soon: the last delivery
    /// attempt succeeded (or none failed yet) and the queue has room. A fail-closed layer
    /// refuses calls without running them while this is false.
    pub fn is_available(&self) -> bool {
        self.shared.reachable.load(Ordering::Relaxed) && self.queue.capacity() > 0
    }

    /// The application name entries are recorded under.
    pub fn source(&self) -> &str {
        &self.shared.source
    }

    /// Queues a call's entries; `ack` is told whether they were stored. Returns false (and
    /// drops `ack`) when the queue is full.
    pub(crate) fn enqueue(
        &self,
        request_id: String,
        mut entries: Vec<pb::AuditEntry>,
        ack: Option<oneshot::Sender<bool>>,
    ) -> bool {
        if entries.is_empty() {
            return true;
        }
        let request_id = if request_id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            request_id
        };
        let now = SystemTime::now();
        for entry in &mut entries {
            entry.request_id.clone_from(&request_id);
            if entry.id.is_empty() {
                entry.id = uuid::Uuid::now_v7().to_string();
            }
            if entry.source.is_empty() {
                entry.source.clone_from(&self.shared.source);
            }
            if entry.time.is_none() {
                entry.time = Some(now.into());
            }
        }
        let count = entries.len() as u64;
        let batch = Batch {
            request_id,
            entries,
            ack,
        };
        match self.queue.try_send(Item::Batch(batch)) {
            Ok(()) => {
                if self.shared.dropping.load(Ordering::Relaxed)
                    && self.shared.dropping.swap(false, Ordering::Relaxed)
                {
                    tracing::warn!(
                        dropped_total = self.shared.dropped.load(Ordering::Relaxed),
                        "audit queue accepts entries again"
                    );
                }
                true
            }
            Err(_) => {
                let total = self.shared.dropped.fetch_add(count, Ordering::Relaxed) + count;
                if !self.shared.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        dropped_total = total,
                        "audit queue is full: dropping entries until it drains"
                    );
                }
                false
            }
        }
    }
}

/// The background task: drains the queue until every [`Recorder`] is dropped.
async fn run(
    client: Client,
    mut queue: mpsc::Receiver<Item>,
    shared: Arc<Shared>,
    config: RecorderConfig,
) {
    while let Some(first) = queue.recv().await {
        let mut batches = Vec::new();
        let mut flush = None;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Item::Batch(batch) => batches.push(batch),
                // Everything queued before the flush is in `batches`: answer once it is sent.
                Item::Flush(done) => {
                    flush = Some(done);
                    break;
                }
            }
            if batches.len() < config.drain_size {
                next = queue.try_recv().ok();
            }
        }
        deliver(&client, batches, &shared, &config).await;
        if let Some(done) = flush {
            let _ = done.send(());
        }
    }
}

/// Sends `batches` concurrently, retrying those that fail with a retryable error (with
/// backoff) until none is left.
async fn deliver(
    client: &Client,
    mut batches: Vec<Batch>,
    shared: &Shared,
    config: &RecorderConfig,
) {
    let mut backoff = config.initial_backoff;
    let mut attempt = 0u32;
    while !batches.is_empty() {
        attempt += 1;
        let results = futures::future::join_all(batches.iter().map(|batch| {
            send(
                client,
                batch,
                config.attempt_timeout,
                config.max_batch_entries,
            )
        }))
        .await;
        let mut retry = Vec::new();
        let mut last_error = None;
        for (mut batch, result) in batches.into_iter().zip(results) {
            let count = batch.entries.len() as u64;
            match result {
                Ok(()) => {
                    shared.recorded.fetch_add(count, Ordering::Relaxed);
                    ack(&mut batch, true);
                }
                Err(error) if error.is_retryable() => {
                    last_error = Some(error);
                    retry.push(batch);
                }
                Err(error) => {
                    shared.failed.fetch_add(count, Ordering::Relaxed);
                    tracing::error!(
                        request_id = %batch.request_id,
                        entries = count,
                        %error,
                        "the audit service refused entries; they are not recorded"
                    );
                    ack(&mut batch, false);
                }
            }
        }
        match last_error {
            None => {
                if !shared.reachable.swap(true, Ordering::Relaxed) {
                    tracing::warn!("audit service reachable again; queued entries delivered");
                }
            }
            Some(error) => {
                if shared.reachable.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%error, "audit service unreachable; retrying with backoff");
                } else {
                    tracing::debug!(%error, attempt, "audit delivery failed again");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
        batches = retry;
    }
}

/// Sends one call's entries, in chunks of at most `max_entries`.
async fn send(
    client: &Client,
    batch: &Batch,
    timeout: Duration,
    max_entries: usize,
) -> Result<(), Error> {
    for chunk in batch.entries.chunks(max_entries) {
        let request = client.record_batch(batch.request_id.clone(), chunk.iter().cloned());
        match tokio::time::timeout(timeout, request).await {
            Ok(result) => {
                result?;
            }
            Err(_) => {
                return Err(tonic::Status::deadline_exceeded(
                    "the audit service did not answer in time",
                )
                .into());
            }
        }
    }
    Ok(())
}

fn ack(batch: &mut Batch, stored: bool) {
    if let Some(ack) = batch.ack.take() {
        let _ = ack.send(stored);
    }
}
