//! Counts of entries for the web console's charts, computed by the database over the indexed
//! columns (`time_ns`, `outcome`, `principal`, `method`), never by reading the entries
//! themselves. The SQL is written once for both dialects; the memory backend counts the same.

use audit_proto::pb::Filter;
use rusqlite::{Connection, params_from_iter};

use super::filter::{Condition, Dialect, Value, condition};
use crate::error::Error;

/// What to count: entries matching `filter` (already validated, with a time range) up to
/// `through`, in buckets of `bucket_ns` from `start_ns`.
#[derive(Debug, Clone)]
pub struct StatsQuery {
    /// Entries to count; its `start_time` and `end_time` bound the buckets.
    pub filter: Filter,
    /// Start of the first bucket, in nanoseconds since the Unix epoch.
    pub start_ns: i64,
    /// Width of a bucket, in nanoseconds (positive).
    pub bucket_ns: i64,
    /// Highest sequence to count: the committed head when the query was planned.
    pub through: u64,
    /// How many of the most frequent principals and methods to return.
    pub top: usize,
}

/// The counts of one [`StatsQuery`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Non-empty (bucket, outcome) cells, by bucket then outcome.
    pub buckets: Vec<BucketCount>,
    /// The most frequent principals, most frequent first (empty principals included as "").
    pub principals: Vec<ValueCount>,
    /// The most frequent methods, most frequent first.
    pub methods: Vec<ValueCount>,
    /// Every matching entry.
    pub total: u64,
}

/// Entries of one outcome in one time bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketCount {
    /// Index of the bucket: it starts at `start_ns + index * bucket_ns`.
    pub index: i64,
    /// The `Outcome` number.
    pub outcome: i32,
    /// Entries counted.
    pub count: u64,
}

/// How many entries carry one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueCount {
    /// The value.
    pub value: String,
    /// Entries counted.
    pub count: u64,
}

/// The statements that answer a [`StatsQuery`], with their `?` parameters, in either dialect.
pub struct StatsSql {
    /// `(bucket, outcome, count)` rows, by bucket then outcome.
    pub buckets: (String, Vec<Value>),
    /// `(value, count)` rows of the most frequent principals.
    pub principals: (String, Vec<Value>),
    /// `(value, count)` rows of the most frequent methods.
    pub methods: (String, Vec<Value>),
}

impl StatsSql {
    /// The statements for `query` in `dialect`.
    pub fn new(query: &StatsQuery, dialect: Dialect) -> Self {
        let filter: Condition = condition(&query.filter, dialect);
        let bounded = |extra: &[Value]| {
            let mut params = filter.params.clone();
            params.push(Value::Integer(query.through as i64));
            params.extend_from_slice(extra);
            params
        };
        let scope = format!("FROM entries WHERE {} AND sequence <= ?", filter.sql);
        let mut bucket_params = vec![
            Value::Integer(query.start_ns),
            Value::Integer(query.bucket_ns.max(1)),
        ];
        bucket_params.extend(bounded(&[]));
        let top = |column: &str| {
            (
                format!(
                    "SELECT {column}, COUNT(*) AS n {scope} GROUP BY {column} \
                     ORDER BY n DESC, {column} LIMIT ?"
                ),
                bounded(&[Value::Integer(query.top as i64)]),
            )
        };
        StatsSql {
            buckets: (
                format!(
                    "SELECT (time_ns - ?) / ? AS bucket, outcome, COUNT(*) {scope} \
                     GROUP BY bucket, outcome ORDER BY bucket, outcome"
                ),
                bucket_params,
            ),
            principals: top("principal"),
            methods: top("method"),
        }
    }
}

fn sqlite_values(values: Vec<Value>) -> impl Iterator<Item = rusqlite::types::Value> {
    values.into_iter().map(|value| match value {
        Value::Integer(i) => rusqlite::types::Value::Integer(i),
        Value::Text(s) => rusqlite::types::Value::Text(s),
    })
}

