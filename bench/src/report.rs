//! Results: percentiles, the printed table, the ratios against the baselines, and the JSON file.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub samples: usize,
}

impl Latency {
    /// Percentiles of `micros` (sorted in place); `None` when there are no samples.
    pub fn of(micros: &mut [u32]) -> Option<Self> {
        if micros.is_empty() {
            return None;
        }
        micros.sort_unstable();
        let at = |p: f64| {
            let rank = ((p * micros.len() as f64).ceil() as usize).clamp(1, micros.len());
            f64::from(micros[rank - 1]) / 1000.0
        };
        Some(Latency {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            samples: micros.len(),
        })
    }
}

/// One measured case.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// Unique key, e.g. `audit record c=64 300B`.
    pub key: String,
    /// What ran: `audit`, `noop`, `sqlite`, `append`, `postgres`.
    pub system: &'static str,
    /// Committed (or answered, for the no-op server) entries per second in the measured window.
    pub entries_per_sec: f64,
    /// Latency of one call (one entry, one batch or one transaction).
    pub latency: Option<Latency>,
    /// Record-to-delivery latency, for fan-out cases.
    pub delivery: Option<Latency>,
    /// Live subscribers during the case.
    pub subscribers: Option<usize>,
    /// Peak resident memory of the server process (VmHWM).
    pub server_peak_rss_mib: Option<f64>,
    /// Resident memory of the server process at the end of the case (VmRSS).
    pub server_rss_mib: Option<f64>,
    /// Server CPU time (user + system) per entry written.
    pub server_cpu_us_per_entry: Option<f64>,
    /// Failed calls.
    pub errors: u64,
    /// Anything else worth keeping (achieved rate, deliveries, ...).
    pub notes: BTreeMap<String, f64>,
    /// A target of its own (the scale cases), judged with the others.
    #[serde(skip)]
    pub bound: Option<Bound>,
}

/// A case's own target: a figure and the limit it must stay within.
#[derive(Debug, Clone)]
pub struct Bound {
    name: String,
    value: f64,
    limit: f64,
    at_least: bool,
}

impl Bound {
    /// `value` must not exceed `limit`.
    pub fn at_most(name: String, value: f64, limit: f64) -> Self {
        Bound {
            name,
            value,
            limit,
            at_least: false,
        }
    }

    /// `value` must reach `limit`.
    pub fn at_least(name: String, value: f64, limit: f64) -> Self {
        Bound {
            name,
            value,
            limit,
            at_least: true,
        }
    }
}

impl Case {
    pub fn new(key: impl Into<String>, system: &'static str) -> Self {
        Case {
            key: key.into(),
            system,
            entries_per_sec: 0.0,
            latency: None,
            delivery: None,
            subscribers: None,
            server_peak_rss_mib: None,
            server_rss_mib: None,
            server_cpu_us_per_entry: None,
            errors: 0,
            notes: BTreeMap::new(),
            bound: None,
        }
    }
}

/// A ratio of one of our figures to a baseline, with its target when it has one.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub name: String,
    pub ours: String,
    pub baseline: String,
    pub value: f64,
    /// Human-readable goal, e.g. `>= 0.50`.
    pub target: Option<String>,
    pub met: Option<bool>,
}

/// Everything one run produced.
#[derive(Debug, Serialize)]
pub struct Report {
    pub quick: bool,
    pub machine: BTreeMap<String, String>,
    pub duration_secs: f64,
    pub cases: Vec<Case>,
    pub ratios: Vec<Ratio>,
    pub targets: Vec<Ratio>,
    pub skipped: Vec<String>,
}

impl Report {
    pub fn case(&self, key: &str) -> Option<&Case> {
        self.cases.iter().find(|c| c.key == key)
    }

