//! One conformance suite for every backend: each test takes a [`Fixture`] (a fresh database
//! of one backend) and checks the log's behaviour through the engine. The SQLite, memory and
//! PostgreSQL modules at the end run every test on their backend.

use std::collections::HashSet;
use std::time::Duration;

use audit_ledger::SigningKey;
use audit_proto::pb::{self, AuditEntry, Filter};

use super::backend::Backend;
use super::engine::{self, Log};
use super::fault::{FaultBackend, Kind, Plan, Point};
use super::{Checkpointing, Direction, Read, StartupCheck, Store};
use crate::config::Limits;
use crate::error::Error;
use crate::validate::{self, Context, NewEntry};

/// A fresh database of one backend.
pub trait Fixture: Send + Sync {
    /// A new backend on the fixture's database.
    fn backend(&self) -> Box<dyn Backend>;

    /// Whether its backends are shared (replicas).
    fn shared(&self) -> bool;
}

const EVERY_ENTRIES: u64 = 10;

fn options() -> engine::Options {
    engine::Options {
        max_pending_bytes: 1 << 24,
        max_group_entries: 64,
        read_connections: 2,
        checkpointing: Checkpointing {
            signing_key: None,
            log_name: "conformance".into(),
            every_entries: EVERY_ENTRIES,
            interval: Duration::from_secs(600),
            copy_dir: None,
            startup_check: StartupCheck::Full,
        },
    }
}

fn key() -> SigningKey {
    use std::sync::OnceLock;
    static KEY: OnceLock<String> = OnceLock::new();
    let text = KEY.get_or_init(|| SigningKey::generate("conformance").unwrap().to_text());
    SigningKey::from_text(text).unwrap()
}

fn open(backend: Box<dyn Backend>) -> Log {
    crate::store::postgres::off_runtime(|| Log::open(backend, key(), true, false, &options()))
        .expect("open log")
}

/// Entry `i` of a varied set: every filtered field takes a few values.
pub fn new_entry(i: usize) -> NewEntry {
    let entry = AuditEntry {
        source: ["billing", "kms"][i % 2].into(),
        method: format!("/svc.v1.S/M{}", i % 3),
        event: format!("e{}", i % 2),
        category: format!("c{}", i % 3),
        resource: format!("res/{i}"),
        outcome: 1 + (i % 3) as i32,
        status_code: (i % 5) as i32,
        status_message: format!("message {i}"),
        level: 1 + (i % 5) as i32,
        caller: Some(pb::Caller {
            principal: format!("p{}", i % 4),
            role: "admin".into(),
            peer: Some(pb::caller::Peer::Network(pb::NetworkPeer {
                spiffe_id: format!("spiffe://x/{}", i % 2),
                address: "10.0.0.1:1234".into(),
                ..Default::default()
            })),
            ..Default::default()
        }),
        labels: [
            ("k".to_string(), format!("{}", i % 2)),
            ("region".to_string(), "eu".to_string()),
        ]
        .into(),
        details: Some(prost_types::Struct {
            fields: [(
                "n".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(i as f64)),
                },
            )]
            .into(),
        }),
        latency: Some(prost_types::Duration {
            seconds: 0,
            nanos: 1000 * i as i32,
        }),
        // Client-chosen, as a retry carries it.
        id: uuid::Uuid::now_v7().to_string(),
        time: Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + i as i64,
            nanos: 0,
        }),
        ..Default::default()
    };
    let context = Context {
        received_time: validate::now(),
        recorder: None,
    };
    validate::entry(entry, "entry", None, &context, &Limits::default()).expect("valid")
}

fn filters(entries: &[NewEntry]) -> Vec<Filter> {
    let at = |seconds: i64| {
        Some(prost_types::Timestamp {
            seconds: 1_700_000_000 + seconds,
            nanos: 0,
        })
    };
    vec![
        Filter::default(),
        Filter {
            source: "kms".into(),
            ..Default::default()
        },
        Filter {
            method: "/svc.v1.S/*".into(),
            outcomes: vec![2, 3],
            ..Default::default()
        },
        Filter {
            method: "/svc.v1.S/M1".into(),
            principal: "p1".into(),
            ..Default::default()
        },
        Filter {
            spiffe_id: "spiffe://x/*".into(),
            status_codes: vec![0, 4],
            min_level: 3,
            ..Default::default()
        },
        Filter {
            event: "e1".into(),
            category: "c2".into(),
            resource: "res/1*".into(),
            ..Default::default()
        },
        Filter {
            labels: [("k".to_string(), "1".to_string())].into(),
            start_time: at(10),
            end_time: at(40),
            ..Default::default()
        },
        Filter {
            request_id: entries[7].entry.request_id.clone(),
            ..Default::default()
        },
        Filter {
            labels: [("missing".to_string(), "x".to_string())].into(),
            ..Default::default()
        },
    ]
}

