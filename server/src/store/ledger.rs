//! The store's side of tamper evidence: the signing key file, the schema additions (entry and
//! chain hashes, the `checkpoints` table), the writer's chain and Merkle tree state, signing
//! checkpoints, and the reads behind checkpoints and proofs.
//!
//! Hashes are computed by the writer inside the transaction that inserts the entries, so they
//! cost no extra fsync. A checkpoint that is due is signed into the same transaction; one that
//! falls due while the log is idle gets a small transaction of its own.

use std::fs::File;
use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use audit_ledger::merkle::Frontier;
use audit_ledger::{CHAIN_START, Checkpoint, Hash, PublicKey, SigningKey};
use audit_proto::pb::AuditEntry;
use prost::Message;
use rusqlite::{Connection, OptionalExtension};

use crate::error::Error;

/// Name of the key file generated in the data directory.
pub const KEY_FILE: &str = "signing.key";
/// Name of the public key file written beside it, for verifiers.
pub const PUBLIC_KEY_FILE: &str = "signing.pub";

/// Schema version 2: entry and chain hashes on every row, and signed checkpoints.
pub(super) const SCHEMA_2: &str = "
ALTER TABLE entries ADD COLUMN entry_hash BLOB;
ALTER TABLE entries ADD COLUMN chain_hash BLOB;
CREATE TABLE checkpoints (
    idx  INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    time INTEGER NOT NULL,
    note TEXT NOT NULL
) STRICT;
";

/// When and how the store signs checkpoints.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    /// Private key file (C2SP `PRIVATE+KEY+...`); `None` uses, or creates, `signing.key` in the
    /// data directory.
    pub signing_key: Option<PathBuf>,
    /// Name of the log: the origin line of its checkpoints and the name of a generated key.
    pub log_name: String,
    /// A checkpoint is signed once this many entries are not covered by one.
    pub every_entries: u64,
    /// A checkpoint is signed at most this long after the first entry it does not cover.
    pub interval: Duration,
}

/// Loads the signing key (generating `signing.key` with mode 0600 on first start) and writes
/// its public key to `signing.pub`.
pub(super) fn load_key(data_dir: &Path, options: &Checkpointing) -> Result<SigningKey, Error> {
    let failed = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        Error::StoreFailed(format!("{what} {}: {e}", path.display()))
    };
    let key = match &options.signing_key {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| failed("read", path, &e))?;
            SigningKey::from_text(&text).map_err(|e| failed("signing key", path, &e))?
        }
        None => {
            let path = data_dir.join(KEY_FILE);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    SigningKey::from_text(&text).map_err(|e| failed("signing key", &path, &e))?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let key = SigningKey::generate(&options.log_name)
                        .map_err(|e| failed("generate key", &path, &e))?;
                    write_file(&path, &format!("{}\n", key.to_text()), 0o600)
                        .map_err(|e| failed("write", &path, &e))?;
                    tracing::info!(path = %path.display(), public_key = %key.public_key().to_text(), "generated a signing key");
                    key
                }
                Err(e) => return Err(failed("read", &path, &e)),
            }
        }
    };
    let public = data_dir.join(PUBLIC_KEY_FILE);
    let text = format!("{}\n", key.public_key().to_text());
    if std::fs::read_to_string(&public).ok().as_deref() != Some(text.as_str()) {
        write_file(&public, &text, 0o644).map_err(|e| failed("write", &public, &e))?;
    }
    Ok(key)
}

/// Writes a new file durably (the file, then its directory).
fn write_file(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let mut file = File::options()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&temp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Computes the hashes of rows stored before schema version 2, in sequence order, a batch at a
/// time (the caller holds the migration's transaction).
pub(super) fn hash_existing_rows(conn: &Connection) -> Result<(), Error> {
    const BATCH: i64 = 1000;
    let mut chain = CHAIN_START;
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, Vec<u8>)> = conn
            .prepare(
                "SELECT sequence, entry FROM entries WHERE sequence > ? ORDER BY sequence LIMIT ?",
            )?
            .query_map([after, BATCH], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let Some(&(last, _)) = rows.last() else {
            return Ok(());
        };
        let mut update =
            conn.prepare("UPDATE entries SET entry_hash = ?, chain_hash = ? WHERE sequence = ?")?;
        for (sequence, blob) in rows {
            let mut entry = AuditEntry::decode(blob.as_slice()).map_err(|e| {
                Error::StoreFailed(format!("stored entry {sequence} does not decode: {e}"))
            })?;
            entry.sequence = sequence as u64;
            let hash = audit_ledger::entry_hash(&entry);
            chain = audit_ledger::chain_hash(&chain, &hash);
            update.execute(rusqlite::params![
                hash.as_slice(),
                chain.as_slice(),
                sequence
            ])?;
        }
        after = last;
    }
}

