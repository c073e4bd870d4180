//! Two replicas on one PostgreSQL database with the same forwarder: one drives it, the other
//! shows it STANDBY in `ListForwarders`; when the driver stops cleanly it releases the lease and
//! the other takes over at its next check (every second), long before the lease would have lapsed, delivering
//! every entry exactly once across both files.

use std::path::Path;
use std::time::{Duration, Instant};

use audit_client::pb::ForwarderState;
use audit_tests::{PATIENCE, PostgresDatabase, TestServer, entry, eventually};

/// The entry sequences a file forwarder wrote to `path` (whole lines; checkpoints left out).
fn forwarded(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["type"] != "checkpoint")
        .map(|line| line["sequence"].as_u64().unwrap())
        .collect()
}

async fn state(server: &TestServer) -> ForwarderState {
    let forwarders = server.client().await.forwarders().await.unwrap();
    ForwarderState::try_from(forwarders[0].state).unwrap()
}

async fn record(server: &TestServer, tag: &str, count: u64) {
    let client = server.client().await;
    for i in 0..count {
        let entry = entry("kms", "/kms.v1.Keys/Get").resource(format!("{tag}/{i}"));
        client.record(entry.build()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_replica_takes_over_a_released_forwarder_without_waiting_for_the_lease() {
    let db = PostgresDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let key = audit_ledger::SigningKey::generate("audit-log").unwrap();
    let key_path = dir.path().join("signing.key");
    std::fs::write(&key_path, format!("{}\n", key.to_text())).unwrap();
    let paths = [dir.path().join("a.log"), dir.path().join("b.log")];
    let mut servers = Vec::new();
    for path in &paths {
        let forward = format!("siem=file://{}", path.display());
        let args = [
            "--store",
            db.url.as_str(),
            "--signing-key",
            key_path.to_str().unwrap(),
            "--forward",
            &forward,
        ];
        servers.push(TestServer::start_with_args(&args).await);
    }
    record(&servers[0], "first", 20).await;
    eventually("the first 20 entries forwarded", || {
        paths.iter().map(|p| forwarded(p).len()).sum::<usize>() >= 20
    })
    .await;
    let driver = paths.iter().position(|p| !forwarded(p).is_empty()).unwrap();
    let standby = 1 - driver;
    assert_eq!(state(&servers[driver]).await, ForwarderState::Running);
    assert_eq!(state(&servers[standby]).await, ForwarderState::Standby);

    let standby_server = servers.remove(standby);
    assert!(servers.remove(0).stop().await.success());
    let stopped = Instant::now();
    record(&standby_server, "second", 10).await;
    let deadline = Instant::now() + PATIENCE;
    while !forwarded(&paths[standby]).contains(&30) {
        assert!(Instant::now() < deadline, "the standby never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pause = stopped.elapsed();
    eprintln!("the standby replica delivered {pause:?} after the driver stopped");
    // A lapsing lease would take 15 s; the standby checks every second.
    assert!(pause < Duration::from_secs(5), "waited {pause:?}");
    assert_eq!(state(&standby_server).await, ForwarderState::Running);
    let mut all = forwarded(&paths[driver]);
    all.extend(forwarded(&paths[standby]));
    assert_eq!(all, (1..=30).collect::<Vec<_>>(), "exactly once, in order");
    assert!(standby_server.stop().await.success());
}
