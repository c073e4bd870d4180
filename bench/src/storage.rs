//! The storage ceiling: the server's own inserts into the same SQLite schema with the same
//! durability (WAL, synchronous=FULL), one transaction per batch, called directly on one thread:
//! no gRPC, no queue, no validation in the timed part.

use std::path::Path;
use std::time::{Duration, Instant};

use audit_server::Limits;
use audit_server::store::sqlite::DirectWriter;
use audit_server::validate::{self, Context, NewEntry};

use crate::load::{EntryFactory, RunOutcome, Timing};
use crate::report::micros;

/// Appends batches of `batch` entries until the time is up; only the inserts and commits are
/// timed, and the rate is entries over the time spent in them.
pub fn run(
    data_dir: &Path,
    factory: &EntryFactory,
    batch: usize,
    timing: Timing,
) -> anyhow::Result<RunOutcome> {
    let mut writer = DirectWriter::open(data_dir)?;
    let limits = Limits::default();
    let start = Instant::now();
    let from = start + timing.warmup;
    let until = from + timing.measure;
    let mut out = RunOutcome::default();
    let mut busy = Duration::ZERO;
    while Instant::now() < until {
        let context = Context {
            received_time: std::time::SystemTime::now().into(),
            recorder: None,
        };
        let entries: Vec<NewEntry> = factory
            .batch(batch)
            .into_iter()
            .map(|entry| {
                validate::entry(entry, "entry", None, &context, &limits)
                    .map_err(|v| anyhow::anyhow!("invalid entry: {v:?}"))
            })
            .collect::<Result<_, _>>()?;
        let began = Instant::now();
        writer.append(&entries)?;
        let ended = Instant::now();
        out.all_entries += batch as u64;
        if began >= from {
            busy += ended - began;
            out.entries += batch as u64;
            out.latencies_us.push(micros(ended - began));
        }
    }
    out.window = busy.max(Duration::from_micros(1));
    Ok(out)
}
