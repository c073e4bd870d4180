//! Crash consistency at every point where the store writes: the server fails at one named point
//! (the `fault-injection` feature of audit-server, armed through `AUDIT_FAULT_INJECT`) while
//! writers record; nothing acknowledged may be lost, nothing refused may be stored, the store
//! must refuse further writes, and after a restart retries of the refused entries store each
//! exactly once.

use std::collections::HashMap;

use audit_client::{Client, ServingStatus, pb};
use audit_tests::{Launch, TestServer, all_entries, entry};
use tonic::Code;

const WRITERS: usize = 4;
/// Most entries one writer records; the fault strikes long before.
const PER_WRITER: usize = 500;

/// What the writers saw.
#[derive(Default)]
struct Seen {
    /// Acknowledged: id → sequence.
    acked: HashMap<String, u64>,
    /// Refused, with the entry as sent (to retry it).
    refused: Vec<pb::AuditEntry>,
}

/// Writers record entries with client-chosen ids, each until its first refusal.
async fn record_until_refused(client: &Client) -> Seen {
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut seen = Seen::default();
                for i in 0..PER_WRITER {
                    let one = entry("writer", "/a.B/C")
                        .random_id()
                        .resource(format!("w{w}/{i}"))
                        .build();
                    match client.record(one.clone()).await {
                        Ok(receipt) => {
                            assert_eq!(receipt.id, one.id);
                            seen.acked.insert(receipt.id, receipt.sequence);
                        }
                        Err(error) => {
                            assert_eq!(error.code(), Some(Code::Unavailable), "{error:?}");
                            seen.refused.push(one);
                            break;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut all = Seen::default();
    for writer in writers {
        let seen = writer.await.expect("writer");
        all.acked.extend(seen.acked);
        all.refused.extend(seen.refused);
    }
    all
}

/// Which refused entries may be stored: only those whose commit reached the disk.
#[derive(Clone, Copy, PartialEq)]
enum Refused {
    NeverStored,
    MaybeStored,
}

/// Fails the store at the `nth` hit of `point` and checks the log before and after a restart.
async fn fault_at(point: &str, nth: u32, args: &[&str], refused_rule: Refused) {
    let temp = tempfile::tempdir().expect("temp dir");
    let data_dir = temp.path().join("data");
    let launch = Launch {
        env: vec![("AUDIT_FAULT_INJECT".into(), format!("{point}:{nth}"))],
        ..Launch::default()
    };
    let server = TestServer::start_launched(&data_dir, args, &launch).await;
    let client = server.client().await;
    let seen = record_until_refused(&client).await;
    assert_eq!(
        seen.refused.len(),
        WRITERS,
        "every writer was refused once the fault struck ({} acknowledged); the server must be \
         built with audit-server's `fault-injection` feature, as `cargo build --workspace --bins` \
         builds it",
        seen.acked.len()
    );
    assert_eq!(client.health("").await.unwrap(), ServingStatus::NotServing);
    let again = client
        .record(entry("app", "/a.B/C").build())
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some(Code::Unavailable), "{again:?}");
    // Reads still answer: exactly the acknowledged entries, or more only where allowed.
    let stored = all_entries(&client).await;
    check_log(&stored, &seen, refused_rule);
    assert!(server.stop().await.success());

    let server = TestServer::start_in(&data_dir, args).await;
    let client = server.client().await;
    assert_eq!(client.health("").await.unwrap(), ServingStatus::Serving);
    let stored = all_entries(&client).await;
    check_log(&stored, &seen, refused_rule);

    // Retrying the refused entries stores each exactly once.
    let mut retried = HashMap::new();
    for one in &seen.refused {
        let receipt = client.record(one.clone()).await.expect("retry");
        retried.insert(receipt.id, receipt.sequence);
    }
    let stored = all_entries(&client).await;
    let mut by_id = HashMap::new();
    for (offset, entry) in stored.iter().enumerate() {
        assert_eq!(entry.sequence, offset as u64 + 1, "sequences are gapless");
        assert!(by_id.insert(entry.id.clone(), entry.sequence).is_none());
    }
    for (id, sequence) in seen.acked.iter().chain(&retried) {
        assert_eq!(by_id.get(id), Some(sequence), "{id} stored at its receipt");
    }
    assert_eq!(by_id.len(), seen.acked.len() + retried.len());
    drop(server);
}

/// The log holds every acknowledged entry at its sequence, gapless, each once; a refused entry
/// only where `rule` allows it.
fn check_log(stored: &[pb::AuditEntry], seen: &Seen, rule: Refused) {
    let mut by_id = HashMap::new();
    for (offset, entry) in stored.iter().enumerate() {
        assert_eq!(entry.sequence, offset as u64 + 1, "sequences are gapless");
        assert!(
            by_id.insert(entry.id.clone(), entry.sequence).is_none(),
            "{} stored twice",
            entry.id
        );
    }
    for (id, sequence) in &seen.acked {
        assert_eq!(by_id.get(id), Some(sequence), "acknowledged {id} lost");
    }
    let refused_stored = seen
        .refused
        .iter()
        .filter(|one| by_id.contains_key(&one.id))
        .count();
    if rule == Refused::NeverStored {
        assert_eq!(refused_stored, 0, "a refused entry was stored");
    }
    assert_eq!(by_id.len(), seen.acked.len() + refused_stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_before_the_inserts_loses_nothing_acknowledged() {
    fault_at("before-insert", 5, &[], Refused::NeverStored).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_after_the_inserts_before_commit_loses_nothing_acknowledged() {
    fault_at("before-commit", 5, &[], Refused::NeverStored).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_loses_nothing_acknowledged() {
    fault_at("commit", 5, &[], Refused::NeverStored).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_outcome_is_unknown_is_stored_once_after_a_retry() {
    fault_at("after-commit", 5, &[], Refused::MaybeStored).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_signing_a_checkpoint_loses_nothing_acknowledged() {
    let args = ["--checkpoint-every-entries", "10"];
    fault_at("sign-checkpoint", 2, &args, Refused::NeverStored).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_checkpointing_the_wal_loses_nothing_acknowledged() {
    // A WAL this small outgrows its bound within a few commits.
    let args = ["--max-wal-bytes", "65536"];
    fault_at("wal-checkpoint", 3, &args, Refused::NeverStored).await;
}