/// Every entry read back carries every field as recorded, with its sequence and hashes.
pub async fn round_trip(fixture: &dyn Fixture) {
    let log = open(fixture.backend());
    let entries: Vec<_> = (0..25).map(new_entry).collect();
    let receipts = log.append(entries.clone()).await.expect("append");
    let page = log
        .read(Read {
            filter: Filter::default(),
            direction: Direction::Ascending { after: 0 },
            through: *log.head().borrow(),
            limit: 100,
            max_bytes: usize::MAX,
        })
        .await
        .expect("read");
    assert_eq!(page.entries.len(), 25);
    for ((stored, sent), receipt) in page.entries.iter().zip(&entries).zip(&receipts) {
        let mut expected = sent.entry.clone();
        expected.sequence = receipt.sequence;
        expected.entry_hash = receipt.entry_hash.to_vec();
        expected.chain_hash = receipt.chain_hash.to_vec();
        assert_eq!(stored, &expected);
        assert_eq!(audit_ledger::entry_hash(stored), receipt.entry_hash);
    }
    log.close().await;
}

/// Every filter selects in the backend exactly what the in-memory test selects, in both
/// directions and across pages of every size.
pub async fn filters_and_pages(fixture: &dyn Fixture) {
    let log = open(fixture.backend());
    let entries: Vec<_> = (0..60).map(new_entry).collect();
    for chunk in entries.chunks(7) {
        log.append(chunk.to_vec()).await.expect("append");
    }
    let head = *log.head().borrow();
    assert_eq!(head, 60);
    let all = log
        .backend_read(Read {
            filter: Filter::default(),
            direction: Direction::Ascending { after: 0 },
            through: head,
            limit: 100,
            max_bytes: usize::MAX,
        })
        .await
        .expect("read all")
        .entries;
    for filter in filters(&entries) {
        let expected: Vec<u64> = all
            .iter()
            .filter(|e| super::filter::matches(&filter, e))
            .map(|e| e.sequence)
            .collect();
        for (limit, max_bytes) in [(1, usize::MAX), (7, usize::MAX), (100, 500)] {
            for ascending in [true, false] {
                let mut seen = Vec::new();
                let mut position = None;
                loop {
                    let direction = match (ascending, position) {
                        (true, after) => Direction::Ascending {
                            after: after.unwrap_or(0),
                        },
                        (false, before) => Direction::Descending { before },
                    };
                    let read = Read {
                        filter: filter.clone(),
                        direction,
                        through: head,
                        limit,
                        max_bytes,
                    };
                    let page = log.backend_read(read.clone()).await.expect("read");
                    if ascending && let Some(memory) = log.recent_read(&read) {
                        assert_eq!(memory.entries, page.entries, "recent window: {filter:?}");
                        assert_eq!(memory.exhausted, page.exhausted, "{filter:?}");
                    }
                    assert!(page.entries.len() <= limit);
                    seen.extend(page.entries.iter().map(|e| e.sequence));
                    position = page.entries.last().map(|e| e.sequence);
                    if page.exhausted {
                        break;
                    }
                    assert!(
                        position.is_some(),
                        "a page that is not exhausted has entries"
                    );
                }
                if !ascending {
                    seen.reverse();
                }
                assert_eq!(
                    seen, expected,
                    "{filter:?} limit {limit} ascending {ascending}"
                );
            }
        }
    }
    // The time index answers "received since".
    let first = log.first_received_since(0).await.expect("first");
    assert_eq!(first, Some(1));
    log.close().await;
}