/// The chain value after entry `sequence` as stored (the start value for 0).
pub(super) fn stored_chain(conn: &Connection, sequence: u64) -> Result<Hash, rusqlite::Error> {
    if sequence == 0 {
        return Ok(CHAIN_START);
    }
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT chain_hash FROM entries WHERE sequence = ?",
            [sequence as i64],
            |row| row.get(0),
        )
        .optional()?
        .flatten();
    Ok(stored
        .and_then(|h| h.try_into().ok())
        .unwrap_or(CHAIN_START))
}

/// The chain and Merkle tree after the last entry the writer stored.
#[derive(Debug, Clone)]
pub(super) struct Tip {
    /// Sequence of the newest entry.
    pub sequence: u64,
    /// Chain value after it.
    pub chain: Hash,
    /// Merkle tree of every entry hash so far.
    pub tree: Frontier,
}

impl Tip {
    /// Adds a newly stored entry with the chain value computed when it was stored; receipts of
    /// retried ids (already in the log) are skipped.
    pub fn add(&mut self, sequence: u64, entry_hash: &Hash, chain: &Hash) {
        if sequence > self.sequence {
            self.sequence = sequence;
            self.chain = *chain;
            self.tree.push(entry_hash);
        }
    }
}

/// The writer's signer: the tip of the log and when the last checkpoint was signed.
pub(super) struct Signer {
    key: SigningKey,
    origin: String,
    every_entries: u64,
    interval: Duration,
    /// The log as committed.
    pub tip: Tip,
    /// Size of the newest checkpoint.
    signed_size: u64,
    /// When the first entry not covered by a checkpoint was committed.
    uncovered_since: Option<Instant>,
}

impl Signer {
    /// Loads the tip from the store (reading every entry hash once) and the newest checkpoint.
    pub fn load(
        conn: &Connection,
        key: SigningKey,
        options: &Checkpointing,
    ) -> Result<Self, Error> {
        let mut tip = Tip {
            sequence: 0,
            chain: CHAIN_START,
            tree: Frontier::new(),
        };
        {
            let mut statement = conn.prepare(
                "SELECT sequence, entry_hash, chain_hash FROM entries ORDER BY sequence",
            )?;
            let mut rows = statement.query([])?;
            while let Some(row) = rows.next()? {
                let sequence: i64 = row.get(0)?;
                let hash = hash_column(row.get(1)?);
                tip.tree.push(&hash);
                tip.sequence = sequence as u64;
                tip.chain = hash_column(row.get(2)?);
            }
        }
        let signed_size: i64 = conn.query_row(
            "SELECT COALESCE((SELECT size FROM checkpoints ORDER BY idx DESC LIMIT 1), 0)",
            [],
            |row| row.get(0),
        )?;
        let signed_size = signed_size as u64;
        if tip.sequence < signed_size {
            // Never sign over it: a smaller checkpoint would make the loss look legitimate.
            tracing::error!(
                entries = tip.sequence,
                checkpoint = signed_size,
                "the store holds fewer entries than its newest checkpoint signs: entries were \
                 removed or the store was rolled back; no checkpoint is signed until the log \
                 is longer again (run `audit verify --data-dir`)"
            );
        }
        Ok(Self {
            origin: options.log_name.clone(),
            every_entries: options.every_entries.max(1),
            interval: options.interval,
            uncovered_since: (tip.sequence > signed_size).then(Instant::now),
            key,
            tip,
            signed_size,
        })
    }

    /// The public key of the signer.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Whether `tip` (the log as it will be once the current transaction commits) needs a
    /// checkpoint now.
    pub fn due(&self, tip: &Tip) -> bool {
        tip.sequence > self.signed_size
            && (tip.sequence - self.signed_size >= self.every_entries
                || self.deadline().is_some_and(|at| at <= Instant::now()))
    }

    /// When the entries not yet covered must be signed, if there are any.
    pub fn deadline(&self) -> Option<Instant> {
        self.uncovered_since.map(|since| since + self.interval)
    }

