//! The archive checker against logs built here, for every range of small trees.

use audit_ledger::merkle::{self, Frontier};
use audit_ledger::{CHAIN_START, Checkpoint, Hash, SigningKey, chain_hash, entry_hash};
use audit_proto::pb::AuditEntry;
use sha2::{Digest as _, Sha256};

use super::*;
use crate::json;

/// A log of `size` entries as stored (hashes set), its leaf hashes, and a key that signed it.
fn log(size: u64) -> (Vec<AuditEntry>, Vec<Hash>, SigningKey, String) {
    let mut chain = CHAIN_START;
    let mut tree = Frontier::new();
    let mut entries = Vec::new();
    let mut leaves = Vec::new();
    for sequence in 1..=size {
        let mut entry = AuditEntry {
            sequence,
            source: format!("app-{sequence}"),
            ..Default::default()
        };
        let hash = entry_hash(&entry);
        chain = chain_hash(&chain, &hash);
        entry.entry_hash = hash.to_vec();
        entry.chain_hash = chain.to_vec();
        tree.push(&hash);
        leaves.push(merkle::leaf_hash(&hash));
        entries.push(entry);
    }
    let key = SigningKey::generate("test-log").unwrap();
    let checkpoint = Checkpoint {
        origin: "test-log".into(),
        size,
        root: tree.root(),
        chain,
        time: 1_800_000_000,
        max_unsigned: Some(10),
        pruned: 0,
    };
    let note = key.sign(&checkpoint);
    (entries, leaves, key, note)
}

fn manifest(note: &str, proof: ProofKind, range: Option<RangeProof>) -> String {
    serde_json::to_string(&Manifest {
        format: FORMAT.into(),
        version: VERSION,
        created: "2026-12-03T00:00:00Z".into(),
        key: "test-log+00000000".into(),
        checkpoint: note.into(),
        filter: serde_json::json!({}),
        proof,
        range,
    })
    .unwrap()
}

fn entry_line(entry: &AuditEntry, proof: Option<&[Hash]>) -> String {
    let mut line = serde_json::json!({
        "entry": serde_json::from_str::<serde_json::Value>(&json::to_json(entry).unwrap()).unwrap()
    });
    if let Some(proof) = proof {
        line["proof"] = encode_hashes(proof).into();
    }
    line.to_string()
}

/// `lines` followed by their trailer.
fn with_trailer(mut lines: Vec<String>, entries: &[&AuditEntry]) -> Vec<String> {
    let mut digest = Sha256::new();
    for line in &lines {
        digest.update(line.as_bytes());
        digest.update(b"\n");
    }
    let trailer = Trailer {
        entries: entries.len() as u64,
        first_sequence: entries.first().map_or(0, |e| e.sequence),
        last_sequence: entries.last().map_or(0, |e| e.sequence),
        lines_sha256: digest_text(&digest.finalize()),
    };
    lines.push(serde_json::json!({ "trailer": trailer }).to_string());
    lines
}

fn check(key: &SigningKey, lines: &[String]) -> Result<ArchiveSummary, ArchiveProblem> {
    let mut checker = ArchiveChecker::new(key.public_key());
    for line in lines {
        checker.line(line)?;
    }
    checker.finish()
}

fn range_archive(
    entries: &[AuditEntry],
    leaves: &[Hash],
    note: &str,
    first: u64,
    last: u64,
) -> Vec<String> {
    let size = leaves.len() as u64;
    let left = if first > 1 {
        left_edge(first - 1, size, &merkle::inclusion_proof(first - 1, leaves)).unwrap()
    } else {
        Vec::new()
    };
    let range = RangeProof {
        first,
        last,
        left: encode_hashes(&left),
        right: encode_hashes(&merkle::consistency_proof(last, leaves)),
    };
    let chosen: Vec<&AuditEntry> = entries[first as usize - 1..last as usize].iter().collect();
    let mut lines = vec![manifest(note, ProofKind::Range, Some(range))];
    lines.extend(chosen.iter().map(|e| entry_line(e, None)));
    with_trailer(lines, &chosen)
}