/// A client-chosen id is stored once: the same content gets the first receipt, other content
/// is refused, and a refused batch stores nothing.
pub async fn idempotent_ids_and_atomic_batches(fixture: &dyn Fixture) {
    let log = open(fixture.backend());
    let a = new_entry(1);
    let first = log.append(vec![a.clone()]).await.expect("append");
    let again = log.append(vec![a.clone()]).await.expect("retry");
    assert_eq!(first, again, "a retry gets the first receipt");
    let mut other = new_entry(2);
    other.entry.id = a.entry.id.clone();
    let fresh = new_entry(3);
    let refused = log.append(vec![fresh.clone(), other]).await.unwrap_err();
    assert!(matches!(refused, Error::IdConflict { .. }), "{refused}");
    assert_eq!(*log.head().borrow(), 1, "the refused batch stored nothing");
    // The same id twice in one request: stored once if the content is the same, else the
    // request is refused; neither harms the log.
    let twice = new_entry(5);
    let receipts = log
        .append(vec![twice.clone(), twice.clone()])
        .await
        .expect("twice");
    assert_eq!(receipts[0], receipts[1]);
    let mut different = new_entry(6);
    different.entry.id = new_entry(7).entry.id;
    let mut clash = new_entry(8);
    clash.entry.id = different.entry.id.clone();
    let refused = log.append(vec![different, clash]).await.unwrap_err();
    assert!(matches!(refused, Error::IdConflict { .. }), "{refused}");
    assert!(*log.writable().borrow());
    // Two requests in one group with the same new id: stored once.
    let b = new_entry(4);
    let (one, two) = tokio::join!(log.append(vec![b.clone()]), log.append(vec![b.clone()]));
    assert_eq!(one.expect("one"), two.expect("two"));
    assert_eq!(*log.head().borrow(), 3);
    log.close().await;
    // And after a reopen.
    let log = open(fixture.backend());
    assert_eq!(log.append(vec![a]).await.expect("retry"), first);
    log.close().await;
}

/// Checkpoints are signed every so many entries and at close, verify with the key, and prove
/// every entry's inclusion and every size's consistency.
pub async fn checkpoints_and_proofs(fixture: &dyn Fixture) {
    let log = open(fixture.backend());
    for i in 0..23 {
        log.append(vec![new_entry(i)]).await.expect("append");
    }
    log.close().await;
    let log = open(fixture.backend());
    let public = log.public_key();
    let newest = log.checkpoint(None).await.expect("newest").expect("one");
    let newest = public.open(&newest.note).expect("verifies");
    assert_eq!(newest.size, 23, "signed at close");
    let sizes: Vec<u64> = log
        .checkpoints(0, 100)
        .await
        .expect("list")
        .iter()
        .map(|c| c.size)
        .collect();
    assert_eq!(sizes, [0, 10, 20, 23]);
    for sequence in [1, 10, 11, 23] {
        let proof = crate::evidence::inclusion_proof(
            &log,
            pb::GetInclusionProofRequest {
                sequence,
                tree_size: 23,
            },
        )
        .await
        .expect("inclusion");
        let hashes: Vec<_> = proof
            .hashes
            .iter()
            .map(|h| h.as_slice().try_into().unwrap())
            .collect();
        let entry_hash = proof.entry_hash.as_slice().try_into().unwrap();
        assert!(
            newest.verify_inclusion(sequence, &entry_hash, &hashes),
            "{sequence}"
        );
    }
    let older = log
        .checkpoint(Some(10))
        .await
        .expect("read")
        .expect("size 10");
    let older = public.open(&older.note).expect("verifies");
    let proof = crate::evidence::consistency_proof(
        &log,
        pb::GetConsistencyProofRequest {
            first_size: 10,
            second_size: 23,
        },
    )
    .await
    .expect("consistency");
    let hashes: Vec<_> = proof
        .hashes
        .iter()
        .map(|h| h.as_slice().try_into().unwrap())
        .collect();
    assert!(older.verify_consistency(&newest, &hashes));
    log.close().await;
}

