//! Several replicas on one PostgreSQL database keep the guarantees of one server: one gapless
//! sequence, one chain, every acknowledged entry exactly once, subscribers on every replica
//! seeing every entry in order, through kill -9, lost connections and lost notifications.
//! Each test has a database of its own on the local PostgreSQL.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use audit_client::{Client, ServingStatus, Start, pb};
use audit_tests::{PostgresDatabase, TestServer, all_entries, assert_gapless, entry, take_entries};
use tonic::Code;

/// A signing key file shared by the replicas of one test.
fn shared_key(dir: &Path) -> String {
    let key = audit_ledger::SigningKey::generate("audit-log").expect("key");
    let path = dir.join("signing.key");
    std::fs::write(&path, format!("{}\n", key.to_text())).expect("write key");
    path.display().to_string()
}

/// Starts `count` replicas on `db` with the key in `dir`.
async fn replicas(
    db: &PostgresDatabase,
    key: &str,
    count: usize,
    extra: &[&str],
) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for _ in 0..count {
        let mut args = vec!["--store", db.url.as_str(), "--signing-key", key];
        args.extend_from_slice(extra);
        servers.push(TestServer::start_with_args(&args).await);
    }
    servers
}

/// Records `count` entries with client-chosen ids through `client`; returns id → sequence.
async fn record(client: Client, tag: String, count: usize) -> HashMap<String, u64> {
    let mut acked = HashMap::new();
    for i in 0..count {
        let one = entry("writer", "/a.B/C")
            .random_id()
            .resource(format!("{tag}/{i}"))
            .build();
        let receipt = client.record(one).await.expect("record");
        acked.insert(receipt.id, receipt.sequence);
    }
    acked
}

/// Checks that the log holds every acknowledged id exactly once, at its receipt's sequence.
fn check_log(stored: &[pb::AuditEntry], acked: &HashMap<String, u64>) {
    assert_gapless(stored, 1);
    let mut by_id = HashMap::new();
    for entry in stored {
        assert!(
            by_id.insert(entry.id.clone(), entry.sequence).is_none(),
            "duplicate {}",
            entry.id
        );
    }
    for (id, sequence) in acked {
        assert_eq!(by_id.get(id), Some(sequence), "{id} stored at its receipt");
    }
}

