//! `audit export` and `audit verify --archive`: archives exported from a live server (plain and
//! zstd, filtered and unfiltered, while a writer keeps writing) verify with only the file and
//! the public key once the server is stopped and its data directory deleted; each kind of
//! tampering fails with its own message; bad flags get clear errors.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use audit_client::{json, pb};
use audit_ledger::{Checkpoint, SigningKey};
use audit_tests::{PATIENCE, TestServer, all_entries, binary, entry};
use tempfile::TempDir;

#[path = "export/tamper.rs"]
mod tamper;

/// Server flags: a checkpoint every 10 entries, none by time during a test.
const FLAGS: &[&str] = &[
    "--checkpoint-every-entries",
    "10",
    "--checkpoint-interval",
    "10m",
];

/// Runs `audit` with `args` (no server from the environment), stdin closed.
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

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A server signing with a key of the test's own, in a directory the test can delete.
struct Log {
    dir: TempDir,
    server: TestServer,
    key_file: String,
}

impl Log {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = SigningKey::generate("audit-log").expect("key");
        let key_path = dir.path().join("signing.key");
        std::fs::write(&key_path, format!("{}\n", key.to_text())).expect("write key");
        let public = dir.path().join("log.pub");
        std::fs::write(&public, key.public_key().to_text()).expect("write public key");
        let key_arg = key_path.to_str().expect("utf-8 path").to_string();
        let args = [FLAGS, &["--signing-key", &key_arg]].concat();
        let server = TestServer::start_in(&dir.path().join("data"), &args).await;
        Log {
            server,
            key_file: public.to_str().expect("utf-8 path").to_string(),
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().expect("utf-8").into()
    }

    /// `audit export` against the server, with `args`.
    async fn export(&self, args: &[&str]) -> Output {
        let uri = self.server.uri();
        audit(&[&["--server", uri.as_str(), "export"], args].concat()).await
    }
}

/// Records `count` entries: sources alternate between `billing` and `kms`, resources are
/// `invoices/<i>`.
async fn record(server: &TestServer, count: u64) {
    let client = server.client().await;
    for i in 0..count {
        let source = if i % 2 == 0 { "billing" } else { "kms" };
        client
            .record(entry(source, "/billing.v1.Billing/Charge").resource(format!("invoices/{i}")))
            .await
            .expect("record");
    }
}

/// The lines of an archive, decompressed when it is zstd.
fn lines(path: &str) -> Vec<String> {
    let bytes = std::fs::read(path).expect("read archive");
    let text = if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::decode_all(bytes.as_slice()).expect("zstd")
    } else {
        bytes
    };
    String::from_utf8(text)
        .expect("utf-8")
        .lines()
        .map(String::from)
        .collect()
}

fn line_json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).expect("JSON line")
}

/// The checkpoint size an archive is pinned to.
fn pinned_size(lines: &[String]) -> u64 {
    let note = line_json(&lines[0])["checkpoint"]
        .as_str()
        .expect("checkpoint note")
        .to_string();
    Checkpoint::parse_unverified(&note).expect("note").size
}

/// The entries of an archive's entry lines.
fn entries(lines: &[String]) -> Vec<pb::AuditEntry> {
    lines[1..lines.len() - 1]
        .iter()
        .map(|line| json::from_json_value(line_json(line)["entry"].clone()).expect("entry"))
        .collect()
}

