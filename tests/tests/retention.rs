//! Retention against the real server: entries beyond `--retain-entries` or `--retain-for` are
//! pruned to a signed horizon, in small steps; Query says where the log now starts, Subscribe
//! refuses a start inside what was pruned; `audit verify` still passes online and offline and
//! still catches tampering with what is kept; a forwarder that has not delivered an entry holds
//! retention back; on PostgreSQL, replicas prune one at a time.

use std::path::Path;
use std::time::Duration;

use audit_client::verify::{self, PublicKey, Trust};
use audit_client::{Client, Start, pb};
use audit_tests::{PATIENCE, PostgresDatabase, TestServer, binary, entry};
use futures::StreamExt;
use rusqlite::Connection;

/// A checkpoint every 10 entries, pruning checked every 100 ms in steps of 7 entries.
const FLAGS: &[&str] = &[
    "--checkpoint-every-entries",
    "10",
    "--checkpoint-interval",
    "10m",
    "--retention-interval",
    "100ms",
    "--retention-step-entries",
    "7",
];

fn flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    FLAGS.iter().chain(extra).copied().collect()
}

/// Records entries `from..from + count` one at a time, each with a resource naming it.
async fn record(client: &Client, from: u64, count: u64) {
    for i in from..from + count {
        client
            .record(
                entry("billing", "/billing.v1.Billing/Charge").resource(format!("secret-{i}-x")),
            )
            .await
            .expect("record");
    }
}

/// One query page, oldest first.
async fn first_page(client: &Client) -> pb::QueryResponse {
    client
        .query_page(pb::QueryRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("query")
}

/// Waits until the server reports entries up to `through` pruned.
async fn wait_pruned(client: &Client, through: u64) -> pb::QueryResponse {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let page = first_page(client).await;
        if page.pruned_through >= through {
            return page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pruned through {} only, waiting for {through}",
            page.pruned_through
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The horizon retention reaches when it wants to prune through `wanted`: the largest size of
/// a signed checkpoint up to it (checkpoints fall every 10 entries and wherever a round raised
/// the horizon). Call once no more entries are recorded.
async fn expected_horizon(client: &Client, wanted: u64) -> u64 {
    let checkpoints = client.checkpoints(0, 1000).await.expect("checkpoints");
    let sizes = checkpoints.iter().map(|c| c.size);
    sizes.filter(|size| *size <= wanted).max().unwrap_or(0)
}

/// Waits until no entry up to `horizon` keeps its content in the SQLite store of `data_dir`:
/// pruning raises the horizon first, then moves entries step by step.
async fn wait_moved(data_dir: &Path, horizon: u64) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let db = Connection::open(data_dir.join("audit.db")).expect("open audit.db");
        let left: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM entries WHERE sequence <= ?",
                [horizon as i64],
                |row| row.get(0),
            )
            .expect("count");
        if left == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} entries left to prune"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn public_key(client: &Client) -> PublicKey {
    let text = client.checkpoint_response(0).await.unwrap().public_key;
    PublicKey::from_text(&text).unwrap()
}

