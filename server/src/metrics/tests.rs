//! The text output of the metrics over a real log (the memory backend): what the writer
//! reports through its observer, what the gauges read at scrape time, and the request counts.

use std::sync::Arc;
use std::time::Duration;

use audit_proto::pb;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::access::DenialLimits;
use crate::config::Limits;
use crate::store::memory::MemoryDatabase;
use crate::store::{Checkpointing, StartupCheck, engine};
use crate::validate::{self, Context};

fn open_log(db: &MemoryDatabase, every_entries: u64) -> Log {
    let options = engine::Options {
        max_pending_bytes: 1 << 20,
        max_group_entries: 64,
        read_connections: 1,
        checkpointing: Checkpointing {
            signing_key: None,
            log_name: "metrics".into(),
            every_entries,
            interval: Duration::from_secs(600),
            copy_dir: None,
            startup_check: StartupCheck::Full,
        },
    };
    let key = audit_ledger::SigningKey::generate("metrics").unwrap();
    Log::open(db.backend(true), key, true, false, &options).expect("open")
}

fn new_entry(id: &str) -> validate::NewEntry {
    let entry = pb::AuditEntry {
        id: id.into(),
        source: "billing".into(),
        method: "/billing.v1.Billing/Charge".into(),
        outcome: pb::Outcome::Success as i32,
        resource: "invoice/1".into(),
        request_id: "r1".into(),
        ..Default::default()
    };
    let context = Context {
        received_time: validate::now(),
        recorder: None,
    };
    validate::entry(entry, "entry", None, &context, &Limits::default()).expect("valid entry")
}

/// The value of the sample `name` (with its labels, as printed) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_output_counts_commits_entries_requests_and_reads_gauges() {
    let db = MemoryDatabase::new();
    let log = open_log(&db, 3);
    let access = Arc::new(Access::new(
        None,
        DenialLimits {
            per_second: 10,
            per_identity_per_second: 10,
        },
    ));
    let metrics = Metrics::new(access);
    log.observe(metrics.clone());
    let hub = Hub::new(
        log.clone(),
        4,
        Duration::from_secs(60),
        1 << 20,
        CancellationToken::new(),
    );
    metrics.watch(log.clone(), hub.clone(), Vec::new());
    // A subscriber from the start that is never read: it stops once its stream buffer is full.
    let _stream = hub.subscribe(pb::Filter::default(), 0).expect("subscribe");

    let ids: Vec<String> = (0..5).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let first: Vec<_> = ids[..3].iter().map(|id| new_entry(id)).collect();
    log.append(first).await.expect("append three");
    // Two new ones and a retry of the first: one group, 2 stored and 1 retried.
    let second = vec![new_entry(&ids[3]), new_entry(&ids[4]), new_entry(&ids[0])];
    log.append(second).await.expect("append three more");
    let rest: Vec<String> = (0..95).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    log.append(rest.iter().map(|id| new_entry(id)).collect())
        .await
        .expect("append 95");
    // Its buffer holds the first heartbeat and 63 entries: 37 behind the head of 100. The
    // writer frees a job's queue bytes just after it answers it.
    let settled = |text: &str| {
        sample(text, "audit_subscriber_lag_entries") == Some(37.0)
            && sample(text, "audit_write_queue_bytes") == Some(0.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !settled(&metrics.render()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    metrics.request("Record", tonic::Code::Ok);
    metrics.request("Record", tonic::Code::Ok);
    metrics.request("Query", tonic::Code::InvalidArgument);

    let text = metrics.render();
    let value = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name} in\n{text}"));
    assert_eq!(
        value(r#"audit_entries_recorded_total{outcome="stored"}"#),
        100.0
    );
    assert_eq!(
        value(r#"audit_entries_recorded_total{outcome="retried"}"#),
        1.0
    );
    assert_eq!(value("audit_commit_group_entries_count"), 3.0);
    assert_eq!(value("audit_commit_group_entries_sum"), 101.0);
    assert_eq!(value("audit_commit_duration_seconds_count"), 3.0);
    // Checkpoints (every 3 entries) rode on the commits up to 3 and up to 100, not on 5.
    assert_eq!(value("audit_checkpoints_signed_total"), 2.0);
    assert_eq!(value("audit_log_sequence"), 100.0);
    assert_eq!(value("audit_log_pruned_through"), 0.0);
    assert_eq!(value("audit_store_writable"), 1.0);
    assert_eq!(value("audit_write_queue_bytes"), 0.0);
    assert_eq!(value("audit_subscribers"), 1.0);
    assert_eq!(value("audit_subscriber_lag_entries"), 37.0);
    assert_eq!(
        value(r#"audit_record_requests_total{method="Record",code="OK"}"#),
        2.0
    );
    assert_eq!(
        value(r#"audit_record_requests_total{method="Query",code="INVALID_ARGUMENT"}"#),
        1.0
    );
    assert_eq!(value(r#"audit_denied_total{recorded="true"}"#), 0.0);
    assert!(text.contains("# TYPE audit_commit_duration_seconds histogram"));
    assert!(
        !text.contains("invoice/1"),
        "no entry content in the metrics"
    );
    log.close().await;
}

#[test]
fn only_the_methods_of_the_audit_service_are_counted() {
    assert_eq!(method_of("/audit.v1.AuditService/Record"), Some("Record"));
    assert_eq!(method_of("/audit.v1.AuditService/Nope"), None);
    assert_eq!(method_of("/grpc.health.v1.Health/Check"), None);
    assert_eq!(code_name(tonic::Code::from(7)), "PERMISSION_DENIED");
}
