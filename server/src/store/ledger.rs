//! The store's side of tamper evidence: the signing key file, the schema additions (entry and
//! chain hashes, the `checkpoints` table), the writer's chain and Merkle tree state, signing
//! checkpoints, and the reads behind checkpoints and proofs.
//!
//! Hashes are computed by the writer inside the transaction that inserts the entries, so they
//! cost no extra fsync. A checkpoint that is due is signed into the same transaction; one that
//! falls due while the log is idle gets a small transaction of its own.
//!
//! The server never signs what it has not verified. When the store opens, [`start`] checks the
//! schema (and, by default, SQLite's integrity check), that the newest checkpoint is signed by
//! the server's key and matches the stored log at its size, that no more entries follow it than
//! it allows (`max-unsigned`), that the entries after it still hash, chain and digest as
//! stored, and that the store still holds what the newest copied checkpoint signs. On any
//! failure the store opens read-only and says why. A new log gets its first checkpoint (size 0)
//! at once, so a log without checkpoints has lost them.

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

/// Name of the newest checkpoint's copy in the checkpoint copy directory.
pub const LATEST_COPY: &str = "latest.note";

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
    /// Directory that receives a copy of each checkpoint as it is signed.
    pub copy_dir: Option<PathBuf>,
    /// What the start-up verification checks besides checkpoints and the unsigned tail.
    pub startup_check: StartupCheck,
}

/// How much of the database the start-up verification reads besides the newest checkpoint's
/// tail (which it always rehashes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartupCheck {
    /// The schema and SQLite's integrity check: every index agrees with its table.
    Full,
    /// The schema only.
    Schema,
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
    copy_dir: Option<PathBuf>,
    /// The log as committed.
    pub tip: Tip,
    /// Size of the newest checkpoint.
    signed_size: u64,
    /// When the first entry not covered by a checkpoint was committed.
    uncovered_since: Option<Instant>,
}

/// Verifies the store as it opens (see the module documentation) and loads the signer. Signs a
/// checkpoint at once when the log has none yet (a new or just migrated log) or when the newest
/// one allows a different unsigned tail than `--checkpoint-every-entries` now does. Returns the
/// reason the store must stay read-only, if any; an `Err` is a store that cannot be read.
pub(super) fn start(
    conn: &mut Connection,
    key: SigningKey,
    options: &Checkpointing,
    migrated: bool,
) -> Result<(Signer, Option<String>), Error> {
    let public = key.public_key();
    let mut signer = Signer {
        origin: options.log_name.clone(),
        every_entries: options.every_entries.max(1),
        interval: options.interval,
        copy_dir: options.copy_dir.clone(),
        key,
        tip: Tip {
            sequence: 0,
            chain: CHAIN_START,
            tree: Frontier::new(),
        },
        signed_size: 0,
        uncovered_since: None,
    };
    if let Some(dir) = &options.copy_dir
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        tracing::error!(dir = %dir.display(), error = %e, "cannot create the checkpoint copy directory");
    }
    let verdict = verify_store(conn, &public, options, migrated, &mut signer);
    let sign_now = match verdict {
        Ok(sign_now) => sign_now,
        Err(reason) => {
            tracing::error!(
                %reason,
                "the store did not verify: it is open read-only, no checkpoint will be signed \
                 and writes are refused (run `audit verify --data-dir` on a copy)"
            );
            return Ok((
                signer,
                Some(format!("the log did not verify at start-up: {reason}")),
            ));
        }
    };
    signer.uncovered_since = signer.behind().then(Instant::now);
    if sign_now {
        let tip = signer.tip.clone();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let note = signer.sign(&tx, &tip)?;
        tx.commit()?;
        signer.committed(tip, Some(note));
        tracing::info!(size = signer.signed_size, "signed a checkpoint at start-up");
    }
    Ok((signer, None))
}

