//! The SQLite backend's own behaviour: its write-ahead log stays bounded, checkpoints are
//! stored as signed, and a damaged store opens read-only. Behaviour every backend shares is in
//! the conformance suite.

use std::path::Path;
use std::time::Duration;

use audit_proto::pb::AuditEntry;
use rusqlite::Connection;

use super::{Options, disk_usage, open};
use crate::config::Limits;
use crate::error::Error;
use crate::store::engine;
use crate::store::{Checkpointing, Log, StartupCheck, Store};
use crate::validate::{self, Context, NewEntry};

fn log_options(every_entries: u64) -> engine::Options {
    engine::Options {
        max_pending_bytes: 1 << 24,
        max_group_entries: 64,
        read_connections: 1,
        checkpointing: Checkpointing {
            signing_key: None,
            log_name: "test".into(),
            every_entries,
            interval: Duration::from_secs(600),
            copy_dir: None,
            startup_check: StartupCheck::Full,
        },
    }
}

fn open_log(dir: &Path, every_entries: u64, max_wal_bytes: u64) -> Log {
    open(dir, &log_options(every_entries), &Options { max_wal_bytes }).expect("open")
}

fn entry(i: usize) -> NewEntry {
    let entry = AuditEntry {
        source: "billing".into(),
        method: "/billing.v1.Billing/Charge".into(),
        outcome: 1,
        resource: format!("invoices/{i}"),
        ..Default::default()
    };
    let context = Context {
        received_time: validate::now(),
        recorder: None,
    };
    let mut new =
        validate::entry(entry, "entry", None, &context, &Limits::default()).expect("valid");
    new.entry.request_id = format!("r{i}");
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_near_its_bound_and_disk_usage_reports_it() {
    const BOUND: u64 = 128 * 1024;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_log(dir.path(), 1000, BOUND);
    let mut largest = 0;
    for batch in 0..100 {
        let entries = (0..20).map(|i| entry(batch * 20 + i)).collect();
        store.append(entries).await.expect("append");
        largest = largest.max(disk_usage(dir.path()).wal_bytes);
    }
    let usage = disk_usage(dir.path());
    assert!(usage.database_bytes > 0);
    // One group's pages past the bound at most: the writer waits out the background
    // checkpointer, and no reader holds an old snapshot.
    assert!(
        largest <= BOUND + 256 * 1024,
        "WAL reached {largest} bytes (bound {BOUND}); {usage:?}"
    );
    store.close().await;
}

/// Opens the store in `dir`, appends `count` entries one at a time, and closes it.
async fn write(dir: &Path, count: usize) {
    let store = open_log(dir, 4, 64 << 20);
    assert!(*store.writable().borrow());
    for i in 0..count {
        store.append(vec![entry(i)]).await.expect("append");
    }
    store.close().await;
}

fn sizes(dir: &Path) -> Vec<i64> {
    Connection::open(dir.join("audit.db"))
        .unwrap()
        .prepare("SELECT size FROM checkpoints ORDER BY idx")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn a_new_log_gets_a_first_checkpoint_and_reopens_writable() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 6).await;
    // At creation, at 4 (in the commit that reached it), and at close.
    assert_eq!(sizes(dir.path()), [0, 4, 6]);
    write(dir.path(), 1).await;
    assert_eq!(sizes(dir.path()), [0, 4, 6, 7]);
}

#[tokio::test]
async fn a_store_that_lost_its_checkpoints_opens_read_only_and_signs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 10).await;
    Connection::open(dir.path().join("audit.db"))
        .unwrap()
        .execute("DELETE FROM checkpoints WHERE size > 4", [])
        .unwrap();
    let store = open_log(dir.path(), 4, 64 << 20);
    assert!(!*store.writable().borrow(), "NOT_SERVING");
    let error = store.append(vec![entry(99)]).await.unwrap_err();
    assert!(
        matches!(&error, Error::ReadOnly(reason) if reason.contains("more than the 4")),
        "{error}"
    );
    // Reads still serve, for the verifier.
    assert_eq!(*store.head().borrow(), 10);
    store.close().await;
    assert_eq!(sizes(dir.path()), [0, 4], "nothing signed at close");
}

#[tokio::test]
async fn an_edited_unsigned_entry_is_found_at_start() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 6).await;
    let db = Connection::open(dir.path().join("audit.db")).unwrap();
    // Entries 5 and 6 as if a crash had left them unsigned, then entry 6 edited.
    db.execute("DELETE FROM checkpoints WHERE size = 6", [])
        .unwrap();
    db.execute(
        "UPDATE entries SET digest = zeroblob(32) WHERE sequence = 6",
        [],
    )
    .unwrap();
    drop(db);
    let store = open_log(dir.path(), 4, 64 << 20);
    let error = store.append(vec![entry(99)]).await.unwrap_err();
    assert!(
        matches!(&error, Error::ReadOnly(reason) if reason.contains("entry 6 (not yet signed) has a retry digest")),
        "{error}"
    );
    store.close().await;
}

#[tokio::test]
async fn a_version_2_store_opens_migrated_with_its_log_intact() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 6).await;
    // As a store of schema version 2 was: no cursors and no pruned table.
    Connection::open(dir.path().join("audit.db"))
        .unwrap()
        .execute_batch("DROP TABLE cursors; DROP TABLE pruned; PRAGMA user_version = 2;")
        .unwrap();
    let store = open_log(dir.path(), 4, 64 << 20);
    assert!(*store.writable().borrow(), "verified and writable");
    assert_eq!(*store.head().borrow(), 6);
    let receipt = store.append(vec![entry(7)]).await.expect("append");
    assert_eq!(receipt[0].sequence, 7);
    store.close().await;
    let db = Connection::open(dir.path().join("audit.db")).unwrap();
    assert_eq!(audit_ledger::sqlite::check_schema(&db), Ok(()));
    let version: i64 = db
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, audit_ledger::sqlite::SCHEMA_VERSION);
}

#[tokio::test]
async fn a_version_3_store_opens_migrated_and_can_be_pruned() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 6).await;
    // As a store of schema version 3 was: no pruned table.
    Connection::open(dir.path().join("audit.db"))
        .unwrap()
        .execute_batch("DROP TABLE pruned; PRAGMA user_version = 3;")
        .unwrap();
    let store = open_log(dir.path(), 4, 64 << 20);
    assert!(*store.writable().borrow(), "verified and writable");
    assert_eq!(store.pruned_through(), 0);
    let signed = store.checkpoint(None).await.unwrap().unwrap().size;
    let step = store.prune(signed, 100).await.expect("prune");
    assert_eq!((step.horizon, step.moved), (signed, signed as usize));
    store.close().await;
    let db = Connection::open(dir.path().join("audit.db")).unwrap();
    assert_eq!(audit_ledger::sqlite::check_schema(&db), Ok(()));
}
