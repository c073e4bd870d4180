//! The load: entries of a chosen size, closed-loop callers at a fixed concurrency, and an
//! open-loop caller at a fixed rate.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use audit_client::EntryBuilder;
use audit_proto::pb;
use prost::Message;
use tokio::sync::Semaphore;

use crate::report::micros;

/// How long a case warms up and then measures.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub measure: Duration,
}

/// Makes entries of about `size` encoded bytes, each with a fresh client-chosen id and time, as
/// an instrumented service would send them.
pub struct EntryFactory {
    template: pb::AuditEntry,
    counter: AtomicU64,
}

impl EntryFactory {
    pub fn new(size: usize) -> Self {
        let base = EntryBuilder::new("orders-api", "/shop.orders.v1.Orders/CreateOrder")
            .random_id()
            .request_id(uuid::Uuid::now_v7().hyphenated().to_string())
            .time(SystemTime::now())
            .event("order.create")
            .category("data-write")
            .resource("orders/000000000")
            .level(pb::Level::Info)
            .outcome(pb::Outcome::Success)
            .status(0, "")
            .principal("user-4821@example.com")
            .role("customer")
            .session_id("s-8f2c61a9")
            .user_agent("grpc-go/1.64.0")
            .peer_address("10.20.30.40:51234")
            .latency(Duration::from_micros(1840))
            .label("region", "eu-west-1")
            .label("env", "prod");
        let unpadded = base.clone().build().encoded_len();
        // The rest is request details; the Struct wrapper costs a few bytes of framing.
        let pad = size.saturating_sub(unpadded + 16);
        let mut template = if pad > 0 {
            base.detail("request", "x".repeat(pad)).build()
        } else {
            base.build()
        };
        let over = template.encoded_len().saturating_sub(size);
        if let Some(details) = &mut template.details
            && let Some(value) = details.fields.get_mut("request")
            && let Some(prost_types::value::Kind::StringValue(text)) = &mut value.kind
        {
            text.truncate(text.len().saturating_sub(over));
        }
        EntryFactory {
            template,
            counter: AtomicU64::new(0),
        }
    }

    /// Encoded size of the entries made.
    pub fn size(&self) -> usize {
        self.template.encoded_len()
    }

    pub fn entry(&self) -> pb::AuditEntry {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut entry = self.template.clone();
        entry.id = uuid::Uuid::new_v4().hyphenated().to_string();
        entry.time = Some(SystemTime::now().into());
        entry.resource = format!("orders/{n:09}");
        entry
    }

    pub fn batch(&self, count: usize) -> Vec<pb::AuditEntry> {
        let request_id = uuid::Uuid::now_v7().hyphenated().to_string();
        (0..count)
            .map(|_| {
                let mut entry = self.entry();
                entry.request_id.clone_from(&request_id);
                entry
            })
            .collect()
    }
}

/// What a run of calls achieved.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Entries completed inside the measured window.
    pub entries: u64,
    /// Entries completed over the whole run, warm-up included (for CPU per entry).
    pub all_entries: u64,
    /// Latency of each call completed inside the window, in microseconds.
    pub latencies_us: Vec<u32>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Length of the measured window.
    pub window: Duration,
}

impl RunOutcome {
    pub fn rate(&self) -> f64 {
        self.entries as f64 / self.window.as_secs_f64()
    }

    fn merge(&mut self, other: RunOutcome) {
        self.entries += other.entries;
        self.all_entries += other.all_entries;
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Runs `concurrency` workers, each calling `call(worker)` back to back, for the warm-up and then
/// the measured window. A call returns how many entries it carried.
pub async fn closed_loop<C, F>(concurrency: usize, timing: Timing, call: C) -> RunOutcome
where
    C: Fn(usize) -> F + Send + Sync + 'static,
    F: Future<Output = Result<u64, tonic::Status>> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let from = start + timing.warmup;
    let until = from + timing.measure;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut out = RunOutcome::default();
                while Instant::now() < until {
                    let began = Instant::now();
                    let result = call(worker).await;
                    let ended = Instant::now();
                    match result {
                        Ok(entries) => {
                            out.all_entries += entries;
                            if ended >= from && ended <= until {
                                out.entries += entries;
                                out.latencies_us.push(micros(ended - began));
                            }
                        }
                        Err(status) => {
                            out.errors += 1;
                            out.first_error.get_or_insert_with(|| status.to_string());
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                out
            })
        })
        .collect();
    let mut total = RunOutcome {
        window: timing.measure,
        ..Default::default()
    };
    for worker in workers {
        if let Ok(out) = worker.await {
            total.merge(out);
        }
    }
    total
}

/// Calls `call` at `rate` calls per second (open loop: a slow answer does not slow the sender),
/// with at most `max_in_flight` calls outstanding; calls that find no room are counted as errors.
pub async fn paced<C, F>(rate: u64, max_in_flight: usize, timing: Timing, call: C) -> RunOutcome
where
    C: Fn(u64) -> F + Send + Sync + 'static,
    F: Future<Output = Result<u64, tonic::Status>> + Send + 'static,
{
    let call = Arc::new(call);
    let room = Arc::new(Semaphore::new(max_in_flight));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let from = start + timing.warmup;
    let until = from + timing.measure;
    let mut sent = 0u64;
    let mut shed = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= until {
            break;
        }
        let due = ((now - start).as_secs_f64() * rate as f64) as u64;
        while sent < due {
            sent += 1;
            let Ok(permit) = room.clone().try_acquire_owned() else {
                shed += 1;
                continue;
            };
            let call = call.clone();
            let done = done_tx.clone();
            let n = sent;
            tokio::spawn(async move {
                let began = Instant::now();
                let result = call(n).await;
                let _ = done.send((began, Instant::now(), result));
                drop(permit);
            });
        }
    }
    drop(done_tx);
    let mut out = RunOutcome {
        window: timing.measure,
        errors: shed,
        ..Default::default()
    };
    let drain = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            next = done_rx.recv() => {
                let Some((began, ended, result)) = next else { break };
                match result {
                    Ok(entries) => {
                        out.all_entries += entries;
                        if ended >= from && ended <= until {
                            out.entries += entries;
                            out.latencies_us.push(micros(ended - began));
                        }
                    }
                    Err(status) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| status.to_string());
                    }
                }
            }
            () = &mut drain => break,
        }
    }
    out
}