/// A storage failure at any point of a commit: what was acknowledged stays, what was refused
/// is not stored (or, after the commit itself, is stored at most once), and the log goes on
/// from a consistent tip after a reopen.
pub async fn failures(fixture: &dyn Fixture) {
    let shared = fixture.shared();
    let kind = if shared {
        Kind::Connection
    } else {
        Kind::Storage
    };
    let mut acked = HashSet::new();
    for point in [Point::BeforeInsert, Point::Commit, Point::AfterCommit] {
        let plan = Plan::new(point, 2, kind);
        let log = open(Box::new(FaultBackend::new(fixture.backend(), plan)));
        let ok = new_entry(1);
        let receipt = log.append(vec![ok.clone()]).await.expect("first");
        acked.insert(receipt[0].sequence);
        let struck = new_entry(2);
        let outcome = log.append(vec![struck.clone()]).await;
        match (point, shared, &outcome) {
            // A shared backend settles the lost reply: the commit did happen.
            (Point::AfterCommit, true, Ok(receipts)) => {
                acked.insert(receipts[0].sequence);
            }
            (_, _, Err(Error::StoreFailed(_))) => {}
            other => panic!("{point:?}: unexpected {other:?}"),
        }
        if shared {
            // Recovers by itself; then writes go on.
            let mut writable = log.writable();
            tokio::time::timeout(Duration::from_secs(10), writable.wait_for(|w| *w))
                .await
                .expect("recovers")
                .expect("writable");
            let later = log
                .append(vec![new_entry(3)])
                .await
                .expect("after recovery");
            acked.insert(later[0].sequence);
        } else {
            assert!(!*log.writable().borrow(), "poisoned");
            let refused = log.append(vec![new_entry(3)]).await.unwrap_err();
            assert!(matches!(refused, Error::StoreFailed(_)), "{refused}");
        }
        log.close().await;
        let log = open(fixture.backend());
        assert!(*log.writable().borrow(), "{point:?}: reopens writable");
        let head = *log.head().borrow();
        let stored = log
            .read(Read {
                filter: Filter::default(),
                direction: Direction::Ascending { after: 0 },
                through: head,
                limit: 1000,
                max_bytes: usize::MAX,
            })
            .await
            .expect("read")
            .entries;
        let sequences: Vec<u64> = stored.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=head).collect::<Vec<_>>(), "gapless");
        for sequence in &acked {
            assert!(*sequence <= head, "{point:?}: acknowledged {sequence} kept");
        }
        let struck_stored = stored.iter().filter(|e| e.id == struck.entry.id).count();
        let allowed = usize::from(point == Point::AfterCommit);
        assert!(struck_stored <= allowed, "{point:?}: refused entry stored");
        // A retry of the refused entry stores it exactly once.
        log.append(vec![struck.clone()]).await.expect("retry");
        log.append(vec![struck]).await.expect("retry again");
        log.close().await;
    }
}

/// The charts' counts agree with what a read of the same filter returns, bucket by bucket.
pub async fn stats_count_what_reads_return(fixture: &dyn Fixture) {
    let log = open(fixture.backend());
    let entries: Vec<_> = (0..40).map(new_entry).collect();
    log.append(entries.clone()).await.expect("append");
    let head = *log.head().borrow();
    for filter in filters(&entries) {
        let query = super::StatsQuery {
            filter: filter.clone(),
            start_ns: 1_700_000_000 * 1_000_000_000,
            bucket_ns: 7 * 1_000_000_000,
            through: head - 3,
            top: 3,
        };
        let stats = log.stats(query).await.expect("stats");
        let read = log
            .backend_read(Read {
                filter: filter.clone(),
                direction: Direction::Ascending { after: 0 },
                through: head - 3,
                limit: 100,
                max_bytes: usize::MAX,
            })
            .await
            .expect("read")
            .entries;
        assert_eq!(stats.total, read.len() as u64, "{filter:?}");
        let mut expected = std::collections::BTreeMap::<(i64, i32), u64>::new();
        for entry in &read {
            let seconds = entry.time.as_ref().unwrap().seconds - 1_700_000_000;
            *expected.entry((seconds / 7, entry.outcome)).or_default() += 1;
        }
        let got: Vec<_> = stats
            .buckets
            .iter()
            .map(|b| ((b.index, b.outcome), b.count))
            .collect();
        assert_eq!(got, expected.into_iter().collect::<Vec<_>>(), "{filter:?}");
        assert!(stats.principals.len() <= 3);
        if let Some(first) = stats.principals.first() {
            assert!(stats.principals.iter().all(|p| p.count <= first.count));
        }
    }
    log.close().await;
}

/// A durable cursor's position is saved with the log under its holder's lease: another owner
/// is refused while the lease runs and changes nothing; the position survives a reopen.
pub async fn cursors_keep_positions_under_a_lease(fixture: &dyn Fixture) {
    use super::CursorClaim::{Busy, Held};
    let log = open(fixture.backend());
    let claim = |owner: &'static str, position| {
        let log = log.clone();
        async move { log.cursor("siem", owner, position).await.expect("cursor") }
    };
    assert_eq!(claim("a", None).await, Held { position: None });
    assert_eq!(claim("a", Some(5)).await, Held { position: Some(5) });
    assert_eq!(claim("b", None).await, Busy { owner: "a".into() });
    assert_eq!(claim("b", Some(9)).await, Busy { owner: "a".into() });
    assert_eq!(claim("a", None).await, Held { position: Some(5) });
    // Cursor writes ride on groups of entries too.
    let (appended, saved) = tokio::join!(log.append(vec![new_entry(1)]), claim("a", Some(6)));
    appended.expect("append");
    assert_eq!(saved, Held { position: Some(6) });
    log.close().await;
    let log = open(fixture.backend());
    assert_eq!(log.cursor_position("siem").await.expect("read"), Some(6));
    assert_eq!(log.cursor_position("other").await.expect("read"), None);
    log.close().await;
}

