//! Self-verifying archives written by `audit export`: the format, and its offline check.
//!
//! An archive is JSON lines (zstd-compressed when its name ends in `.zst`):
//!
//! 1. the **manifest** ([`Manifest`]): format and version, the signed checkpoint the export is
//!    pinned to, the key id, the filter, and the kind of proof;
//! 2. one **entry line** per entry, `{"entry": <proto3 JSON AuditEntry>}`, oldest first, with
//!    `"proof": [...]` (the entry's RFC 6962 inclusion proof in the checkpoint's tree, base64
//!    hashes) in an `inclusion` archive;
//! 3. the **trailer** (`{"trailer": ...}`, [`Trailer`]): counts, and the SHA-256 of every byte
//!    before it.
//!
//! A `range` archive holds every entry from `first` to `last`; its manifest carries the left
//! edge of the tree before `first` (one subtree root per set bit of `first - 1`) and the
//! consistency proof from `last` to the checkpoint's size: the entries pushed onto that edge
//! give the tree of `last` entries, which must be a prefix of the signed one. So O(log n)
//! hashes prove that no entry of the range was changed, added, removed or moved.
//!
//! [`ArchiveChecker`] checks lines one at a time (the exporter runs it on what it writes);
//! [`verify_archive`] reads a file with it.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use audit_ledger::merkle;
use audit_ledger::{Hash, PublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::Error;

mod check;

pub use check::{ArchiveChecker, ArchiveProblem, ArchiveSummary};

/// The `format` of every archive's manifest.
pub const FORMAT: &str = "audit-archive";
/// The version of the format this code writes and reads.
pub const VERSION: u32 = 1;
/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The first line of an archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format version, [`VERSION`].
    pub version: u32,
    /// When the export started (RFC 3339), for people; not verified.
    pub created: String,
    /// `<name>+<hex id>` of the key that signs the checkpoint, for people; the verifier uses
    /// the key it is given.
    pub key: String,
    /// The signed checkpoint note the export is pinned to: no entry after its size is in it.
    pub checkpoint: String,
    /// The filter of the export, as proto3 JSON (`{}` for none).
    pub filter: serde_json::Value,
    /// How the entries are proven: [`ProofKind`].
    pub proof: ProofKind,
    /// For a `range` archive: its first and last sequence and their proof material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<RangeProof>,
}

/// How an archive's entries are proven against its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProofKind {
    /// Every entry of a contiguous range, proven together (see the module documentation).
    Range,
    /// Entries matching a filter, each with its own inclusion proof.
    Inclusion,
}

/// The proof of a contiguous range `first..=last` in the checkpoint's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RangeProof {
    /// The first sequence.
    pub first: u64,
    /// The last sequence.
    pub last: u64,
    /// The roots of the perfect subtrees of the first `first - 1` entries, largest first.
    pub left: Vec<String>,
    /// The consistency proof from `last` entries to the checkpoint's size.
    pub right: Vec<String>,
}

/// The last line of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trailer {
    /// Entry lines in the archive.
    pub entries: u64,
    /// Sequence of the first entry (0 when there is none).
    pub first_sequence: u64,
    /// Sequence of the last entry (0 when there is none).
    pub last_sequence: u64,
    /// `sha256:<hex>` of every byte before the trailer line (newlines included).
    pub lines_sha256: String,
}

/// Encodes hashes as base64 strings, as the archive holds them.
pub fn encode_hashes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| BASE64.encode(h)).collect()
}

/// The `left` of a range starting after entry `before`, from the inclusion proof of entry
/// `before + 1` in the tree of `size` entries: its left siblings, largest first. `None` when
/// the proof does not have the length of such a path.
pub fn left_edge(before: u64, size: u64, inclusion_proof: &[Hash]) -> Option<Vec<Hash>> {
    let ranges = merkle::inclusion_ranges(before, size);
    if ranges.len() != inclusion_proof.len() {
        return None;
    }
    let mut left: Vec<_> = ranges
        .into_iter()
        .zip(inclusion_proof)
        .filter(|(range, _)| range.end <= before)
        .collect();
    left.sort_by_key(|(range, _)| range.start);
    Some(left.into_iter().map(|(_, hash)| *hash).collect())
}

/// The `sha256:<hex>` form of a digest.
pub fn digest_text(digest: &[u8]) -> String {
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The outcome of [`verify_archive`]: what the archive holds, or its first problem.
pub type ArchiveReport = Result<ArchiveSummary, ArchiveProblem>;

/// Verifies the archive at `path` with `key`, offline. Fails only when the file cannot be
/// opened; a damaged, truncated or tampered archive is reported as an [`ArchiveProblem`].
pub fn verify_archive(path: &Path, key: &PublicKey) -> Result<ArchiveReport, Error> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::Unverifiable(format!("cannot open {}: {e}", path.display())))?;
    let mut magic = [0u8; 4];
    let read = read_up_to(&mut file, &mut magic)
        .map_err(|e| Error::Unverifiable(format!("cannot read {}: {e}", path.display())))?;
    let head = std::io::Cursor::new(magic[..read].to_vec());
    let reader: Box<dyn Read> = if magic[..read] == ZSTD_MAGIC {
        let decoder = zstd::stream::read::Decoder::new(head.chain(file))
            .map_err(|e| Error::Unverifiable(format!("cannot read {}: {e}", path.display())))?;
        Box::new(decoder)
    } else {
        Box::new(head.chain(file))
    };
    Ok(check_lines(BufReader::new(reader), key))
}

fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn check_lines(mut reader: impl BufRead, key: &PublicKey) -> ArchiveReport {
    let mut checker = ArchiveChecker::new(key.clone());
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let damaged = |number: u64, why: String| ArchiveProblem {
            line: number + 1,
            sequence: None,
            reason: why,
        };
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                return Err(damaged(
                    number,
                    format!("the file is damaged or truncated: {e}"),
                ));
            }
        }
        if line.pop() != Some(b'\n') {
            return Err(damaged(
                number,
                "the last line has no newline: the archive was truncated".into(),
            ));
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| damaged(number, "the line is not UTF-8".into()))?;
        checker.line(text)?;
        number += 1;
    }
    checker.finish()
}

#[cfg(test)]
mod tests;
