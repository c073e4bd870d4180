//! Prometheus metrics (`--metrics-listen`): the server's own scrape output after a known number
//! of calls, and a real Prometheus (the Debian package `prometheus`, installed by
//! `scripts/install-prometheus`) scraping the live server every second, read back through its
//! HTTP API.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use audit_client::pb;
use audit_tests::{PATIENCE, TestServer, entry, http_get};
use tokio::process::{Child, Command};

/// The value of the sample `name` (labels included, as the server prints them) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a number"))
}

async fn scrape(server: &TestServer) -> String {
    let addr = server.metrics_addr.expect("a metrics listener");
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// Records `count` entries, one call each.
async fn record(server: &TestServer, count: usize) {
    let client = server.client().await;
    for i in 0..count {
        client
            .record(entry("billing", "/billing.v1.Billing/Charge").resource(format!("invoice/{i}")))
            .await
            .expect("record");
    }
}

#[tokio::test]
async fn the_scrape_counts_entries_and_calls_and_reads_the_store() {
    let server = TestServer::start_with_args(&["--metrics-listen", "127.0.0.1:0"]).await;
    let before = scrape(&server).await;
    assert_eq!(sample(&before, "audit_log_sequence"), Some(0.0), "{before}");
    assert_eq!(sample(&before, "audit_store_writable"), Some(1.0));
    assert_eq!(sample(&before, "audit_subscribers"), Some(0.0));

    record(&server, 7).await;
    let client = server.client().await;
    let batch = (0..3).map(|i| entry("kms", "/kms.v1.Keys/Get").resource(format!("key/{i}")));
    client.record_batch("batch-1", batch).await.expect("batch");
    let refused = client.record(pb::AuditEntry::default()).await;
    assert!(refused.is_err(), "an empty entry is refused");
    let id = "0190b5a8-1c2d-7e3f-8a4b-5c6d7e8f9a0b";
    let retried = entry("billing", "/billing.v1.Billing/Refund")
        .id(id)
        .build();
    client.record(retried.clone()).await.expect("first");
    client.record(retried).await.expect("retry");

    let text = scrape(&server).await;
    let value = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name} in\n{text}"));
    assert_eq!(value("audit_log_sequence"), 11.0);
    assert_eq!(
        value(r#"audit_entries_recorded_total{outcome="stored"}"#),
        11.0
    );
    assert_eq!(
        value(r#"audit_entries_recorded_total{outcome="retried"}"#),
        1.0
    );
    assert_eq!(
        value(r#"audit_record_requests_total{method="Record",code="OK"}"#),
        9.0
    );
    assert_eq!(
        value(r#"audit_record_requests_total{method="RecordBatch",code="OK"}"#),
        1.0
    );
    assert_eq!(
        value(r#"audit_record_requests_total{method="Record",code="INVALID_ARGUMENT"}"#),
        1.0
    );
    // Ten calls reached the store, one group each (calls in turn); 12 entries with the retry.
    assert_eq!(value("audit_commit_group_entries_count"), 10.0);
    assert_eq!(value("audit_commit_group_entries_sum"), 12.0);
    assert!(value("audit_commit_duration_seconds_sum") > 0.0);
    // The writer frees a call's queue bytes just after answering it.
    let deadline = Instant::now() + PATIENCE;
    while sample(&scrape(&server).await, "audit_write_queue_bytes") != Some(0.0) {
        assert!(Instant::now() < deadline, "the write queue emptied in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(value(r#"audit_denied_total{recorded="true"}"#), 0.0);
    assert!(!text.contains("invoice/"), "no entry content in labels");

    let (status, _) = http_get(server.metrics_addr.unwrap(), "/other").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn metrics_are_off_by_default() {
    let server = TestServer::start().await;
    assert_eq!(server.metrics_addr, None);
}

#[tokio::test]
async fn a_busy_address_fails_the_start_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let error = audit_tests::start_failure(&["--metrics-listen", &addr]).await;
    assert!(error.contains("--metrics-listen"), "{error}");
}

// === a real Prometheus ===

/// A Prometheus scraping `target` every second, its data in a temporary directory.
struct Prometheus {
    _child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

const PROMETHEUS: &str = "/usr/bin/prometheus";

impl Prometheus {
    async fn start(target: SocketAddr) -> Self {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: run scripts/install-prometheus"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: audit\n    scrape_interval: 1s\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A free port, released for Prometheus to take.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let prometheus = Self {
            _child: child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + PATIENCE;
        while !prometheus.ready().await {
            assert!(Instant::now() < deadline, "prometheus became ready in time");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        prometheus
    }

    async fn ready(&self) -> bool {
        if tokio::net::TcpStream::connect(self.addr).await.is_err() {
            return false;
        }
        http_get(self.addr, "/-/ready").await.0 == 200
    }

    /// The value of the instant query `query` (one series), if it has one yet.
    async fn query(&self, query: &str) -> Option<f64> {
        let (status, body) =
            http_get(self.addr, &format!("/api/v1/query?query={}", encode(query))).await;
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(answer["status"], "success", "{body}");
        let value = answer["data"]["result"].get(0)?["value"][1].as_str()?;
        value.parse().ok()
    }

    /// Waits until `query` reads `expected`.
    async fn wait_for(&self, query: &str, expected: f64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.query(query).await;
            if value == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{query}: {value:?}, not {expected}, in time"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Percent-encodes a query for a URL.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn prometheus_scrapes_the_live_server() {
    let server = TestServer::start_with_args(&["--metrics-listen", "127.0.0.1:0"]).await;
    let prometheus = Prometheus::start(server.metrics_addr.unwrap()).await;
    prometheus.wait_for("up{job=\"audit\"}", 1.0).await;
    prometheus.wait_for("audit_store_writable", 1.0).await;

    record(&server, 25).await;
    prometheus.wait_for("audit_log_sequence", 25.0).await;
    prometheus
        .wait_for("audit_entries_recorded_total{outcome=\"stored\"}", 25.0)
        .await;
    prometheus
        .wait_for(
            "sum(audit_record_requests_total{method=\"Record\",code=\"OK\"})",
            25.0,
        )
        .await;
    prometheus
        .wait_for("audit_commit_group_entries_sum", 25.0)
        .await;
}

/// Every `audit_*` metric named by the shipped alert rules and dashboard, without the suffixes
/// Prometheus adds to histograms.
fn metrics_named_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("audit_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn the_alerts_and_the_dashboard_use_only_metrics_the_server_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/audit.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
    // A forwarder, so that the per-forwarder metrics are exported too.
    let out = tempfile::tempdir().unwrap();
    let forward = format!("f1=file://{}", out.path().join("out.jsonl").display());
    let server =
        TestServer::start_with_args(&["--metrics-listen", "127.0.0.1:0", "--forward", &forward])
            .await;
    record(&server, 1).await;
    let text = scrape(&server).await;
    let exported: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .map(|name| name.to_string())
        .collect();
    let named = metrics_named_in(&alerts)
        .into_iter()
        .chain(metrics_named_in(&dashboard));
    for name in named {
        let base = name.strip_suffix("_total").unwrap_or(&name);
        assert!(
            exported.contains(&name) || exported.contains(base),
            "{name} is not exported; the server exports {exported:?}"
        );
    }
    assert!(exported.contains("audit_forwarder_position"), "{text}");
}

#[tokio::test]
async fn refusals_are_counted_as_recorded_or_over_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[grant]]\nto = [\"loopback\"]\nallow = [\"record\"]\n",
    )
    .unwrap();
    let server = TestServer::start_with_args(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--policy",
        policy.to_str().unwrap(),
        "--max-denied-per-second",
        "2",
    ])
    .await;
    let client = server.client().await;
    for _ in 0..10 {
        let refused = client.raw().query(pb::QueryRequest::default()).await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
    }
    let text = scrape(&server).await;
    let value = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name} in\n{text}"));
    let recorded = value(r#"audit_denied_total{recorded="true"}"#);
    let unrecorded = value(r#"audit_denied_total{recorded="false"}"#);
    assert_eq!(recorded + unrecorded, 10.0, "{text}");
    // Two per one-second window: the ten calls span one or two windows.
    assert!((2.0..=4.0).contains(&recorded), "{text}");
    // The recorded refusals are the log's only entries.
    assert_eq!(value("audit_log_sequence"), recorded);
    assert_eq!(
        value(r#"audit_record_requests_total{method="Query",code="UNAUTHENTICATED"}"#),
        10.0
    );
}
