//! Prometheus metrics on a listener of their own (`--metrics-listen`): `GET /metrics` in the
//! Prometheus text format. Scrapes are neither audited nor passed through the gRPC policy, as
//! the listener serves nothing else; bind it where only the monitoring system reaches it.
//!
//! Counters and histograms are updated where things happen (the writer thread through
//! [`CommitObserver`], the gRPC layer through [`Counted`]); gauges that mirror state (the head,
//! whether the store is writable, the write queue, subscribers, forwarders) are read at scrape
//! time. Every label value comes from a fixed set or from the configuration (forwarder names):
//! never from entry content.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::error::Error;
use crate::forward::cursor::ForwarderStats;
use crate::hub::Hub;
use crate::store::engine::{CommitObserver, EntryOutcome};
use crate::store::{Log, Store};

/// The methods of the audit service, the only values of the `method` label.
const METHODS: [&str; 8] = [
    "Record",
    "RecordBatch",
    "Subscribe",
    "Query",
    "GetCheckpoint",
    "ListCheckpoints",
    "GetInclusionProof",
    "GetConsistencyProof",
];

/// The content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    code: &'static str,
}

/// The server's metrics. Created in [`crate::AuditServer::open`] and shared with what updates
/// them.
pub struct Metrics {
    registry: Registry,
    entries: Family<OutcomeLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    commit_duration: Histogram,
    commit_group: Histogram,
    checkpoints_signed: Counter,
    live: Arc<Live>,
}

impl Metrics {
    /// Metrics of a server whose refusals `access` counts.
    pub fn new(access: Arc<Access>) -> Arc<Self> {
        let mut registry = Registry::default();
        let entries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "audit_entries_recorded",
            "Entries handed to the store, by outcome (stored, retried, conflict, failed)",
            entries.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "audit_record_requests",
            "Calls of the audit service, by method and gRPC status code",
            requests.clone(),
        );
        // 100 µs to about 6.5 s: a commit is one fsync or one database round trip.
        let commit_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 17));
        registry.register(
            "audit_commit_duration_seconds",
            "Time of one group commit (the backend transaction)",
            commit_duration.clone(),
        );
        let commit_group = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "audit_commit_group_entries",
            "Entries committed in one group",
            commit_group.clone(),
        );
        let checkpoints_signed = Counter::default();
        registry.register(
            "audit_checkpoints_signed",
            "Signed checkpoints committed since the server started",
            checkpoints_signed.clone(),
        );
        let live = Arc::new(Live {
            access,
            sources: Mutex::new(None),
        });
        registry.register_collector(Box::new(live.clone()));
        Arc::new(Self {
            registry,
            entries,
            requests,
            commit_duration,
            commit_group,
            checkpoints_signed,
            live,
        })
    }

    /// Reads the gauges of `store`, `hub` and `forwarders` at each scrape from now on.
    pub fn watch(&self, store: Log, hub: Hub<Log>, forwarders: Vec<(String, Arc<ForwarderStats>)>) {
        *self.live.sources.lock().expect("sources lock") = Some(Sources {
            store,
            hub,
            forwarders,
        });
    }

    /// Counts a call of `method` (a name of [`METHODS`]) answered with `code`.
    pub fn request(&self, method: &'static str, code: tonic::Code) {
        self.requests
            .get_or_create(&RequestLabels {
                method,
                code: code_name(code),
            })
            .inc();
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; a collector error would be ours.
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::error!(%error, "cannot encode the metrics");
        }
        text
    }
}

impl CommitObserver for Metrics {
    fn committed(&self, entries: usize, took: Duration) {
        self.commit_duration.observe(took.as_secs_f64());
        self.commit_group.observe(entries as f64);
    }

    fn entries(&self, outcome: EntryOutcome, count: usize) {
        let outcome = match outcome {
            EntryOutcome::Stored => "stored",
            EntryOutcome::Retried => "retried",
            EntryOutcome::Conflict => "conflict",
            EntryOutcome::Failed => "failed",
        };
        self.entries
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(count as u64);
    }

    fn checkpoint_signed(&self) {
        self.checkpoints_signed.inc();
    }
}

/// The canonical name of a gRPC status code (`OK`, `INVALID_ARGUMENT`, ...).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

// === impl Live ===

/// What the gauges read at scrape time.
struct Sources {
    store: Log,
    hub: Hub<Log>,
    forwarders: Vec<(String, Arc<ForwarderStats>)>,
}

/// The collector of the values read at scrape time.
struct Live {
    access: Arc<Access>,
    sources: Mutex<Option<Sources>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// Encodes one unlabelled metric.
fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (recorded, unrecorded) = self.access.denied();
        let denied = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "audit_denied",
            "Refused calls: recorded as DENIED entries, or over the recording budget",
            None,
            denied.metric_type(),
        )?;
        for (value, count) in [("true", recorded), ("false", unrecorded)] {
            ConstCounter::new(count).encode(family.encode_family(&[("recorded", value)])?)?;
        }
        let sources = self.sources.lock().expect("sources lock");
        let Some(sources) = sources.as_ref() else {
            return Ok(());
        };
        let head = *sources.store.head().borrow();
        let writable = *sources.store.writable().borrow();
        encode_one(
            &mut encoder,
            "audit_log_sequence",
            "Sequence of the newest committed entry (the head)",
            &ConstGauge::new(head as i64),
        )?;
        encode_one(
            &mut encoder,
            "audit_log_pruned_through",
            "Retention's horizon: entries up to this sequence were pruned (0: none)",
            &ConstGauge::new(sources.store.pruned_through() as i64),
        )?;
        encode_one(
            &mut encoder,
            "audit_store_writable",
            "1 while the store accepts writes, 0 while it refuses them",
            &ConstGauge::new(i64::from(writable)),
        )?;
        encode_one(
            &mut encoder,
            "audit_write_queue_bytes",
            "Bytes of entries waiting for the writer",
            &ConstGauge::new(sources.store.queued_bytes() as i64),
        )?;
        encode_one(
            &mut encoder,
            "audit_subscribers",
            "Subscriptions running",
            &ConstGauge::new(sources.hub.subscribers() as i64),
        )?;
        let lag = sources
            .hub
            .slowest_position()
            .map_or(0, |slowest| head.saturating_sub(slowest));
        encode_one(
            &mut encoder,
            "audit_subscriber_lag_entries",
            "Entries the slowest subscriber is behind the head (0 without subscribers)",
            &ConstGauge::new(lag as i64),
        )?;
        encode_forwarders(&mut encoder, &sources.forwarders, head)
    }
}

