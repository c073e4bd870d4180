//! A forwarder's lease across restarts: a clean shutdown lets it go, so the next process
//! resumes delivery at once (not after the lease lapses) and delivers every entry exactly once;
//! `kill -9` leaves it held, to lapse on its own.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use audit_tests::{TestServer, entry, eventually, forwarder_lease_until, forwarder_position};

/// The sequence of each entry line of the file (checkpoints left out).
fn sequences(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["type"] != "checkpoint")
        .map(|line| line["sequence"].as_u64().expect("a sequence"))
        .collect()
}

async fn record(server: &TestServer, from: u64, count: u64) {
    let client = server.client().await;
    for i in from..from + count {
        let entry = entry("kms", "/kms.v1.Keys/Get").resource(format!("keys/{i}"));
        client.record(entry.build()).await.unwrap();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn a_clean_restart_resumes_delivery_at_once_and_exactly_once() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("audit.log");
    let forward = format!("file=file://{}", path.display());
    let mut server = TestServer::start_with_args(&["--forward", &forward]).await;
    record(&server, 0, 10).await;
    eventually("10 entries delivered", || {
        forwarder_position(&server.data_dir, "file") == Some(10)
    })
    .await;
    let data_dir = server.data_dir.clone();
    server = server.restart().await;
    let resumed = Instant::now();
    record(&server, 10, 10).await;
    eventually("20 entries delivered", || {
        forwarder_position(&server.data_dir, "file") == Some(20)
    })
    .await;
    let pause = resumed.elapsed();
    eprintln!("delivery resumed {pause:?} after the restart");
    assert!(
        pause < Duration::from_secs(4),
        "the new process waited {pause:?} for the old one's lease"
    );
    assert!(forwarder_lease_until(&data_dir, "file").unwrap() > now_ms());
    let mut server = server;
    let data = server.keep_data_dir();
    assert!(server.stop().await.success());
    // Released at shutdown, with the final position, not held for the rest of its lease.
    assert_eq!(forwarder_lease_until(&data_dir, "file"), Some(0));
    assert_eq!(
        forwarder_lease_until(&data_dir, "file.checkpoints"),
        Some(0)
    );
    assert_eq!(forwarder_position(&data_dir, "file"), Some(20));
    assert_eq!(sequences(&path), (1..=20).collect::<Vec<_>>());
    drop(data);
}

#[tokio::test]
async fn kill_9_leaves_the_lease_to_lapse_on_its_own() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("audit.log");
    let forward = format!("file=file://{}", path.display());
    let mut server = TestServer::start_with_args(&["--forward", &forward]).await;
    record(&server, 0, 5).await;
    eventually("5 entries delivered", || {
        forwarder_position(&server.data_dir, "file") == Some(5)
    })
    .await;
    let data = server.keep_data_dir();
    let data_dir = server.data_dir.clone();
    server.kill().await;
    // Nobody let it go: another server would wait for it to lapse, then resume from 5.
    let lease_until = forwarder_lease_until(&data_dir, "file").unwrap();
    assert!(lease_until > now_ms(), "lease until {lease_until}");
    assert_eq!(forwarder_position(&data_dir, "file"), Some(5));
    drop(data);
}