/// The start-up verification. `Ok(true)` when a checkpoint must be signed now; `Err` says why
/// the store may not be written.
fn verify_store(
    conn: &Connection,
    public: &PublicKey,
    options: &Checkpointing,
    migrated: bool,
    signer: &mut Signer,
) -> Result<bool, String> {
    let sql = |e: rusqlite::Error| format!("cannot read the store: {e}");
    audit_ledger::sqlite::check_schema(conn)?;
    if options.startup_check == StartupCheck::Full {
        audit_ledger::sqlite::check_integrity(conn)?;
    }
    let newest: Option<(i64, i64, String)> = conn
        .query_row(
            "SELECT idx, size, note FROM checkpoints ORDER BY idx DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()
        .map_err(sql)?;
    let largest: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(size), 0) FROM checkpoints",
            [],
            |row| row.get(0),
        )
        .map_err(sql)?;
    let newest = match newest {
        None => None,
        Some((index, size, note)) => {
            let checkpoint = public.open(&note).map_err(|e| {
                format!("the newest checkpoint #{index} does not verify with the server's key: {e}")
            })?;
            if checkpoint.size != size as u64 {
                return Err(format!(
                    "checkpoint #{index} is listed with size {size} but signs {}",
                    checkpoint.size
                ));
            }
            if checkpoint.origin != options.log_name {
                return Err(format!(
                    "checkpoint #{index} is for log `{}`, not `{}`",
                    checkpoint.origin, options.log_name
                ));
            }
            if largest > size {
                return Err(format!(
                    "the newest checkpoint #{index} signs {size} entries, fewer than an earlier \
                     one ({largest}): checkpoints were replaced or the log truncated"
                ));
            }
            Some((index, checkpoint))
        }
    };
    let copied = match &options.copy_dir {
        Some(dir) => read_copy(&dir.join(LATEST_COPY), public)?,
        None => None,
    };

    // The whole log once: its tree and chain, and both at the sizes to compare.
    let wanted = [
        newest.as_ref().map(|(_, c)| c.size),
        copied.as_ref().map(|c| c.size),
    ];
    let mut at: Vec<(u64, Hash, Hash)> = Vec::new();
    let tip = &mut signer.tip;
    {
        let mut statement = conn
            .prepare("SELECT sequence, entry_hash, chain_hash FROM entries ORDER BY sequence")
            .map_err(sql)?;
        let mut rows = statement.query([]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let sequence = row.get::<_, i64>(0).map_err(sql)? as u64;
            if sequence != tip.sequence + 1 {
                return Err(format!(
                    "entry {} is missing (the next stored entry is {sequence})",
                    tip.sequence + 1
                ));
            }
            tip.tree.push(&hash_column(row.get(1).map_err(sql)?));
            tip.sequence = sequence;
            tip.chain = hash_column(row.get(2).map_err(sql)?);
            if wanted.contains(&Some(sequence)) {
                at.push((sequence, tip.tree.root(), tip.chain));
            }
        }
    }
    let head = tip.sequence;
    let matches = |checkpoint: &Checkpoint| {
        checkpoint.size == 0
            && checkpoint.root == Frontier::new().root()
            && checkpoint.chain == CHAIN_START
            || at.contains(&(checkpoint.size, checkpoint.root, checkpoint.chain))
    };

    if let Some(copy) = &copied {
        let stored = newest.as_ref().map_or(0, |(_, c)| c.size);
        if copy.size > head || !matches(copy) {
            return Err(format!(
                "the store no longer contains what the copied checkpoint {} signs ({} entries): \
                 entries were changed or removed, or the store was rolled back",
                LATEST_COPY, copy.size
            ));
        }
        if copy.size > stored {
            return Err(format!(
                "the copied checkpoint signs {} entries but the store's newest checkpoint only \
                 {stored}: checkpoints were deleted from the store",
                copy.size
            ));
        }
    }

    let Some((index, checkpoint)) = newest else {
        if head == 0 || migrated {
            return Ok(true);
        }
        return Err(format!(
            "the store holds {head} entries but no checkpoint: a log's first checkpoint is \
             signed when it is created, so its checkpoints were deleted"
        ));
    };
    if checkpoint.size > head {
        return Err(format!(
            "checkpoint #{index} signs {} entries but the store holds {head}: entries were \
             removed or the store was rolled back",
            checkpoint.size
        ));
    }
    if !matches(&checkpoint) {
        return Err(format!(
            "checkpoint #{index} (size {}) does not match the stored entries: entries up to it \
             were changed, inserted or removed",
            checkpoint.size
        ));
    }
    let tail = head - checkpoint.size;
    if let Some(max) = checkpoint.max_unsigned
        && tail > max
    {
        return Err(format!(
            "{tail} entries follow the newest checkpoint #{index} (size {}), more than the {max} \
             it allows: checkpoints were deleted",
            checkpoint.size
        ));
    }
    verify_tail(conn, checkpoint.size, checkpoint.chain)?;
    signer.signed_size = checkpoint.size;
    Ok(checkpoint.max_unsigned != Some(signer.every_entries))
}