/// Counts what `query` asks for in SQLite, in one read transaction so the numbers agree.
pub fn stats(conn: &Connection, query: &StatsQuery) -> Result<Stats, Error> {
    let sql = StatsSql::new(query, Dialect::Sqlite);
    let transaction = conn.unchecked_transaction()?;
    let mut buckets = Vec::new();
    {
        let (text, params) = sql.buckets;
        let mut statement = transaction.prepare_cached(&text)?;
        let mut rows = statement.query(params_from_iter(sqlite_values(params)))?;
        while let Some(row) = rows.next()? {
            buckets.push(BucketCount {
                index: row.get(0)?,
                outcome: row.get(1)?,
                count: row.get::<_, i64>(2)? as u64,
            });
        }
    }
    let top = |(text, params): (String, Vec<Value>)| -> Result<Vec<ValueCount>, Error> {
        let mut statement = transaction.prepare_cached(&text)?;
        let rows = statement.query_map(params_from_iter(sqlite_values(params)), |row| {
            Ok(ValueCount {
                value: row.get(0)?,
                count: row.get::<_, i64>(1)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    let principals = top(sql.principals)?;
    let methods = top(sql.methods)?;
    let total = buckets.iter().map(|b| b.count).sum();
    Ok(Stats {
        buckets,
        principals,
        methods,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_ledger::sqlite::SCHEMAS;
    use audit_proto::pb::Outcome;

    const MINUTE: i64 = 60_000_000_000;

    /// A database with the server's schema and rows `(time_ns, outcome, principal, method)`.
    fn database(rows: &[(i64, Outcome, &str, &str)]) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for schema in SCHEMAS {
            conn.execute_batch(schema).unwrap();
        }
        for (i, (time, outcome, principal, method)) in rows.iter().enumerate() {
            conn.execute(
                "INSERT INTO entries (sequence, id, digest, request_id, time_ns, received_ns, \
                 source, method, event, category, resource, level, outcome, status_code, \
                 principal, spiffe_id, labels, entry) \
                 VALUES (?1, ?2, x'', '', ?3, ?3, 's', ?4, '', '', '', 2, ?5, 0, ?6, '', '{}', x'')",
                rusqlite::params![
                    i as i64 + 1,
                    (i as u32).to_be_bytes().to_vec(),
                    time,
                    method,
                    *outcome as i32,
                    principal
                ],
            )
            .unwrap();
        }
        conn
    }

    fn query(filter: Filter, through: u64) -> StatsQuery {
        StatsQuery {
            filter,
            start_ns: 10 * MINUTE,
            bucket_ns: MINUTE,
            through,
            top: 2,
        }
    }

    #[test]
    fn counts_per_bucket_and_outcome_and_the_most_frequent_values() {
        use Outcome::{Denied, Error as Failed, Success};
        let conn = database(&[
            (10 * MINUTE, Success, "alice", "/a.A/X"),
            (10 * MINUTE + 1, Denied, "bob", "/a.A/X"),
            (10 * MINUTE + 2, Success, "alice", "/a.A/Y"),
            (12 * MINUTE + 5, Failed, "carol", "/a.A/X"),
            (12 * MINUTE + 6, Success, "alice", "/a.A/Z"),
        ]);
        let stats = stats(&conn, &query(Filter::default(), 5)).unwrap();
        let cell = |index, outcome: Outcome, count| BucketCount {
            index,
            outcome: outcome as i32,
            count,
        };
        assert_eq!(
            stats.buckets,
            [
                cell(0, Success, 2),
                cell(0, Denied, 1),
                cell(2, Success, 1),
                cell(2, Failed, 1)
            ]
        );
        assert_eq!(stats.total, 5);
        let value = |value: &str, count| ValueCount {
            value: value.into(),
            count,
        };
        assert_eq!(stats.principals, [value("alice", 3), value("bob", 1)]);
        assert_eq!(stats.methods, [value("/a.A/X", 3), value("/a.A/Y", 1)]);

        // The filter and the planned head bound what is counted.
        let denied = Filter {
            outcomes: vec![Denied as i32],
            ..Default::default()
        };
        assert_eq!(stats_total(&conn, query(denied, 5)), 1);
        assert_eq!(stats_total(&conn, query(Filter::default(), 3)), 3);
    }

    fn stats_total(conn: &Connection, query: StatsQuery) -> u64 {
        stats(conn, &query).unwrap().total
    }
}