/// Reads one gauge of a forwarder.
type ForwarderGauge<'a> = dyn Fn(&ForwarderStats) -> i64 + 'a;

/// The per-forwarder metrics, labelled `forwarder` (a configured name).
fn encode_forwarders(
    encoder: &mut DescriptorEncoder,
    forwarders: &[(String, Arc<ForwarderStats>)],
    head: u64,
) -> Result<(), std::fmt::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    if forwarders.is_empty() {
        return Ok(());
    }
    // Before the first position is known (`start=now` not yet applied) it is the head.
    let position = |stats: &ForwarderStats| match stats.position.load(Relaxed) {
        u64::MAX => head,
        position => position,
    };
    let gauges: [(&str, &str, &ForwarderGauge); 3] = [
        (
            "audit_forwarder_position",
            "Every matching entry up to this sequence was acknowledged by the receiver",
            &|s| position(s) as i64,
        ),
        (
            "audit_forwarder_lag_entries",
            "Entries between the forwarder's position and the head",
            &|s| head.saturating_sub(position(s)) as i64,
        ),
        (
            "audit_forwarder_halted",
            "1 once the forwarder halted (a receiver refused a batch for good)",
            &|s| i64::from(s.halted.load(Relaxed)),
        ),
    ];
    for (name, help, value) in gauges {
        let kind = ConstGauge::new(0i64).metric_type();
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for (forwarder, stats) in forwarders {
            let labels = [("forwarder", forwarder.as_str())];
            ConstGauge::new(value(stats)).encode(family.encode_family(&labels)?)?;
        }
    }
    let kind = ConstCounter::new(0u64).metric_type();
    let mut family = encoder.encode_descriptor(
        "audit_forwarder_errors",
        "Deliveries that failed (then retried, or halting the forwarder)",
        None,
        kind,
    )?;
    for (forwarder, stats) in forwarders {
        let labels = [("forwarder", forwarder.as_str())];
        let errors = ConstCounter::new(stats.errors.load(Relaxed));
        errors.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

// === impl Counted ===

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Counts the calls of the audit service by method and status code. A handler's error is
/// answered in the response headers (trailers-only); a response without `grpc-status` in its
/// headers is counted as `OK` (for Subscribe: the stream started).
#[derive(Clone)]
pub struct Counted<T> {
    inner: T,
    metrics: Option<Arc<Metrics>>,
}

impl<T> Counted<T> {
    /// Counts the calls to `inner` into `metrics`, if metrics are on.
    pub fn new(inner: T, metrics: Option<Arc<Metrics>>) -> Self {
        Self { inner, metrics }
    }
}

/// The method of our service that `path` calls, if it does.
fn method_of(path: &str) -> Option<&'static str> {
    let name = path
        .strip_prefix('/')?
        .strip_prefix(audit_proto::SERVICE_NAME)?
        .strip_prefix('/')?;
    METHODS.into_iter().find(|m| *m == name)
}

impl<T, B, R> tower::Service<http::Request<B>> for Counted<T>
where
    T: tower::Service<http::Request<B>, Response = http::Response<R>, Error = Infallible>,
    T::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let counted = self.metrics.clone().zip(method_of(request.uri().path()));
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            if let Some((metrics, method)) = counted {
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from);
                metrics.request(method, code);
            }
            Ok(response)
        })
    }
}

// === impl MetricsListener ===

/// The metrics listener, bound at start.
pub struct MetricsListener {
    listener: std::net::TcpListener,
}

impl MetricsListener {
    /// Binds `address` (`--metrics-listen`), if given.
    pub fn bind(address: Option<SocketAddr>) -> Result<Option<Self>, Error> {
        let Some(address) = address else {
            return Ok(None);
        };
        let listener = std::net::TcpListener::bind(address)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| {
                Error::Config(format!(
                    "cannot listen on {address} (--metrics-listen): {e}"
                ))
            })?;
        Ok(Some(Self { listener }))
    }

    /// What it listens on, as printed at start: `metrics http://127.0.0.1:9464`.
    pub fn describe(&self) -> String {
        let address = self
            .listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        format!("metrics http://{address}")
    }

    /// Serves `GET /metrics` until `stop` is cancelled.
    pub async fn serve(self, metrics: Arc<Metrics>, stop: CancellationToken) {
        let listener = match tokio::net::TcpListener::from_std(self.listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "cannot serve the metrics");
                return;
            }
        };
        let served = axum::serve(listener, routes(metrics))
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the metrics listener failed");
        }
    }
}

/// `GET /metrics`; every other path is 404.
pub fn routes(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
                    metrics.render(),
                )
            }
        }),
    )
}

#[cfg(test)]
mod tests;
