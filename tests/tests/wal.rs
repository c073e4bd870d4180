//! The write-ahead log stays bounded under sustained writes: disk use follows the data, not the
//! write rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use audit_client::Client;
use audit_tests::{Launch, TestServer, all_entries, entry, file_size};

/// Writers, batches each, and entries per batch of the sustained load.
const WRITERS: usize = 4;
const BATCHES: usize = 25;
const BATCH: usize = 20;

/// Records `BATCHES` batches of `BATCH` entries of about `padding` bytes from each of `WRITERS`
/// concurrent writers; every call must succeed.
async fn sustained_writes(client: &Client, padding: usize) {
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                let message = "m".repeat(padding);
                for b in 0..BATCHES {
                    let entries = (0..BATCH).map(|i| {
                        entry("loader", "/a.B/C")
                            .resource(format!("w{w}/{b}/{i}"))
                            .status(2, message.clone())
                            .build()
                    });
                    client
                        .record_batch("", entries)
                        .await
                        .unwrap_or_else(|e| panic!("writer {w} batch {b}: {e}"));
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sustained_writes_keep_the_wal_under_its_bound() {
    const BOUND: u64 = 256 * 1024;
    // A group (every writer's batch) may land past the bound before the writer checkpoints.
    const GROUP_SLACK: u64 = 1024 * 1024;
    let temp = tempfile::tempdir().expect("temp dir");
    let data_dir = temp.path().join("data");
    // Set through the environment, so that the same test also runs against older servers.
    let launch = Launch {
        env: vec![("AUDIT_MAX_WAL_BYTES".into(), BOUND.to_string())],
        ..Launch::default()
    };
    let server = TestServer::start_launched(&data_dir, &[], &launch).await;
    let client = server.client().await;

    let wal = data_dir.join("audit.db-wal");
    let largest = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (largest, done) = (largest.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                largest.fetch_max(file_size(&wal), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    sustained_writes(&client, 1000).await;
    done.store(true, Ordering::Relaxed);
    watcher.await.expect("watcher");

    let stored = all_entries(&client).await.len();
    assert_eq!(stored, WRITERS * BATCHES * BATCH);
    let database = file_size(&data_dir.join("audit.db"));
    let largest = largest.load(Ordering::Relaxed);
    assert!(
        largest <= BOUND + GROUP_SLACK,
        "the WAL reached {largest} bytes (bound {BOUND}, database {database} bytes)"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_disk_holds_what_fits_in_it() {
    // Each file may grow to 8 MiB, as on a small disk; the entries take about half of it.
    let temp = tempfile::tempdir().expect("temp dir");
    let data_dir = temp.path().join("data");
    let launch = Launch {
        env: vec![("AUDIT_MAX_WAL_BYTES".into(), (1 << 20).to_string())],
        max_file_bytes: Some(8 << 20),
    };
    let server = TestServer::start_launched(&data_dir, &[], &launch).await;
    let client = server.client().await;
    sustained_writes(&client, 1500).await;
    assert_eq!(all_entries(&client).await.len(), WRITERS * BATCHES * BATCH);
    let database = file_size(&data_dir.join("audit.db"));
    let wal = file_size(&data_dir.join("audit.db-wal"));
    assert!(
        database + wal < 8 << 20,
        "database {database} + WAL {wal} bytes"
    );
    drop(server);
}
