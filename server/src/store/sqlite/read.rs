//! The read side of the SQLite backend: one read-only connection per pooled reader.

use std::path::Path;

use audit_ledger::Hash;
use audit_proto::pb::AuditEntry;
use prost::Message;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params_from_iter};

use crate::error::Error;
use crate::store::backend::{Reader, StoredEntry, hash_or_zeros};
use crate::store::filter::{Dialect, Value, page_query};
use crate::store::{Page, Read, StartupCheck, Stats, StatsQuery, StoredCheckpoint};

/// A read connection to the SQLite database.
pub struct SqliteReader {
    conn: Connection,
}

impl SqliteReader {
    /// Opens a read connection to the database at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(Self { conn })
    }
}

fn sql_value(value: Value) -> rusqlite::types::Value {
    match value {
        Value::Integer(i) => rusqlite::types::Value::Integer(i),
        Value::Text(s) => rusqlite::types::Value::Text(s),
    }
}

fn checkpoint_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredCheckpoint> {
    Ok(StoredCheckpoint {
        index: row.get::<_, i64>(0)? as u64,
        size: row.get::<_, i64>(1)? as u64,
        note: row.get(2)?,
    })
}

impl Reader for SqliteReader {
    fn read(&mut self, read: &Read) -> Result<Page, Error> {
        let (sql, params) = page_query(read, Dialect::Sqlite);
        let mut statement = self.conn.prepare_cached(&sql)?;
        let mut rows = statement.query(params_from_iter(params.into_iter().map(sql_value)))?;
        let mut page = Page::builder(read);
        while let Some(row) = rows.next()? {
            let sequence: i64 = row.get(0)?;
            let blob = row.get_ref(1)?.as_blob()?;
            let entry_hash = row.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default();
            let chain_hash = row.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default();
            if !page.push(sequence as u64, blob, entry_hash, chain_hash)? {
                break;
            }
        }
        Ok(page.finish())
    }

    fn first_received_since(&mut self, nanos: i64) -> Result<Option<u64>, Error> {
        let first: Option<i64> = self.conn.query_row(
            "SELECT MIN(sequence) FROM entries WHERE received_ns >= ?",
            [nanos],
            |row| row.get(0),
        )?;
        Ok(first.map(|s| s as u64))
    }

    fn checkpoint(&mut self, size: Option<u64>) -> Result<Option<StoredCheckpoint>, Error> {
        Ok(match size {
            None => self
                .conn
                .query_row(
                    "SELECT idx, size, note FROM checkpoints ORDER BY idx DESC LIMIT 1",
                    [],
                    checkpoint_row,
                )
                .optional()?,
            Some(size) => self
                .conn
                .query_row(
                    "SELECT idx, size, note FROM checkpoints WHERE size = ? \
                     ORDER BY idx DESC LIMIT 1",
                    [size as i64],
                    checkpoint_row,
                )
                .optional()?,
        })
    }

    fn checkpoints(&mut self, after: u64, limit: usize) -> Result<Vec<StoredCheckpoint>, Error> {
        let mut statement = self.conn.prepare_cached(
            "SELECT idx, size, note FROM checkpoints WHERE idx > ? ORDER BY idx LIMIT ?",
        )?;
        let rows = statement.query_map([after as i64, limit as i64], checkpoint_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn largest_checkpoint(&mut self) -> Result<u64, Error> {
        let largest: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(size), 0) FROM checkpoints",
            [],
            |row| row.get(0),
        )?;
        Ok(largest as u64)
    }

    fn entry_hash(&mut self, sequence: u64) -> Result<Option<Hash>, Error> {
        let stored: Option<Option<Vec<u8>>> = self
            .conn
            .query_row(
                "SELECT entry_hash FROM entries WHERE sequence = ?1 \
                 UNION ALL SELECT entry_hash FROM pruned WHERE sequence = ?1",
                [sequence as i64],
                |row| row.get(0),
            )
            .optional()?;
        Ok(stored.map(hash_or_zeros))
    }

