//! The embedded backend: one SQLite database in WAL mode with `synchronous=FULL`, written by
//! one process (the data directory's lock file says which).
//!
//! The engine's writer owns the write connection; each group is one `BEGIN IMMEDIATE`
//! transaction and one fsync. A checkpoint thread moves committed pages from the write-ahead
//! log into the database file, off the writer's path, and the writer itself checkpoints the log
//! once it outgrows its bound (see [`restart_wal_over`]). Reads use connections of their own
//! ([`read::SqliteReader`]).

mod direct;
mod read;
#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use audit_ledger::CHAIN_START;
use audit_proto::pb::AuditEntry;
use prost::Message;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::CursorClaim;
use super::backend::{
    Backend, BackendError, CursorRow, CursorWrite, NewCheckpoint, Reader, Row, StoredId, Tip,
};
use super::engine::{self, Log};
use super::filter::caller_identity;
use super::signer;
use super::{Receipt, fault};
use crate::error::Error;
use crate::validate::timestamp_nanos;

pub use direct::DirectWriter;

use audit_ledger::sqlite::{SCHEMA_VERSION, SCHEMAS};

const INSERT: &str = "INSERT INTO entries (sequence, id, digest, request_id, time_ns, received_ns,
    source, method, event, category, resource, level, outcome, status_code, principal, spiffe_id,
    labels, entry, entry_hash, chain_hash)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Tuning of the SQLite backend.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest the write-ahead log may grow (plus one group) before the writer checkpoints it
    /// itself, making writers wait, instead of leaving it to the background checkpointer. Only
    /// a checkpoint still blocked after a second (by readers of old snapshots) lets it grow on.
    pub max_wal_bytes: u64,
}

/// Opens (creating if needed) the log stored in `data_dir`, and starts its writer.
pub fn open(data_dir: &Path, log: &engine::Options, options: &Options) -> Result<Log, Error> {
    let (backend, migrated, writable) = backend(data_dir, options.max_wal_bytes)?;
    let key = signer::load_key(Some(data_dir), &log.checkpointing)?;
    let backend = fault::FaultBackend::from_env(backend);
    let log = Log::open(backend, key, writable, migrated, log)?;
    tracing::info!(data_dir = %data_dir.display(), "SQLite store opened");
    Ok(log)
}

/// Opens the backend on `data_dir`: whether its schema was just migrated from version 1, and
/// whether it passed the start-up write probe.
pub fn backend(
    data_dir: &Path,
    max_wal_bytes: u64,
) -> Result<(Box<dyn Backend>, bool, bool), Error> {
    let lock = Arc::new(lock_data_dir(data_dir)?);
    let path = data_dir.join("audit.db");
    // SQLite gives its WAL and shared-memory files the database file's mode.
    {
        use std::os::unix::fs::OpenOptionsExt;
        File::options()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::StoreFailed(format!("open {}: {e}", path.display())))?;
    }
    let (conn, migrated) = open_writer(&path)?;
    bound_wal_file(&conn, max_wal_bytes)?;
    let checkpointer = Checkpointer::spawn(&path)?;
    // The database file's directory entry must be durable too; SQLite syncs it only for
    // journals.
    File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| Error::StoreFailed(format!("sync {}: {e}", data_dir.display())))?;
    let writable = probe_writable(&conn, data_dir);
    let backend = SqliteBackend {
        conn,
        path: path.clone(),
        wal_path: wal_path(&path),
        max_wal_bytes,
        _checkpointer: checkpointer,
        _lock: lock,
    };
    Ok((Box::new(backend), migrated, writable))
}

/// Bytes the store in `data_dir` takes on disk now: the database file and its write-ahead log.
pub fn disk_usage(data_dir: &Path) -> DiskUsage {
    let path = data_dir.join("audit.db");
    let size = |path: &Path| fs::metadata(path).map_or(0, |m| m.len());
    DiskUsage {
        database_bytes: size(&path),
        wal_bytes: size(&wal_path(&path)),
    }
}

/// Bytes the store takes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// The database file.
    pub database_bytes: u64,
    /// Its write-ahead log.
    pub wal_bytes: u64,
}

/// The write side of the SQLite backend.
struct SqliteBackend {
    conn: Connection,
    path: PathBuf,
    wal_path: PathBuf,
    max_wal_bytes: u64,
    /// Stops its thread when the backend is dropped.
    _checkpointer: Checkpointer,
    /// Held while the backend lives so that no second server writes the same database.
    _lock: Arc<File>,
}

