//! The backend's inserts without the engine's queue, writer thread or gRPC: the benchmarks
//! measure it as the storage ceiling of the server.

use std::path::Path;
use std::sync::Arc;

use super::{Checkpointer, SqliteBackend, bound_wal_file, open_writer, wal_path};
use crate::error::Error;
use crate::store::backend::{Backend, Row, Tip};
use crate::validate::NewEntry;

/// The WAL bound of [`DirectWriter`]: the server's default.
const DIRECT_MAX_WAL_BYTES: u64 = 64 << 20;

/// The same schema, durability and rows as the server's store, one transaction (one fsync) per
/// call on the caller's thread. Ids are not checked for retries.
pub struct DirectWriter {
    backend: SqliteBackend,
    /// The log as committed, kept in memory as the engine keeps it.
    tip: Tip,
}

impl DirectWriter {
    /// Opens (creating if needed) `audit.db` in `data_dir`, which no server may be using.
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        let lock = Arc::new(super::lock_data_dir(data_dir)?);
        let path = data_dir.join("audit.db");
        let (conn, _) = open_writer(&path)?;
        bound_wal_file(&conn, DIRECT_MAX_WAL_BYTES)?;
        let backend = SqliteBackend {
            conn,
            path: path.clone(),
            wal_path: wal_path(&path),
            max_wal_bytes: DIRECT_MAX_WAL_BYTES,
            _checkpointer: Checkpointer::spawn(&path)?,
            _lock: lock,
        };
        let mut reader = backend.open_reader()?;
        let mut tip = Tip::empty();
        reader.hashes(0, u64::MAX >> 1, &mut |sequence, entry_hash, chain| {
            tip.push(sequence, &entry_hash, &chain);
            true
        })?;
        Ok(Self { backend, tip })
    }

    /// Inserts `entries` in one transaction and commits it.
    pub fn append(&mut self, entries: &[NewEntry]) -> Result<(), Error> {
        let failed = |e: crate::store::backend::BackendError| Error::StoreFailed(e.to_string());
        let mut tip = self.tip.clone();
        let rows: Vec<Row<'_>> = entries
            .iter()
            .map(|new| {
                let sequence = tip.sequence + 1;
                let entry_hash = audit_ledger::entry_hash_at(&new.entry, sequence);
                let chain_hash = audit_ledger::chain_hash(&tip.chain, &entry_hash);
                tip.push(sequence, &entry_hash, &chain_hash);
                Row {
                    sequence,
                    new,
                    entry_hash,
                    chain_hash,
                }
            })
            .collect();
        self.backend.begin().map_err(failed)?;
        let done = self
            .backend
            .insert(&rows)
            .and_then(|()| self.backend.commit(&tip));
        if let Err(error) = done {
            self.backend.rollback();
            return Err(failed(error));
        }
        self.tip = tip;
        self.backend.after_commit().map_err(failed)
    }
}
