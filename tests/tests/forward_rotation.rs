//! The file forwarder's rotation against the real server: by size under load with gzip of the
//! rotated files (every entry in exactly one file, read back with `zcat`), by the age of the
//! live file's first line, and deletion of rotated files older than `max_age`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use audit_tests::{TestServer, entry, eventually, forwarder_position};

/// The text of `path`, through the real `zcat` for a `.gz`.
fn read(path: &Path) -> String {
    if path.extension().is_some_and(|e| e == "gz") {
        let output = std::process::Command::new("zcat")
            .arg(path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "zcat {}: {output:?}",
            path.display()
        );
        String::from_utf8(output.stdout).unwrap()
    } else {
        std::fs::read_to_string(path).unwrap()
    }
}

/// The sequence of each entry line of `text` (each line whole JSON; checkpoints left out).
fn sequences(text: &str) -> Vec<u64> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a file ends on a whole line"
    );
    text.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["type"] != "checkpoint")
        .map(|line| line["sequence"].as_u64().unwrap())
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

async fn record(server: &TestServer, count: u64) {
    let client = server.client().await;
    for i in 0..count {
        let entry = entry("kms", "/kms.v1.Keys/Get").resource(format!("keys/{i}"));
        client.record(entry.build()).await.unwrap();
    }
}

#[tokio::test]
async fn rotation_under_load_keeps_every_entry_exactly_once_across_compressed_files() {
    const WRITERS: u64 = 4;
    const BATCHES: u64 = 25;
    const BATCH: u64 = 20;
    const TOTAL: u64 = WRITERS * BATCHES * BATCH;
    const MAX_SIZE: usize = 16 * 1024;
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("audit.log");
    let forward = format!(
        "file=file://{}?max_size=16K&max_files=1000&compress=gzip&batch=50",
        path.display()
    );
    let server = TestServer::start_with_args(&["--forward", &forward]).await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let uri = server.uri();
            tokio::spawn(async move {
                let client = audit_client::Client::connect(uri).await.unwrap();
                for b in 0..BATCHES {
                    let entries = (0..BATCH).map(|i| {
                        entry("app", "/a.B/C")
                            .resource(format!("{w}/{b}/{i}"))
                            .build()
                    });
                    client.record_batch("", entries).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    eventually("every entry delivered", || {
        forwarder_position(&server.data_dir, "file") == Some(TOTAL)
    })
    .await;
    // A clean stop also waits for the compression in progress.
    let mut server = server;
    let data = server.keep_data_dir();
    assert!(server.stop().await.success());
    drop(data);

    let files = names(out.path());
    assert!(
        files.iter().all(|n| n == "audit.log" || n.ends_with(".gz")),
        "every rotated file compressed, nothing left over: {files:?}"
    );
    let rotated = files.len() - 1;
    assert!(rotated >= 5, "only {rotated} rotations");
    let mut counts = BTreeMap::new();
    // Oldest first: audit.log.N.gz … audit.log.1.gz, then the live file.
    let mut order: Vec<PathBuf> = (1..=rotated)
        .rev()
        .map(|n| out.path().join(format!("audit.log.{n}.gz")))
        .collect();
    order.push(path.clone());
    let mut all = Vec::new();
    for file in &order {
        let text = read(file);
        assert!(
            text.len() <= MAX_SIZE,
            "{} holds {} bytes",
            file.display(),
            text.len()
        );
        all.extend(sequences(&text));
    }
    for sequence in &all {
        *counts.entry(*sequence).or_insert(0) += 1;
    }
    assert_eq!(all, (1..=TOTAL).collect::<Vec<_>>(), "in order, once each");
    assert!(counts.values().all(|n| *n == 1));
    eprintln!("{TOTAL} entries across {} files", order.len());
}

#[tokio::test]
async fn the_live_file_rotates_once_its_first_line_is_older_than_rotate_every() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("audit.log");
    let forward = format!("file=file://{}?rotate_every=1s", path.display());
    let server = TestServer::start_with_args(&["--forward", &forward]).await;
    record(&server, 1).await;
    eventually("the first entry delivered", || {
        forwarder_position(&server.data_dir, "file") == Some(1)
    })
    .await;
    // What is measured is an age: it has to pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    record(&server, 1).await;
    eventually("the second entry delivered", || {
        forwarder_position(&server.data_dir, "file") == Some(2)
    })
    .await;
    assert_eq!(sequences(&read(&out.path().join("audit.log.1"))), [1]);
    assert_eq!(sequences(&read(&path)), [2]);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn rotated_files_older_than_max_age_are_deleted() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("audit.log");
    let day = Duration::from_secs(86400);
    let aged = |name: &str, age: Duration| {
        let file = File::create(out.path().join(name)).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
    };
    aged("audit.log.1.gz", 2 * day);
    aged("audit.log.2", 3 * day);
    aged("audit.log.3.gz", day / 2);
    aged("unrelated.log.1", 9 * day);
    let forward = format!("file=file://{}?max_age=1d&compress=gzip", path.display());
    let server = TestServer::start_with_args(&["--forward", &forward]).await;
    record(&server, 1).await;
    eventually("the entry delivered", || {
        forwarder_position(&server.data_dir, "file") == Some(1)
    })
    .await;
    assert_eq!(
        names(out.path()),
        ["audit.log", "audit.log.3.gz", "unrelated.log.1"]
    );
    assert!(server.stop().await.success());
}