    /// Signs a checkpoint of `tip` and inserts it; the caller commits.
    pub fn sign(&self, conn: &Connection, tip: &Tip) -> Result<(), rusqlite::Error> {
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size: tip.sequence,
            root: tip.tree.root(),
            chain: tip.chain,
            time,
        };
        conn.prepare_cached("INSERT INTO checkpoints (size, time, note) VALUES (?, ?, ?)")?
            .execute(rusqlite::params![
                tip.sequence as i64,
                time as i64,
                self.key.sign(&checkpoint)
            ])?;
        Ok(())
    }

    /// Takes `tip` as committed, with a checkpoint of it when `signed`.
    pub fn committed(&mut self, tip: Tip, signed: bool) {
        if signed {
            self.signed_size = tip.sequence;
            self.uncovered_since = None;
        } else if tip.sequence > self.signed_size && self.uncovered_since.is_none() {
            self.uncovered_since = Some(Instant::now());
        }
        self.tip = tip;
    }

    /// Whether some committed entries are not covered by a checkpoint.
    pub fn behind(&self) -> bool {
        self.tip.sequence > self.signed_size
    }
}

fn hash_column(value: Option<Vec<u8>>) -> Hash {
    // A missing or malformed hash (only in a damaged store) hashes on as zeros; verification
    // reports the entry.
    value.and_then(|h| h.try_into().ok()).unwrap_or([0; 32])
}

// === reads ===

/// A stored checkpoint: its position among checkpoints and its signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Position, from 1, in the order signed.
    pub index: u64,
    /// The signed note.
    pub note: String,
}

/// The newest checkpoint, or the newest one of exactly `size` entries.
pub(super) fn read_checkpoint(
    conn: &Connection,
    size: Option<u64>,
) -> Result<Option<StoredCheckpoint>, Error> {
    let row = |row: &rusqlite::Row<'_>| {
        Ok(StoredCheckpoint {
            index: row.get::<_, i64>(0)? as u64,
            note: row.get(1)?,
        })
    };
    Ok(match size {
        None => conn
            .query_row(
                "SELECT idx, note FROM checkpoints ORDER BY idx DESC LIMIT 1",
                [],
                row,
            )
            .optional()?,
        Some(size) => conn
            .query_row(
                "SELECT idx, note FROM checkpoints WHERE size = ? ORDER BY idx DESC LIMIT 1",
                [size as i64],
                row,
            )
            .optional()?,
    })
}

/// Checkpoints with an index above `after`, oldest first, at most `limit`.
pub(super) fn read_checkpoints(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredCheckpoint>, Error> {
    let mut statement = conn
        .prepare_cached("SELECT idx, note FROM checkpoints WHERE idx > ? ORDER BY idx LIMIT ?")?;
    let rows = statement.query_map([after as i64, limit as i64], |row| {
        Ok(StoredCheckpoint {
            index: row.get::<_, i64>(0)? as u64,
            note: row.get(1)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The stored hash of entry `sequence`.
pub(super) fn read_entry_hash(conn: &Connection, sequence: u64) -> Result<Option<Hash>, Error> {
    let stored: Option<Option<Vec<u8>>> = conn
        .query_row(
            "SELECT entry_hash FROM entries WHERE sequence = ?",
            [sequence as i64],
            |row| row.get(0),
        )
        .optional()?;
    Ok(stored.map(hash_column))
}

/// The Merkle tree hash of each range of leaves (leaf `i` is entry `i + 1`), reading the entry
/// hashes of each range once: time linear in the ranges' total size, memory logarithmic.
pub(super) fn read_tree_hashes(
    conn: &Connection,
    ranges: &[Range<u64>],
) -> Result<Vec<Hash>, Error> {
    let mut statement = conn.prepare_cached(
        "SELECT entry_hash FROM entries WHERE sequence > ? AND sequence <= ? ORDER BY sequence",
    )?;
    let mut hashes = Vec::with_capacity(ranges.len());
    for range in ranges {
        let mut tree = Frontier::new();
        let mut rows = statement.query([range.start as i64, range.end as i64])?;
        while let Some(row) = rows.next()? {
            tree.push(&hash_column(row.get(0)?));
        }
        if tree.size() != range.end - range.start {
            return Err(Error::Internal(format!(
                "entries {}..={} are not all stored",
                range.start + 1,
                range.end
            )));
        }
        hashes.push(tree.root());
    }
    Ok(hashes)
}
