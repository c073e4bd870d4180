//! `audit-bench`: starts the audit server and drives load over loopback, next to baselines
//! measured in the same run (a no-op tonic server, raw SQLite inserts, hand-written PostgreSQL),
//! and reports every figure as a ratio to its baseline. See BENCHMARKS.md.

#![forbid(unsafe_code)]
// Request literals end in `..Default::default()` so that they keep compiling as the proto grows.
#![allow(clippy::needless_update)]

mod append;
mod fanout;
mod load;
mod noop;
mod postgres;
mod process;
mod replicas;
mod report;
mod scale;
mod storage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use audit_proto::pb::{self, audit_service_client::AuditServiceClient};
use clap::Parser;
use tonic::transport::Channel;

use load::{EntryFactory, RunOutcome, Timing, closed_loop, paced};
use process::{CpuMeter, ServerProcess};
use report::{Case, Latency, Report};

/// Load generator and side-by-side baselines for the audit service.
#[derive(Debug, Parser)]
#[command(name = "audit-bench", version, about, long_about = None)]
struct Args {
    /// A short smoke run (well under a minute): every case, briefly, fewer subscribers. Its
    /// figures are not meant to be quoted.
    #[arg(long)]
    quick: bool,

    /// Where to write the results as JSON.
    #[arg(long, default_value = "audit-bench.json")]
    output: PathBuf,

    /// The audit-server binary; by default the one next to this binary.
    #[arg(long)]
    server_bin: Option<PathBuf>,

    /// PostgreSQL for the peer baseline; skipped (and said so) when it does not answer.
    #[arg(
        long,
        env = "AUDIT_BENCH_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres: String,

    /// Skip the PostgreSQL baseline.
    #[arg(long)]
    no_postgres: bool,

    /// Run only the cases whose name contains this text, or one of several separated by commas
    /// (to profile one case, or to compare a few in one run).
    #[arg(long)]
    only: Option<String>,

    /// Directory for the databases (a fresh one per case), on the disk to measure; by default a
    /// temporary directory under $TMPDIR.
    #[arg(long)]
    data_dir: Option<PathBuf>,

    /// Seconds each case measures, after its warm-up (default 3, or 0.25 with --quick).
    #[arg(long)]
    seconds: Option<f64>,

    /// HTTP/2 stream window of each stalled subscriber, in bytes: what it takes in before it
    /// stalls (65535 is HTTP/2's default; tonic's client default is 2 MiB).
    #[arg(long, default_value_t = 65_535)]
    stalled_window_bytes: u32,

    /// Open the stalled subscribers in a process of their own, so that the load generator's
    /// writers do not share a runtime with their connections.
    #[arg(long)]
    stalled_apart: bool,

    /// Hold this many stalled subscribers to `--hold-stalled-uri` until killed (used by the
    /// benchmark itself for `--stalled-apart`).
    #[arg(long, hide = true, requires = "hold_stalled_uri")]
    hold_stalled: Option<usize>,

    #[arg(long, hide = true)]
    hold_stalled_uri: Option<String>,

    /// Entries in the generated log of the scale cases (start-up, proofs, queries, disk bytes
    /// and the offline verifier on a large log); 0 skips them. Default 10,000,000, or 10,000
    /// with --quick.
    #[arg(long)]
    scale_entries: Option<u64>,

    /// Serve the no-op baseline server (used by the benchmark itself).
    #[arg(long, hide = true)]
    serve_noop: bool,
}

/// Entry sizes: a typical call record, and one with request details.
const SIZES: [(&str, usize); 2] = [("300B", 300), ("2KB", 2048)];
/// Concurrent unary callers.
const CONCURRENCIES: [usize; 4] = [1, 16, 64, 256];
/// Entries per RecordBatch call.
const BATCHES: [usize; 3] = [10, 100, 1000];
/// Concurrent RecordBatch callers: one, so that a batch is one commit on both the server and
/// the raw SQLite baseline (group commit would otherwise merge concurrent batches).
const BATCH_CONCURRENCY: usize = 1;
/// Unary callers share this many connections (HTTP/2 multiplexes the rest).
const MAX_CONNECTIONS: usize = 4;
/// Entries per second recorded on one replica while another delivers them.
const PG_DELIVERY_RATE: u64 = 500;