    /// Computes ratios and targets from the cases present.
    pub fn judge(&mut self, sizes: &[&str]) {
        let rate = |key: &str| self.case(key).map(|c| c.entries_per_sec);
        let mut ratios = Vec::new();
        let mut targets = Vec::new();
        let push = |list: &mut Vec<Ratio>,
                    name: String,
                    ours: &str,
                    baseline: &str,
                    target: Option<(f64, bool)>| {
            let (Some(o), Some(b)) = (rate(ours), rate(baseline)) else {
                return;
            };
            if b <= 0.0 {
                return;
            }
            let value = o / b;
            list.push(Ratio {
                name,
                ours: ours.to_string(),
                baseline: baseline.to_string(),
                value,
                target: target
                    .map(|(t, at_least)| format!("{} {t:.2}", if at_least { ">=" } else { "<=" })),
                met: target.map(|(t, at_least)| if at_least { value >= t } else { value <= t }),
            });
        };
        // Every audit case against the same workload on the no-op server and in raw SQLite.
        for case in self.cases.iter().filter(|c| c.system == "audit") {
            let rest = &case.key["audit ".len()..];
            let noop = format!("noop {rest}");
            push(
                &mut ratios,
                format!("{rest} / no-op"),
                &case.key,
                &noop,
                None,
            );
            let sqlite = format!("sqlite {rest}");
            push(
                &mut ratios,
                format!("{rest} / raw SQLite"),
                &case.key,
                &sqlite,
                None,
            );
            if let Some(append) = append_counterpart(rest) {
                push(
                    &mut ratios,
                    format!("{rest} / append ceiling"),
                    &case.key,
                    &append,
                    None,
                );
                let lower = lower_of(&rate, &noop, &append);
                push(
                    &mut ratios,
                    format!("{rest} / min(no-op, append) ({})", system_of(&lower)),
                    &case.key,
                    &lower,
                    None,
                );
            }
        }
        for size in sizes {
            push(
                &mut ratios,
                format!("batch 100 {size} while retention prunes / without"),
                &format!("audit-retain batch 100 {size}"),
                &format!("audit batch 100 {size}"),
                None,
            );
            for (ours, peer) in [
                (
                    format!("audit batch 100 {size}"),
                    format!("postgres batch 100 {size}"),
                ),
                (
                    format!("audit record c=64 {size}"),
                    format!("postgres per-entry c=64 {size}"),
                ),
                (
                    format!("audit record c=1 {size}"),
                    format!("postgres per-entry c=1 {size}"),
                ),
            ] {
                push(
                    &mut ratios,
                    format!("{} / PostgreSQL {}", &ours[6..], &peer[9..]),
                    &ours,
                    &peer,
                    None,
                );
            }
        }

        for size in sizes {
            push(
                &mut targets,
                format!("Record c=64 {size} vs no-op server"),
                &format!("audit record c=64 {size}"),
                &format!("noop record c=64 {size}"),
                Some((0.5, true)),
            );
            // The lower ceiling of the two is the one that bounds us.
            let transport = format!("noop batch 100 {size}");
            let lower = lower_of(&rate, &transport, &format!("append batch 100 {size}"));
            push(
                &mut targets,
                format!(
                    "RecordBatch(100) {size} vs min(no-op, append ceiling) ({})",
                    system_of(&lower)
                ),
                &format!("audit batch 100 {size}"),
                &lower,
                Some((0.8, true)),
            );
            push(
                &mut targets,
                format!("RecordBatch(100) {size} vs no-op server (milestone)"),
                &format!("audit batch 100 {size}"),
                &transport,
                Some((0.5, true)),
            );
            push(
                &mut targets,
                format!("Record c=1 {size} vs PostgreSQL one commit per entry c=1"),
                &format!("audit record c=1 {size}"),
                &format!("postgres per-entry c=1 {size}"),
                Some((1.0, true)),
            );
            // Latency, not rate: p50 of one Record against one append + fdatasync.
            if let (Some(ours), Some(ceiling)) = (
                self.case(&format!("audit record c=1 {size}")),
                self.case(&format!("append commit per entry {size}")),
            ) && let (Some(ours_latency), Some(ceiling_latency)) =
                (ours.latency, ceiling.latency)
                && ceiling_latency.p50_ms > 0.0
            {
                let value = ours_latency.p50_ms / ceiling_latency.p50_ms;
                targets.push(Ratio {
                    name: format!("Record c=1 {size} p50 latency / append ceiling's commit p50"),
                    ours: ours.key.clone(),
                    baseline: ceiling.key.clone(),
                    value,
                    target: Some("<= 1.50".into()),
                    met: Some(value <= 1.5),
                });
            }
            // The faster of PostgreSQL's one-commit-per-entry runs.
            let c1 = format!("postgres per-entry c=1 {size}");
            let c64 = format!("postgres per-entry c=64 {size}");
            let best = match (rate(&c1), rate(&c64)) {
                (Some(a), Some(b)) if a > b => c1,
                _ => c64,
            };
            push(
                &mut targets,
                format!("RecordBatch(100) {size} vs PostgreSQL one commit per entry (best)"),
                &format!("audit batch 100 {size}"),
                &best,
                Some((5.0, true)),
            );
        }

        // The PostgreSQL backend against hand-written PostgreSQL in the same run.
        for size in sizes {
            let ours = format!("audit-pg batch 100 {size}");
            push(
                &mut targets,
                format!(
                    "PostgreSQL backend RecordBatch(100) {size} vs hand-written batched insert"
                ),
                &ours,
                &format!("postgres batch 100 {size}"),
                Some((0.8, true)),
            );
            let c1 = format!("postgres per-entry c=1 {size}");
            let c64 = format!("postgres per-entry c=64 {size}");
            let best = match (rate(&c1), rate(&c64)) {
                (Some(a), Some(b)) if a > b => c1,
                (Some(_), None) => c1,
                _ => c64,
            };
            push(
                &mut targets,
                format!(
                    "PostgreSQL backend RecordBatch(100) {size} vs one commit per entry (best)"
                ),
                &ours,
                &best,
                Some((5.0, true)),
            );
            push(
                &mut ratios,
                format!("PostgreSQL backend batch 100 {size}: 2 replicas / 1"),
                &format!("audit-pg x2 batch 100 {size}"),
                &ours,
                None,
            );
        }

        let fanout_base = self
            .case("fanout throughput subs=0")
            .map(|c| c.entries_per_sec);
        if let (Some(base), Some(with)) = (fanout_base, self.case("fanout throughput subs=100")) {
            let drop = 1.0 - with.entries_per_sec / base;
            targets.push(Ratio {
                name: "write throughput lost to 100 subscribers".into(),
                ours: with.key.clone(),
                baseline: "fanout throughput subs=0".into(),
                value: drop,
                target: Some("<= 0.10".into()),
                met: Some(drop <= 0.10),
            });
        }
        if let (Some(base), Some(with)) = (
            fanout_base,
            self.cases
                .iter()
                .find(|c| c.key.starts_with("stalled subscribers")),
        ) {
            let drop = 1.0 - with.entries_per_sec / base;
            targets.push(Ratio {
                name: format!(
                    "write throughput lost to {} stalled subscribers",
                    with.subscribers.unwrap_or(0)
                ),
                ours: with.key.clone(),
                baseline: "fanout throughput subs=0".into(),
                value: drop,
                target: Some("<= 0.10".into()),
                met: Some(drop <= 0.10),
            });
        }
        if let Some(case) = self.case("fanout delivery subs=100")
            && let Some(delivery) = case.delivery
        {
            targets.push(Ratio {
                name: format!(
                    "p99 record-to-delivery, 100 subscribers at {:.0} entries/s (ms)",
                    case.notes.get("target_rate").copied().unwrap_or(0.0)
                ),
                ours: case.key.clone(),
                baseline: "-".into(),
                value: delivery.p99_ms,
                target: Some("<= 10 ms".into()),
                met: Some(delivery.p99_ms <= 10.0),
            });
        }
        if let Some(case) = self
            .cases
            .iter()
            .find(|c| c.key.starts_with("idle subscribers"))
            && let Some(rss) = case.server_peak_rss_mib
        {
            targets.push(Ratio {
                name: format!(
                    "server peak RSS with {} idle subscribers (MiB)",
                    case.subscribers.unwrap_or(0)
                ),
                ours: case.key.clone(),
                baseline: "-".into(),
                value: rss,
                target: Some("<= 200 MiB".into()),
                met: Some(rss <= 200.0),
            });
        }
        for case in &self.cases {
            if let Some(bound) = &case.bound {
                let met = if bound.at_least {
                    bound.value >= bound.limit
                } else {
                    bound.value <= bound.limit
                };
                targets.push(Ratio {
                    name: bound.name.clone(),
                    ours: case.key.clone(),
                    baseline: "-".into(),
                    value: bound.value,
                    target: Some(format!(
                        "{} {}",
                        if bound.at_least { ">=" } else { "<=" },
                        bound.limit
                    )),
                    met: Some(met),
                });
            }
        }
        self.ratios = ratios;
        self.targets = targets;
    }

