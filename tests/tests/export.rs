//! `audit export` and `audit verify --archive`: archives exported from a live server (plain and
//! zstd, filtered and unfiltered, while a writer keeps writing) verify with only the file and
//! the public key once the server is stopped and its data directory deleted; each kind of
//! tampering fails with its own message; bad flags get clear errors.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use audit_client::{json, pb};
use audit_ledger::{Checkpoint, SigningKey};
use audit_tests::{PATIENCE, TestServer, all_entries, binary, entry};
use tempfile::TempDir;

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

/// Writes `lines` (each with its newline) to `path`.
fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("write tampered archive");
}

/// Checks that verifying `lines` at `path` fails (exit 3) with `expected` in its message.
async fn assert_refused(path: &Path, lines: &[String], key: &str, expected: &str) {
    write_lines(path, lines);
    assert_file_refused(path, key, expected).await;
}

async fn assert_file_refused(path: &Path, key: &str, expected: &str) {
    let file = path.to_str().unwrap();
    let output = audit(&["verify", "--archive", file, "--public-key", key]).await;
    let text = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(3),
        "{expected}: {text}{}",
        stderr(&output)
    );
    assert!(text.starts_with("TAMPERED: archive "), "{text}");
    assert!(text.contains(expected), "expected {expected:?} in {text}");
}

/// Replaces the entry of line `at` by `edit` applied to it, with its entry hash recomputed
/// when `rehash`.
/// Base64 of 32 bytes of 7, a hash nobody computed.
const BASE64_SEVENS: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

fn edit_entry(lines: &mut [String], at: usize, rehash: bool, edit: impl Fn(&mut pb::AuditEntry)) {
    let mut value = line_json(&lines[at]);
    let mut parsed: pb::AuditEntry = json::from_json_value(value["entry"].clone()).unwrap();
    edit(&mut parsed);
    if rehash {
        parsed.entry_hash = audit_ledger::entry_hash(&parsed).to_vec();
    }
    value["entry"] = line_json(&json::to_json(&parsed).unwrap());
    lines[at] = value.to_string();
}

