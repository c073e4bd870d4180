//! The file forwarder against the real server: every entry as a line of JSON, checkpoints as
//! lines of their own after the entries they cover, at-least-once across `kill -9`, and bad
//! configurations refused at start, named.

use std::collections::BTreeMap;
use std::path::Path;

use audit_tests::{TestServer, entry, eventually, forwarder_position, prefilled, start_failure};

/// Each whole line of the file as JSON (one being written as the file is read is left out).
fn lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn entry_sequences(lines: &[serde_json::Value]) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l["type"] != "checkpoint")
        .map(|l| l["sequence"].as_u64().expect("a sequence"))
        .collect()
}

#[tokio::test]
async fn entries_and_checkpoints_reach_the_file_in_order() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("audit.log");
    let forward = format!(
        "file={}",
        format_args!("file://{}?format=logstash", path.display())
    );
    let server =
        TestServer::start_with_args(&["--forward", &forward, "--checkpoint-every-entries", "10"])
            .await;
    let client = server.client().await;
    for i in 0..25 {
        client
            .record(
                entry("kms", "/kms.v1.Keys/Get")
                    .resource(format!("keys/{i}"))
                    .build(),
            )
            .await
            .unwrap();
    }
    eventually("25 entries and 2 checkpoints in the file", || {
        let lines = lines(&path);
        entry_sequences(&lines).len() == 25
            && lines.iter().filter(|l| l["type"] == "checkpoint").count() >= 2
    })
    .await;
    let lines = lines(&path);
    assert_eq!(entry_sequences(&lines), (1..=25).collect::<Vec<_>>());
    let first = lines.iter().find(|l| l["type"] != "checkpoint").unwrap();
    assert_eq!(first["resource"], "keys/0");
    assert!(first["id"].as_str().is_some_and(|id| !id.is_empty()));
    // Each checkpoint comes after the entries it covers, and carries the signed note.
    for (i, line) in lines.iter().enumerate() {
        if line["type"] == "checkpoint" {
            let size = line["size"].as_u64().unwrap();
            let covered = lines
                .iter()
                .position(|l| l["sequence"].as_u64() == Some(size));
            assert!(size == 0 || covered.is_some_and(|at| at < i), "{line}");
            let note = line["note"].as_str().unwrap();
            assert!(note.starts_with(&format!("audit-log\n{size}\n")), "{note}");
        }
    }
    // The position follows what the file holds.
    eventually("the position saved", || {
        forwarder_position(&server.data_dir, "file") == Some(25)
    })
    .await;
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn kill_9_while_forwarding_loses_nothing_and_repeats_only_the_tail() {
    const TOTAL: u64 = 3000;
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("audit.log");
    // One fsync per 5 entries, so that delivery is still under way when the server is killed.
    let forward = format!("file=file://{}?batch=5", path.display());
    let (data, data_dir) = prefilled(TOTAL).await;
    let server = TestServer::start_in(&data_dir, &["--forward", &forward]).await;
    eventually("some entries in the file", || {
        entry_sequences(&lines(&path)).len() >= 20
    })
    .await;
    server.kill().await;
    let saved = forwarder_position(&data_dir, "file").unwrap();
    let before = entry_sequences(&lines(&path));
    assert!(
        (before.len() as u64) < TOTAL,
        "delivery was over before the kill"
    );
    assert!(saved <= *before.last().unwrap());

    let server = TestServer::start_in(&data_dir, &["--forward", &forward]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while entry_sequences(&lines(&path)).last() != Some(&TOTAL) {
        let count = entry_sequences(&lines(&path)).len();
        assert!(
            std::time::Instant::now() < deadline,
            "only {count} lines in the file"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let sequences = entry_sequences(&lines(&path));
    let mut seen = BTreeMap::new();
    for sequence in &sequences {
        *seen.entry(*sequence).or_insert(0) += 1;
    }
    assert_eq!(seen.len() as u64, TOTAL, "an entry is missing");
    let repeated: Vec<u64> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    // Only what was written after the last saved position may come twice.
    assert!(
        repeated.iter().all(|s| *s > saved),
        "repeated {repeated:?}, saved {saved}"
    );
    assert!(
        repeated.len() <= 5,
        "more than the unacknowledged batch: {repeated:?}"
    );
    // First appearances are in order.
    let mut firsts = Vec::new();
    for sequence in sequences {
        if !firsts.contains(&sequence) {
            firsts.push(sequence);
        }
    }
    assert!(firsts.windows(2).all(|w| w[0] < w[1]));
    assert!(server.stop().await.success());
    drop(data);
}

#[tokio::test]
async fn a_bad_forwarder_stops_the_start_and_is_named() {
    let cases = [
        (
            "file=file:///tmp/x.log?colour=red",
            "unknown option `colour`",
        ),
        (
            "file=file:///tmp/x.log?format=yaml",
            "unknown format `yaml`",
        ),
        (
            "file=file:///tmp/x.log?template=%25%7Bnope%7D",
            "unknown variable `nope`",
        ),
        (
            "s=syslog+udp://127.0.0.1:514?facility=moon",
            "unknown facility `moon`",
        ),
        ("s=gopher://127.0.0.1:70", "unknown scheme `gopher`"),
        ("bad name=file:///tmp/x.log", "forwarder name `bad name`"),
    ];
    for (forward, expected) in cases {
        let stderr = start_failure(&["--forward", forward]).await;
        assert!(stderr.contains(expected), "{forward}: {stderr}");
    }
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[[forward]]\nname = \"f\"\nurl = \"file:///tmp/x.log\"\nfilter = { outcome = [\"DENIED\"] }\n",
    )
    .unwrap();
    let stderr = start_failure(&["--config", config.path().to_str().unwrap()]).await;
    assert!(
        stderr.contains("forward[0]: filter") && stderr.contains("outcome"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_filtered_forwarder_from_the_config_file_delivers_only_its_entries() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("denied.log");
    let config = out.path().join("audit.toml");
    std::fs::write(
        &config,
        format!(
            "[[forward]]\nname = \"denied\"\nurl = \"file://{}\"\ntemplate = \"%{{sequence}} %{{outcome}} %{{resource}}\"\nfilter = {{ outcomes = [\"DENIED\"] }}\n",
            path.display()
        ),
    )
    .unwrap();
    let server = TestServer::start_with_args(&[
        "--config",
        config.to_str().unwrap(),
        "--checkpoint-every-entries",
        "100000",
    ])
    .await;
    let client = server.client().await;
    for i in 0..10 {
        let outcome = if i % 3 == 0 {
            audit_client::pb::Outcome::Denied
        } else {
            audit_client::pb::Outcome::Success
        };
        client
            .record(
                entry("app", "/a.B/C")
                    .outcome(outcome)
                    .resource(format!("r{i}"))
                    .build(),
            )
            .await
            .unwrap();
    }
    eventually("the position reaches the head", || {
        forwarder_position(&server.data_dir, "denied") == Some(10)
    })
    .await;
    // A template's lines carry sequence, outcome and resource.
    let text = std::fs::read_to_string(&path).unwrap();
    let got: Vec<&str> = text.lines().filter(|l| !l.starts_with('{')).collect();
    assert_eq!(
        got,
        ["1 DENIED r0", "4 DENIED r3", "7 DENIED r6", "10 DENIED r9"]
    );
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn a_clean_shutdown_while_forwarding_delivers_each_entry_exactly_once() {
    const TOTAL: u64 = 2000;
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("audit.log");
    let forward = format!("file=file://{}?batch=5", path.display());
    let args = ["--forward", forward.as_str(), "--shutdown-grace", "1s"];
    let (_data, data_dir) = prefilled(TOTAL).await;
    let server = TestServer::start_in(&data_dir, &args).await;
    eventually("some entries in the file", || {
        entry_sequences(&lines(&path)).len() >= 20
    })
    .await;
    // Stopped while behind: it stops between batches (or, on a fast machine, within its grace
    // period once everything is delivered), its position matching the file either way.
    assert!(server.stop().await.success());
    let after_stop = entry_sequences(&lines(&path)).len() as u64;
    assert!(after_stop <= TOTAL);
    assert_eq!(
        entry_sequences(&lines(&path)),
        (1..=after_stop).collect::<Vec<_>>(),
        "each entry once, in order, up to the stop"
    );
    assert_eq!(forwarder_position(&data_dir, "file"), Some(after_stop));
    let server = TestServer::start_in(&data_dir, &args).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while entry_sequences(&lines(&path)).last() != Some(&TOTAL) {
        assert!(
            std::time::Instant::now() < deadline,
            "delivery did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        entry_sequences(&lines(&path)),
        (1..=TOTAL).collect::<Vec<_>>()
    );
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn sighup_reopens_a_file_moved_away() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("audit.log");
    let moved = out.path().join("audit.log.old");
    let forward = format!("file=file://{}", path.display());
    let server = TestServer::start_with_args(&["--forward", &forward]).await;
    let client = server.client().await;
    let record = |i: u32| {
        let client = client.clone();
        async move {
            client
                .record(entry("app", "/a.B/C").resource(format!("{i}")).build())
                .await
                .unwrap();
        }
    };
    record(1).await;
    record(2).await;
    eventually("two entries", || entry_sequences(&lines(&path)) == [1, 2]).await;
    // What logrotate does: move the file, then tell the server.
    std::fs::rename(&path, &moved).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    record(3).await;
    eventually("the third entry in a new file", || {
        entry_sequences(&lines(&path)) == [3]
    })
    .await;
    assert_eq!(entry_sequences(&lines(&moved)), [1, 2]);
    assert!(server.stop().await.success());
}
