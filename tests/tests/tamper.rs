//! Tamper evidence: each class of tampering is applied directly to the SQLite file of a stopped
//! server, then detected with the right first bad sequence by the library verifier on the
//! stopped data, by `audit verify --data-dir`, and against a server started on the tampered
//! data (library and `audit verify`). Also: receipts, proofs, and the schema migration.
//!
//! The log used: 45 entries, checkpoints signed when the log was created (size 0), every 10
//! entries (sizes 10, 20, 30, 40) and at shutdown (45).
//!
//! A server started on a tampered store opens it read-only (NOT_SERVING, writes refused) and
//! signs nothing; its reads still serve the online verification.

use std::path::{Path, PathBuf};
use std::process::Output;

use audit_client::verify::{self, PublicKey, Report, Trust};
use audit_client::{ServingStatus, pb};
use audit_ledger::{Checkpoint, SigningKey};
use audit_tests::{PATIENCE, TestServer, all_entries, binary, entry};
use prost::Message;
use rusqlite::{Connection, params};
use tempfile::TempDir;

/// Entries in the test log.
const ENTRIES: u64 = 45;
/// Server flags: a checkpoint every 10 entries, none by time during a test.
const FLAGS: &[&str] = &[
    "--checkpoint-every-entries",
    "10",
    "--checkpoint-interval",
    "10m",
];

/// A stopped server's data directory holding the test log, and its public key.
struct Stopped {
    _temp: TempDir,
    dir: PathBuf,
    key: PublicKey,
}

impl Stopped {
    fn db(&self) -> Connection {
        Connection::open(self.dir.join("audit.db")).expect("open audit.db")
    }

    fn trust(&self) -> Trust {
        Trust {
            public_key: Some(self.key.clone()),
            checkpoints: Vec::new(),
        }
    }
}