    fn hashes(
        &mut self,
        after: u64,
        through: u64,
        each: &mut dyn FnMut(u64, Hash, Hash) -> bool,
    ) -> Result<(), Error> {
        let mut statement = self.conn.prepare_cached(
            "SELECT sequence, entry_hash, chain_hash FROM pruned \
             WHERE sequence > ?1 AND sequence <= ?2 \
             UNION ALL SELECT sequence, entry_hash, chain_hash FROM entries \
             WHERE sequence > ?1 AND sequence <= ?2 ORDER BY sequence",
        )?;
        let mut rows = statement.query([after as i64, through.min(i64::MAX as u64) as i64])?;
        while let Some(row) = rows.next()? {
            let sequence = row.get::<_, i64>(0)? as u64;
            if !each(
                sequence,
                hash_or_zeros(row.get(1)?),
                hash_or_zeros(row.get(2)?),
            ) {
                break;
            }
        }
        Ok(())
    }

    fn entries(
        &mut self,
        after: u64,
        each: &mut dyn FnMut(StoredEntry) -> Result<(), String>,
    ) -> Result<Result<(), String>, Error> {
        let mut statement = self.conn.prepare(
            "SELECT sequence, entry, entry_hash, chain_hash, digest FROM entries \
             WHERE sequence > ? ORDER BY sequence",
        )?;
        let mut rows = statement.query([after as i64])?;
        while let Some(row) = rows.next()? {
            let sequence = row.get::<_, i64>(0)? as u64;
            let blob: Vec<u8> = row.get(1)?;
            let mut entry = match AuditEntry::decode(blob.as_slice()) {
                Ok(entry) => entry,
                Err(e) => {
                    return Ok(Err(format!(
                        "entry {sequence} (not yet signed) does not decode: {e}"
                    )));
                }
            };
            entry.sequence = sequence;
            let stored = StoredEntry {
                sequence,
                entry,
                entry_hash: hash_or_zeros(row.get(2)?),
                chain_hash: hash_or_zeros(row.get(3)?),
                digest: row.get(4)?,
            };
            if let Err(reason) = each(stored) {
                return Ok(Err(reason));
            }
        }
        Ok(Ok(()))
    }

    fn head(&mut self) -> Result<u64, Error> {
        let head: i64 = self.conn.query_row(
            "SELECT MAX(COALESCE((SELECT MAX(sequence) FROM entries), 0), \
             COALESCE((SELECT MAX(sequence) FROM pruned), 0))",
            [],
            |row| row.get(0),
        )?;
        Ok(head as u64)
    }

    fn pruned_tail(&mut self) -> Result<Option<(u64, i64)>, Error> {
        let tail: Option<(i64, i64)> = self
            .conn
            .query_row(
                "SELECT sequence, received_ns FROM pruned ORDER BY sequence DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        Ok(tail.map(|(sequence, received)| (sequence as u64, received)))
    }

    fn checkpoint_size_at_most(&mut self, size: u64) -> Result<u64, Error> {
        let found: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(size), 0) FROM checkpoints WHERE size <= ?",
            [size.min(i64::MAX as u64) as i64],
            |row| row.get(0),
        )?;
        Ok(found as u64)
    }

    fn cursor_position(&mut self, name: &str) -> Result<Option<u64>, Error> {
        let position: Option<Option<i64>> = self
            .conn
            .query_row(
                "SELECT position FROM cursors WHERE name = ?",
                [name],
                |row| row.get(0),
            )
            .optional()?;
        Ok(position.flatten().map(|p| p as u64))
    }

    fn stats(&mut self, query: &StatsQuery) -> Result<Stats, Error> {
        crate::store::aggregate::stats(&self.conn, query)
    }

    fn check(&mut self, check: StartupCheck) -> Result<Result<(), String>, Error> {
        Ok(match check {
            StartupCheck::Schema => audit_ledger::sqlite::check_schema(&self.conn),
            StartupCheck::Full => audit_ledger::sqlite::check_integrity(&self.conn),
        })
    }
}