#[tokio::test]
async fn archives_verify_after_the_server_and_its_data_are_gone() {
    let log = Log::start().await;
    record(&log.server, 45).await;
    let before = all_entries(&log.server.client().await).await;

    // A writer keeps writing while the exports run.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = log.server.client().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut written = 0u64;
            while !stop.load(Ordering::Relaxed) && written < 100_000 {
                client
                    .record(entry("writer", "/writer.v1.W/Write"))
                    .await
                    .expect("record while exporting");
                written += 1;
            }
            written
        })
    };
    let (all, range, kms, one) = (
        log.path("all.jsonl"),
        log.path("range.jsonl.zst"),
        log.path("kms.jsonl.zst"),
        log.path("one.jsonl"),
    );
    for args in [
        &["--output", all.as_str()][..],
        &[
            "--output",
            &range,
            "--from-sequence",
            "7",
            "--to-sequence",
            "33",
        ],
        &["--output", &kms, "--source", "kms"],
        &["--output", &one, "--resource", "invoices/6"],
    ] {
        let output = log.export(args).await;
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        assert!(
            stdout(&output).starts_with("exported "),
            "{}",
            stdout(&output)
        );
        assert_eq!(
            stderr(&output),
            "",
            "no progress bar when stderr is not a terminal"
        );
    }
    stop.store(true, Ordering::Relaxed);
    assert!(writer.await.expect("writer") > 0);

    let newest = log
        .server
        .client()
        .await
        .query_page(pb::QueryRequest {
            page_size: 1,
            order: pb::Order::Descending.into(),
            ..Default::default()
        })
        .await
        .expect("query the head");
    let head = newest.entries.first().map_or(0, |e| e.sequence);

    // Only the archives and the public key remain.
    let data_dir = log.server.data_dir.clone();
    assert!(log.server.stop().await.success());
    std::fs::remove_dir_all(&data_dir).expect("delete the data directory");
    for archive in [&all, &range, &kms, &one] {
        let output = audit(&[
            "verify",
            "--archive",
            archive,
            "--public-key",
            &log.key_file,
        ])
        .await;
        assert_eq!(
            output.status.code(),
            Some(0),
            "{archive}: {}",
            stdout(&output)
        );
        assert!(
            stdout(&output).starts_with("OK: archive "),
            "{}",
            stdout(&output)
        );
    }

    // Every entry up to the pinned checkpoint, none after it, exactly as stored.
    let all_lines = lines(&all);
    let size = pinned_size(&all_lines);
    assert!(
        size >= 40,
        "pinned to a checkpoint at or after the recorded entries"
    );
    assert!(
        head > size,
        "entries {} to {head} came after the pinned checkpoint",
        size + 1
    );
    let exported = entries(&all_lines);
    assert_eq!(exported.len() as u64, size);
    audit_tests::assert_gapless(&exported, 1);
    assert_eq!(
        &exported[..before.len().min(size as usize)],
        &before[..before.len().min(size as usize)]
    );
    let trailer = line_json(all_lines.last().unwrap());
    assert_eq!(trailer["trailer"]["entries"], size);

    let range_bytes = std::fs::read(&range).unwrap();
    assert!(
        range_bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
        "a .zst archive is zstd"
    );
    let range_entries = entries(&lines(&range));
    assert_eq!(range_entries.len(), 27);
    audit_tests::assert_gapless(&range_entries, 7);

    let kms_lines = lines(&kms);
    let kms_entries = entries(&kms_lines);
    let kms_size = pinned_size(&kms_lines);
    let expected: Vec<u64> = before
        .iter()
        .filter(|e| e.source == "kms" && e.sequence <= kms_size)
        .map(|e| e.sequence)
        .collect();
    assert!(
        expected.len() > 8,
        "enough entries for proofs computed in one pass"
    );
    assert_eq!(
        kms_entries.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(line_json(&kms_lines[0])["filter"]["source"], "kms");
    assert!(
        kms_lines[1..kms_lines.len() - 1]
            .iter()
            .all(|l| line_json(l)["proof"].is_array())
    );

    let one_entries = entries(&lines(&one));
    assert_eq!(
        one_entries.len(),
        1,
        "one entry, its proof fetched from the server"
    );
    assert_eq!(one_entries[0].resource, "invoices/6");
    drop(log.dir);
}

#[tokio::test]
async fn bad_flags_get_clear_errors() {
    let log = Log::start().await;
    record(&log.server, 12).await;
    let existing = log.path("existing.jsonl");
    std::fs::write(&existing, "").unwrap();
    let out = log.path("out.jsonl");
    let cases: &[(&[&str], &str)] = &[
        (&["--output", &existing], "already exists"),
        (
            &["--output", &out, "--source", "kms", "--from-sequence", "2"],
            "cannot be combined with filters",
        ),
        (
            &["--output", &out, "--to-sequence", "1000"],
            "--to-sequence 1000 is beyond the newest signed checkpoint",
        ),
        (
            &["--output", &out, "--from-sequence", "0"],
            "--from-sequence must be at least 1",
        ),
        (
            &[
                "--output",
                &out,
                "--from-sequence",
                "9",
                "--to-sequence",
                "3",
            ],
            "--from-sequence 9 is after the last entry to export (3)",
        ),
    ];
    for (args, expected) in cases {
        let output = log.export(args).await;
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!PathBuf::from(&out).exists(), "{args:?} wrote nothing");
    }
    let output = log.export(&[]).await;
    assert_eq!(output.status.code(), Some(2), "--output is required");
    assert!(stderr(&output).contains("--output"), "{}", stderr(&output));

    let output = audit(&["verify", "--archive", &existing]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("--archive needs --public-key"),
        "{}",
        stderr(&output)
    );
    let missing = log.path("missing.jsonl");
    let output = audit(&[
        "verify",
        "--archive",
        &missing,
        "--public-key",
        &log.key_file,
    ])
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot open"),
        "{}",
        stderr(&output)
    );
    let output = audit(&[
        "verify",
        "--archive",
        &existing,
        "--data-dir",
        "/tmp",
        "--public-key",
        &log.key_file,
    ])
    .await;
    assert_eq!(
        output.status.code(),
        Some(2),
        "--archive and --data-dir conflict"
    );
}

#[tokio::test]
async fn a_terminal_gets_a_progress_bar() {
    let log = Log::start().await;
    record(&log.server, 30).await;
    let archive = log.path("tty.jsonl");
    // `script` runs the export on a pseudo-terminal (util-linux).
    let command = format!(
        "{} --server {} export --output {archive} --source kms",
        binary("audit").display(),
        log.server.uri()
    );
    let run = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output();
    let output = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("export finished in time")
        .expect("run `script` (util-linux) to get a terminal");
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("selecting entries"),
        "a progress bar: {text:?}"
    );
    assert!(text.contains("exported 15 entries"), "{text:?}");
    let output = audit(&[
        "verify",
        "--archive",
        &archive,
        "--public-key",
        &log.key_file,
    ])
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}