/// Records `count` entries one at a time (so checkpoints fall exactly on multiples of 10).
async fn record(server: &TestServer, from: u64, count: u64) {
    let client = server.client().await;
    for i in from..from + count {
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
}

async fn public_key(server: &TestServer) -> PublicKey {
    let text = server
        .client()
        .await
        .checkpoint_response(0)
        .await
        .expect("GetCheckpoint")
        .public_key;
    PublicKey::from_text(&text).expect("public key")
}

/// Writes the test log and stops the server.
async fn stopped_log() -> Stopped {
    let mut server = TestServer::start_with_args(FLAGS).await;
    record(&server, 1, ENTRIES).await;
    let key = public_key(&server).await;
    let temp = server.keep_data_dir().expect("temp dir");
    let dir = server.data_dir.clone();
    assert!(server.stop().await.success());
    Stopped {
        _temp: temp,
        dir,
        key,
    }
}

/// Runs `audit ARGS…` to completion.
async fn audit(args: &[&str]) -> Output {
    let child = tokio::process::Command::new(binary("audit"))
        .args(args)
        .env_remove("AUDIT_SERVER")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output();
    tokio::time::timeout(PATIENCE, child)
        .await
        .expect("audit finished in time")
        .expect("run audit")
}

/// The first bad sequence in a `TAMPERED` line, after checking the exit status (3).
fn cli_first_bad(output: &Output) -> u64 {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rest = stdout
        .split("TAMPERED: first bad sequence ")
        .nth(1)
        .unwrap_or_else(|| panic!("no TAMPERED line: {stdout}"));
    rest.split(':').next().unwrap().parse().expect("sequence")
}

fn first_bad(report: &Report) -> u64 {
    report
        .problem
        .as_ref()
        .unwrap_or_else(|| panic!("tampering not detected: {report:?}"))
        .sequence
}

/// Asserts that all four verifications name `expected` as the first bad sequence, and that
/// the reason mentions `reason`. `extra` are further `audit verify` flags (trusted
/// checkpoints).
async fn assert_detected(
    log: &Stopped,
    trust: &Trust,
    extra: &[&str],
    expected: u64,
    reason: &str,
) {
    let report = verify::verify_data_dir(&log.dir, trust).expect("verify offline");
    assert_eq!(first_bad(&report), expected, "offline: {report:?}");
    let problem = report.problem.as_ref().unwrap();
    assert!(
        problem.reason.contains(reason),
        "offline reason `{}` lacks `{reason}`",
        problem.reason
    );

    let key = log.key.to_text();
    let dir = log.dir.to_str().unwrap();
    let mut args = vec!["verify", "--data-dir", dir, "--public-key", &key];
    args.extend_from_slice(extra);
    assert_eq!(
        cli_first_bad(&audit(&args).await),
        expected,
        "audit verify --data-dir"
    );

    let server = TestServer::start_in(&log.dir, FLAGS).await;
    let report = verify::verify_server(&server.client().await, trust)
        .await
        .expect("verify online");
    assert_eq!(first_bad(&report), expected, "online: {report:?}");
    let uri = server.uri();
    let mut args = vec!["--server", &uri, "verify", "--public-key", &key];
    args.extend_from_slice(extra);
    assert_eq!(
        cli_first_bad(&audit(&args).await),
        expected,
        "audit verify (online)"
    );
    server.kill().await;
}

/// The stored entry at `sequence`, decoded.
fn stored_entry(db: &Connection, sequence: u64) -> pb::AuditEntry {
    let blob: Vec<u8> = db
        .query_row(
            "SELECT entry FROM entries WHERE sequence = ?",
            [sequence as i64],
            |row| row.get(0),
        )
        .expect("stored entry");
    let mut entry = pb::AuditEntry::decode(blob.as_slice()).expect("decode");
    entry.sequence = sequence;
    entry
}

/// Rewrites entry `sequence` with `entry`, its indexed resource column, its retry digest and
/// its entry hash, as a forger who knows the documented scheme does.
fn rewrite_entry(db: &Connection, entry: &pb::AuditEntry) {
    let mut stored = entry.clone();
    stored.sequence = 0;
    db.execute(
        "UPDATE entries SET entry = ?, resource = ?, entry_hash = ?, digest = ? \
         WHERE sequence = ?",
        params![
            stored.encode_to_vec(),
            entry.resource,
            audit_ledger::entry_hash(entry).to_vec(),
            audit_ledger::retry_digest(entry).to_vec(),
            entry.sequence as i64
        ],
    )
    .expect("rewrite entry");
}

/// Recomputes the chain hashes of entries from `from` on, as an attacker who knows the scheme.
fn rechain_from(db: &Connection, from: u64) {
    let mut chain: [u8; 32] = db
        .query_row(
            "SELECT chain_hash FROM entries WHERE sequence = ?",
            [from as i64 - 1],
            |row| row.get::<_, Vec<u8>>(0),
        )
        .map(|h| h.try_into().unwrap())
        .unwrap_or(audit_ledger::CHAIN_START);
    let hashes: Vec<(i64, Vec<u8>)> = db
        .prepare("SELECT sequence, entry_hash FROM entries WHERE sequence >= ? ORDER BY sequence")
        .unwrap()
        .query_map([from as i64], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (sequence, hash) in hashes {
        chain = audit_ledger::chain_hash(&chain, &hash.try_into().unwrap());
        db.execute(
            "UPDATE entries SET chain_hash = ? WHERE sequence = ?",
            params![chain.to_vec(), sequence],
        )
        .unwrap();
    }
}

/// Moves entries above `after` up by one (leaving `after + 1` free), or down by one.
fn shift(db: &Connection, after: u64, up: bool) {
    let delta = if up { 1 } else { -1 };
    db.execute(
        "UPDATE entries SET sequence = -(sequence + ?) WHERE sequence > ?",
        params![delta, after as i64],
    )
    .unwrap();
    db.execute(
        "UPDATE entries SET sequence = -sequence WHERE sequence < 0",
        [],
    )
    .unwrap();
}

fn stored_notes(db: &Connection) -> Vec<(i64, String)> {
    db.prepare("SELECT idx, note FROM checkpoints ORDER BY idx")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn untouched_log_verifies() {
    let log = stopped_log().await;
    let notes = stored_notes(&log.db());
    let sizes: Vec<u64> = notes
        .iter()
        .map(|(_, note)| log.key.open(note).expect("signed by the key").size)
        .collect();
    assert_eq!(
        sizes,
        [0, 10, 20, 30, 40, 45],
        "at creation, every 10 entries and at shutdown"
    );
    for (_, note) in &notes {
        assert!(note.contains("\nmax-unsigned 10\n\n"), "{note}");
    }

    let report = verify::verify_data_dir(&log.dir, &log.trust()).expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.entries, report.checkpoints), (ENTRIES, 6));

    let dir = log.dir.to_str().unwrap();
    let output = audit(&[
        "verify",
        "--data-dir",
        dir,
        "--public-key",
        &log.key.to_text(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.starts_with("OK: 45 entries and 6 checkpoints verified"),
        "{stdout}"
    );

    // The key printed by `audit key` is the one in the data directory.
    let output = audit(&["key", "--data-dir", dir]).await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        log.key.to_text()
    );

    let server = TestServer::start_in(&log.dir, FLAGS).await;
    let report = verify::verify_server(&server.client().await, &log.trust())
        .await
        .expect("verify online");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.entries, report.checkpoints), (ENTRIES, 6));
    let uri = server.uri();
    let output = audit(&[
        "--server",
        &uri,
        "verify",
        "--public-key",
        &log.key.to_text(),
    ])
    .await;
    assert!(output.status.success(), "{output:?}");
    let output = audit(&["--server", &uri, "key"]).await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        log.key.to_text()
    );
    assert_serving(&server, true).await;
    server.kill().await;
}

