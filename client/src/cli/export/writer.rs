//! [`ArchiveWriter`]: writes the lines of an archive, checked as the verifier will check them.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use audit_client::verify::archive::{self, ArchiveChecker, Trailer};
use audit_client::verify::{Hash, PublicKey};
use audit_client::{json, pb};
use sha2::{Digest as _, Sha256};

/// `{"entry": ...}` for `entry`, refusing an entry that proto3 JSON does not carry unchanged
/// (its hash could not be recomputed from the archive).
pub(super) fn entry_json(entry: &pb::AuditEntry) -> anyhow::Result<String> {
    let text = json::to_json(entry)?;
    let parsed: pb::AuditEntry = json::from_json(&text)?;
    ensure!(
        parsed == *entry,
        "entry {} does not survive proto3 JSON unchanged, so it cannot be archived",
        entry.sequence
    );
    Ok(format!("{{\"entry\":{text}}}"))
}

/// `line` (from [`entry_json`]) with `"proof": [...]` added.
pub(super) fn with_proof(line: &str, proof: &[Hash]) -> anyhow::Result<String> {
    let object = line
        .strip_suffix('}')
        .context("a spooled entry line is not a JSON object")?;
    Ok(format!(
        "{object},\"proof\":{}}}",
        serde_json::to_string(&archive::encode_hashes(proof))?
    ))
}

/// `.<name>.<what>` beside `path`.
pub(super) fn sibling(path: &Path, what: &str) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{what}"))
}

/// A file removed when dropped (unless renamed away first).
pub(super) struct Removed(pub(super) PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where archive lines go: a file, compressed or not.
enum Sink {
    Plain(BufWriter<File>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

/// Writes an archive to a partial file beside the output, checking every line as the
/// verifier will, and renames it into place only once it is complete and verifies.
pub(super) struct ArchiveWriter {
    sink: Sink,
    checker: ArchiveChecker,
    digest: Sha256,
    entries: u64,
    first: u64,
    last: u64,
    partial: Removed,
    output: PathBuf,
}

impl ArchiveWriter {
    pub(super) fn create(output: &Path, key: PublicKey) -> anyhow::Result<Self> {
        let partial = Removed(sibling(output, "partial"));
        let file = File::create(&partial.0)
            .with_context(|| format!("cannot create {}", partial.0.display()))?;
        let file = BufWriter::new(file);
        let sink = if output.extension().is_some_and(|e| e == "zst") {
            Sink::Zstd(zstd::stream::write::Encoder::new(file, 0)?)
        } else {
            Sink::Plain(file)
        };
        Ok(Self {
            sink,
            checker: ArchiveChecker::new(key),
            digest: Sha256::new(),
            entries: 0,
            first: 0,
            last: 0,
            partial,
            output: output.to_path_buf(),
        })
    }

    pub(super) fn line(&mut self, text: &str) -> anyhow::Result<()> {
        self.checker
            .line(text)
            .map_err(|p| anyhow::anyhow!("the server's data does not verify: {p}"))?;
        self.digest.update(text.as_bytes());
        self.digest.update(b"\n");
        let out: &mut dyn std::io::Write = match &mut self.sink {
            Sink::Plain(out) => out,
            Sink::Zstd(out) => out,
        };
        out.write_all(text.as_bytes())?;
        out.write_all(b"\n")?;
        Ok(())
    }

    /// Writes `entry`, with its inclusion proof in an `inclusion` archive.
    pub(super) fn entry(&mut self, entry: &pb::AuditEntry) -> anyhow::Result<()> {
        self.entry_line(&entry_json(entry)?, entry.sequence)
    }

    /// Writes an entry line made by [`entry_json`] (perhaps [`with_proof`]).
    pub(super) fn entry_line(&mut self, line: &str, sequence: u64) -> anyhow::Result<()> {
        self.line(line)?;
        if self.entries == 0 {
            self.first = sequence;
        }
        self.entries += 1;
        self.last = sequence;
        Ok(())
    }

    pub(super) fn finish(mut self) -> anyhow::Result<Trailer> {
        let trailer = Trailer {
            entries: self.entries,
            first_sequence: self.first,
            last_sequence: self.last,
            lines_sha256: archive::digest_text(&self.digest.clone().finalize()),
        };
        let line = serde_json::json!({ "trailer": trailer }).to_string();
        self.line(&line)?;
        let Self {
            sink,
            checker,
            partial,
            output,
            ..
        } = self;
        checker
            .finish()
            .map_err(|p| anyhow::anyhow!("the archive does not verify: {p}"))?;
        let file = match sink {
            Sink::Plain(out) => out,
            Sink::Zstd(out) => out.finish()?,
        };
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&partial.0, &output)
            .with_context(|| format!("cannot create {}", output.display()))?;
        Ok(trailer)
    }
}