#[tokio::test]
async fn tampering_is_detected() {
    let log = Log::start().await;
    record(&log.server, 25).await;
    let (range, filtered) = (log.path("range.jsonl"), log.path("filtered.jsonl"));
    let zst = log.path("range.jsonl.zst");
    for args in [
        &[
            "--output",
            range.as_str(),
            "--from-sequence",
            "3",
            "--to-sequence",
            "17",
        ][..],
        &["--output", &filtered, "--source", "kms"],
        &["--output", &zst],
    ] {
        let output = log.export(args).await;
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    }
    let key = log.key_file.clone();
    let original = lines(&range);
    let size = pinned_size(&original);
    assert_eq!(size, 20, "the checkpoint signed at 20 entries");
    assert_eq!(original.len(), 17, "manifest, entries 3 to 17, trailer");
    let tampered = log.dir.path().join("tampered.jsonl");

    let mut edited = original.clone();
    edited[5] = edited[5].replacen("invoices/", "invoices/x", 1);
    assert_refused(
        &tampered,
        &edited,
        &key,
        "line 6 (entry 7): its content does not match its entry hash: the entry was edited",
    )
    .await;

    let mut rehashed = original.clone();
    edit_entry(&mut rehashed, 5, true, |e| {
        e.resource = "invoices/forged".into()
    });
    assert_refused(
        &tampered,
        &rehashed,
        &key,
        "line 6 (entry 7): its chain hash does not follow",
    )
    .await;

    // Rehashed and rechained to the end: the Merkle root gives it away.
    let mut rechained = original.clone();
    edit_entry(&mut rechained, 5, true, |e| {
        e.resource = "invoices/forged".into()
    });
    for at in 5..16 {
        let previous: pb::AuditEntry =
            json::from_json_value(line_json(&rechained[at - 1])["entry"].clone()).unwrap();
        let previous: [u8; 32] = previous.chain_hash.as_slice().try_into().unwrap();
        edit_entry(&mut rechained, at, false, |e| {
            let hash: [u8; 32] = e.entry_hash.as_slice().try_into().unwrap();
            e.chain_hash = audit_ledger::chain_hash(&previous, &hash).to_vec();
        });
    }
    assert_refused(
        &tampered,
        &rechained,
        &key,
        "line 17: entries 3 to 17 do not match the checkpoint's Merkle root",
    )
    .await;

    let mut removed = original.clone();
    removed.remove(5);
    assert_refused(
        &tampered,
        &removed,
        &key,
        "line 6 (entry 8): entry 7 is due here but the line holds entry 8",
    )
    .await;

    let mut reordered = original.clone();
    reordered.swap(5, 6);
    assert_refused(
        &tampered,
        &reordered,
        &key,
        "entry 7 is due here but the line holds entry 8: an entry was removed or moved",
    )
    .await;

    let mut inserted = original.clone();
    inserted.insert(6, original[5].clone());
    assert_refused(
        &tampered,
        &inserted,
        &key,
        "line 7 (entry 7): entries are out of order or repeated",
    )
    .await;

    // A well-formed entry 18 added after the range.
    let mut appended = original.clone();
    edit_entry(&mut appended, 15, true, |e| e.sequence = 18);
    let last: pb::AuditEntry =
        json::from_json_value(line_json(&original[15])["entry"].clone()).unwrap();
    let last_chain: [u8; 32] = last.chain_hash.as_slice().try_into().unwrap();
    edit_entry(&mut appended, 15, false, |e| {
        let hash: [u8; 32] = e.entry_hash.as_slice().try_into().unwrap();
        e.chain_hash = audit_ledger::chain_hash(&last_chain, &hash).to_vec();
    });
    appended.insert(15, original[15].clone());
    assert_refused(
        &tampered,
        &appended,
        &key,
        "the range 3 to 17 has 15 entries but the archive holds 16",
    )
    .await;

    let mut whitespace = original.clone();
    whitespace[3] = whitespace[3].replacen("{\"entry\":", "{ \"entry\":", 1);
    assert_refused(
        &tampered,
        &whitespace,
        &key,
        "the file was changed after export",
    )
    .await;

    let truncated = original[..15].to_vec();
    assert_refused(
        &tampered,
        &truncated,
        &key,
        "line 15: the archive ends after line 15 without its trailer line: it was truncated",
    )
    .await;

    // A checkpoint signed by another key of the same name, and a checkpoint edited.
    let other = SigningKey::generate("audit-log").unwrap();
    let note = line_json(&original[0])["checkpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let forged = other.sign(&Checkpoint::parse_unverified(&note).unwrap());
    for (note, expected) in [
        (forged, "the checkpoint is not signed by key"),
        (
            note.replacen("\n20\n", "\n21\n", 1),
            "the checkpoint's signature by key",
        ),
    ] {
        let mut manifest = line_json(&original[0]);
        manifest["checkpoint"] = note.into();
        let mut forged_lines = original.clone();
        forged_lines[0] = manifest.to_string();
        let expected = format!("line 1: the manifest's checkpoint is refused: {expected}");
        assert_refused(&tampered, &forged_lines, &key, &expected).await;
    }

    // The wrong key.
    let other_key = log.dir.path().join("other.pub");
    std::fs::write(&other_key, other.public_key().to_text()).unwrap();
    write_lines(&tampered, &original);
    assert_file_refused(
        &tampered,
        other_key.to_str().unwrap(),
        "a wrong --public-key, or a forged checkpoint",
    )
    .await;

    // A forged range proof.
    let mut manifest = line_json(&original[0]);
    manifest["range"]["right"][0] = BASE64_SEVENS.into();
    let mut forged_proof = original.clone();
    forged_proof[0] = manifest.to_string();
    assert_refused(
        &tampered,
        &forged_proof,
        &key,
        "line 17: entries 3 to 17 do not match the checkpoint's Merkle root",
    )
    .await;

    // Filtered: each entry stands on its own proof.
    let original = lines(&filtered);
    let mut rehashed = original.clone();
    edit_entry(&mut rehashed, 2, true, |e| {
        e.resource = "invoices/forged".into()
    });
    let sequence = entries(&original)[1].sequence;
    assert_refused(
        &tampered,
        &rehashed,
        &key,
        &format!("line 3 (entry {sequence}): its inclusion proof does not verify"),
    )
    .await;
    let mut removed = original.clone();
    removed.remove(2);
    assert_refused(&tampered, &removed, &key, "entries were removed or added").await;

    // A truncated zstd archive.
    let bytes = std::fs::read(&zst).unwrap();
    let cut = log.dir.path().join("cut.jsonl.zst");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_file_refused(&cut, &key, "truncated").await;
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