fn failed(error: rusqlite::Error) -> BackendError {
    BackendError::Failed(error.to_string())
}

impl Backend for SqliteBackend {
    fn open_reader(&self) -> Result<Box<dyn Reader>, Error> {
        Ok(Box::new(read::SqliteReader::open(&self.path)?))
    }

    fn begin(&mut self) -> Result<Option<Tip>, BackendError> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(failed)?;
        Ok(None)
    }

    fn stored(&mut self, ids: &[&str]) -> Result<Vec<Option<StoredId>>, BackendError> {
        ids.iter()
            .map(|id| stored_receipt(&self.conn, id).map_err(failed))
            .collect()
    }

    fn insert(&mut self, rows: &[Row<'_>]) -> Result<(), BackendError> {
        let mut insert = self.conn.prepare_cached(INSERT).map_err(failed)?;
        for row in rows {
            let entry = &row.new.entry;
            let id = uuid::Uuid::parse_str(&entry.id).expect("validated id");
            let (principal, spiffe_id) = caller_identity(entry);
            let nanos = |t: &Option<prost_types::Timestamp>| {
                t.as_ref().and_then(timestamp_nanos).unwrap_or(0)
            };
            insert
                .execute(rusqlite::params![
                    row.sequence as i64,
                    id.as_bytes().as_slice(),
                    row.new.digest.as_slice(),
                    entry.request_id,
                    nanos(&entry.time),
                    nanos(&entry.received_time),
                    entry.source,
                    entry.method,
                    entry.event,
                    entry.category,
                    entry.resource,
                    entry.level,
                    entry.outcome,
                    entry.status_code,
                    principal,
                    spiffe_id,
                    serde_json::to_string(&entry.labels).expect("string map serializes"),
                    entry.encode_to_vec(),
                    row.entry_hash.as_slice(),
                    row.chain_hash.as_slice(),
                ])
                .map_err(failed)?;
        }
        Ok(())
    }

    fn insert_checkpoint(&mut self, checkpoint: &NewCheckpoint) -> Result<(), BackendError> {
        self.conn
            .prepare_cached("INSERT INTO checkpoints (size, time, note) VALUES (?, ?, ?)")
            .and_then(|mut insert| {
                insert.execute(rusqlite::params![
                    checkpoint.size as i64,
                    checkpoint.time as i64,
                    checkpoint.note
                ])
            })
            .map_err(failed)?;
        Ok(())
    }

    fn cursor(&mut self, write: &CursorWrite) -> Result<CursorClaim, BackendError> {
        let stored = self
            .conn
            .prepare_cached("SELECT position, owner, lease_until FROM cursors WHERE name = ?")
            .and_then(|mut select| {
                select
                    .query_row([&write.name], |row| {
                        Ok(CursorRow {
                            position: row.get::<_, Option<i64>>(0)?.map(|p| p as u64),
                            owner: row.get(1)?,
                            lease_until: row.get(2)?,
                        })
                    })
                    .optional()
            })
            .map_err(failed)?;
        let (claim, row) = write.apply(stored);
        if let Some(row) = row {
            self.conn
                .prepare_cached(
                    "INSERT INTO cursors (name, position, owner, lease_until) VALUES (?, ?, ?, ?) \
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position, \
                     owner = excluded.owner, lease_until = excluded.lease_until",
                )
                .and_then(|mut upsert| {
                    upsert.execute(rusqlite::params![
                        write.name,
                        row.position.map(|p| p as i64),
                        row.owner,
                        row.lease_until
                    ])
                })
                .map_err(failed)?;
        }
        Ok(claim)
    }

    fn prune(&mut self, through: u64, limit: usize) -> Result<usize, BackendError> {
        let through = through.min(i64::MAX as u64) as i64;
        // The last sequence of this step: the oldest `limit` entries at or below `through`.
        let last: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT MAX(sequence) FROM (SELECT sequence FROM entries WHERE sequence <= ? \
                 ORDER BY sequence LIMIT ?)",
            )
            .and_then(|mut select| {
                select.query_row(rusqlite::params![through, limit as i64], |row| row.get(0))
            })
            .map_err(failed)?;
        let Some(last) = last else { return Ok(0) };
        self.conn
            .prepare_cached(
                "INSERT INTO pruned (sequence, id, digest, request_id, received_ns, entry_hash, \
                 chain_hash) SELECT sequence, id, digest, request_id, received_ns, entry_hash, \
                 chain_hash FROM entries WHERE sequence <= ?",
            )
            .and_then(|mut insert| insert.execute([last]))
            .map_err(failed)?;
        self.conn
            .prepare_cached("DELETE FROM entries WHERE sequence <= ?")
            .and_then(|mut delete| delete.execute([last]))
            .map_err(failed)
    }

    fn commit(&mut self, _tip: &Tip) -> Result<(), BackendError> {
        self.conn.execute_batch("COMMIT").map_err(failed)
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn after_commit(&mut self) -> Result<(), BackendError> {
        match restart_wal_over(&self.conn, &self.wal_path, self.max_wal_bytes).map_err(failed)? {
            WalCheckpoint::NotNeeded => {}
            WalCheckpoint::Done { wal_bytes } => {
                tracing::debug!(wal_bytes, "WAL checkpointed by the writer");
            }
            WalCheckpoint::Busy { wal_bytes } => tracing::warn!(
                wal_bytes,
                "WAL checkpoint still busy after 1 s; the writer retries after its next commit"
            ),
        }
        Ok(())
    }
}