/// `audit verify` against a running server: its exit status and output.
async fn verify_online(server: &TestServer, key: &PublicKey) -> (bool, String) {
    let output = tokio::process::Command::new(binary("audit"))
        .args(["--server", &server.uri(), "verify", "--public-key"])
        .arg(key.to_text())
        .output()
        .await
        .expect("audit verify");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

fn offline(dir: &Path, key: &PublicKey) -> verify::Report {
    let trust = Trust {
        public_key: Some(key.clone()),
        checkpoints: Vec::new(),
    };
    verify::verify_data_dir(dir, &trust).expect("verify")
}

fn sql(db: &Connection, sql: &str) {
    db.execute_batch(sql).expect("tamper");
}

/// Changes the stored content of entry 41 (its resource), keeping its hashes.
fn change_entry_41(db: &Connection) {
    use prost::Message;
    let blob: Vec<u8> = db
        .query_row("SELECT entry FROM entries WHERE sequence = 41", [], |row| {
            row.get(0)
        })
        .unwrap();
    let mut entry = pb::AuditEntry::decode(blob.as_slice()).unwrap();
    entry.resource = "secret-41-y".into();
    db.execute(
        "UPDATE entries SET entry = ? WHERE sequence = 41",
        [entry.encode_to_vec()],
    )
    .unwrap();
}

fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path).is_ok_and(|bytes| {
        bytes
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_entries_are_gone_and_the_log_still_verifies_online_and_offline() {
    let mut server = TestServer::start_with_args(&flags(&["--retain-entries", "30"])).await;
    let client = server.client().await;
    record(&client, 1, 100).await;
    // Keeping 30 of 100 asks for 70.
    let horizon = expected_horizon(&client, 70).await;
    assert!(horizon > 60, "checkpoints every 10 entries: {horizon}");
    let page = wait_pruned(&client, horizon).await;
    wait_moved(&server.data_dir, horizon).await;
    assert_eq!(page.pruned_through, horizon);
    assert_eq!(page.entries.first().map(|e| e.sequence), Some(horizon + 1));
    assert_eq!(page.entries.len() as u64, 100 - horizon);

    // A subscription cannot start inside what was pruned, and says where the log starts.
    let mut from_start = client.subscribe(pb::Filter::default(), Start::AfterSequence(5));
    let refused = tokio::time::timeout(PATIENCE, from_start.next())
        .await
        .expect("answer")
        .expect("an item")
        .expect_err("refused");
    assert_eq!(refused.code(), Some(tonic::Code::OutOfRange), "{refused:?}");
    let oldest = format!("oldest entry kept is {}", horizon + 1);
    assert!(refused.to_string().contains(&oldest), "{refused}");
    let mut from_horizon = client.subscribe(pb::Filter::default(), Start::AfterSequence(horizon));
    let first = tokio::time::timeout(PATIENCE, from_horizon.next())
        .await
        .expect("answer")
        .expect("an item")
        .expect("an entry");
    assert_eq!(first.sequence, horizon + 1);

    let key = public_key(&client).await;
    let (ok, text) = verify_online(&server, &key).await;
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("pruned: entries 1 to {horizon}")),
        "{text}"
    );

    // An export starts at the oldest kept entry and verifies on its own.
    let archive = tempfile::tempdir().unwrap();
    let file = archive.path().join("kept.jsonl");
    let export = tokio::process::Command::new(binary("audit"))
        .args(["--server", &server.uri(), "export", "--output"])
        .arg(&file)
        .output()
        .await
        .expect("audit export");
    assert!(export.status.success(), "{export:?}");
    let check = tokio::process::Command::new(binary("audit"))
        .args(["verify", "--archive"])
        .arg(&file)
        .args(["--public-key", &key.to_text()])
        .output()
        .await
        .expect("audit verify --archive");
    assert!(check.status.success(), "{check:?}");
    let exported = String::from_utf8_lossy(&export.stdout);
    assert!(
        exported.contains(&format!("({} to ", horizon + 1)),
        "{exported}"
    );

    // A restart verifies the pruned log and goes on from it.
    server = server.restart().await;
    let client = server.client().await;
    assert_eq!(first_page(&client).await.pruned_through, horizon);
    record(&client, 101, 5).await;
    let temp = server.keep_data_dir().expect("temp dir");
    let dir = server.data_dir.clone();
    assert!(server.stop().await.success());

    let report = offline(&dir, &key);
    assert!(report.is_ok(), "{:?}", report.problem);
    assert_eq!((report.entries, report.pruned), (105, horizon));
    // The content of pruned entries is not in the store's files any more; kept content is.
    for file in ["audit.db", "audit.db-wal"] {
        assert!(!file_contains(&dir.join(file), "secret-7-x"), "{file}");
    }
    assert!(file_contains(&dir.join("audit.db"), "secret-77-x"));
    drop(temp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_a_pruned_log_is_still_detected() {
    let mut server = TestServer::start_with_args(&flags(&["--retain-entries", "25"])).await;
    let client = server.client().await;
    record(&client, 1, 60).await;
    // Keeping 25 of 60 asks for 35.
    let horizon = expected_horizon(&client, 35).await;
    assert!((20..=35).contains(&horizon), "{horizon}");
    wait_pruned(&client, horizon).await;
    wait_moved(&server.data_dir, horizon).await;
    let key = public_key(&client).await;
    let temp = server.keep_data_dir().expect("temp dir");
    let dir = server.data_dir.clone();
    assert!(server.stop().await.success());
    let pristine = tempfile::tempdir().unwrap();
    let copy = |to: &Path| {
        for file in ["audit.db", "signing.pub"] {
            std::fs::copy(dir.join(file), to.join(file)).unwrap();
        }
    };
    copy(pristine.path());
    assert!(offline(&dir, &key).is_ok());

    // The first kept entry's content removed as if pruned, beyond the signed horizon.
    let move_first_kept = format!(
        "INSERT INTO pruned SELECT sequence, id, digest, request_id, received_ns, entry_hash, \
         chain_hash FROM entries WHERE sequence = {0}; DELETE FROM entries WHERE sequence = {0}",
        horizon + 1
    );
    type Tamper<'a> = Box<dyn Fn(&Connection) + 'a>;
    let cases: [(Tamper, &str, u64); 4] = [
        // A kept entry changed: its hash no longer matches.
        (
            Box::new(change_entry_41),
            "does not match its entry hash",
            41,
        ),
        // A pruned entry's hash rewritten: the chain and the signed roots show it.
        (
            Box::new(|db| {
                sql(
                    db,
                    "UPDATE pruned SET entry_hash = zeroblob(32) WHERE sequence = 12",
                )
            }),
            "chain hash",
            12,
        ),
        (
            Box::new(|db| sql(db, &move_first_kept)),
            "no signed checkpoint says retention pruned it",
            horizon + 1,
        ),
        // Pruned rows deleted outright: a gap.
        (
            Box::new(|db| sql(db, "DELETE FROM pruned WHERE sequence = 5")),
            "missing",
            5,
        ),
    ];
    for (tamper, reason, sequence) in cases {
        let case = tempfile::tempdir().unwrap();
        copy(case.path());
        tamper(&Connection::open(case.path().join("audit.db")).unwrap());
        let report = offline(case.path(), &key);
        let problem = report
            .problem
            .unwrap_or_else(|| panic!("{reason}: not detected"));
        assert_eq!(problem.sequence, sequence, "{problem}");
        assert!(problem.reason.contains(reason), "{problem}");
    }
    // A server started on a store whose content was removed beyond the horizon refuses to
    // write (it verifies before it signs).
    let case = tempfile::tempdir().unwrap();
    copy(case.path());
    std::fs::copy(dir.join("signing.key"), case.path().join("signing.key")).unwrap();
    sql(
        &Connection::open(case.path().join("audit.db")).unwrap(),
        &move_first_kept,
    );
    let tampered = TestServer::start_in(case.path(), FLAGS).await;
    let refused = tampered
        .client()
        .await
        .record(entry("billing", "/billing.v1.Billing/Charge"))
        .await
        .expect_err("read-only");
    assert!(
        refused.to_string().contains("retention pruned only"),
        "{refused}"
    );
    drop(temp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_entries_are_pruned_by_age() {
    let server = TestServer::start_with_args(&flags(&["--retain-for", "4s"])).await;
    let client = server.client().await;
    record(&client, 1, 20).await;
    // Nothing is old yet.
    assert_eq!(first_page(&client).await.pruned_through, 0);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    record(&client, 21, 20).await;
    let page = wait_pruned(&client, 20).await;
    assert_eq!(page.pruned_through, 20, "only the old entries");
    assert_eq!(page.entries.first().map(|e| e.sequence), Some(21));
    // A subscription from a time inside the pruned range is refused, naming the horizon.
    let mut subscription = client.subscribe(
        pb::Filter::default(),
        Start::ReceivedTime(prost_types::Timestamp::default()),
    );
    let refused = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("answer")
        .expect("an item")
        .expect_err("refused");
    assert_eq!(refused.code(), Some(tonic::Code::OutOfRange), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_holds_retention_back_until_it_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("forwarded.log");
    let working = format!("siem=file://{}", out.display());
    let stuck = "stuck=file:///dev/full".to_string();
    let data = dir.path().join("data");
    let args = flags(&["--retain-entries", "10"]);
    let mut with_stuck: Vec<&str> = args.clone();
    with_stuck.extend([
        "--forward",
        &working,
        "--forward",
        &stuck,
        "--shutdown-grace",
        "1s",
    ]);
    let server = TestServer::start_in(&data, &with_stuck).await;
    let client = server.client().await;
    record(&client, 1, 50).await;
    // No condition shows a round that pruned nothing: give retention ten rounds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(first_page(&client).await.pruned_through, 0, "held back");
    assert!(server.stop().await.success());

    let mut without_stuck: Vec<&str> = args.clone();
    without_stuck.extend(["--forward", &working]);
    let server = TestServer::start_in(&data, &without_stuck).await;
    let client = server.client().await;
    let page = wait_pruned(&client, 40).await;
    assert_eq!(page.pruned_through, 40);
    let forwarded = std::fs::read_to_string(&out).unwrap();
    assert!(
        forwarded.contains("secret-50-x"),
        "delivered before pruning"
    );
    assert!(server.stop().await.success());

    // A forwarder added after pruning starts at the oldest entry kept.
    let late_out = dir.path().join("late.log");
    let late = format!("late=file://{}?format=json", late_out.display());
    let mut with_late: Vec<&str> = args.clone();
    with_late.extend(["--forward", &working, "--forward", &late]);
    let server = TestServer::start_in(&data, &with_late).await;
    let deadline = std::time::Instant::now() + PATIENCE;
    let lines = loop {
        let text = std::fs::read_to_string(&late_out).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter(|line| line.contains("\"sequence\""))
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        if lines.len() >= 10 {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "late forwarder: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines[0]["sequence"], "41", "{}", lines[0]);
    assert!(server.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgresql_prune_one_at_a_time_and_the_log_verifies() {
    let db = PostgresDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let key = audit_ledger::SigningKey::generate("audit-log").unwrap();
    let key_path = dir.path().join("signing.key");
    std::fs::write(&key_path, format!("{}\n", key.to_text())).unwrap();
    let key_path = key_path.display().to_string();
    let mut args = flags(&["--retain-entries", "20"]);
    args.extend([
        "--store",
        db.url.as_str(),
        "--signing-key",
        key_path.as_str(),
    ]);
    let (a, b) = (
        TestServer::start_with_args(&args).await,
        TestServer::start_with_args(&args).await,
    );
    let (ca, cb) = (a.client().await, b.client().await);
    let (_, _) = tokio::join!(record(&ca, 1, 40), record(&cb, 41, 40));
    // Keeping 20 of 80 asks for 60; the horizon is the largest signed size up to that.
    let sizes = ca.checkpoints(0, 1000).await.expect("checkpoints");
    let horizon = sizes
        .iter()
        .map(|c| c.size)
        .filter(|s| *s <= 60)
        .max()
        .unwrap();
    assert!(horizon > 40, "checkpoints every 10 entries: {horizon}");
    wait_pruned(&ca, horizon).await;
    assert_eq!(wait_pruned(&cb, horizon).await.pruned_through, horizon);
    let deadline = std::time::Instant::now() + PATIENCE;
    let left = format!("SELECT COUNT(*) FROM entries WHERE sequence <= {horizon}");
    while db.query(&left).await[0].get::<_, i64>(0) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "entries left to prune"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One replica at a time holds the lease.
    let leases = db
        .query("SELECT owner, lease_until FROM cursors WHERE name = '@retention'")
        .await;
    assert_eq!(leases.len(), 1);
    let public = key.public_key();
    let (ok, text) = verify_online(&b, &public).await;
    assert!(ok, "{text}");
    let output = tokio::process::Command::new(binary("audit"))
        .args(["verify", "--store", &db.url, "--public-key"])
        .arg(public.to_text())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains(&format!("pruned: entries 1 to {horizon}")),
        "{text}"
    );
}