    /// The results as Markdown tables.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let ms = |l: &Option<Latency>| match l {
            Some(l) => format!("{:.2} / {:.2} / {:.2}", l.p50_ms, l.p99_ms, l.p999_ms),
            None => "-".into(),
        };
        let opt = |v: Option<f64>, digits: usize| match v {
            Some(v) => format!("{v:.digits$}"),
            None => "-".into(),
        };
        out.push_str(
            "| case | entries/s | call p50 / p99 / p99.9 ms | delivery p50 / p99 / p99.9 ms | server peak RSS MiB | server CPU µs/entry | errors |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for c in &self.cases {
            out.push_str(&format!(
                "| {} | {:.0} | {} | {} | {} | {} | {} |\n",
                c.key,
                c.entries_per_sec,
                ms(&c.latency),
                ms(&c.delivery),
                opt(c.server_peak_rss_mib, 1),
                opt(c.server_cpu_us_per_entry, 1),
                c.errors,
            ));
        }
        out.push_str("\n| ratio | value |\n|---|---:|\n");
        for r in &self.ratios {
            out.push_str(&format!("| {} | {:.2} |\n", r.name, r.value));
        }
        out.push_str("\n| target | value | goal | met |\n|---|---:|---|---|\n");
        for t in &self.targets {
            out.push_str(&format!(
                "| {} | {:.2} | {} | {} |\n",
                t.name,
                t.value,
                t.target.as_deref().unwrap_or("-"),
                match t.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "-",
                }
            ));
        }
        for skipped in &self.skipped {
            out.push_str(&format!("\nSkipped: {skipped}\n"));
        }
        out
    }
}