/// The checkpoint copied to `path` by an earlier run, if there is one.
fn read_copy(path: &Path, public: &PublicKey) -> Result<Option<Checkpoint>, String> {
    match std::fs::read_to_string(path) {
        Ok(note) => public
            .open(&note)
            .map(Some)
            .map_err(|e| format!("the copied checkpoint {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Rehashes the entries after the newest checkpoint (`after`, with chain value `chain`): each
/// entry's hash, its chain link and its retry digest must be what the server stored.
fn verify_tail(conn: &Connection, after: u64, mut chain: Hash) -> Result<(), String> {
    let sql = |e: rusqlite::Error| format!("cannot read the store: {e}");
    let mut statement = conn
        .prepare(
            "SELECT sequence, entry, entry_hash, chain_hash, digest FROM entries \
             WHERE sequence > ? ORDER BY sequence",
        )
        .map_err(sql)?;
    let mut rows = statement.query([after as i64]).map_err(sql)?;
    let mut digests = audit_ledger::DigestCheck::default();
    while let Some(row) = rows.next().map_err(sql)? {
        let sequence = row.get::<_, i64>(0).map_err(sql)? as u64;
        let bad = |what: &str| format!("entry {sequence} (not yet signed) {what}");
        let blob: Vec<u8> = row.get(1).map_err(sql)?;
        let mut entry = AuditEntry::decode(blob.as_slice())
            .map_err(|e| bad(&format!("does not decode: {e}")))?;
        entry.sequence = sequence;
        let hash = audit_ledger::entry_hash(&entry);
        if hash_column(row.get(2).map_err(sql)?) != hash {
            return Err(bad("does not match its entry hash"));
        }
        chain = audit_ledger::chain_hash(&chain, &hash);
        if hash_column(row.get(3).map_err(sql)?) != chain {
            return Err(bad(
                "has a chain hash that does not follow from the entries before it",
            ));
        }
        let digest: Vec<u8> = row.get(4).map_err(sql)?;
        if !digests.matches(&entry, &digest) {
            return Err(bad("has a retry digest that does not match it"));
        }
    }
    Ok(())
}

impl Signer {
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

    /// Signs a checkpoint of `tip` and inserts it; the caller commits, then passes the returned
    /// note to [`Signer::committed`].
    ///
    /// Its `max-unsigned` is `--checkpoint-every-entries`: a checkpoint is signed in the very
    /// commit that brings that many entries beyond the newest one, so an honest store never
    /// holds more (a crash loses no checkpoint its entries committed with).
    pub fn sign(&self, conn: &Connection, tip: &Tip) -> Result<String, rusqlite::Error> {
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size: tip.sequence,
            root: tip.tree.root(),
            chain: tip.chain,
            time,
            max_unsigned: Some(self.every_entries),
        };
        let note = self.key.sign(&checkpoint);
        conn.prepare_cached("INSERT INTO checkpoints (size, time, note) VALUES (?, ?, ?)")?
            .execute(rusqlite::params![tip.sequence as i64, time as i64, note])?;
        Ok(note)
    }

    /// Takes `tip` as committed, with `signed`, the note of a checkpoint of it committed with
    /// it, which is then copied to the checkpoint copy directory.
    pub fn committed(&mut self, tip: Tip, signed: Option<String>) {
        if let Some(note) = signed {
            self.signed_size = tip.sequence;
            self.uncovered_since = None;
            self.copy_out(tip.sequence, &note);
        } else if tip.sequence > self.signed_size && self.uncovered_since.is_none() {
            self.uncovered_since = Some(Instant::now());
        }
        self.tip = tip;
    }

    /// Writes `note` to `<size>.note` and `latest.note` in the copy directory, each atomically.
    /// A failure is logged: the checkpoint is in the store, and the next one is copied again.
    fn copy_out(&self, size: u64, note: &str) {
        let Some(dir) = &self.copy_dir else { return };
        for name in [format!("{size}.note"), LATEST_COPY.to_string()] {
            let path = dir.join(name);
            if let Err(error) = write_file(&path, note, 0o644) {
                tracing::error!(path = %path.display(), %error, "cannot copy a signed checkpoint");
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::store::Store;
    use crate::store::sqlite::{Options, SqliteStore};
    use crate::validate::{self, Context};

    fn options() -> Options {
        Options {
            max_pending_bytes: 1 << 20,
            max_group_entries: 64,
            read_connections: 1,
            checkpointing: Checkpointing {
                signing_key: None,
                log_name: "test".into(),
                every_entries: 4,
                interval: Duration::from_secs(600),
                copy_dir: None,
                startup_check: StartupCheck::Full,
            },
            max_wal_bytes: 64 << 20,
        }
    }

    fn entry(i: usize) -> crate::validate::NewEntry {
        let entry = AuditEntry {
            source: "billing".into(),
            method: "/billing.v1.Billing/Charge".into(),
            outcome: 1,
            resource: format!("invoices/{i}"),
            ..Default::default()
        };
        let context = Context {
            received_time: validate::now(),
            recorder: None,
        };
        let mut new =
            validate::entry(entry, "entry", None, &context, &Limits::default()).expect("valid");
        new.entry.request_id = format!("r{i}");
        new
    }

    /// Opens the store in `dir`, appends `count` entries one at a time, and closes it.
    async fn write(dir: &Path, count: usize) {
        let store = SqliteStore::open(dir, &options()).expect("open");
        assert!(*store.writable().borrow());
        for i in 0..count {
            store.append(vec![entry(i)]).await.expect("append");
        }
        store.close().await;
    }

    fn sizes(dir: &Path) -> Vec<i64> {
        Connection::open(dir.join("audit.db"))
            .unwrap()
            .prepare("SELECT size FROM checkpoints ORDER BY idx")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[tokio::test]
    async fn a_new_log_gets_a_first_checkpoint_and_reopens_writable() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 6).await;
        // At creation, at 4 (in the commit that reached it), and at close.
        assert_eq!(sizes(dir.path()), [0, 4, 6]);
        write(dir.path(), 1).await;
        assert_eq!(sizes(dir.path()), [0, 4, 6, 7]);
    }

    #[tokio::test]
    async fn a_store_that_lost_its_checkpoints_opens_read_only_and_signs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 10).await;
        Connection::open(dir.path().join("audit.db"))
            .unwrap()
            .execute("DELETE FROM checkpoints WHERE size > 4", [])
            .unwrap();
        let store = SqliteStore::open(dir.path(), &options()).expect("open");
        assert!(!*store.writable().borrow(), "NOT_SERVING");
        let error = store.append(vec![entry(99)]).await.unwrap_err();
        assert!(
            matches!(&error, Error::ReadOnly(reason) if reason.contains("more than the 4")),
            "{error}"
        );
        // Reads still serve, for the verifier.
        assert_eq!(*store.head().borrow(), 10);
        store.close().await;
        assert_eq!(sizes(dir.path()), [0, 4], "nothing signed at close");
    }

    #[tokio::test]
    async fn an_edited_unsigned_entry_is_found_at_start() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 6).await;
        let db = Connection::open(dir.path().join("audit.db")).unwrap();
        // Entries 5 and 6 as if a crash had left them unsigned, then entry 6 edited.
        db.execute("DELETE FROM checkpoints WHERE size = 6", [])
            .unwrap();
        db.execute(
            "UPDATE entries SET digest = zeroblob(32) WHERE sequence = 6",
            [],
        )
        .unwrap();
        drop(db);
        let store = SqliteStore::open(dir.path(), &options()).expect("open");
        let error = store.append(vec![entry(99)]).await.unwrap_err();
        assert!(
            matches!(&error, Error::ReadOnly(reason) if reason.contains("entry 6 (not yet signed) has a retry digest")),
            "{error}"
        );
        store.close().await;
    }
}