/// A storage baseline: appends batches of entries into a fresh directory for the given time.
type Baseline = fn(&Path, &EntryFactory, usize, Timing) -> anyhow::Result<RunOutcome>;

struct Plan {
    timing: Timing,
    fanout_subscribers: Vec<usize>,
    fanout_writers: usize,
    fanout_rate: u64,
    idle_subscribers: usize,
    stalled_subscribers: usize,
    /// How long the sustained-write case writes.
    sustained: Duration,
    postgres_concurrency: Vec<usize>,
    /// Entries of the scale cases' log.
    scale_entries: u64,
}

impl Plan {
    fn new(args: &Args) -> Self {
        if args.quick {
            Plan {
                timing: Timing {
                    warmup: Duration::from_millis(50),
                    measure: Duration::from_secs_f64(args.seconds.unwrap_or(0.25)),
                },
                fanout_subscribers: vec![0, 1, 10],
                fanout_writers: 16,
                fanout_rate: 1_000,
                idle_subscribers: 100,
                stalled_subscribers: 100,
                sustained: Duration::from_secs(1),
                postgres_concurrency: vec![1, 8],
                scale_entries: args.scale_entries.unwrap_or(10_000),
            }
        } else {
            Plan {
                timing: Timing {
                    warmup: Duration::from_millis(500),
                    measure: Duration::from_secs_f64(args.seconds.unwrap_or(3.0)),
                },
                fanout_subscribers: vec![0, 1, 10, 100],
                fanout_writers: 64,
                fanout_rate: 10_000,
                idle_subscribers: 1000,
                stalled_subscribers: 1000,
                sustained: Duration::from_secs(60),
                postgres_concurrency: vec![1, 64],
                scale_entries: args.scale_entries.unwrap_or(10_000_000),
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.serve_noop {
        return noop::main();
    }
    if let (Some(count), Some(uri)) = (args.hold_stalled, &args.hold_stalled_uri) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(fanout::Stalled::hold(uri, count, args.stalled_window_bytes));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let exe = std::env::current_exe()?;
    let server_bin = match &args.server_bin {
        Some(bin) => bin.clone(),
        None => exe
            .parent()
            .context("binary has no directory")?
            .join("audit-server"),
    };
    anyhow::ensure!(
        server_bin.exists(),
        "{} not found: build it with `cargo build --release -p audit-server` or pass --server-bin",
        server_bin.display()
    );
    let root = match &args.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            tempfile::Builder::new()
                .prefix("audit-bench-")
                .tempdir_in(dir)?
        }
        None => tempfile::Builder::new().prefix("audit-bench-").tempdir()?,
    };
    let plan = Plan::new(&args);
    let mut bench = Bench {
        server_bin,
        noop_bin: exe,
        root: root.path().to_path_buf(),
        only: args.only.clone(),
        cases: 0,
        report: Report {
            quick: args.quick,
            machine: report::machine(),
            duration_secs: 0.0,
            cases: Vec::new(),
            ratios: Vec::new(),
            targets: Vec::new(),
            skipped: Vec::new(),
        },
    };
    eprintln!(
        "audit-bench: server {}, databases in {}, {} per case after {} warm-up",
        bench.server_bin.display(),
        root.path().display(),
        fmt_secs(plan.timing.measure),
        fmt_secs(plan.timing.warmup)
    );

    for (size_name, size) in SIZES {
        let factory = Arc::new(EntryFactory::new(size));
        eprintln!("entries of {size_name}: {} encoded bytes", factory.size());
        for concurrency in CONCURRENCIES {
            for system in ["noop", "audit"] {
                let key = format!("{system} record c={concurrency} {size_name}");
                bench
                    .served(
                        system,
                        key,
                        Work::Record { concurrency },
                        &factory,
                        plan.timing,
                    )
                    .await?;
            }
        }
        for batch in BATCHES {
            for system in ["noop", "audit"] {
                let key = format!("{system} batch {batch} {size_name}");
                bench
                    .served(system, key, Work::Batch { batch }, &factory, plan.timing)
                    .await?;
            }
        }
        // The same batches while retention prunes all the time: what pruning costs writers.
        let key = format!("audit-retain batch 100 {size_name}");
        bench
            .served(
                "audit-retain",
                key,
                Work::Batch { batch: 100 },
                &factory,
                plan.timing,
            )
            .await?;
        for batch in [1].into_iter().chain(BATCHES) {
            for (system, baseline) in [
                ("sqlite", storage::run as Baseline),
                ("append", append::run as Baseline),
            ] {
                let key = if batch == 1 {
                    format!("{system} commit per entry {size_name}")
                } else {
                    format!("{system} batch {batch} {size_name}")
                };
                bench
                    .storage(key, system, baseline, batch, &factory, plan.timing)
                    .await?;
            }
        }
    }

    if args.no_postgres {
        bench
            .report
            .skipped
            .push("PostgreSQL baseline (--no-postgres)".into());
    } else if bench.wants("postgres") {
        match postgres::connect(&args.postgres).await {
            Ok(_) => {
                for (size_name, size) in SIZES {
                    let factory = Arc::new(EntryFactory::new(size));
                    for &c in &plan.postgres_concurrency {
                        let key = format!("postgres per-entry c={c} {size_name}");
                        bench
                            .postgres(key, &args.postgres, &factory, Pg::PerEntry(c), plan.timing)
                            .await?;
                    }
                    let key = format!("postgres batch 100 {size_name}");
                    bench
                        .postgres(key, &args.postgres, &factory, Pg::Batch(100), plan.timing)
                        .await?;
                    // The server's own PostgreSQL backend, beside the hand-written baseline.
                    for replicas in [1, 2] {
                        bench
                            .postgres_backend(
                                &args.postgres,
                                replicas,
                                100,
                                size_name,
                                &factory,
                                plan.timing,
                            )
                            .await?;
                    }
                }
                let factory = Arc::new(EntryFactory::new(300));
                bench
                    .postgres_delivery(&args.postgres, PG_DELIVERY_RATE, &factory, plan.timing)
                    .await?;
            }
            Err(error) => {
                let note = format!(
                    "PostgreSQL baseline: no PostgreSQL at {} ({error:#}); {}",
                    args.postgres,
                    postgres::HOW_TO_START
                );
                eprintln!("audit-bench: skipping the {note}");
                bench.report.skipped.push(note);
            }
        }
    }

    let factory = Arc::new(EntryFactory::new(300));
    for &subscribers in &plan.fanout_subscribers {
        bench
            .fanout_throughput(subscribers, plan.fanout_writers, &factory, plan.timing)
            .await?;
    }
    for &subscribers in plan.fanout_subscribers.iter().filter(|&&n| n > 0) {
        bench
            .fanout_delivery(subscribers, plan.fanout_rate, &factory, plan.timing)
            .await?;
    }
    bench
        .stalled(
            plan.stalled_subscribers,
            args.stalled_window_bytes,
            args.stalled_apart,
            plan.fanout_writers,
            &factory,
            plan.timing,
        )
        .await?;
    bench.idle(plan.idle_subscribers).await?;
    bench.sustained(plan.sustained, &factory).await?;
    if plan.scale_entries > 0 {
        bench.scale(plan.scale_entries, &factory).await?;
    }

    let sizes: Vec<&str> = SIZES.iter().map(|(name, _)| *name).collect();
    bench.report.duration_secs = started.elapsed().as_secs_f64();
    bench.report.judge(&sizes);
    println!("{}", bench.report.markdown());
    if let Some(parent) = args.output.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.output, serde_json::to_string_pretty(&bench.report)?)
        .with_context(|| format!("write {}", args.output.display()))?;
    eprintln!(
        "audit-bench: {} cases in {:.0} s; results in {}",
        bench.report.cases.len(),
        bench.report.duration_secs,
        args.output.display()
    );
    Ok(())
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The calls of a served case.
#[derive(Debug, Clone, Copy)]
enum Work {
    Record {
        concurrency: usize,
    },
    Batch {
        batch: usize,
    },
    /// RecordBatch calls from `writers` concurrent callers, one connection each.
    Batches {
        batch: usize,
        writers: usize,
    },
}

/// The PostgreSQL write patterns.
#[derive(Debug, Clone, Copy)]
enum Pg {
    PerEntry(usize),
    Batch(usize),
}

struct Bench {
    server_bin: PathBuf,
    noop_bin: PathBuf,
    root: PathBuf,
    only: Option<String>,
    cases: usize,
    report: Report,
}

impl Bench {
    fn wants(&self, key: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|only| only.split(',').any(|part| key.contains(part)))
    }