/// The receipt and content digest of the entry stored with `id`, if any.
fn stored_receipt(conn: &Connection, id: &str) -> Result<Option<StoredId>, rusqlite::Error> {
    let key = uuid::Uuid::parse_str(id).expect("validated id");
    // Retention moves old entries to `pruned`, with what a retry's receipt needs.
    let mut select = conn.prepare_cached(
        "SELECT sequence, digest, request_id, entry_hash, chain_hash FROM entries WHERE id = ?1 \
         UNION ALL \
         SELECT sequence, digest, request_id, entry_hash, chain_hash FROM pruned WHERE id = ?1",
    )?;
    let hash = |h: Option<Vec<u8>>| super::backend::hash_or_zeros(h);
    select
        .query_row([key.as_bytes().as_slice()], |row| {
            Ok(StoredId {
                receipt: Receipt {
                    id: id.to_string(),
                    sequence: row.get::<_, i64>(0)? as u64,
                    request_id: row.get(2)?,
                    entry_hash: hash(row.get(3)?),
                    chain_hash: hash(row.get(4)?),
                },
                digest: row.get(1)?,
            })
        })
        .optional()
}

/// Bytes the start-up probe writes beside the database: room for a few groups of entries. A
/// store with less room starts refusing writes rather than fail its first ones.
const PROBE_BYTES: usize = 1 << 20;

/// Whether the store can write: a commit (SQLite writes and syncs its log) and `PROBE_BYTES`
/// written, synced and removed in the data directory. A store restarted on a full disk then
/// reports NOT_SERVING from the start and still answers reads.
fn probe_writable(conn: &Connection, data_dir: &Path) -> bool {
    let commit = || -> Result<(), Error> {
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        // Rewriting the header page with its own value changes nothing but is a real write.
        let written = conn
            .pragma_update(None, "user_version", version)
            .and_then(|()| conn.execute_batch("COMMIT"));
        if written.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        Ok(written?)
    };
    let room = || -> Result<(), Error> {
        let path = data_dir.join("space-probe");
        let written = File::create(&path)
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, &vec![0; PROBE_BYTES])?;
                file.sync_all()
            })
            .map_err(|e| Error::StoreFailed(format!("write {}: {e}", path.display())));
        let _ = fs::remove_file(&path);
        written
    };
    match commit().and_then(|()| room()) {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(
                %error,
                "store cannot write; serving reads only until a restart with room to write"
            );
            false
        }
    }
}

fn wal_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Has SQLite cut the write-ahead log back to `max_bytes` whenever it restarts it from the
/// beginning, so that a burst does not leave a large file behind.
fn bound_wal_file(conn: &Connection, max_bytes: u64) -> Result<(), Error> {
    let limit = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    conn.query_row(&format!("PRAGMA journal_size_limit = {limit}"), [], |_| {
        Ok(())
    })?;
    Ok(())
}

