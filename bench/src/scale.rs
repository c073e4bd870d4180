//! Costs as the log grows: a log of `--scale-entries` entries (10 million by default; generated
//! through the real server, not committed) and what start-up, proofs, indexed queries, disk
//! space and the offline verifier cost on it. Each figure is a case with its own bound.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use audit_proto::pb;

use crate::load::EntryFactory;
use crate::process::ServerProcess;
use crate::report::{Bound, Case, Latency, micros};
use crate::{Bench, connect};

/// Entries per `RecordBatch` while the log is generated.
const BATCH: usize = 1000;
/// Callers generating the log, each on its own connection.
const WRITERS: usize = 2;
/// Distinct principals, sources and methods in the generated log (queries pick one).
const PRINCIPALS: usize = 1000;
const SOURCES: usize = 16;
const METHODS: usize = 64;
/// Calls measured per query kind and per proof kind.
const SAMPLES: usize = 40;
/// Restarts measured for start-up.
const RESTARTS: usize = 3;

/// What the generated log holds, for queries that match something.
struct Generated {
    entries: u64,
    request_ids: Vec<String>,
    /// Time received (nanoseconds since the epoch) of the first and last batch.
    span: (i64, i64),
    encoded_bytes: u64,
}

impl Bench {
    /// Generates a log of `entries` entries and measures the scale cases on it.
    pub async fn scale(&mut self, entries: u64, factory: &EntryFactory) -> anyhow::Result<()> {
        let name = scale_name(entries);
        let prefix = format!("scale {name}");
        if !self.wants(&prefix) {
            return Ok(());
        }
        let dir = self.case_dir()?;
        let data = dir.join("data");
        let args = |check: &str| {
            [
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &data.display().to_string(),
                "--log",
                "warn",
                "--startup-check",
                check,
            ]
            .map(String::from)
            .to_vec()
        };
        let server =
            ServerProcess::start(&self.server_bin, &args("full"), dir.join("server.log")).await?;
        let began = Instant::now();
        let generated = generate(&server.uri(), entries, factory).await?;
        eprintln!(
            "  {prefix}: generated {} entries in {:.0} s",
            generated.entries,
            began.elapsed().as_secs_f64()
        );
        let mut case = Case::new(format!("{prefix} generate (RecordBatch 1000 x2)"), "audit");
        case.entries_per_sec = generated.entries as f64 / began.elapsed().as_secs_f64();
        self.report.cases.push(case);

        self.proofs(&prefix, &server.uri()).await?;
        self.queries(&prefix, &server.uri(), &generated).await?;
        server.stop().await?;

        let bytes = disk_bytes(&data)?;
        let per_entry = bytes as f64 / generated.entries as f64;
        let encoded = generated.encoded_bytes as f64 / generated.entries as f64;
        let mut case = Case::new(format!("{prefix} disk bytes per entry"), "audit");
        case.notes.insert("disk_bytes".into(), bytes as f64);
        case.notes.insert("bytes_per_entry".into(), per_entry);
        case.notes.insert("encoded_bytes_per_entry".into(), encoded);
        case.bound = Some(Bound::at_most(
            format!("{prefix}: disk bytes per entry / encoded entry bytes"),
            per_entry / encoded,
            2.0,
        ));
        self.report.cases.push(case);

        for check in ["full", "schema"] {
            let mut took = Vec::new();
            let mut rss = None;
            for restart in 0..RESTARTS {
                let log = dir.join(format!("restart-{check}-{restart}.log"));
                let started = Instant::now();
                let server = ServerProcess::start(&self.server_bin, &args(check), log).await?;
                took.push(micros(started.elapsed()));
                rss = server.peak_rss_mib();
                server.stop().await?;
            }
            let mut case = Case::new(
                format!("{prefix} start-up (--startup-check {check})"),
                "audit",
            );
            case.latency = Latency::of(&mut took);
            case.server_peak_rss_mib = rss;
            if let Some(latency) = case.latency {
                case.bound = Some(Bound::at_most(
                    format!("{prefix}: start-up to listening, --startup-check {check} (s)"),
                    latency.p50_ms / 1000.0,
                    1.0,
                ));
            }
            self.report.cases.push(case);
        }

        self.verify_offline(&prefix, &data, generated.entries)
            .await?;
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    async fn proofs(&mut self, prefix: &str, uri: &str) -> anyhow::Result<()> {
        let mut client = connect(uri, 1).await?.remove(0);
        // Proofs are against a signed size: the newest checkpoint.
        let size = client
            .get_checkpoint(pb::GetCheckpointRequest::default())
            .await?
            .into_inner()
            .checkpoint
            .context("no checkpoint")?
            .size;
        anyhow::ensure!(size > 1, "the log has no checkpoint over its entries");
        for kind in ["inclusion", "consistency"] {
            let mut took = Vec::with_capacity(SAMPLES);
            for _ in 0..SAMPLES {
                let at = fastrand::u64(1..size);
                let started = Instant::now();
                if kind == "inclusion" {
                    client
                        .get_inclusion_proof(pb::GetInclusionProofRequest {
                            sequence: at,
                            tree_size: size,
                        })
                        .await?;
                } else {
                    client
                        .get_consistency_proof(pb::GetConsistencyProofRequest {
                            first_size: at,
                            second_size: size,
                        })
                        .await?;
                }
                took.push(micros(started.elapsed()));
            }
            self.latency_case(
                format!("{prefix} {kind} proof"),
                took,
                format!("{prefix}: {kind} proof p99 (ms)"),
                10.0,
            );
        }
        Ok(())
    }

    async fn queries(&mut self, prefix: &str, uri: &str, log: &Generated) -> anyhow::Result<()> {
        let mut client = connect(uri, 1).await?.remove(0);
        for kind in [
            "principal",
            "source",
            "method prefix",
            "request_id",
            "time range",
        ] {
            let mut took = Vec::with_capacity(SAMPLES);
            let mut rows = 0usize;
            for _ in 0..SAMPLES {
                let filter = random_filter(kind, log);
                let started = Instant::now();
                let page = client
                    .query(pb::QueryRequest {
                        filter: Some(filter),
                        page_size: 100,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                took.push(micros(started.elapsed()));
                rows += page.entries.len();
            }
            anyhow::ensure!(rows > 0, "queries by {kind} matched nothing");
            self.latency_case(
                format!("{prefix} query page of 100 by {kind}"),
                took,
                format!("{prefix}: query page of 100 by {kind} p99 (ms)"),
                50.0,
            );
        }
        Ok(())
    }

    async fn verify_offline(
        &mut self,
        prefix: &str,
        data: &Path,
        entries: u64,
    ) -> anyhow::Result<()> {
        let audit = self.server_bin.with_file_name("audit");
        anyhow::ensure!(audit.exists(), "{} not found", audit.display());
        let started = Instant::now();
        let output = tokio::process::Command::new(&audit)
            .arg("verify")
            .arg("--data-dir")
            .arg(data)
            .arg("--public-key")
            .arg(data.join("signing.pub"))
            .output()
            .await?;
        let took = started.elapsed();
        anyhow::ensure!(
            output.status.success(),
            "audit verify failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let mut case = Case::new(format!("{prefix} offline audit verify"), "audit");
        let rate = entries as f64 / took.as_secs_f64();
        case.entries_per_sec = rate;
        case.bound = Some(Bound::at_least(
            format!("{prefix}: offline audit verify (entries/s)"),
            rate,
            1_000_000.0,
        ));
        self.report.cases.push(case);
        Ok(())
    }

    fn latency_case(&mut self, key: String, mut took: Vec<u32>, bound: String, max_ms: f64) {
        let mut case = Case::new(key, "audit");
        case.latency = Latency::of(&mut took);
        if let Some(latency) = case.latency {
            case.bound = Some(Bound::at_most(bound, latency.p99_ms, max_ms));
        }
        eprintln!(
            "  {:<48} p50 {:>8} ms  p99 {:>8} ms",
            case.key,
            case.latency
                .map_or("-".into(), |l| format!("{:.2}", l.p50_ms)),
            case.latency
                .map_or("-".into(), |l| format!("{:.2}", l.p99_ms))
        );
        self.report.cases.push(case);
    }
}

/// "10M" for ten million, the count itself otherwise.
fn scale_name(entries: u64) -> String {
    if entries >= 1_000_000 && entries.is_multiple_of(1_000_000) {
        format!("{}M", entries / 1_000_000)
    } else {
        entries.to_string()
    }
}

/// Records `entries` entries (rounded up to whole batches) from [`WRITERS`] callers.
async fn generate(uri: &str, entries: u64, factory: &EntryFactory) -> anyhow::Result<Generated> {
    let batches = entries.div_ceil(BATCH as u64);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients = connect(uri, WRITERS).await?;
    let first = now_nanos();
    let mut tasks = Vec::new();
    for mut client in clients {
        let next = next.clone();
        let template = factory.entry();
        tasks.push(tokio::spawn(async move {
            let mut request_ids = Vec::new();
            let mut encoded = 0u64;
            loop {
                let batch = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if batch >= batches {
                    return anyhow::Ok((request_ids, encoded));
                }
                let request_id = uuid::Uuid::now_v7().hyphenated().to_string();
                let entries = varied_batch(&template, batch, &request_id);
                encoded += entries
                    .iter()
                    .map(|e| prost::Message::encoded_len(e) as u64)
                    .sum::<u64>();
                client
                    .record_batch(pb::RecordBatchRequest {
                        request_id: request_id.clone(),
                        entries,
                    })
                    .await
                    .with_context(|| format!("batch {batch}"))?;
                if request_ids.len() < 10_000 {
                    request_ids.push(request_id);
                }
                if batch > 0 && (batch * BATCH as u64).is_multiple_of(1_000_000) {
                    eprintln!("    {} entries", batch * BATCH as u64);
                }
            }
        }));
    }
    let mut generated = Generated {
        entries: batches * BATCH as u64,
        request_ids: Vec::new(),
        span: (first, 0),
        encoded_bytes: 0,
    };
    for task in tasks {
        let (ids, encoded) = task.await??;
        generated.request_ids.extend(ids);
        generated.encoded_bytes += encoded;
    }
    generated.span.1 = now_nanos();
    Ok(generated)
}

/// Batch number `batch`: entries spread over principals, sources and methods.
fn varied_batch(template: &pb::AuditEntry, batch: u64, request_id: &str) -> Vec<pb::AuditEntry> {
    (0..BATCH as u64)
        .map(|i| {
            let n = batch * BATCH as u64 + i;
            let mut entry = template.clone();
            entry.id = uuid::Uuid::new_v4().hyphenated().to_string();
            entry.request_id = request_id.to_string();
            entry.time = Some(std::time::SystemTime::now().into());
            entry.source = source(n as usize % SOURCES);
            entry.method = method(n as usize % METHODS);
            entry.resource = format!("orders/{n:09}");
            if let Some(caller) = &mut entry.caller {
                caller.principal = principal((n as usize * 7919) % PRINCIPALS);
            }
            entry
        })
        .collect()
}

fn source(k: usize) -> String {
    format!("service-{k:02}")
}

fn method(k: usize) -> String {
    format!("/shop.area{}.v1.Service/Method{k:02}", k % 8)
}

fn principal(k: usize) -> String {
    format!("user-{k:04}@example.com")
}

fn random_filter(kind: &str, log: &Generated) -> pb::Filter {
    let mut filter = pb::Filter::default();
    match kind {
        "principal" => filter.principal = principal(fastrand::usize(0..PRINCIPALS)),
        "source" => filter.source = source(fastrand::usize(0..SOURCES)),
        "method prefix" => {
            filter.method = format!("/shop.area{}.v1.*", fastrand::usize(0..8));
        }
        "request_id" => {
            filter.request_id = log.request_ids[fastrand::usize(0..log.request_ids.len())].clone();
        }
        _ => {
            // A one-second window somewhere in the log's history.
            let (from, to) = log.span;
            let start = fastrand::i64(from..to.max(from + 1));
            filter.start_time = Some(timestamp(start));
            filter.end_time = Some(timestamp(start + 1_000_000_000));
        }
    }
    filter
}

fn timestamp(nanos: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: nanos / 1_000_000_000,
        nanos: (nanos % 1_000_000_000) as i32,
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Bytes of every file of the store in `data` (the database, its WAL; not the keys).
fn disk_bytes(data: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for file in std::fs::read_dir(data)? {
        let file = file?;
        let name = file.file_name();
        if name.to_string_lossy().starts_with("audit.db") {
            total += file.metadata()?.len();
        }
    }
    Ok(total)
}
