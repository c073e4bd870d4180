//! Tamper evidence of a log kept in PostgreSQL: each class of tampering is applied with SQL to
//! the database of stopped replicas, then found with the right first bad sequence by
//! `audit verify --store` (straight from the database) and by `audit verify` against a replica
//! started on it, which opens the log read-only (NOT_SERVING, writes refused).
//!
//! The log: 25 entries, checkpoints at creation (0), every 10 entries and at shutdown (25).

use std::process::Output;

use audit_client::ServingStatus;
use audit_tests::{PATIENCE, PostgresDatabase, TestServer, binary, entry};

const ENTRIES: u64 = 25;

/// A stopped log in its own database, with the key that signs it.
struct Stopped {
    db: PostgresDatabase,
    dir: tempfile::TempDir,
    public_key: String,
    flags: Vec<String>,
}

impl Stopped {
    fn flags(&self) -> Vec<&str> {
        self.flags.iter().map(String::as_str).collect()
    }
}

async fn stopped_log() -> Stopped {
    let db = PostgresDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let key = audit_ledger::SigningKey::generate("audit-log").unwrap();
    let key_file = dir.path().join("signing.key").display().to_string();
    std::fs::write(&key_file, format!("{}\n", key.to_text())).unwrap();
    let flags: Vec<String> = [
        "--store",
        &db.url,
        "--signing-key",
        &key_file,
        "--checkpoint-every-entries",
        "10",
        "--checkpoint-interval",
        "10m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = TestServer::start_with_args(&args).await;
    let client = server.client().await;
    for i in 1..=ENTRIES {
        client
            .record(
                entry("billing", "/billing.v1.Billing/Charge")
                    .resource(format!("invoices/{i}"))
                    .principal("alice")
                    .label("n", i.to_string()),
            )
            .await
            .expect("record");
    }
    assert!(server.stop().await.success());
    Stopped {
        db,
        dir,
        public_key: key.public_key().to_text(),
        flags,
    }
}

async fn audit(args: &[&str]) -> Output {
    let child = tokio::process::Command::new(binary("audit"))
        .args(args)
        .env_remove("AUDIT_SERVER")
        .stdin(std::process::Stdio::null())
        .output();
    tokio::time::timeout(PATIENCE, child)
        .await
        .expect("audit finished in time")
        .expect("run audit")
}

/// The first bad sequence `audit verify` reports (exit status 3), or `None` for an intact log.
fn first_bad(output: &Output) -> Option<u64> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => None,
        Some(3) => Some(
            stdout
                .split("TAMPERED: first bad sequence ")
                .nth(1)
                .and_then(|rest| rest.split(':').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no TAMPERED line: {stdout}")),
        ),
        other => panic!("audit verify exited {other:?}: {stdout}{stderr}"),
    }
}

/// Both verifications name `expected`. A replica started on the log opens it read-only when
/// `read_only`: the start-up check rehashes the unsigned tail and the tree of stored hashes,
/// while an edit under a checkpoint with its hash column untouched takes a full verification.
async fn assert_detected(log: &Stopped, expected: Option<u64>, read_only: bool) {
    let args = [
        "verify",
        "--store",
        &log.db.url,
        "--public-key",
        &log.public_key,
    ];
    assert_eq!(
        first_bad(&audit(&args).await),
        expected,
        "audit verify --store"
    );

    let server = TestServer::start_with_args(&log.flags()).await;
    let client = server.client().await;
    let uri = server.uri();
    let args = ["--server", &uri, "verify", "--public-key", &log.public_key];
    assert_eq!(
        first_bad(&audit(&args).await),
        expected,
        "audit verify (online)"
    );
    let health = client.health("").await.unwrap();
    if read_only {
        assert_eq!(
            health,
            ServingStatus::NotServing,
            "a tampered log opens read-only"
        );
        assert!(client.record(entry("app", "/a.B/C")).await.is_err());
    } else {
        assert_eq!(health, ServingStatus::Serving);
    }
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_log_verifies() {
    let log = stopped_log().await;
    assert_detected(&log, None, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_entry_is_found() {
    let log = stopped_log().await;
    log.db
        .sql("UPDATE entries SET entry = overlay(entry placing '\\xff'::bytea from 5 for 1) WHERE sequence = 7")
        .await;
    assert_detected(&log, Some(7), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_entry_is_found() {
    let log = stopped_log().await;
    log.db.sql("DELETE FROM entries WHERE sequence = 12").await;
    assert_detected(&log, Some(12), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_entries_are_found() {
    let log = stopped_log().await;
    log.db
        .sql(
            "UPDATE entries SET sequence = -sequence WHERE sequence IN (3, 4);
             UPDATE entries SET sequence = CASE sequence WHEN -3 THEN 4 ELSE 3 END
             WHERE sequence < 0",
        )
        .await;
    assert_detected(&log, Some(3), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inserted_entry_is_found() {
    let log = stopped_log().await;
    // Entries after 10 move up one; a copy of entry 10 under a new id takes 11.
    log.db
        .sql(
            "UPDATE entries SET sequence = -(sequence + 1) WHERE sequence > 10;
             UPDATE entries SET sequence = -sequence WHERE sequence < 0;
             INSERT INTO entries SELECT 11, gen_random_uuid(), digest, request_id, time_ns,
                 received_ns, source, method, event, category, resource, level, outcome,
                 status_code, principal, spiffe_id, labels, entry, entry_hash, chain_hash
             FROM entries WHERE sequence = 10;
             UPDATE log_tip SET sequence = sequence + 1",
        )
        .await;
    assert_detected(&log, Some(11), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_tail_is_found() {
    let log = stopped_log().await;
    log.db
        .sql("DELETE FROM entries WHERE sequence > 17; UPDATE log_tip SET sequence = 17")
        .await;
    assert_detected(&log, Some(18), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_rollback_is_found_with_a_checkpoint_kept_earlier() {
    let log = stopped_log().await;
    let kept = log
        .db
        .query("SELECT note FROM checkpoints ORDER BY idx DESC LIMIT 1")
        .await[0]
        .get::<_, String>(0);
    let file = log.dir.path().join("kept.note");
    std::fs::write(&file, kept).unwrap();
    // Back to the log as it was at 10 entries: entries, checkpoints and tip, consistently.
    let frontier: Vec<u8> = {
        let mut tree = audit_ledger::merkle::Frontier::new();
        for row in log
            .db
            .query("SELECT entry_hash FROM entries WHERE sequence <= 10 ORDER BY sequence")
            .await
        {
            let hash: Vec<u8> = row.get(0);
            tree.push(&hash.try_into().unwrap());
        }
        tree.to_bytes()
    };
    let hex: String = frontier.iter().map(|b| format!("{b:02x}")).collect();
    log.db
        .sql(&format!(
            "DELETE FROM entries WHERE sequence > 10; DELETE FROM checkpoints WHERE size > 10;
             UPDATE log_tip SET sequence = 10, signed_size = 10, frontier = '\\x{hex}',
                 chain = (SELECT chain_hash FROM entries WHERE sequence = 10)"
        ))
        .await;
    // Without the kept checkpoint the rolled-back log looks whole; with it, it does not.
    let mut args = vec![
        "verify",
        "--store",
        &log.db.url,
        "--public-key",
        &log.public_key,
    ];
    assert_eq!(first_bad(&audit(&args).await), None);
    let file = file.display().to_string();
    args.extend(["--checkpoint", &file]);
    assert_eq!(first_bad(&audit(&args).await), Some(11));
}