#[tokio::test]
async fn signing_key_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let log = stopped_log().await;
    let mode = std::fs::metadata(log.dir.join("signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn flipped_byte_in_an_entry() {
    let log = stopped_log().await;
    let db = log.db();
    let mut blob: Vec<u8> = db
        .query_row("SELECT entry FROM entries WHERE sequence = 17", [], |row| {
            row.get(0)
        })
        .unwrap();
    let at = blob
        .windows(11)
        .position(|w| w == b"invoices/17")
        .expect("resource in the blob");
    blob[at + 9] ^= 0x01; // invoices/17 -> invoices/07
    db.execute("UPDATE entries SET entry = ? WHERE sequence = 17", [blob])
        .unwrap();
    drop(db);
    assert_detected(&log, &log.trust(), &[], 17, "does not match its entry hash").await;
}

#[tokio::test]
async fn field_edited_with_its_entry_hash_recomputed() {
    let log = stopped_log().await;
    let db = log.db();
    let mut entry = stored_entry(&db, 17);
    entry.resource = "invoices/forged".into();
    rewrite_entry(&db, &entry);
    drop(db);
    assert_detected(&log, &log.trust(), &[], 17, "chain hash does not follow").await;
}

#[tokio::test]
async fn field_edited_with_the_whole_chain_recomputed() {
    let log = stopped_log().await;
    let db = log.db();
    let mut entry = stored_entry(&db, 17);
    entry.resource = "invoices/forged".into();
    rewrite_entry(&db, &entry);
    rechain_from(&db, 17);
    drop(db);
    // The chain is consistent again; the checkpoint at 20 is not: one of 11..=20 was changed.
    assert_detected(
        &log,
        &log.trust(),
        &[],
        11,
        "checkpoint #3 (size 20) does not match",
    )
    .await;
}

#[tokio::test]
async fn one_entry_deleted() {
    let log = stopped_log().await;
    log.db()
        .execute("DELETE FROM entries WHERE sequence = 23", [])
        .unwrap();
    assert_detected(&log, &log.trust(), &[], 23, "missing").await;
}

#[tokio::test]
async fn one_entry_deleted_and_the_rest_renumbered() {
    let log = stopped_log().await;
    let db = log.db();
    db.execute("DELETE FROM entries WHERE sequence = 23", [])
        .unwrap();
    shift(&db, 23, false);
    drop(db);
    assert_detected(
        &log,
        &log.trust(),
        &[],
        23,
        "an entry before it was removed",
    )
    .await;
}

#[tokio::test]
async fn range_deleted() {
    let log = stopped_log().await;
    log.db()
        .execute("DELETE FROM entries WHERE sequence BETWEEN 23 AND 27", [])
        .unwrap();
    assert_detected(&log, &log.trust(), &[], 23, "missing, with 4 more").await;
}

#[tokio::test]
async fn entry_duplicated() {
    let log = stopped_log().await;
    let db = log.db();
    shift(&db, 12, true);
    // A copy of entry 12 right after it; the id column is unique, so the copy gets another id
    // in the column (its content still carries the original id).
    db.execute(
        "INSERT INTO entries SELECT 13, ?, digest, request_id, time_ns, received_ns, source, \
         method, event, category, resource, level, outcome, status_code, principal, spiffe_id, \
         labels, entry, entry_hash, chain_hash FROM entries WHERE sequence = 12",
        [uuid::Uuid::new_v4().as_bytes().to_vec()],
    )
    .unwrap();
    drop(db);
    let report = verify::verify_data_dir(&log.dir, &log.trust()).unwrap();
    assert_eq!(first_bad(&report), 13, "{report:?}");
    // Online the id column is not visible: the copy is caught by its hash, at the same place.
    assert_detected(&log, &log.trust(), &[], 13, "").await;
}

#[tokio::test]
async fn two_entries_swapped() {
    let log = stopped_log().await;
    let db = log.db();
    db.execute_batch(
        "UPDATE entries SET sequence = -1 WHERE sequence = 15;
         UPDATE entries SET sequence = 15 WHERE sequence = 31;
         UPDATE entries SET sequence = 31 WHERE sequence = -1;",
    )
    .unwrap();
    drop(db);
    assert_detected(&log, &log.trust(), &[], 15, "does not match its entry hash").await;
}

/// A forged entry at sequence 21, the later ones moved up. `hashed`: the forger computes its
/// entry hash and links it to entry 20, as the published scheme allows.
async fn forged_entry_inserted(hashed: bool) -> Stopped {
    let log = stopped_log().await;
    let db = log.db();
    shift(&db, 20, true);
    let mut forged = stored_entry(&db, 20);
    forged.id = uuid::Uuid::now_v7().to_string();
    forged.resource = "invoices/forged".into();
    forged.sequence = 21;
    let hash = audit_ledger::entry_hash(&forged);
    let chain_20: Vec<u8> = db
        .query_row(
            "SELECT chain_hash FROM entries WHERE sequence = 20",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let chain = if hashed {
        audit_ledger::chain_hash(&chain_20.try_into().unwrap(), &hash).to_vec()
    } else {
        vec![0; 32]
    };
    let mut stored = forged.clone();
    stored.sequence = 0;
    db.execute(
        "INSERT INTO entries SELECT 21, ?, ?, request_id, time_ns, received_ns, source, \
         method, event, category, ?, level, outcome, status_code, principal, spiffe_id, \
         labels, ?, ?, ? FROM entries WHERE sequence = 20",
        params![
            uuid::Uuid::parse_str(&forged.id)
                .unwrap()
                .as_bytes()
                .to_vec(),
            audit_ledger::retry_digest(&forged).to_vec(),
            forged.resource,
            stored.encode_to_vec(),
            hash.to_vec(),
            chain
        ],
    )
    .unwrap();
    drop(db);
    log
}

#[tokio::test]
async fn forged_entry_inserted_without_a_valid_link() {
    let log = forged_entry_inserted(false).await;
    assert_detected(&log, &log.trust(), &[], 21, "chain hash does not follow").await;
}

#[tokio::test]
async fn forged_entry_inserted_with_a_valid_link() {
    // Entry 21 links to 20 correctly, so the break shows at the entry it displaced.
    let log = forged_entry_inserted(true).await;
    assert_detected(
        &log,
        &log.trust(),
        &[],
        22,
        "an entry was inserted before it",
    )
    .await;
}

#[tokio::test]
async fn tail_truncated_below_the_newest_checkpoint() {
    let log = stopped_log().await;
    log.db()
        .execute("DELETE FROM entries WHERE sequence > 37", [])
        .unwrap();
    assert_detected(&log, &log.trust(), &[], 38, "the log ends at entry 37").await;
}

#[tokio::test]
async fn store_rolled_back_to_an_older_copy() {
    // An older copy of the store, taken when the log had 30 entries.
    let mut server = TestServer::start_with_args(FLAGS).await;
    record(&server, 1, 30).await;
    let key = public_key(&server).await;
    let temp = server.keep_data_dir().unwrap();
    let dir = server.data_dir.clone();
    assert!(server.stop().await.success());
    let old_copy = temp.path().join("old-audit.db");
    std::fs::copy(dir.join("audit.db"), &old_copy).unwrap();

    // The log grows; the verifier keeps the newest checkpoint (45) from then.
    let server = TestServer::start_in(&dir, FLAGS).await;
    record(&server, 31, 15).await;
    assert!(server.stop().await.success());
    let kept = temp.path().join("checkpoint.txt");
    let note = Connection::open(dir.join("audit.db"))
        .unwrap()
        .query_row(
            "SELECT note FROM checkpoints ORDER BY idx DESC LIMIT 1",
            [],
            |row| row.get::<_, String>(0),
        )
        .unwrap();
    assert_eq!(key.open(&note).unwrap().size, 45);
    std::fs::write(&kept, &note).unwrap();

    // The rollback: self-consistent, so only the kept checkpoint shows it.
    std::fs::copy(&old_copy, dir.join("audit.db")).unwrap();
    let log = Stopped {
        _temp: temp,
        dir,
        key,
    };
    let alone = verify::verify_data_dir(&log.dir, &log.trust()).unwrap();
    assert!(
        alone.is_ok(),
        "without a kept checkpoint a rollback is invisible"
    );
    let trust = Trust {
        checkpoints: vec![note],
        ..log.trust()
    };
    let kept = kept.to_str().unwrap().to_string();
    assert_detected(&log, &trust, &["--checkpoint", &kept], 31, "rolled back").await;
}

#[tokio::test]
async fn checkpoints_signed_by_another_key() {
    let log = stopped_log().await;
    let db = log.db();
    // The attacker edits entry 17, recomputes the chain and re-signs the checkpoints covering
    // it with a key of their own, put in place of the server's public key file.
    let mut entry = stored_entry(&db, 17);
    entry.resource = "invoices/forged".into();
    rewrite_entry(&db, &entry);
    rechain_from(&db, 17);
    let theirs = SigningKey::generate("audit-log").unwrap();
    for (index, note) in stored_notes(&db) {
        let checkpoint = Checkpoint::parse_unverified(&note).unwrap();
        if checkpoint.size < 17 {
            continue;
        }
        let chain: Vec<u8> = db
            .query_row(
                "SELECT chain_hash FROM entries WHERE sequence = ?",
                [checkpoint.size as i64],
                |row| row.get(0),
            )
            .unwrap();
        let leaves: Vec<[u8; 32]> = db
            .prepare("SELECT entry_hash FROM entries WHERE sequence <= ? ORDER BY sequence")
            .unwrap()
            .query_map([checkpoint.size as i64], |row| row.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|h| audit_ledger::merkle::leaf_hash(&h.unwrap().try_into().unwrap()))
            .collect();
        let forged = Checkpoint {
            chain: chain.try_into().unwrap(),
            root: audit_ledger::merkle::root(&leaves),
            ..checkpoint
        };
        db.execute(
            "UPDATE checkpoints SET note = ? WHERE idx = ?",
            params![theirs.sign(&forged), index],
        )
        .unwrap();
    }
    drop(db);
    std::fs::write(
        log.dir.join("signing.pub"),
        format!("{}\n", theirs.public_key().to_text()),
    )
    .unwrap();
    assert_detected(&log, &log.trust(), &[], 11, "checkpoint #3 is refused").await;
    // Without a trusted key, a forged key file is believed once every checkpoint carries its
    // signature: the documented limit. (A server started on the data directory rewrites the
    // file from its own key.)
    let db = log.db();
    for (index, note) in stored_notes(&db) {
        let checkpoint = Checkpoint::parse_unverified(&note).unwrap();
        if checkpoint.size < 17 {
            db.execute(
                "UPDATE checkpoints SET note = ? WHERE idx = ?",
                params![theirs.sign(&checkpoint), index],
            )
            .unwrap();
        }
    }
    drop(db);
    std::fs::write(
        log.dir.join("signing.pub"),
        format!("{}\n", theirs.public_key().to_text()),
    )
    .unwrap();
    let untrusting = verify::verify_data_dir(&log.dir, &Trust::default()).unwrap();
    assert!(untrusting.is_ok(), "{untrusting:?}");
}

#[tokio::test]
async fn checkpoint_with_a_smaller_size() {
    let log = stopped_log().await;
    let db = log.db();
    // A genuine older checkpoint (size 20) replayed as the newest one.
    let older: String = db
        .query_row("SELECT note FROM checkpoints WHERE size = 20", [], |row| {
            row.get(0)
        })
        .unwrap();
    db.execute(
        "INSERT INTO checkpoints (size, time, note) VALUES (20, 0, ?)",
        [older],
    )
    .unwrap();
    drop(db);
    assert_detected(&log, &log.trust(), &[], 21, "fewer than checkpoint #6").await;
}

#[tokio::test]
async fn receipts_and_proofs() {
    let server = TestServer::start_with_args(FLAGS).await;
    let client = server.client().await;
    let key = public_key(&server).await;
    let one = entry("billing", "/a.B/C").random_id().build();
    let receipt = client.record(one.clone()).await.unwrap();
    let retry = client.record(one).await.unwrap();
    assert_eq!(
        retry.entry_hash, receipt.entry_hash,
        "a retry gets the first hash"
    );
    let batch = client
        .record_batch(
            "r1",
            (0..12).map(|i| entry("kms", "/k.K/D").resource(format!("k/{i}"))),
        )
        .await
        .unwrap();
    assert_eq!(batch.entry_hashes.len(), 12);
    let stored = all_entries(&client).await;
    assert_eq!(stored[0].entry_hash, receipt.entry_hash);
    for (hash, sequence) in batch.entry_hashes.iter().zip(&batch.sequences) {
        let entry = &stored[*sequence as usize - 1];
        assert_eq!(&entry.entry_hash, hash);
        assert_eq!(audit_ledger::entry_hash(entry).as_slice(), hash.as_slice());
    }

    // The batch of 12 crossed 10: a checkpoint of 13 entries rides on its commit.
    let first = client
        .checkpoint_response(0)
        .await
        .unwrap()
        .checkpoint
        .unwrap();
    assert_eq!(first.size, 13);
    let hash: [u8; 32] = receipt.entry_hash.clone().try_into().unwrap();
    let signed = verify::check_inclusion(&client, &key, receipt.sequence, &hash)
        .await
        .expect("the receipt's entry is in the log");
    assert_eq!(signed.size, 13);
    let mut wrong = hash;
    wrong[0] ^= 1;
    assert!(
        verify::check_inclusion(&client, &key, receipt.sequence, &wrong)
            .await
            .is_err()
    );

    // The log grows; the earlier checkpoint is a prefix of the newer one.
    record(&server, 100, 10).await;
    let newest = verify::check_consistency(&client, &key, &first.note)
        .await
        .expect("the log only grew");
    assert_eq!(newest.size, 23);
    let stored = all_entries(&client).await;
    for sequence in [1, 7, 13, 23] {
        let hash: [u8; 32] = stored[sequence as usize - 1]
            .entry_hash
            .clone()
            .try_into()
            .unwrap();
        verify::check_inclusion(&client, &key, sequence, &hash)
            .await
            .unwrap_or_else(|e| panic!("entry {sequence}: {e}"));
    }
    let error = client.inclusion_proof(24, 0).await.unwrap_err();
    assert_eq!(error.code(), Some(tonic::Code::InvalidArgument));
}

#[tokio::test]
async fn a_version_1_store_is_migrated_and_hashed() {
    let log = stopped_log().await;
    // Back to the schema before tamper evidence.
    log.db()
        .execute_batch(
            "ALTER TABLE entries DROP COLUMN entry_hash;
             ALTER TABLE entries DROP COLUMN chain_hash;
             DROP TABLE checkpoints;
             DROP TABLE cursors;
             DROP TABLE pruned;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    let server = TestServer::start_in(&log.dir, FLAGS).await;
    assert!(server.stop().await.success());
    let report = verify::verify_data_dir(&log.dir, &log.trust()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.entries, ENTRIES);
    assert_eq!(
        report.checkpoints, 1,
        "signed at the first start after the migration"
    );
}

/// A larger log, with a checkpoint every 10 entries, verifies whole. (Its speed is
/// measured with release builds, as the README says, not here.)
#[tokio::test]
async fn a_log_of_ten_thousand_entries_verifies() {
    let server = TestServer::start_with_args(FLAGS).await;
    let client = server.client().await;
    for batch in 0..20 {
        client
            .record_batch(
                "",
                (0..500).map(|i| {
                    entry("load", "/load.v1.Load/Run")
                        .resource(format!("r/{batch}/{i}"))
                        .principal("bench")
                }),
            )
            .await
            .unwrap();
    }
    let key = public_key(&server).await;
    let mut server = server;
    let _temp = server.keep_data_dir();
    let dir: PathBuf = server.data_dir.clone();
    assert!(server.stop().await.success());
    let trust = Trust {
        public_key: Some(key),
        checkpoints: Vec::new(),
    };
    let report = verify::verify_data_dir(Path::new(&dir), &trust).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.entries, 10_000);
}

// === The server never signs what it has not verified ===

/// Asserts the health of the server and of the audit service, and that a write succeeds
/// (serving) or gets UNAVAILABLE saying the store is read-only (not serving).
async fn assert_serving(server: &TestServer, serving: bool) {
    let client = server.client().await;
    let want = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    assert_eq!(client.health("").await.unwrap(), want);
    assert_eq!(
        client.health(audit_client::SERVICE_NAME).await.unwrap(),
        want
    );
    let recorded = client
        .record(entry("probe", "/probe.v1.Probe/Write").random_id())
        .await;
    if serving {
        recorded.expect("a writable store records");
    } else {
        let error = recorded.expect_err("a read-only store refuses writes");
        assert_eq!(error.code(), Some(tonic::Code::Unavailable), "{error}");
        assert!(error.to_string().contains("read-only"), "{error}");
    }
}

fn checkpoint_sizes(log: &Stopped) -> Vec<u64> {
    stored_notes(&log.db())
        .iter()
        .map(|(_, note)| Checkpoint::parse_unverified(note).unwrap().size)
        .collect()
}

/// Starts a server on a tampered store and checks that it refuses to write or sign: NOT_SERVING,
/// writes refused, and no checkpoint added (while running or at shutdown).
async fn assert_refused_at_start(log: &Stopped, flags: &[&str]) {
    let before = checkpoint_sizes(log);
    let server = TestServer::start_in(&log.dir, flags).await;
    assert_serving(&server, false).await;
    assert!(server.stop().await.success());
    assert_eq!(
        checkpoint_sizes(log),
        before,
        "nothing signed over the forged log"
    );
}

/// Rewrites entries from `from` on with their sequences and hashes recomputed, as a forger
/// who knows the documented encoding does after changing the log.
fn rehash_from(db: &Connection, from: u64) {
    let last: i64 = db
        .query_row("SELECT MAX(sequence) FROM entries", [], |row| row.get(0))
        .unwrap();
    for sequence in from..=last as u64 {
        let entry = stored_entry(db, sequence);
        rewrite_entry(db, &entry);
    }
    rechain_from(db, from);
}

#[tokio::test]
async fn history_rewritten_without_the_key_and_its_checkpoints_deleted() {
    let log = stopped_log().await;
    let db = log.db();
    let mut entry = stored_entry(&db, 17);
    entry.resource = "invoices/forged".into();
    rewrite_entry(&db, &entry);
    rechain_from(&db, 17);
    db.execute("DELETE FROM checkpoints WHERE size >= 17", [])
        .unwrap();
    drop(db);
    // The chain and the remaining checkpoints (0 and 10) hold; 35 unsigned entries after 10 do
    // not: a checkpoint is signed every 10.
    assert_detected(&log, &log.trust(), &[], 11, "more than the 10").await;
    assert_refused_at_start(&log, FLAGS).await;
    let report = verify::verify_data_dir(&log.dir, &log.trust()).unwrap();
    assert_eq!(first_bad(&report), 11, "still detected: {report:?}");
}

#[tokio::test]
async fn entries_deleted_and_renumbered_with_every_checkpoint_deleted() {
    let log = stopped_log().await;
    let db = log.db();
    db.execute("DELETE FROM entries WHERE sequence BETWEEN 23 AND 25", [])
        .unwrap();
    for _ in 0..3 {
        shift(&db, 22, false);
    }
    rehash_from(&db, 23);
    db.execute("DELETE FROM checkpoints", []).unwrap();
    drop(db);
    assert_detected(&log, &log.trust(), &[], 1, "no signed checkpoint").await;
    assert_refused_at_start(&log, FLAGS).await;
}

#[tokio::test]
async fn a_crash_leaves_a_short_unsigned_tail_that_is_not_tampering() {
    let mut server = TestServer::start_with_args(FLAGS).await;
    record(&server, 1, 15).await;
    let key = public_key(&server).await;
    let temp = server.keep_data_dir().unwrap();
    let dir = server.data_dir.clone();
    server.kill().await;
    let log = Stopped {
        _temp: temp,
        dir,
        key,
    };
    assert_eq!(checkpoint_sizes(&log), [0, 10]);
    let report = verify::verify_data_dir(&log.dir, &log.trust()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.uncovered(), 5);
    let key = log.key.to_text();
    let output = audit(&[
        "verify",
        "--data-dir",
        log.dir.to_str().unwrap(),
        "--public-key",
        &key,
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("the last 5 entries are chained but not yet covered"),
        "{stdout}"
    );

    // The restarted server verifies the tail and serves.
    let server = TestServer::start_in(&log.dir, FLAGS).await;
    assert_serving(&server, true).await;
    server.kill().await;

    // A new cadence is signed at once, so the bound in the newest checkpoint is the one kept.
    let server = TestServer::start_in(
        &log.dir,
        &[
            "--checkpoint-every-entries",
            "20",
            "--checkpoint-interval",
            "10m",
        ],
    )
    .await;
    assert_serving(&server, true).await;
    server.kill().await;
    let notes = stored_notes(&log.db());
    let newest = log.key.open(&notes.last().unwrap().1).unwrap();
    assert_eq!((newest.size, newest.max_unsigned), (16, Some(20)));
    let report = verify::verify_data_dir(&log.dir, &log.trust()).unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test]
async fn checkpoints_copied_out_of_the_data_dir_catch_a_consistent_rollback() {
    let copies = tempfile::tempdir().unwrap();
    let copy_dir = copies.path().join("checkpoints");
    let copy = copy_dir.to_str().unwrap();
    let flags = [FLAGS, &["--checkpoint-copy", copy]].concat();
    let mut server = TestServer::start_with_args(&flags).await;
    record(&server, 1, ENTRIES).await;
    let key = public_key(&server).await;
    let temp = server.keep_data_dir().unwrap();
    let dir = server.data_dir.clone();
    assert!(server.stop().await.success());
    let log = Stopped {
        _temp: temp,
        dir,
        key,
    };
    let mut names: Vec<String> = std::fs::read_dir(&copy_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "0.note",
            "10.note",
            "20.note",
            "30.note",
            "40.note",
            "45.note",
            "latest.note"
        ]
    );
    let latest = std::fs::read_to_string(copy_dir.join("latest.note")).unwrap();
    assert_eq!(latest, stored_notes(&log.db()).last().unwrap().1);

    // Truncated to 30 entries with the checkpoints that covered more: consistent by itself.
    let db = log.db();
    db.execute("DELETE FROM entries WHERE sequence > 30", [])
        .unwrap();
    db.execute("DELETE FROM checkpoints WHERE size > 30", [])
        .unwrap();
    drop(db);
    let alone = verify::verify_data_dir(&log.dir, &log.trust()).unwrap();
    assert!(alone.is_ok(), "without the copies a rollback is invisible");
    let latest_path = copy_dir.join("latest.note");
    let latest_file = latest_path.to_str().unwrap();
    let trust = Trust {
        checkpoints: vec![latest.clone()],
        ..log.trust()
    };
    assert_detected(
        &log,
        &trust,
        &["--checkpoint", latest_file],
        31,
        "the log ends at entry 30",
    )
    .await;
    let key = log.key.to_text();
    let output = audit(&[
        "verify",
        "--data-dir",
        log.dir.to_str().unwrap(),
        "--public-key",
        &key,
        "--checkpoint-dir",
        copy,
    ])
    .await;
    assert_eq!(cli_first_bad(&output), 31);
    assert_refused_at_start(&log, &flags).await;
}

// === The schema and the indexes are the server's ===

/// A stopped log whose entries 1 to 3 are by `mallory` and the rest by `alice`.
async fn log_with_mallory() -> Stopped {
    let mut server = TestServer::start_with_args(FLAGS).await;
    let client = server.client().await;
    for i in 1..=3 {
        client
            .record(
                entry("billing", "/billing.v1.Billing/Refund")
                    .resource(format!("r/{i}"))
                    .principal("mallory"),
            )
            .await
            .unwrap();
    }
    drop(client);
    record(&server, 4, 12).await;
    let key = public_key(&server).await;
    let temp = server.keep_data_dir().unwrap();
    let dir = server.data_dir.clone();
    assert!(server.stop().await.success());
    Stopped {
        _temp: temp,
        dir,
        key,
    }
}

/// Asserts that the offline verifications (library and `audit verify --data-dir`) report the
/// database itself, at sequence 1, for `reason`. (The online verifier sees entries, not the
/// schema; the server refuses such a store at start-up.)
async fn assert_detected_offline(log: &Stopped, reason: &str) {
    let report = verify::verify_data_dir(&log.dir, &log.trust()).expect("verify offline");
    assert_eq!(first_bad(&report), 1, "{report:?}");
    let problem = report.problem.unwrap();
    assert!(
        problem.reason.contains(reason),
        "`{}` lacks `{reason}`",
        problem.reason
    );
    let key = log.key.to_text();
    let dir = log.dir.to_str().unwrap();
    let output = audit(&["verify", "--data-dir", dir, "--public-key", &key]).await;
    assert_eq!(cli_first_bad(&output), 1);
    assert!(String::from_utf8_lossy(&output.stdout).contains(reason));
}

async fn count_by_principal(server: &TestServer, principal: &str) -> usize {
    let filter = pb::Filter {
        principal: principal.into(),
        ..Default::default()
    };
    audit_tests::query(&server.client().await, filter)
        .await
        .len()
}

#[tokio::test]
async fn an_index_relabelled_to_hide_a_principal() {
    let log = log_with_mallory().await;
    log.db()
        .execute_batch(
            "DROP INDEX entries_principal;
             CREATE INDEX entries_principal ON entries(principal) WHERE principal != 'mallory';
             PRAGMA writable_schema = ON;
             UPDATE sqlite_schema SET sql = 'CREATE INDEX entries_principal ON entries(principal)'
                 WHERE name = 'entries_principal';
             PRAGMA writable_schema = OFF;",
        )
        .unwrap();
    // Every hash and checkpoint still verifies, and the index hides mallory's entries.
    let server =
        TestServer::start_in(&log.dir, &[FLAGS, &["--startup-check", "schema"]].concat()).await;
    assert_eq!(
        count_by_principal(&server, "mallory").await,
        0,
        "the tampering works"
    );
    assert_eq!(count_by_principal(&server, "alice").await, 12);
    server.kill().await;
    assert_detected_offline(&log, "row 1 missing from index entries_principal").await;
    assert_refused_at_start(&log, FLAGS).await;
}

#[tokio::test]
async fn a_planted_trigger() {
    let log = log_with_mallory().await;
    log.db()
        .execute_batch(
            "CREATE TRIGGER forget AFTER INSERT ON entries WHEN NEW.principal = 'mallory'
             BEGIN DELETE FROM entries WHERE sequence = NEW.sequence; END;",
        )
        .unwrap();
    assert_detected_offline(&log, "unexpected trigger `forget`").await;
    assert_refused_at_start(&log, &[FLAGS, &["--startup-check", "schema"]].concat()).await;
}

// === The retry digest is verified ===

#[tokio::test]
async fn a_zeroed_retry_digest() {
    let log = stopped_log().await;
    log.db()
        .execute(
            "UPDATE entries SET digest = zeroblob(32) WHERE sequence = 17",
            [],
        )
        .unwrap();
    let report = verify::verify_data_dir(&log.dir, &log.trust()).unwrap();
    assert_eq!(first_bad(&report), 17, "{report:?}");
    assert!(report.problem.unwrap().reason.contains("retry digest"));
    let key = log.key.to_text();
    let output = audit(&[
        "verify",
        "--data-dir",
        log.dir.to_str().unwrap(),
        "--public-key",
        &key,
    ])
    .await;
    assert_eq!(cli_first_bad(&output), 17);
}

#[tokio::test]
async fn a_zeroed_retry_digest_in_the_unsigned_tail_is_refused_at_start() {
    let mut server = TestServer::start_with_args(FLAGS).await;
    record(&server, 1, 15).await;
    let key = public_key(&server).await;
    let temp = server.keep_data_dir().unwrap();
    let dir = server.data_dir.clone();
    server.kill().await;
    let log = Stopped {
        _temp: temp,
        dir,
        key,
    };
    log.db()
        .execute(
            "UPDATE entries SET digest = zeroblob(32) WHERE sequence = 13",
            [],
        )
        .unwrap();
    let report = verify::verify_data_dir(&log.dir, &log.trust()).unwrap();
    assert_eq!(first_bad(&report), 13, "{report:?}");
    assert_refused_at_start(&log, FLAGS).await;
}

// === Stores written by earlier versions ===

/// A store as the version before `max-unsigned` left it: no first checkpoint at size 0,
/// five-line ("legacy") notes signed by the same key, and here a crash after entry 45 left the
/// last 5 entries unsigned.
#[tokio::test]
async fn a_store_with_legacy_checkpoints_opens_verifies_and_gets_a_bounded_one() {
    let log = stopped_log().await;
    let key_text = std::fs::read_to_string(log.dir.join("signing.key")).unwrap();
    let key = SigningKey::from_text(&key_text).unwrap();
    let db = log.db();
    db.execute("DELETE FROM checkpoints WHERE size = 0 OR size = 45", [])
        .unwrap();
    for (index, note) in stored_notes(&db) {
        let legacy = Checkpoint {
            max_unsigned: None,
            ..log.key.open(&note).unwrap()
        };
        db.execute(
            "UPDATE checkpoints SET note = ? WHERE idx = ?",
            params![key.sign(&legacy), index],
        )
        .unwrap();
    }
    drop(db);
    assert!(!stored_notes(&log.db())[0].1.contains("max-unsigned"));

    let report = verify::verify_data_dir(&log.dir, &log.trust()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.entries, report.uncovered()), (ENTRIES, 5));
    let key = log.key.to_text();
    let dir = log.dir.to_str().unwrap();
    let output = audit(&["verify", "--data-dir", dir, "--public-key", &key]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("the newest checkpoint is a legacy one"),
        "{stdout}"
    );

    // The first start signs a checkpoint with the bound, over the verified log, and serves.
    let server = TestServer::start_in(&log.dir, FLAGS).await;
    let newest = server
        .client()
        .await
        .checkpoint_response(0)
        .await
        .unwrap()
        .checkpoint
        .unwrap();
    let newest = log.key.open(&newest.note).unwrap();
    assert_eq!((newest.size, newest.max_unsigned), (ENTRIES, Some(10)));
    assert_serving(&server, true).await;
    assert!(server.stop().await.success());
    let report = verify::verify_data_dir(&log.dir, &log.trust()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.entries, ENTRIES + 1);
}
