//! [`ArchiveChecker`]: checks an archive one line at a time.

use audit_ledger::merkle::{self, Frontier};
use audit_ledger::{CHAIN_START, Checkpoint, Hash, PublicKey, chain_hash, entry_hash};
use audit_proto::pb;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest as _, Sha256};

use super::{FORMAT, Manifest, ProofKind, Trailer, VERSION, digest_text};
use crate::json;

/// The first thing found wrong in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveProblem {
    /// The line (1-based) where it was found.
    pub line: u64,
    /// The entry it concerns, when there is one.
    pub sequence: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for ArchiveProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(sequence) = self.sequence {
            write!(f, " (entry {sequence})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What a verified archive holds.
#[derive(Debug, Clone)]
pub struct ArchiveSummary {
    /// Its manifest.
    pub manifest: Manifest,
    /// The checkpoint it is pinned to, signature verified.
    pub checkpoint: Checkpoint,
    /// Its trailer.
    pub trailer: Trailer,
}

/// Checks an archive fed one line at a time (without the newline); see the module
/// documentation. The first problem ends the check.
#[derive(Debug)]
pub struct ArchiveChecker {
    key: PublicKey,
    lines: u64,
    digest: Sha256,
    manifest: Option<(Manifest, Checkpoint)>,
    trailer: Option<Trailer>,
    entries: u64,
    first_sequence: u64,
    last_sequence: u64,
    /// Range archives: the tree so far, and the chain hash of the last entry (unknown before
    /// the first entry when the range starts after entry 1).
    tree: Frontier,
    chain: Option<Hash>,
}

impl ArchiveChecker {
    /// A checker trusting checkpoints signed by `key`.
    pub fn new(key: PublicKey) -> Self {
        Self {
            key,
            lines: 0,
            digest: Sha256::new(),
            manifest: None,
            trailer: None,
            entries: 0,
            first_sequence: 0,
            last_sequence: 0,
            tree: Frontier::new(),
            chain: None,
        }
    }

    /// Checks the next line.
    pub fn line(&mut self, text: &str) -> Result<(), ArchiveProblem> {
        self.lines += 1;
        if self.trailer.is_some() {
            return Err(self.problem(None, "there is more after the trailer line"));
        }
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| self.problem(None, format!("not a JSON line: {e}")))?;
        if self.manifest.is_none() {
            let manifest = self.read_manifest(value)?;
            self.digest.update(text.as_bytes());
            self.digest.update(b"\n");
            self.manifest = Some(manifest);
            return Ok(());
        }
        match value {
            serde_json::Value::Object(mut object) if object.contains_key("trailer") => {
                let trailer = object.remove("trailer").expect("checked");
                if !object.is_empty() {
                    return Err(self.problem(None, "the trailer line holds more than `trailer`"));
                }
                let trailer: Trailer = serde_json::from_value(trailer)
                    .map_err(|e| self.problem(None, format!("malformed trailer: {e}")))?;
                self.check_trailer(&trailer)?;
                self.trailer = Some(trailer);
            }
            value => {
                self.entry(value)?;
                self.digest.update(text.as_bytes());
                self.digest.update(b"\n");
            }
        }
        Ok(())
    }

    /// The verdict once every line has been fed.
    pub fn finish(self) -> Result<ArchiveSummary, ArchiveProblem> {
        let Some((manifest, checkpoint)) = self.manifest else {
            return Err(ArchiveProblem {
                line: 1,
                sequence: None,
                reason: "the archive is empty (no manifest line)".into(),
            });
        };
        let Some(trailer) = self.trailer else {
            return Err(ArchiveProblem {
                line: self.lines,
                sequence: None,
                reason: format!(
                    "the archive ends after line {} without its trailer line: it was truncated",
                    self.lines
                ),
            });
        };
        Ok(ArchiveSummary {
            manifest,
            checkpoint,
            trailer,
        })
    }

    fn problem(&self, sequence: Option<u64>, reason: impl Into<String>) -> ArchiveProblem {
        ArchiveProblem {
            line: self.lines,
            sequence,
            reason: reason.into(),
        }
    }

    fn read_manifest(
        &mut self,
        value: serde_json::Value,
    ) -> Result<(Manifest, Checkpoint), ArchiveProblem> {
        let format = value.get("format").and_then(|f| f.as_str());
        let version = value.get("version").and_then(|v| v.as_u64());
        if format != Some(FORMAT) {
            return Err(self.problem(
                None,
                format!("not an audit archive: the first line has no \"format\": \"{FORMAT}\""),
            ));
        }
        if version != Some(u64::from(VERSION)) {
            return Err(self.problem(
                None,
                format!(
                    "archive format version {} is not supported (this verifier reads version \
                     {VERSION})",
                    version.map_or("?".to_string(), |v| v.to_string())
                ),
            ));
        }
        let manifest: Manifest = serde_json::from_value(value)
            .map_err(|e| self.problem(None, format!("malformed manifest: {e}")))?;
        let checkpoint = self.key.open(&manifest.checkpoint).map_err(|e| {
            self.problem(
                None,
                format!(
                    "the manifest's checkpoint is refused: {e} (a wrong --public-key, or a forged \
                     checkpoint)"
                ),
            )
        })?;
        json::from_json_value::<pb::Filter>(manifest.filter.clone())
            .map_err(|e| self.problem(None, format!("the manifest's filter: {e}")))?;
        match (manifest.proof, &manifest.range) {
            (ProofKind::Range, Some(range)) => {
                if range.first == 0 || range.first > range.last || range.last > checkpoint.size {
                    return Err(self.problem(
                        None,
                        format!(
                            "the range {} to {} is not within the checkpoint's {} entries",
                            range.first, range.last, checkpoint.size
                        ),
                    ));
                }
                let left = self.hashes(None, &range.left, "the manifest's range.left")?;
                let mut bytes = (range.first - 1).to_be_bytes().to_vec();
                bytes.extend(left.iter().flatten());
                self.tree = Frontier::from_bytes(&bytes).ok_or_else(|| {
                    self.problem(
                        None,
                        "the manifest's range.left does not hold one hash per set bit of first - 1",
                    )
                })?;
                self.chain = (range.first == 1).then_some(CHAIN_START);
            }
            (ProofKind::Range, None) => {
                return Err(self.problem(None, "a range archive's manifest has no `range`"));
            }
            (ProofKind::Inclusion, Some(_)) => {
                return Err(self.problem(None, "an inclusion archive's manifest has a `range`"));
            }
            (ProofKind::Inclusion, None) => {}
        }
        Ok((manifest, checkpoint))
    }

    fn hashes(
        &self,
        sequence: Option<u64>,
        texts: &[String],
        what: &str,
    ) -> Result<Vec<Hash>, ArchiveProblem> {
        texts
            .iter()
            .map(|text| {
                BASE64
                    .decode(text)
                    .ok()
                    .and_then(|bytes| Hash::try_from(bytes).ok())
                    .ok_or_else(|| {
                        self.problem(
                            sequence,
                            format!("{what} holds {text:?}, not a base64 hash"),
                        )
                    })
            })
            .collect()
    }

    fn entry(&mut self, value: serde_json::Value) -> Result<(), ArchiveProblem> {
        let (manifest, checkpoint) = self.manifest.as_ref().expect("read first");
        let (kind, range, size) = (manifest.proof, manifest.range.clone(), checkpoint.size);
        let serde_json::Value::Object(mut object) = value else {
            return Err(self.problem(None, "not a JSON object"));
        };
        let entry = object
            .remove("entry")
            .ok_or_else(|| self.problem(None, "neither an entry line nor the trailer"))?;
        let proof = object.remove("proof");
        if let Some(field) = object.keys().next() {
            return Err(self.problem(None, format!("unknown field `{field}` in an entry line")));
        }
        let entry: pb::AuditEntry = json::from_json_value(entry)
            .map_err(|e| self.problem(None, format!("the entry is not an AuditEntry: {e}")))?;
        let sequence = entry.sequence;
        let at = Some(sequence);
        if sequence == 0 || sequence > size {
            return Err(self.problem(
                at,
                format!("the entry is not among the {size} entries the checkpoint signs"),
            ));
        }
        if sequence <= self.last_sequence {
            return Err(self.problem(
                at,
                format!(
                    "entries are out of order or repeated: entry {sequence} comes after entry {}",
                    self.last_sequence
                ),
            ));
        }
        let hash = entry_hash(&entry);
        if entry.entry_hash != hash {
            return Err(self.problem(
                at,
                "its content does not match its entry hash: the entry was edited",
            ));
        }
        match kind {
            ProofKind::Range => {
                let range = range.expect("checked with the manifest");
                let expected = range.first + self.entries;
                if sequence != expected {
                    return Err(self.problem(
                        at,
                        format!(
                            "entry {expected} is due here but the line holds entry {sequence}: \
                             an entry was removed or moved"
                        ),
                    ));
                }
                let stored: Hash = entry.entry_hash.as_slice().try_into().expect("checked");
                let chain: Hash = entry
                    .chain_hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| self.problem(at, "its chain hash is not 32 bytes"))?;
                if let Some(previous) = self.chain
                    && chain_hash(&previous, &stored) != chain
                {
                    return Err(self.problem(
                        at,
                        "its chain hash does not follow from the entry before it: an entry was \
                         changed, inserted or removed",
                    ));
                }
                self.chain = Some(chain);
                self.tree.push(&stored);
            }
            ProofKind::Inclusion => {
                let proof: Vec<String> = proof
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(|e| self.problem(at, format!("malformed proof: {e}")))?
                    .ok_or_else(|| self.problem(at, "the entry line has no `proof`"))?;
                let proof = self.hashes(at, &proof, "its proof")?;
                let (_, checkpoint) = self.manifest.as_ref().expect("read first");
                if !checkpoint.verify_inclusion(sequence, &hash, &proof) {
                    return Err(self.problem(
                        at,
                        format!(
                            "its inclusion proof does not verify against the checkpoint (size \
                             {size}): the entry was changed or inserted"
                        ),
                    ));
                }
            }
        }
        if self.entries == 0 {
            self.first_sequence = sequence;
        }
        self.entries += 1;
        self.last_sequence = sequence;
        Ok(())
    }

    fn check_trailer(&self, trailer: &Trailer) -> Result<(), ArchiveProblem> {
        let (manifest, checkpoint) = self.manifest.as_ref().expect("read first");
        if let Some(range) = &manifest.range {
            let expected = range.last - range.first + 1;
            if self.entries != expected {
                return Err(self.problem(
                    None,
                    format!(
                        "the range {} to {} has {expected} entries but the archive holds {}: \
                         entries were removed or added",
                        range.first, range.last, self.entries
                    ),
                ));
            }
            let right = self.hashes(None, &range.right, "the manifest's range.right")?;
            if !merkle::verify_consistency(
                range.last,
                checkpoint.size,
                &self.tree.root(),
                &checkpoint.root,
                &right,
            ) {
                return Err(self.problem(
                    None,
                    format!(
                        "entries {} to {} do not match the checkpoint's Merkle root: an entry was \
                         changed, inserted or removed, or the manifest's proof was forged",
                        range.first, range.last
                    ),
                ));
            }
            if range.last == checkpoint.size && self.chain != Some(checkpoint.chain) {
                return Err(self.problem(
                    None,
                    "the last entry's chain hash is not the checkpoint's chain head",
                ));
            }
        }
        let held = (self.entries, self.first_sequence, self.last_sequence);
        let stated = (
            trailer.entries,
            trailer.first_sequence,
            trailer.last_sequence,
        );
        if held != stated {
            return Err(self.problem(
                None,
                format!(
                    "the trailer states {} entries ({} to {}) but the archive holds {} ({} to \
                     {}): entries were removed or added",
                    stated.0, stated.1, stated.2, held.0, held.1, held.2
                ),
            ));
        }
        let digest = digest_text(&self.digest.clone().finalize());
        if trailer.lines_sha256 != digest {
            return Err(self.problem(
                None,
                format!(
                    "the lines' digest is {digest}, not the trailer's {}: the file was changed \
                     after export",
                    trailer.lines_sha256
                ),
            ));
        }
        Ok(())
    }
}