    /// A fresh directory for one case.
    fn case_dir(&mut self) -> anyhow::Result<PathBuf> {
        self.cases += 1;
        let dir = self.root.join(format!("case-{:03}", self.cases));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    async fn start(&mut self, system: &str) -> anyhow::Result<ServerProcess> {
        let dir = self.case_dir()?;
        let log = dir.join("server.log");
        if system == "noop" {
            ServerProcess::start(&self.noop_bin, &["--serve-noop".to_string()], log).await
        } else {
            let mut args = vec![
                "--listen".to_string(),
                "127.0.0.1:0".to_string(),
                "--data-dir".to_string(),
                dir.join("data").display().to_string(),
                "--log".to_string(),
                "warn".to_string(),
            ];
            if system == "audit-retain" {
                // Keeps the newest 10,000 entries: once past them, every round prunes.
                args.extend(
                    ["--retain-entries", "10000", "--retention-interval", "100ms"]
                        .map(String::from),
                );
            }
            ServerProcess::start(&self.server_bin, &args, log).await
        }
    }

    fn record(&mut self, mut case: Case, outcome: &mut RunOutcome) {
        case.entries_per_sec = outcome.rate();
        case.latency = Latency::of(&mut outcome.latencies_us);
        case.errors = outcome.errors;
        if let Some(error) = &outcome.first_error {
            eprintln!("  {}: {} errors, first: {error}", case.key, outcome.errors);
        }
        eprintln!(
            "  {:<40} {:>10.0} entries/s  p99 {:>8} ms  rss {:>6} MiB",
            case.key,
            case.entries_per_sec,
            case.latency
                .map_or("-".into(), |l| format!("{:.2}", l.p99_ms)),
            case.server_peak_rss_mib
                .map_or("-".into(), |r| format!("{r:.1}"))
        );
        self.report.cases.push(case);
    }

    /// A case against a server process: the audit server or the no-op one.
    async fn served(
        &mut self,
        system: &'static str,
        key: String,
        work: Work,
        factory: &Arc<EntryFactory>,
        timing: Timing,
    ) -> anyhow::Result<()> {
        if !self.wants(&key) {
            return Ok(());
        }
        let server = self.start(system).await?;
        let connections = match work {
            Work::Record { concurrency } => concurrency.min(MAX_CONNECTIONS),
            Work::Batch { .. } => 1,
            Work::Batches { writers, .. } => writers,
        };
        let clients = connect(&server.uri(), connections).await?;
        let cpu = CpuMeter::start(&server);
        let mut outcome = drive(clients, work, factory.clone(), timing).await;
        let mut case = Case::new(key, system);
        case.server_cpu_us_per_entry = cpu.per_entry_us(outcome.all_entries);
        case.server_peak_rss_mib = server.peak_rss_mib();
        case.server_rss_mib = server.rss_mib();
        server.stop().await?;
        self.record(case, &mut outcome);
        Ok(())
    }

    /// A storage baseline (`system` names it in the report), run on a blocking thread.
    async fn storage(
        &mut self,
        key: String,
        system: &'static str,
        baseline: Baseline,
        batch: usize,
        factory: &Arc<EntryFactory>,
        timing: Timing,
    ) -> anyhow::Result<()> {
        if !self.wants(&key) {
            return Ok(());
        }
        let dir = self.case_dir()?;
        let factory = factory.clone();
        let mut outcome =
            tokio::task::spawn_blocking(move || baseline(&dir, &factory, batch, timing)).await??;
        self.record(Case::new(key, system), &mut outcome);
        Ok(())
    }

    async fn postgres(
        &mut self,
        key: String,
        url: &str,
        factory: &Arc<EntryFactory>,
        pattern: Pg,
        timing: Timing,
    ) -> anyhow::Result<()> {
        if !self.wants(&key) {
            return Ok(());
        }
        let table = postgres::Table::create(url).await?;
        let result = match pattern {
            Pg::PerEntry(concurrency) => {
                table.per_entry(factory.clone(), concurrency, timing).await
            }
            Pg::Batch(batch) => table.batched(factory.clone(), batch, timing).await,
        };
        table.drop_table().await?;
        let mut outcome = result?;
        self.record(Case::new(key, "postgres"), &mut outcome);
        Ok(())
    }

    /// Write throughput (unary Record, closed loop) with `subscribers` live subscribers each
    /// receiving every entry.
    async fn fanout_throughput(
        &mut self,
        subscribers: usize,
        writers: usize,
        factory: &Arc<EntryFactory>,
        timing: Timing,
    ) -> anyhow::Result<()> {
        let key = format!("fanout throughput subs={subscribers}");
        if !self.wants(&key) {
            return Ok(());
        }
        let server = self.start("audit").await?;
        let subs = fanout::Subscribers::open(&server.uri(), subscribers, false).await?;
        let clients = connect(&server.uri(), writers.min(MAX_CONNECTIONS)).await?;
        let cpu = CpuMeter::start(&server);
        let mut outcome = drive(
            clients,
            Work::Record {
                concurrency: writers,
            },
            factory.clone(),
            timing,
        )
        .await;
        let mut case = Case::new(key, "audit");
        case.server_cpu_us_per_entry = cpu.per_entry_us(outcome.all_entries);
        case.subscribers = Some(subscribers);
        let seen = subs.finish(0, Duration::ZERO).await;
        let failed = seen.iter().filter(|s| s.error.is_some()).count();
        case.notes.insert("subscriber_errors".into(), failed as f64);
        case.server_peak_rss_mib = server.peak_rss_mib();
        case.server_rss_mib = server.rss_mib();
        server.stop().await?;
        self.record(case, &mut outcome);
        Ok(())
    }

    /// Record-to-delivery latency with `subscribers` live subscribers while writers record
    /// `rate` entries per second (unary Record, open loop).
    async fn fanout_delivery(
        &mut self,
        subscribers: usize,
        rate: u64,
        factory: &Arc<EntryFactory>,
        timing: Timing,
    ) -> anyhow::Result<()> {
        let key = format!("fanout delivery subs={subscribers}");
        if !self.wants(&key) {
            return Ok(());
        }
        let server = self.start("audit").await?;
        let subs = fanout::Subscribers::open(&server.uri(), subscribers, true).await?;
        let clients = connect(&server.uri(), MAX_CONNECTIONS).await?;
        let cpu = CpuMeter::start(&server);
        let last_sequence = Arc::new(AtomicU64::new(0));
        let window_from = SystemTime::now() + timing.warmup;
        let window_until = window_from + timing.measure;
        let mut outcome = {
            let factory = factory.clone();
            let last_sequence = last_sequence.clone();
            paced(rate, 1024, timing, move |n| {
                let mut client = clients[n as usize % clients.len()].clone();
                let entry = factory.entry();
                let last_sequence = last_sequence.clone();
                async move {
                    let response = client
                        .record(pb::RecordRequest {
                            entry: Some(entry),
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    last_sequence.fetch_max(response.sequence, Ordering::Relaxed);
                    Ok(1)
                }
            })
            .await
        };
        let seen = subs
            .finish(
                last_sequence.load(Ordering::Relaxed),
                Duration::from_secs(10),
            )
            .await;
        let mut case = Case::new(key, "audit");
        case.server_cpu_us_per_entry = cpu.per_entry_us(outcome.all_entries);
        case.subscribers = Some(subscribers);
        let mut delivery = fanout::delivered_between(&seen, window_from, window_until);
        let expected = outcome.entries as f64 * subscribers as f64;
        case.notes.insert("target_rate".into(), rate as f64);
        case.notes
            .insert("deliveries".into(), delivery.len() as f64);
        if expected > 0.0 {
            case.notes.insert(
                "delivered_fraction".into(),
                delivery.len() as f64 / expected,
            );
        }
        let failed = seen.iter().filter(|s| s.error.is_some()).count();
        case.notes.insert("subscriber_errors".into(), failed as f64);
        case.delivery = Latency::of(&mut delivery);
        case.server_peak_rss_mib = server.peak_rss_mib();
        case.server_rss_mib = server.rss_mib();
        server.stop().await?;
        self.record(case, &mut outcome);
        Ok(())
    }

    /// Write throughput (as `fanout throughput`) while `subscribers` subscribers that never
    /// read hold their streams open; compare with `fanout throughput subs=0` of the same run.
    async fn stalled(
        &mut self,
        subscribers: usize,
        window: u32,
        apart: bool,
        writers: usize,
        factory: &Arc<EntryFactory>,
        timing: Timing,
    ) -> anyhow::Result<()> {
        let key = format!("stalled subscribers {subscribers}");
        if !self.wants(&key) {
            return Ok(());
        }
        let server = self.start("audit").await?;
        let stalled = if apart {
            fanout::Stalled::apart(&self.noop_bin, &server.uri(), subscribers, window).await?
        } else {
            fanout::Stalled::open(&server.uri(), subscribers, window).await?
        };
        let clients = connect(&server.uri(), writers.min(MAX_CONNECTIONS)).await?;
        let cpu = CpuMeter::start(&server);
        let work = Work::Record {
            concurrency: writers,
        };
        let mut outcome = drive(clients, work, factory.clone(), timing).await;
        let mut case = Case::new(key, "audit");
        case.server_cpu_us_per_entry = cpu.per_entry_us(outcome.all_entries);
        case.subscribers = Some(subscribers);
        case.notes
            .insert("stream_window_bytes".into(), f64::from(window));
        case.notes
            .insert("own_process".into(), if apart { 1.0 } else { 0.0 });
        case.server_peak_rss_mib = server.peak_rss_mib();
        case.server_rss_mib = server.rss_mib();
        // Gone before the server stops: a stream nobody reads would hold up its graceful
        // shutdown.
        drop(stalled);
        server.stop().await?;
        self.record(case, &mut outcome);
        Ok(())
    }

    /// `RecordBatch` of 20 entries from 4 writers for `duration`, with the database and its
    /// write-ahead log measured on disk: bytes per entry stored, at the end and at the WAL's
    /// largest.
    async fn sustained(
        &mut self,
        duration: Duration,
        factory: &Arc<EntryFactory>,
    ) -> anyhow::Result<()> {
        const BATCH: usize = 20;
        const WRITERS: usize = 4;
        let key = format!(
            "sustained batch {BATCH} x{WRITERS} {}s",
            duration.as_secs_f64()
        );
        if !self.wants(&key) {
            return Ok(());
        }
        let server = self.start("audit").await?;
        let data = self
            .root
            .join(format!("case-{:03}", self.cases))
            .join("data");
        let (database, wal) = (data.join("audit.db"), data.join("audit.db-wal"));
        let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
        let clients = connect(&server.uri(), WRITERS).await?;
        let cpu = CpuMeter::start(&server);
        let largest_wal = Arc::new(AtomicU64::new(0));
        let watcher = {
            let (largest_wal, wal) = (largest_wal.clone(), wal.clone());
            tokio::spawn(async move {
                loop {
                    largest_wal.fetch_max(size(&wal), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let timing = Timing {
            warmup: Duration::ZERO,
            measure: duration,
        };
        let work = Work::Batches {
            batch: BATCH,
            writers: WRITERS,
        };
        let mut outcome = drive(clients, work, factory.clone(), timing).await;
        watcher.abort();
        let mut case = Case::new(key, "audit");
        case.server_cpu_us_per_entry = cpu.per_entry_us(outcome.all_entries);
        let stored = outcome.all_entries.max(1) as f64;
        let (database_bytes, wal_bytes) = (size(&database), size(&wal));
        let largest = largest_wal.load(Ordering::Relaxed).max(wal_bytes);
        for (name, value) in [
            ("database_bytes", database_bytes as f64),
            ("wal_bytes", wal_bytes as f64),
            ("largest_wal_bytes", largest as f64),
            ("database_bytes_per_entry", database_bytes as f64 / stored),
            ("wal_bytes_per_entry", wal_bytes as f64 / stored),
            ("largest_wal_bytes_per_entry", largest as f64 / stored),
        ] {
            case.notes.insert(name.into(), value);
        }
        eprintln!(
            "  {}: database {:.1} MiB, WAL {:.1} MiB (largest {:.1} MiB) for {} entries",
            case.key,
            database_bytes as f64 / 1048576.0,
            wal_bytes as f64 / 1048576.0,
            largest as f64 / 1048576.0,
            outcome.all_entries
        );
        case.server_peak_rss_mib = server.peak_rss_mib();
        case.server_rss_mib = server.rss_mib();
        server.stop().await?;
        self.record(case, &mut outcome);
        Ok(())
    }

    /// Server memory with `subscribers` idle subscribers, each on its own connection.
    async fn idle(&mut self, subscribers: usize) -> anyhow::Result<()> {
        let key = format!("idle subscribers {subscribers}");
        if !self.wants(&key) {
            return Ok(());
        }
        let server = self.start("audit").await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = server.rss_mib().unwrap_or(0.0);
        let subs = fanout::Subscribers::open(&server.uri(), subscribers, false).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut case = Case::new(key, "audit");
        case.subscribers = Some(subscribers);
        case.server_peak_rss_mib = server.peak_rss_mib();
        case.server_rss_mib = server.rss_mib();
        let after = case.server_rss_mib.unwrap_or(0.0);
        case.notes.insert("rss_before_mib".into(), before);
        case.notes.insert(
            "kib_per_subscriber".into(),
            (after - before) * 1024.0 / subscribers.max(1) as f64,
        );
        let seen = subs.finish(0, Duration::ZERO).await;
        let failed = seen.iter().filter(|s| s.error.is_some()).count();
        case.notes.insert("subscriber_errors".into(), failed as f64);
        server.stop().await?;
        self.record(
            case,
            &mut RunOutcome {
                window: Duration::from_secs(1),
                ..Default::default()
            },
        );
        Ok(())
    }
}

/// `count` separate connections to `uri`.
async fn connect(uri: &str, count: usize) -> anyhow::Result<Vec<AuditServiceClient<Channel>>> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        clients.push(audit_client::Client::connect(uri).await?.raw());
    }
    Ok(clients)
}

/// Runs `work` against the clients (worker `w` uses connection `w % connections`).
async fn drive(
    clients: Vec<AuditServiceClient<Channel>>,
    work: Work,
    factory: Arc<EntryFactory>,
    timing: Timing,
) -> RunOutcome {
    match work {
        Work::Record { concurrency } => {
            closed_loop(concurrency, timing, move |worker| {
                let mut client = clients[worker % clients.len()].clone();
                let entry = factory.entry();
                async move {
                    client
                        .record(pb::RecordRequest {
                            entry: Some(entry),
                            ..Default::default()
                        })
                        .await?;
                    Ok(1)
                }
            })
            .await
        }
        Work::Batch { batch } | Work::Batches { batch, .. } => {
            let writers = match work {
                Work::Batches { writers, .. } => writers,
                _ => BATCH_CONCURRENCY,
            };
            closed_loop(writers, timing, move |worker| {
                let mut client = clients[worker % clients.len()].clone();
                let entries = factory.batch(batch);
                async move {
                    let request_id = entries[0].request_id.clone();
                    let response = client
                        .record_batch(pb::RecordBatchRequest {
                            request_id,
                            entries,
                            ..Default::default()
                        })
                        .await?;
                    Ok(response.into_inner().ids.len() as u64)
                }
            })
            .await
        }
    }
}
