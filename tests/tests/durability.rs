//! Durability: restarts, `kill -9` under load, clean shutdown, a failing store, and the data
//! directory lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit_client::{Client, ServingStatus, pb};
use audit_tests::{Launch, PATIENCE, TestServer, all_entries, binary, entry};
use pb::subscribe_response::Message;
use tonic::Code;

/// Acknowledged receipts: id → sequence.
type Acked = Arc<Mutex<HashMap<String, u64>>>;

/// Starts `count` writers that record entries with client-chosen ids until a call fails or
/// `per_writer` entries are written; every acknowledged receipt goes into the returned map.
fn spawn_writers(
    client: &Client,
    count: usize,
    per_writer: usize,
) -> (Acked, Vec<tokio::task::JoinHandle<()>>) {
    let acked: Acked = Arc::default();
    let handles = (0..count)
        .map(|w| {
            let client = client.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    let one = entry("writer", "/a.B/C")
                        .random_id()
                        .resource(format!("w{w}/{i}"))
                        .build();
                    let id = one.id.clone();
                    match client.record(one).await {
                        Ok(receipt) => {
                            assert_eq!(receipt.id, id);
                            acked.lock().unwrap().insert(id, receipt.sequence);
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    (acked, handles)
}

async fn wait_for_acks(acked: &Acked, at_least: usize) {
    tokio::time::timeout(PATIENCE, async {
        while acked.lock().unwrap().len() < at_least {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("writers made progress");
}

/// Every acknowledged entry is stored exactly once, at its acknowledged sequence, and the log's
/// sequences are gapless from 1.
fn assert_all_acked_present(stored: &[pb::AuditEntry], acked: &HashMap<String, u64>) {
    for (offset, entry) in stored.iter().enumerate() {
        assert_eq!(entry.sequence, offset as u64 + 1, "sequences are gapless");
    }
    let mut by_id = HashMap::new();
    for entry in stored {
        assert!(
            by_id.insert(entry.id.clone(), entry.sequence).is_none(),
            "id {} stored twice",
            entry.id
        );
    }
    for (id, sequence) in acked {
        assert_eq!(
            by_id.get(id),
            Some(sequence),
            "acknowledged entry {id} is missing or moved"
        );
    }
}

#[tokio::test]
async fn a_restart_keeps_every_entry_and_sequences_continue() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for i in 0..10 {
        client
            .record(entry("app", "/a.B/C").resource(format!("{i}")).build())
            .await
            .expect("record");
    }
    let before = all_entries(&client).await;

    let server = server.restart().await;
    let client = server.client().await;
    assert_eq!(all_entries(&client).await, before);
    let next = client
        .record(entry("app", "/a.B/C").build())
        .await
        .expect("record after restart");
    assert_eq!(next.sequence, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_acknowledged_entry() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let (acked, writers) = spawn_writers(&client, 8, 100_000);
    wait_for_acks(&acked, 400).await;

    let server = server.crash_and_restart().await;
    for writer in writers {
        writer.await.expect("writer stopped on error");
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 400);

    let client = server.client().await;
    let stored = all_entries(&client).await;
    assert!(stored.len() >= acked.len());
    assert_all_acked_present(&stored, &acked);
    let next = client
        .record(entry("app", "/a.B/C").build())
        .await
        .expect("record after crash");
    assert_eq!(next.sequence, stored.len() as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_writes_ends_streams_and_exits_0() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mut stream = client
        .raw()
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    let (acked, writers) = spawn_writers(&client, 8, 100_000);
    wait_for_acks(&acked, 200).await;

    let mut server = server;
    let data = server.keep_data_dir().expect("temp dir");
    let data_dir = server.data_dir.clone();
    let status = server.stop().await;
    assert!(status.success(), "exit status {status}");
    for writer in writers {
        writer.await.expect("writer");
    }
    // The live stream ended cleanly (OK), after the entries committed before the shutdown.
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.message().await {
                Ok(Some(pb::SubscribeResponse {
                    message: Some(Message::Entry(_) | Message::Heartbeat(_)),
                })) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("stream ended");
    assert!(matches!(ended, Ok(None)), "stream ended with {ended:?}");

    let acked = acked.lock().unwrap().clone();
    let server = TestServer::start_in(&data_dir, &[]).await;
    let stored = all_entries(&server.client().await).await;
    assert_all_acked_present(&stored, &acked);
    drop(data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_store_reports_not_serving_refuses_writes_and_keeps_what_it_had() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for i in 0..20 {
        client
            .record(entry("app", "/a.B/C").resource(format!("{i}")).build())
            .await
            .expect("record");
    }
    assert_eq!(client.health("").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        client.health(audit_client::SERVICE_NAME).await.unwrap(),
        ServingStatus::Serving
    );

    // The disk "fills up": the server may not grow any file beyond its current size.
    let limit = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", server.pid()))
        .arg("--fsize=4096")
        .status()
        .expect("run prlimit");
    assert!(limit.success());

    let padding = "p".repeat(3000);
    let mut acked = 20;
    let failure = loop {
        assert!(
            acked < 20_000,
            "writes kept succeeding under a 4 KiB file size limit"
        );
        match client
            .record(entry("app", "/a.B/C").status(2, padding.clone()).build())
            .await
        {
            Ok(receipt) => {
                acked += 1;
                assert_eq!(receipt.sequence, acked);
            }
            Err(error) => break error,
        }
    };
    assert_eq!(failure.code(), Some(Code::Unavailable), "{failure:?}");
    assert_eq!(client.health("").await.unwrap(), ServingStatus::NotServing);
    assert_eq!(
        client.health(audit_client::SERVICE_NAME).await.unwrap(),
        ServingStatus::NotServing
    );
    // Once failed, every write is refused, even a small one.
    let refused = client
        .record(entry("app", "/a.B/C").build())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unavailable));
    // Reads still work and show every acknowledged entry.
    assert_eq!(all_entries(&client).await.len() as u64, acked);
    // An operator's health check says so and fails.
    let health = tokio::process::Command::new(binary("audit"))
        .args(["--server", &server.uri(), "health"])
        .output()
        .await
        .expect("run audit health");
    assert_eq!(health.status.code(), Some(1));
    let report = String::from_utf8_lossy(&health.stdout);
    assert!(report.contains("NOT_SERVING"), "{report}");

    let mut server = server;
    let data = server.keep_data_dir().expect("temp dir");
    let data_dir = server.data_dir.clone();
    assert!(server.stop().await.success());

    let db = rusqlite::Connection::open(data_dir.join("audit.db")).expect("open db");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
    drop(db);

    let server = TestServer::start_in(&data_dir, &[]).await;
    let client = server.client().await;
    let stored = all_entries(&client).await;
    assert_eq!(stored.len() as u64, acked);
    assert_eq!(client.health("").await.unwrap(), ServingStatus::Serving);
    let next = client
        .record(entry("app", "/a.B/C").build())
        .await
        .expect("writes work again after the restart");
    assert_eq!(next.sequence, acked + 1);
    drop(data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_a_full_disk_starts_not_serving_and_still_answers_reads() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    for i in 0..20 {
        client
            .record(entry("app", "/a.B/C").resource(format!("{i}")).build())
            .await
            .expect("record");
    }
    let before = all_entries(&client).await;
    let data = server.keep_data_dir().expect("temp dir");
    let data_dir = server.data_dir.clone();
    assert!(server.stop().await.success());

    // The disk is still full: no file may grow beyond 64 KiB (room for SQLite's shared-memory
    // index, not for a megabyte of entries).
    let launch = Launch {
        max_file_bytes: Some(64 * 1024),
        ..Launch::default()
    };
    let server = TestServer::start_launched(&data_dir, &[], &launch).await;
    let client = server.client().await;
    assert_eq!(client.health("").await.unwrap(), ServingStatus::NotServing);
    assert_eq!(
        client.health(audit_client::SERVICE_NAME).await.unwrap(),
        ServingStatus::NotServing
    );
    let refused = client
        .record(entry("app", "/a.B/C").build())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unavailable), "{refused:?}");
    assert_eq!(all_entries(&client).await, before);
    assert!(server.stop().await.success());

    // With room again, it serves and continues the log.
    let server = TestServer::start_in(&data_dir, &[]).await;
    let client = server.client().await;
    assert_eq!(client.health("").await.unwrap(), ServingStatus::Serving);
    let next = client
        .record(entry("app", "/a.B/C").build())
        .await
        .expect("record once there is room");
    assert_eq!(next.sequence, 21);
    drop(data);
}

#[tokio::test]
async fn a_second_server_cannot_open_the_same_data_dir() {
    let server = TestServer::start().await;
    let output = tokio::process::Command::new(binary("audit-server"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(&server.data_dir)
        .output()
        .await
        .expect("run a second server");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another audit-server"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "it never listened");
}