/// Retention prunes up to a signed checkpoint's size in small steps and signs its horizon;
/// reads that would start inside it say so; hashes, proofs and retries of pruned ids still
/// work; a reopened log verifies and keeps the horizon, which never moves back.
pub async fn retention_prunes_to_a_signed_horizon(fixture: &dyn Fixture) {
    let log = open(fixture.backend());
    let entries: Vec<_> = (0..35).map(new_entry).collect();
    for batch in entries.chunks(5) {
        log.append(batch.to_vec()).await.expect("append");
    }
    let whole = || vec![std::ops::Range { start: 0, end: 35 }];
    let root_before = log.tree_hashes(whole()).await.expect("root");
    let ascending = |after| Read {
        filter: Filter::default(),
        direction: Direction::Ascending { after },
        through: 35,
        limit: 100,
        max_bytes: usize::MAX,
    };
    // Asked for 25: the newest signed size at most that is 20 (checkpoints every 10).
    let step = log.prune(25, 4).await.expect("prune");
    assert_eq!((step.horizon, step.moved), (20, 4));
    assert_eq!(log.pruned_through(), 20);
    let newest = log.checkpoint(None).await.expect("read").expect("one");
    let newest = log.public_key().open(&newest.note).expect("verifies");
    assert_eq!(newest.pruned, 20, "the horizon is signed");
    let mut moved = step.moved;
    loop {
        let step = log.prune(25, 4).await.expect("prune");
        moved += step.moved;
        if step.moved < 4 {
            break;
        }
    }
    assert_eq!(moved, 20);
    match log.read(ascending(0)).await {
        Err(Error::Pruned { through: 20 }) => {}
        other => panic!("a read from 0 after pruning: {other:?}"),
    }
    let kept = log.read(ascending(20)).await.expect("read").entries;
    let sequences: Vec<u64> = kept.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (21..=35).collect::<Vec<_>>());
    let newest_first = log
        .read(Read {
            direction: Direction::Descending { before: None },
            ..ascending(0)
        })
        .await
        .expect("read")
        .entries;
    assert_eq!(newest_first.len(), 15, "only kept entries");
    assert!(matches!(
        log.first_received_since(0).await,
        Err(Error::Pruned { through: 20 })
    ));
    // What verification needs stays.
    assert_eq!(log.tree_hashes(whole()).await.expect("root"), root_before);
    assert!(log.entry_hash(3).await.expect("read").is_some());
    // A retry of a pruned id gets its first receipt; other content under it is refused.
    let receipt = log.append(vec![entries[2].clone()]).await.expect("retry");
    assert_eq!(receipt[0].sequence, 3);
    let mut changed = entries[2].clone();
    changed.digest[0] ^= 1;
    assert!(matches!(
        log.append(vec![changed]).await,
        Err(Error::IdConflict { .. })
    ));
    // Never back.
    assert_eq!(log.prune(5, 4).await.expect("prune").horizon, 20);
    log.close().await;
    let log = open(fixture.backend());
    assert!(
        *log.writable().borrow(),
        "a pruned log verifies as it opens"
    );
    assert_eq!(log.pruned_through(), 20);
    log.append(vec![new_entry(40)]).await.expect("append");
    log.close().await;
    let log = open(fixture.backend());
    let newest = log.checkpoint(None).await.expect("read").expect("one");
    let newest = log.public_key().open(&newest.note).expect("verifies");
    assert_eq!(
        (newest.size, newest.pruned),
        (36, 20),
        "later checkpoints keep it"
    );
    log.close().await;
}

