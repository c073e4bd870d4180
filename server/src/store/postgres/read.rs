//! The read side of the PostgreSQL backend: one connection per pooled reader, reconnected
//! when it was lost.

use audit_ledger::Hash;
use audit_proto::pb::AuditEntry;
use postgres::Client;
use postgres::types::ToSql;
use prost::Message;

use super::{Settings, schema};
use crate::error::Error;
use crate::store::aggregate::{BucketCount, StatsSql, ValueCount};
use crate::store::backend::{Reader, StoredEntry, hash_or_zeros};
use crate::store::filter::{Dialect, Value, page_query};
use crate::store::{Page, Read, StartupCheck, Stats, StatsQuery, StoredCheckpoint};

/// A read connection to the database.
pub struct PostgresReader {
    settings: Settings,
    client: Option<Client>,
}

impl PostgresReader {
    /// A reader that connects on first use.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            client: None,
        }
    }

    fn client(&mut self) -> Result<&mut Client, Error> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            let client = self.settings.connect("reader").map_err(unavailable)?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected"))
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, Error> {
        // A connection the database closed since the last read is found out here: reads are
        // safe to repeat, so one retry on a new connection hides it.
        for attempt in 0..2 {
            let result = self.client()?.query(sql, params);
            match result {
                Ok(rows) => return Ok(rows),
                Err(error) => {
                    let lost = self.client.as_ref().is_none_or(Client::is_closed)
                        || error.is_closed()
                        || error.code().is_some_and(|c| c.code().starts_with("57P"));
                    if !(lost && attempt == 0) {
                        return Err(self.failed(error));
                    }
                    self.client = None;
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Runs `sql` (with `?` placeholders) with `params`.
    fn query_values(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<postgres::Row>, Error> {
        let values: Vec<Box<dyn ToSql + Sync>> = params
            .into_iter()
            .map(|value| -> Box<dyn ToSql + Sync> {
                match value {
                    Value::Integer(i) => Box::new(i),
                    Value::Text(s) => Box::new(s),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
        self.query(&numbered(sql), &refs)
    }

    fn failed(&mut self, error: postgres::Error) -> Error {
        if self.client.as_ref().is_none_or(Client::is_closed) || error.is_closed() {
            self.client = None;
        }
        unavailable(error)
    }
}

fn unavailable(error: postgres::Error) -> Error {
    Error::StoreFailed(format!("PostgreSQL: {error}"))
}

/// `?` placeholders as PostgreSQL's `$1`, `$2`, ... (the conditions hold no literal `?`).
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

fn checkpoint_row(row: &postgres::Row) -> StoredCheckpoint {
    StoredCheckpoint {
        index: row.get::<_, i64>(0) as u64,
        size: row.get::<_, i64>(1) as u64,
        note: row.get(2),
    }
}

impl Reader for PostgresReader {
    fn read(&mut self, read: &Read) -> Result<Page, Error> {
        let (sql, params) = page_query(read, Dialect::Postgres);
        let rows = self.query_values(&sql, params)?;
        let mut page = Page::builder(read);
        for row in &rows {
            let sequence: i64 = row.get(0);
            let blob: &[u8] = row.get(1);
            if !page.push(sequence as u64, blob, row.get(2), row.get(3))? {
                break;
            }
        }
        Ok(page.finish())
    }

    fn first_received_since(&mut self, nanos: i64) -> Result<Option<u64>, Error> {
        let rows = self.query(
            "SELECT MIN(sequence) FROM entries WHERE received_ns >= $1",
            &[&nanos],
        )?;
        Ok(rows[0].get::<_, Option<i64>>(0).map(|s| s as u64))
    }

    fn checkpoint(&mut self, size: Option<u64>) -> Result<Option<StoredCheckpoint>, Error> {
        let rows = match size {
            None => self.query(
                "SELECT idx, size, note FROM checkpoints ORDER BY idx DESC LIMIT 1",
                &[],
            )?,
            Some(size) => self.query(
                "SELECT idx, size, note FROM checkpoints WHERE size = $1 \
                 ORDER BY idx DESC LIMIT 1",
                &[&(size as i64)],
            )?,
        };
        Ok(rows.first().map(checkpoint_row))
    }

    fn checkpoints(&mut self, after: u64, limit: usize) -> Result<Vec<StoredCheckpoint>, Error> {
        let rows = self.query(
            "SELECT idx, size, note FROM checkpoints WHERE idx > $1 ORDER BY idx LIMIT $2",
            &[&(after as i64), &(limit as i64)],
        )?;
        Ok(rows.iter().map(checkpoint_row).collect())
    }

    fn largest_checkpoint(&mut self) -> Result<u64, Error> {
        let rows = self.query("SELECT COALESCE(MAX(size), 0) FROM checkpoints", &[])?;
        Ok(rows[0].get::<_, i64>(0) as u64)
    }

    fn entry_hash(&mut self, sequence: u64) -> Result<Option<Hash>, Error> {
        let rows = self.query(
            "SELECT entry_hash FROM entries WHERE sequence = $1 \
             UNION ALL SELECT entry_hash FROM pruned WHERE sequence = $1",
            &[&(sequence as i64)],
        )?;
        Ok(rows.first().map(|row| hash_or_zeros(row.get(0))))
    }

    fn hashes(
        &mut self,
        after: u64,
        through: u64,
        each: &mut dyn FnMut(u64, Hash, Hash) -> bool,
    ) -> Result<(), Error> {
        // In slices, so that a long log is never held in memory at once.
        const SLICE: i64 = 10_000;
        let through = through.min(i64::MAX as u64) as i64;
        let mut after = after as i64;
        while after < through {
            let rows = self.query(
                "SELECT sequence, entry_hash, chain_hash FROM pruned \
                 WHERE sequence > $1 AND sequence <= $2 \
                 UNION ALL SELECT sequence, entry_hash, chain_hash FROM entries \
                 WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence LIMIT $3",
                &[&after, &through, &SLICE],
            )?;
            for row in &rows {
                let sequence: i64 = row.get(0);
                if !each(
                    sequence as u64,
                    hash_or_zeros(row.get(1)),
                    hash_or_zeros(row.get(2)),
                ) {
                    return Ok(());
                }
                after = sequence;
            }
            if (rows.len() as i64) < SLICE {
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
        let rows = self.query(
            "SELECT sequence, entry, entry_hash, chain_hash, digest FROM entries \
             WHERE sequence > $1 ORDER BY sequence",
            &[&(after as i64)],
        )?;
        for row in &rows {
            let sequence = row.get::<_, i64>(0) as u64;
            let blob: &[u8] = row.get(1);
            let mut entry = match AuditEntry::decode(blob) {
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
                entry_hash: hash_or_zeros(row.get(2)),
                chain_hash: hash_or_zeros(row.get(3)),
                digest: row.get(4),
            };
            if let Err(reason) = each(stored) {
                return Ok(Err(reason));
            }
        }
        Ok(Ok(()))
    }

    fn head(&mut self) -> Result<u64, Error> {
        let rows = self.query("SELECT sequence FROM log_tip WHERE id = 1", &[])?;
        Ok(rows.first().map_or(0, |row| row.get::<_, i64>(0) as u64))
    }

    fn pruned_tail(&mut self) -> Result<Option<(u64, i64)>, Error> {
        let rows = self.query(
            "SELECT sequence, received_ns FROM pruned ORDER BY sequence DESC LIMIT 1",
            &[],
        )?;
        Ok(rows
            .first()
            .map(|row| (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1))))
    }

    fn checkpoint_size_at_most(&mut self, size: u64) -> Result<u64, Error> {
        let rows = self.query(
            "SELECT COALESCE(MAX(size), 0) FROM checkpoints WHERE size <= $1",
            &[&(size.min(i64::MAX as u64) as i64)],
        )?;
        Ok(rows[0].get::<_, i64>(0) as u64)
    }

    fn cursor_position(&mut self, name: &str) -> Result<Option<u64>, Error> {
        let rows = self.query("SELECT position FROM cursors WHERE name = $1", &[&name])?;
        Ok(rows
            .first()
            .and_then(|row| row.get::<_, Option<i64>>(0))
            .map(|p| p as u64))
    }

    fn stats(&mut self, query: &StatsQuery) -> Result<Stats, Error> {
        let sql = StatsSql::new(query, Dialect::Postgres);
        self.begin_snapshot()?;
        let counted = (|| {
            let buckets = self
                .query_values(&sql.buckets.0, sql.buckets.1.clone())?
                .iter()
                .map(|row| BucketCount {
                    index: row.get(0),
                    outcome: row.get::<_, i64>(1) as i32,
                    count: row.get::<_, i64>(2) as u64,
                })
                .collect::<Vec<_>>();
            let mut top =
                |(text, params): &(String, Vec<Value>)| -> Result<Vec<ValueCount>, Error> {
                    Ok(self
                        .query_values(text, params.clone())?
                        .iter()
                        .map(|row| ValueCount {
                            value: row.get(0),
                            count: row.get::<_, i64>(1) as u64,
                        })
                        .collect())
                };
            let principals = top(&sql.principals)?;
            let methods = top(&sql.methods)?;
            Ok(Stats {
                total: buckets.iter().map(|b| b.count).sum(),
                buckets,
                principals,
                methods,
            })
        })();
        self.end_snapshot();
        counted
    }

    fn check(&mut self, check: StartupCheck) -> Result<Result<(), String>, Error> {
        let result = schema::check(self.client()?);
        let schema = result.map_err(|e| self.failed(e))?;
        if schema.is_err() || check == StartupCheck::Schema {
            return Ok(schema);
        }
        // The tip must describe the stored log: its newest entry and newest checkpoint.
        let rows = self.query(
            "SELECT t.sequence, t.signed_size, \
                    GREATEST((SELECT COALESCE(MAX(sequence), 0) FROM entries), \
                             (SELECT COALESCE(MAX(sequence), 0) FROM pruned)), \
                    (SELECT COUNT(*) FROM entries) + (SELECT COUNT(*) FROM pruned), \
                    (SELECT COALESCE(MAX(size), 0) FROM checkpoints) \
             FROM log_tip t WHERE t.id = 1",
            &[],
        )?;
        let row = &rows[0];
        let (tip, signed, newest, count, largest): (i64, i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if tip != newest || count != newest {
            return Ok(Err(format!(
                "the log's tip says {tip} entries, but the newest stored entry is {newest} and \
                 {count} are stored"
            )));
        }
        if signed != largest {
            return Ok(Err(format!(
                "the log's tip says its newest checkpoint signs {signed} entries, but the \
                 largest stored one signs {largest}"
            )));
        }
        Ok(Ok(()))
    }

    fn begin_snapshot(&mut self) -> Result<(), Error> {
        let result = self
            .client()?
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
        result.map_err(|e| self.failed(e))
    }

    fn end_snapshot(&mut self) {
        if let Some(client) = self.client.as_mut() {
            let _ = client.batch_execute("COMMIT");
        }
    }
}
