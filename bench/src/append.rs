//! The append ceiling: what the disk itself allows. The same entries, encoded once as the store
//! encodes them (length-delimited protobuf), appended to one file with one `fdatasync` per batch
//! (per entry for the unary case), on one thread. No index, no hash, no transaction: the bound
//! that any storage design on this disk stays under. Only the write and the sync are timed.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;

use crate::load::{EntryFactory, RunOutcome, Timing};
use crate::report::micros;

/// Appends batches of `batch` entries until the time is up; the rate is entries over the time
/// spent writing and syncing.
pub fn run(
    data_dir: &Path,
    factory: &EntryFactory,
    batch: usize,
    timing: Timing,
) -> anyhow::Result<RunOutcome> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("append.log"))?;
    let start = Instant::now();
    let from = start + timing.warmup;
    let until = from + timing.measure;
    let mut out = RunOutcome::default();
    let mut busy = Duration::ZERO;
    let mut bytes = Vec::new();
    while Instant::now() < until {
        bytes.clear();
        for entry in factory.batch(batch) {
            entry.encode_length_delimited(&mut bytes)?;
        }
        let began = Instant::now();
        file.write_all(&bytes)?;
        file.sync_data()?;
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
