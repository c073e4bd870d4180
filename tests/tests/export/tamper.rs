//! Tampering with an archive: each kind fails `audit verify --archive` with its own message.

use std::path::Path;

use audit_client::{json, pb};
use audit_ledger::{Checkpoint, SigningKey};

use super::{Log, audit, entries, line_json, lines, pinned_size, record, stderr, stdout};

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