/// A lease released at a clean shutdown is free at once, for any owner, from the position saved
/// with the release; a release by an owner who lost the lease changes nothing.
pub async fn released_cursors_are_claimed_at_once(fixture: &dyn Fixture) {
    use super::CursorClaim::{Busy, Held};
    let log = open(fixture.backend());
    assert_eq!(
        log.cursor("siem", "a", Some(4)).await.expect("claim"),
        Held { position: Some(4) }
    );
    assert_eq!(
        log.release_cursor("siem", "b", 9).await.expect("release"),
        Busy { owner: "a".into() }
    );
    assert_eq!(
        log.release_cursor("siem", "a", 5).await.expect("release"),
        Held { position: Some(5) }
    );
    assert_eq!(
        log.cursor("siem", "b", None).await.expect("claim"),
        Held { position: Some(5) }
    );
    assert_eq!(
        log.cursor("siem", "a", None).await.expect("claim"),
        Busy { owner: "b".into() }
    );
    // The release is durable: after a reopen, the next owner starts from it.
    assert_eq!(
        log.release_cursor("siem", "b", 6).await.expect("release"),
        Held { position: Some(6) }
    );
    log.close().await;
    let log = open(fixture.backend());
    assert_eq!(
        log.cursor("siem", "c", None).await.expect("claim"),
        Held { position: Some(6) }
    );
    log.close().await;
}

/// Runs every conformance test on the backend of a fixture constructor.
macro_rules! conformance_tests {
    ($fixture:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn round_trip() {
            $crate::store::conformance::round_trip(&$fixture).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn filters_and_pages() {
            $crate::store::conformance::filters_and_pages(&$fixture).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn idempotent_ids_and_atomic_batches() {
            $crate::store::conformance::idempotent_ids_and_atomic_batches(&$fixture).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn checkpoints_and_proofs() {
            $crate::store::conformance::checkpoints_and_proofs(&$fixture).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn stats_count_what_reads_return() {
            $crate::store::conformance::stats_count_what_reads_return(&$fixture).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn cursors_keep_positions_under_a_lease() {
            $crate::store::conformance::cursors_keep_positions_under_a_lease(&$fixture).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn retention_prunes_to_a_signed_horizon() {
            $crate::store::conformance::retention_prunes_to_a_signed_horizon(&$fixture).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn released_cursors_are_claimed_at_once() {
            $crate::store::conformance::released_cursors_are_claimed_at_once(&$fixture).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn failures() {
            $crate::store::conformance::failures(&$fixture).await;
        }
    };
}

mod memory_exclusive {
    use super::*;
    use crate::store::memory::MemoryDatabase;

    struct Memory(MemoryDatabase, bool);

    impl Fixture for Memory {
        fn backend(&self) -> Box<dyn Backend> {
            self.0.backend(self.1)
        }

        fn shared(&self) -> bool {
            self.1
        }
    }

    conformance_tests!(Memory(MemoryDatabase::new(), false));

    mod shared {
        use super::*;
        conformance_tests!(Memory(MemoryDatabase::new(), true));
    }
}

mod sqlite {
    use super::*;

    struct Sqlite(tempfile::TempDir);

    impl Fixture for Sqlite {
        fn backend(&self) -> Box<dyn Backend> {
            crate::store::sqlite::backend(self.0.path(), 64 << 20)
                .expect("open")
                .0
        }

        fn shared(&self) -> bool {
            false
        }
    }

    conformance_tests!(Sqlite(tempfile::tempdir().expect("temp dir")));
}

/// A database of its own on the PostgreSQL server the tests use (`AUDIT_TEST_POSTGRES`, by
/// default the local one), dropped at the end.
pub struct PostgresDatabase {
    admin: String,
    name: String,
    /// URL of the database.
    pub url: String,
}

impl PostgresDatabase {
    /// Creates a fresh database.
    pub fn create() -> Self {
        let admin = std::env::var("AUDIT_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("audit_unit_{}", uuid::Uuid::new_v4().simple());
        crate::store::postgres::off_runtime(|| {
            let mut client = postgres::Client::connect(&admin, postgres::NoTls)
                .expect("PostgreSQL on 127.0.0.1:5432 (see README: the test suite needs it)");
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("create database");
        });
        let base = admin.rsplit_once('/').expect("URL with a database").0;
        let url = format!("{base}/{name}");
        Self { admin, name, url }
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        crate::store::postgres::off_runtime(|| {
            if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
                let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
                let _ = client.batch_execute(&drop);
            }
        });
    }
}

mod postgres_backend {
    use super::*;
    use crate::store::postgres::{PostgresBackend, Settings};

    struct Postgres(PostgresDatabase);

    impl Fixture for Postgres {
        fn backend(&self) -> Box<dyn Backend> {
            let settings = Settings::parse(&self.0.url).expect("settings");
            let backend = PostgresBackend::new(&settings).expect("connect");
            // Migrated, and moved off this thread, so its connection lives on the writer's.
            Box::new(backend)
        }

        fn shared(&self) -> bool {
            true
        }
    }

    conformance_tests!(Postgres(PostgresDatabase::create()));
}