#[test]
fn the_left_edge_is_the_frontier_before_the_range() {
    let (_, leaves, _, _) = log(40);
    for size in 2..=40u64 {
        let leaves = &leaves[..size as usize];
        for before in 1..size {
            let mut frontier = Frontier::new();
            for leaf in &leaves[..before as usize] {
                frontier.push_leaf(*leaf);
            }
            let left = left_edge(before, size, &merkle::inclusion_proof(before, leaves)).unwrap();
            let mut bytes = before.to_be_bytes().to_vec();
            bytes.extend(left.iter().flatten());
            assert_eq!(bytes, frontier.to_bytes(), "{before} of {size}");
        }
    }
    assert!(
        left_edge(3, 10, &[[0; 32]]).is_none(),
        "a proof of the wrong length"
    );
}

#[test]
fn every_range_of_small_logs_verifies_and_its_neighbours_do_not() {
    // Every range of logs up to 9 entries, and ranges at the edges of subtrees of a larger one.
    let small = (1..=9u64).flat_map(|size| {
        (1..=size).flat_map(move |first| (first..=size).map(move |last| (size, first, last)))
    });
    let edges = [1u64, 2, 15, 16, 17, 31, 32, 33];
    let large = edges
        .iter()
        .flat_map(|&first| edges.iter().map(move |&last| (33, first, last)))
        .filter(|(_, first, last)| first <= last);
    let mut logs = std::collections::HashMap::new();
    for (size, first, last) in small.chain(large) {
        let (entries, leaves, key, note) = logs.entry(size).or_insert_with(|| log(size)).clone();
        let lines = range_archive(&entries, &leaves, &note, first, last);
        let summary =
            check(&key, &lines).unwrap_or_else(|p| panic!("{first}..={last} of {size}: {p}"));
        assert_eq!(summary.trailer.entries, last - first + 1);
        // One entry shorter, with the proof of the longer range: not the same tree.
        if last > first {
            let mut short = range_archive(&entries, &leaves, &note, first, last - 1);
            let mut manifest: serde_json::Value = serde_json::from_str(&short[0]).unwrap();
            manifest["range"]["right"] =
                encode_hashes(&merkle::consistency_proof(last, &leaves)).into();
            short[0] = manifest.to_string();
            let kept: Vec<&AuditEntry> = entries[first as usize - 1..last as usize - 1]
                .iter()
                .collect();
            short.pop();
            let short = with_trailer(short, &kept);
            let problem = check(&key, &short).unwrap_err();
            assert!(
                problem
                    .reason
                    .contains("do not match the checkpoint's Merkle root"),
                "{first}..={last} of {size}: {problem}"
            );
        }
    }
}

#[test]
fn inclusion_archives_verify_entry_by_entry() {
    let (entries, leaves, key, note) = log(23);
    let chosen: Vec<&AuditEntry> = entries.iter().filter(|e| e.sequence % 3 == 1).collect();
    let mut lines = vec![manifest(&note, ProofKind::Inclusion, None)];
    for entry in &chosen {
        let proof = merkle::inclusion_proof(entry.sequence - 1, &leaves);
        lines.push(entry_line(entry, Some(&proof)));
    }
    let lines = with_trailer(lines, &chosen);
    assert_eq!(check(&key, &lines).unwrap().trailer.entries, 8);

    // One entry's proof swapped for its neighbour's.
    let mut swapped = lines.clone();
    let proof = merkle::inclusion_proof(chosen[1].sequence - 1, &leaves);
    swapped[1] = entry_line(chosen[0], Some(&proof));
    let problem = check(&key, &swapped).unwrap_err();
    assert_eq!((problem.line, problem.sequence), (2, Some(1)));
    assert!(
        problem.reason.contains("inclusion proof does not verify"),
        "{problem}"
    );
}

#[test]
fn other_formats_and_versions_are_refused() {
    let (_, _, key, note) = log(1);
    let mut manifest: serde_json::Value =
        serde_json::from_str(&manifest(&note, ProofKind::Inclusion, None)).unwrap();
    manifest["version"] = 2.into();
    let problem = check(&key, &[manifest.to_string()]).unwrap_err();
    assert!(
        problem.reason.contains("version 2 is not supported"),
        "{problem}"
    );
    manifest["format"] = "tarball".into();
    let problem = check(&key, &[manifest.to_string()]).unwrap_err();
    assert!(problem.reason.contains("not an audit archive"), "{problem}");
    let problem = check(&key, &[]).unwrap_err();
    assert!(problem.reason.contains("empty"), "{problem}");
}