async fn verify(server: &TestServer) {
    let output = tokio::process::Command::new(audit_tests::binary("audit"))
        .args(["--server", &server.uri(), "verify"])
        .output()
        .await
        .expect("audit verify");
    assert!(
        output.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_with_four_writers_each_keep_one_gapless_log() {
    const PER_WRITER: usize = 60;
    let db = PostgresDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let key = shared_key(dir.path());
    let servers = replicas(&db, &key, 3, &[]).await;
    let mut clients = Vec::new();
    for server in &servers {
        clients.push(server.client().await);
    }
    // A subscriber on each replica, from the start of the log.
    let mut subscriptions: Vec<_> = clients
        .iter()
        .map(|c| c.subscribe(pb::Filter::default(), Start::AfterSequence(0)))
        .collect();
    let writers: Vec<_> = (0..12)
        .map(|w| tokio::spawn(record(clients[w % 3].clone(), format!("w{w}"), PER_WRITER)))
        .collect();
    let mut acked = HashMap::new();
    for writer in writers {
        acked.extend(writer.await.expect("writer"));
    }
    let total = 12 * PER_WRITER;
    assert_eq!(acked.len(), total);
    let mut seen = Vec::new();
    for subscription in &mut subscriptions {
        let entries = take_entries(subscription, total).await;
        check_log(&entries, &acked);
        seen.push(entries.iter().map(|e| e.id.clone()).collect::<Vec<_>>());
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "every replica sent the same log"
    );
    for client in &clients {
        check_log(&all_entries(client).await, &acked);
    }
    verify(&servers[2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_racing_the_same_idempotent_id_store_it_once() {
    let db = PostgresDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let key = shared_key(dir.path());
    let servers = replicas(&db, &key, 2, &[]).await;
    let (a, b) = (servers[0].client().await, servers[1].client().await);
    for i in 0..20 {
        let one = entry("racer", "/a.B/C")
            .random_id()
            .resource(format!("r/{i}"))
            .build();
        let (first, second) = tokio::join!(a.record(one.clone()), b.record(one.clone()));
        let (first, second) = (first.expect("a"), second.expect("b"));
        assert_eq!(
            first.sequence, second.sequence,
            "both get the first receipt"
        );
        // Other content under the same id is refused on either replica.
        let mut other = one.clone();
        other.resource = "different".into();
        let refused = b.record(other).await.unwrap_err();
        assert_eq!(refused.code(), Some(Code::AlreadyExists), "{refused:?}");
    }
    let stored = all_entries(&a).await;
    assert_eq!(stored.len(), 20);
    assert_gapless(&stored, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_loses_nothing_and_the_other_goes_on() {
    let db = PostgresDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let key = shared_key(dir.path());
    let mut servers = replicas(&db, &key, 2, &[]).await;
    let victim = servers.remove(0);
    let survivor = servers.remove(0);
    let (doomed, steady) = (victim.client().await, survivor.client().await);
    let steady_writer = tokio::spawn(record(steady.clone(), "steady".into(), 200));
    // The doomed replica's writers record until it dies.
    let doomed_writer = tokio::spawn(async move {
        let mut acked = HashMap::new();
        for i in 0..10_000 {
            let one = entry("doomed", "/a.B/C")
                .random_id()
                .resource(format!("d/{i}"))
                .build();
            match doomed.record(one).await {
                Ok(receipt) => {
                    acked.insert(receipt.id, receipt.sequence);
                }
                Err(_) => break,
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = victim.crash_and_restart().await;
    let mut acked = steady_writer.await.expect("steady writer");
    acked.extend(doomed_writer.await.expect("doomed writer"));
    let restarted_client = restarted.client().await;
    acked.extend(record(restarted_client.clone(), "after".into(), 20).await);
    check_log(&all_entries(&steady).await, &acked);
    check_log(&all_entries(&restarted_client).await, &acked);
    verify(&restarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_database_connection_fails_writes_fast_and_recovers() {
    let db = PostgresDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let key = shared_key(dir.path());
    let servers = replicas(&db, &key, 1, &[]).await;
    let client = servers[0].client().await;
    let mut acked = record(client.clone(), "before".into(), 20).await;
    // Every connection of the replica is cut, as a database restart does.
    assert!(db.terminate("audit-server").await >= 2);
    // The writer learns it at its next call: that write fails fast (or, if it already
    // reconnected, succeeds); health follows; then writes resume by themselves.
    let mut refused = 0;
    let started = std::time::Instant::now();
    for i in 0..400 {
        let one = entry("app", "/a.B/C")
            .random_id()
            .resource(format!("x/{i}"))
            .build();
        match client.record(one).await {
            Ok(receipt) => {
                acked.insert(receipt.id, receipt.sequence);
                if refused > 0 {
                    break;
                }
            }
            Err(error) => {
                assert_eq!(error.code(), Some(Code::Unavailable), "{error:?}");
                refused += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(refused > 0, "the cut connection was noticed");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "recovered by itself"
    );
    assert_eq!(client.health("").await.unwrap(), ServingStatus::Serving);
    check_log(&all_entries(&client).await, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_gets_everything_when_notifications_are_lost() {
    let db = PostgresDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let key = shared_key(dir.path());
    let servers = replicas(&db, &key, 2, &[]).await;
    let (reader, writer) = (servers[0].client().await, servers[1].client().await);
    let mut subscription = reader.subscribe(pb::Filter::default(), Start::AfterSequence(0));
    let writing = tokio::spawn(record(writer, "w".into(), 150));
    // Cut the reading replica's listening connection again and again while entries arrive.
    let mut cuts = 0;
    while !writing.is_finished() {
        cuts += db.terminate("audit-server follower").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acked = writing.await.expect("writer");
    assert!(cuts > 0, "the listening connection was cut");
    let entries = take_entries(&mut subscription, 150).await;
    check_log(&entries, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reaches_postgresql_over_tls_and_checks_its_certificate() {
    let db = PostgresDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let key = shared_key(dir.path());
    // The database server's own certificate (PostgreSQL on Debian: a self-signed one for
    // `localhost`) is the root to trust; `hostaddr` connects by address, `host` names it.
    let rows = db
        .query("SELECT current_setting('ssl'), current_setting('ssl_cert_file')")
        .await;
    let (ssl, cert_file): (String, String) = (rows[0].get(0), rows[0].get(1));
    assert_eq!(ssl, "on", "the test PostgreSQL serves TLS");
    let name = db.url.rsplit('/').next().unwrap();
    let tls_url = format!(
        "postgres://postgres@localhost:5432/{name}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={cert_file}"
    );
    let server = TestServer::start_with_args(&["--store", &tls_url, "--signing-key", &key]).await;
    let client = server.client().await;
    let acked = record(client.clone(), "tls".into(), 10).await;
    check_log(&all_entries(&client).await, &acked);
    let encrypted: i64 = db
        .query(&format!(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = '{name}' AND a.application_name LIKE 'audit-server%' AND s.ssl"
        ))
        .await[0]
        .get(0);
    let all: i64 = db
        .query(&format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = '{name}' AND application_name LIKE 'audit-server%'"
        ))
        .await[0]
        .get(0);
    assert!(
        encrypted >= 2 && encrypted == all,
        "{encrypted} of {all} connections use TLS"
    );
    server.kill().await;

    // A root that did not sign the database's certificate: the replica refuses to start.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_file, other.cert.pem()).unwrap();
    let wrong = tls_url.replace(&cert_file, &other_file.display().to_string());
    let stderr = audit_tests::start_failure(&["--store", &wrong, "--signing-key", &key]).await;
    assert!(stderr.contains("cannot reach PostgreSQL"), "{stderr}");
}

/// The entry sequences a file forwarder wrote to `path` (JSON lines; checkpoints left out).
fn forwarded(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["type"] != "checkpoint")
        .filter_map(|line| line["sequence"].as_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_at_a_time_drives_a_forwarder_and_another_takes_over_when_it_dies() {
    let db = PostgresDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let key = shared_key(dir.path());
    // The same forwarder on both replicas, each writing to a file of its own.
    let paths = [dir.path().join("a.log"), dir.path().join("b.log")];
    let mut servers = Vec::new();
    for path in &paths {
        let forward = format!("siem=file://{}?format=logstash&batch=10", path.display());
        let args = [
            "--store",
            db.url.as_str(),
            "--signing-key",
            &key,
            "--forward",
            &forward,
        ];
        servers.push(TestServer::start_with_args(&args).await);
    }
    let writer = servers[0].client().await;
    record(writer, "first".into(), 60).await;
    audit_tests::eventually("the first 60 entries forwarded", || {
        paths.iter().map(|p| forwarded(p).len()).sum::<usize>() >= 60
    })
    .await;
    let counts: Vec<usize> = paths.iter().map(|p| forwarded(p).len()).collect();
    let driver = counts.iter().position(|&n| n > 0).unwrap();
    assert_eq!(
        counts[1 - driver],
        0,
        "only one replica delivers: {counts:?}"
    );
    assert_eq!(forwarded(&paths[driver]), (1..=60).collect::<Vec<_>>());

    // The driving replica dies; the other takes over from the saved position once its lease
    // lapses, and delivers what was recorded meanwhile.
    let survivor = servers.remove(1 - driver);
    servers.remove(0).kill().await;
    record(survivor.client().await, "second".into(), 40).await;
    let survivor_path = &paths[1 - driver];
    tokio::time::timeout(Duration::from_secs(40), async {
        while !forwarded(survivor_path).contains(&100) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the other replica took over within the lease");
    let mut all: Vec<u64> = paths.iter().flat_map(|p| forwarded(p)).collect();
    let taken_over = forwarded(survivor_path);
    // Duplicates only of the tail the dead replica had not saved (at most one batch).
    assert!(
        taken_over[0] >= 50,
        "resumed from the saved position: {:?}",
        &taken_over[..3]
    );
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all,
        (1..=100).collect::<Vec<_>>(),
        "every entry delivered at least once"
    );
}

/// Records `count` entries with client-chosen ids, retrying each one (same id) while the
/// service answers UNAVAILABLE; returns id → sequence and how many attempts were refused.
async fn record_through_outages(
    client: Client,
    tag: String,
    count: usize,
) -> (HashMap<String, u64>, usize) {
    let (mut acked, mut refused) = (HashMap::new(), 0);
    for i in 0..count {
        let one = entry("writer", "/a.B/C")
            .random_id()
            .resource(format!("{tag}/{i}"))
            .build();
        let started = std::time::Instant::now();
        let receipt = loop {
            match client.record(one.clone()).await {
                Ok(receipt) => break receipt,
                Err(error) if error.code() == Some(Code::Unavailable) => {
                    assert!(started.elapsed() < Duration::from_secs(60), "{error:?}");
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(error) => panic!("record {tag}/{i}: {error:?}"),
            }
        };
        assert_eq!(receipt.id, one.id);
        acked.insert(receipt.id, receipt.sequence);
    }
    (acked, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgresql_crashing_and_restarting_under_load_loses_no_acknowledged_entry() {
    const PER_WRITER: usize = 120;
    let cluster = audit_tests::PrivatePostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let key = shared_key(dir.path());
    let mut servers = Vec::new();
    for _ in 0..2 {
        servers.push(
            TestServer::start_with_args(&["--store", &cluster.url(), "--signing-key", &key]).await,
        );
    }
    let clients = [servers[0].client().await, servers[1].client().await];
    let mut subscription = clients[1].subscribe(pb::Filter::default(), Start::AfterSequence(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = clients[w % 2].clone();
            tokio::spawn(record_through_outages(client, format!("w{w}"), PER_WRITER))
        })
        .collect();
    // While the writers run: a crash (every PostgreSQL process gone at once, the next start
    // replays its write-ahead log), then an orderly restart.
    for how in [
        audit_tests::Shutdown::Immediate,
        audit_tests::Shutdown::Fast,
    ] {
        let head = all_entries(&clients[0]).await.len();
        let deadline = std::time::Instant::now() + audit_tests::PATIENCE;
        while all_entries(&clients[0]).await.len() < head + 40 {
            assert!(
                std::time::Instant::now() < deadline,
                "writes between restarts"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster.stop(how);
        // Both replicas have writers, so both learn of the outage and say so.
        for client in &clients {
            let deadline = std::time::Instant::now() + audit_tests::PATIENCE;
            while client.health("").await.unwrap() != ServingStatus::NotServing {
                assert!(
                    std::time::Instant::now() < deadline,
                    "NOT_SERVING while down"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        cluster.up();
    }
    let (mut acked, mut refused) = (HashMap::new(), 0);
    for writer in writers {
        let (writer_acked, writer_refused) = writer.await.expect("writer");
        acked.extend(writer_acked);
        refused += writer_refused;
    }
    assert_eq!(acked.len(), 4 * PER_WRITER);
    eprintln!("{refused} attempts refused during the outages");
    assert!(refused > 0, "the writers saw the outages");
    for client in &clients {
        assert_eq!(client.health("").await.unwrap(), ServingStatus::Serving);
        check_log(&all_entries(client).await, &acked);
    }
    check_log(&take_entries(&mut subscription, acked.len()).await, &acked);
    verify(&servers[0]).await;
}