/// How often committed pages are moved from the write-ahead log into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// A thread that checkpoints the write-ahead log, so the writer never does it inline (SQLite's
/// automatic checkpoint would run inside a commit, on the write path). Stops when dropped.
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn spawn(path: &Path) -> Result<Self, Error> {
        let conn = Connection::open(path)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("audit-store-checkpointer".into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                    // PASSIVE: copies what it can without waiting for readers or the writer.
                    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(error) = done {
                        tracing::warn!(%error, "WAL checkpoint failed; will retry");
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("spawn checkpoint thread: {e}")))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What [`restart_wal_over`] did.
enum WalCheckpoint {
    NotNeeded,
    Done { wal_bytes: u64 },
    Busy { wal_bytes: u64 },
}

/// Checkpoints the write-ahead log on the writer's connection once it outgrows `max_bytes`.
///
/// The background checkpointer copies pages while commits continue, but it can never
/// finish a pass under back-to-back commits, and SQLite restarts the log from its beginning
/// only after a pass finished; so under sustained writes the log would grow without limit.
/// Here no commit can run meanwhile: RESTART copies the rest, waits (up to the busy timeout)
/// for readers of older snapshots, and lets the next commit write from the beginning of the
/// file, which `journal_size_limit` keeps at `max_bytes`. Writers wait meanwhile: that is
/// the back-pressure that keeps disk use bounded by the data, not by the write rate.
fn restart_wal_over(
    conn: &Connection,
    wal_path: &Path,
    max_bytes: u64,
) -> Result<WalCheckpoint, rusqlite::Error> {
    let wal_bytes = fs::metadata(wal_path).map_or(0, |m| m.len());
    if wal_bytes <= max_bytes {
        return Ok(WalCheckpoint::NotNeeded);
    }
    // SQLite answers busy at once, without its busy handler, while the background checkpointer
    // holds the checkpoint lock; retry for a while (writers wait) rather than let the log grow.
    let started = std::time::Instant::now();
    loop {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| row.get(0))?;
        if busy == 0 {
            return Ok(WalCheckpoint::Done { wal_bytes });
        }
        if started.elapsed() >= WAL_CHECKPOINT_PATIENCE {
            return Ok(WalCheckpoint::Busy { wal_bytes });
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// How long the writer keeps retrying a busy WAL checkpoint before it commits again.
const WAL_CHECKPOINT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Creates the data directory (mode 0700) and takes its exclusive lock.
fn lock_data_dir(data_dir: &Path) -> Result<File, Error> {
    let failed = |what: &str, path: &Path, e: std::io::Error| {
        Error::StoreFailed(format!("{what} {}: {e}", path.display()))
    };
    if !data_dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| failed("create data dir", data_dir, e))?;
    }
    let lock_path: PathBuf = data_dir.join("LOCK");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| failed("open", &lock_path, e))?;
    lock.try_lock().map_err(|_| {
        Error::StoreFailed(format!(
            "data dir {} is in use by another audit-server",
            data_dir.display()
        ))
    })?;
    Ok(lock)
}

/// Opens the write connection: WAL, synchronous=FULL, schema up to date (and whether it was
/// just migrated from version 1).
fn open_writer(path: &Path) -> Result<(Connection, bool), Error> {
    let mut conn = Connection::open(path)
        .map_err(|e| Error::StoreFailed(format!("open {}: {e}", path.display())))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: each commit syncs the WAL, so an acknowledged entry survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Checkpoints run on their own thread (`Checkpointer`), not inside commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // What retention deletes is overwritten, not left in free space. The writer deletes
    // nothing else, so appends cost the same.
    conn.pragma_update(None, "secure_delete", "ON")?;
    let migrated = migrate(&mut conn)?;
    Ok((conn, migrated))
}

/// Creates or migrates the schema; true when it was migrated from version 1, which had no
/// hashes and no checkpoints.
fn migrate(conn: &mut Connection) -> Result<bool, Error> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(Error::StoreFailed(format!(
            "database schema version {version} is newer than this server's ({SCHEMA_VERSION})"
        )));
    }
    if version == SCHEMA_VERSION {
        return Ok(false);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (index, schema) in SCHEMAS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(schema)?;
        // Version 2 hashes every entry stored so far into the chain.
        if index == 1 && version == 1 {
            hash_existing_rows(&tx)?;
        }
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    if version > 0 {
        tracing::info!(from = version, to = SCHEMA_VERSION, "store schema migrated");
    }
    Ok(version == 1)
}

/// Computes the hashes of rows stored before schema version 2, in sequence order, a batch at a
/// time (the caller holds the migration's transaction).
fn hash_existing_rows(conn: &Connection) -> Result<(), Error> {
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

impl From<rusqlite::types::FromSqlError> for Error {
    fn from(error: rusqlite::types::FromSqlError) -> Self {
        Error::Internal(error.to_string())
    }
}