/// Microseconds of `d`, saturating.
pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// The machine the run happened on, from /proc.
pub fn machine() -> BTreeMap<String, String> {
    let mut info = BTreeMap::new();
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    if let Some(model) = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("model name")
            .and_then(|r| r.split(':').nth(1))
    }) {
        info.insert("cpu".into(), model.trim().to_string());
    }
    info.insert(
        "cpus".into(),
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    if let Some(mem) = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
    {
        info.insert("memory".into(), mem["MemTotal:".len()..].trim().to_string());
    }
    info.insert(
        "kernel".into(),
        read("/proc/sys/kernel/osrelease").trim().to_string(),
    );
    info.insert(
        "loadavg_at_start".into(),
        read("/proc/loadavg").trim().to_string(),
    );
    info
}

/// The append-ceiling case for the workload of an audit case (`rest`: its key after `audit `):
/// the same batch, or one commit per entry for a single unary caller. Concurrent unary callers
/// have none: group commit puts several of them in one sync, so per-entry syncs bound nothing.
fn append_counterpart(rest: &str) -> Option<String> {
    if rest.starts_with("batch ") {
        return Some(format!("append {rest}"));
    }
    rest.strip_prefix("record c=1 ")
        .map(|size| format!("append commit per entry {size}"))
}

/// Of two baseline cases, the slower one (the one that bounds us); the first when the second
/// did not run.
fn lower_of(rate: &impl Fn(&str) -> Option<f64>, first: &str, second: &str) -> String {
    match (rate(first), rate(second)) {
        (Some(a), Some(b)) if b < a => second.to_string(),
        (None, Some(_)) => second.to_string(),
        _ => first.to_string(),
    }
}

/// The system a case key names (its first word: `noop`, `append`, `sqlite`, ...).
fn system_of(key: &str) -> &str {
    key.split(' ').next().unwrap_or("")
}
