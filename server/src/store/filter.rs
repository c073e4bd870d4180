//! A `Filter` as an SQL condition over the `entries` table (in the SQLite or the PostgreSQL
//! dialect), and the same test in memory. The conformance tests hold all three to one meaning.
//!
//! `method`, `spiffe_id` and `resource` are [`Pattern`]s: exact, or a prefix with a trailing
//! `*`.

use audit_format::Pattern;
use audit_proto::pb::{AuditEntry, Filter, caller};

use crate::validate::timestamp_nanos;

/// A parameter of a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// An integer column's value.
    Integer(i64),
    /// A text column's value.
    Text(String),
}

/// Which SQL the condition is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: labels in a JSON text column.
    Sqlite,
    /// PostgreSQL: labels in a `jsonb` column, text columns in the "C" collation.
    Postgres,
}

/// An SQL boolean expression and its positional parameters (`?` placeholders).
#[derive(Debug)]
pub struct Condition {
    /// Terms joined with AND; `TRUE` when empty.
    pub sql: String,
    /// Values for the `?` placeholders, in order.
    pub params: Vec<Value>,
    dialect: Dialect,
}

impl Condition {
    fn term(&mut self, sql: &str, params: impl IntoIterator<Item = Value>) {
        if !self.sql.is_empty() {
            self.sql.push_str(" AND ");
        }
        self.sql.push_str(sql);
        self.params.extend(params);
    }

    fn text(&mut self, column: &str, value: &str) {
        if !value.is_empty() {
            self.term(&format!("{column} = ?"), [Value::Text(value.to_string())]);
        }
    }

    /// A [`Pattern`] term (no term for an empty value or `*`). An unparsable pattern (a `*`
    /// before the end) matches nothing, as [`matches`] does.
    fn pattern(&mut self, column: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        let Ok(pattern) = Pattern::parse(value) else {
            self.term("FALSE", []);
            return;
        };
        if pattern.matches_everything() {
            return;
        }
        if !pattern.is_prefix() {
            return self.text(column, pattern.literal());
        }
        let prefix = pattern.literal().to_string();
        match self.dialect {
            // SQLite's LIKE ignores ASCII case (unless a connection sets a pragma), which the
            // in-memory matcher does not: an exact `substr`, with a range term that lets the
            // column's index narrow the scan.
            Dialect::Sqlite => self.term(
                &format!("({column} >= ? AND substr({column}, 1, ?) = ?)"),
                [
                    Value::Text(prefix.clone()),
                    Value::Integer(prefix.chars().count() as i64),
                    Value::Text(prefix),
                ],
            ),
            // Case-sensitive; over a "C"-collated column the btree index serves the prefix.
            Dialect::Postgres => self.term(
                &format!("{column} LIKE ? ESCAPE '\\'"),
                [Value::Text(pattern.to_sql_like())],
            ),
        }
    }

    fn any_of(&mut self, column: &str, values: &[i32]) {
        if values.is_empty() {
            return;
        }
        let placeholders = vec!["?"; values.len()].join(", ");
        self.term(
            &format!("{column} IN ({placeholders})"),
            values.iter().map(|v| Value::Integer(i64::from(*v))),
        );
    }
}

/// The condition selecting the entries that match `filter` (already validated).
pub fn condition(filter: &Filter, dialect: Dialect) -> Condition {
    let mut c = Condition {
        sql: String::new(),
        params: Vec::new(),
        dialect,
    };
    c.text("request_id", &filter.request_id);
    c.text("source", &filter.source);
    c.pattern("method", &filter.method);
    c.text("principal", &filter.principal);
    c.pattern("spiffe_id", &filter.spiffe_id);
    c.any_of("outcome", &filter.outcomes);
    c.any_of("status_code", &filter.status_codes);
    c.text("event", &filter.event);
    c.text("category", &filter.category);
    c.pattern("resource", &filter.resource);
    if filter.min_level > 0 {
        c.term("level >= ?", [Value::Integer(i64::from(filter.min_level))]);
    }
    if let Some(start) = filter.start_time.as_ref().and_then(timestamp_nanos) {
        c.term("time_ns >= ?", [Value::Integer(start)]);
    }
    if let Some(end) = filter.end_time.as_ref().and_then(timestamp_nanos) {
        c.term("time_ns < ?", [Value::Integer(end)]);
    }
    let label = match dialect {
        Dialect::Sqlite => {
            "EXISTS (SELECT 1 FROM json_each(entries.labels) WHERE key = ? AND value = ?)"
        }
        Dialect::Postgres => "(labels ->> ?) = ?",
    };
    for (key, value) in &filter.labels {
        c.term(
            label,
            [Value::Text(key.clone()), Value::Text(value.clone())],
        );
    }
    if c.sql.is_empty() {
        c.sql.push_str("TRUE");
    }
    c
}

/// The statement answering `read` in `dialect` (`sequence, entry, entry_hash, chain_hash`
/// rows, one more than the limit so that a full page knows it is not the last), and its
/// parameters.
pub fn page_query(read: &super::Read, dialect: Dialect) -> (String, Vec<Value>) {
    use super::Direction;
    let filter = condition(&read.filter, dialect);
    let mut params = filter.params;
    let (bound, order) = match read.direction {
        Direction::Ascending { after } => {
            params.push(Value::Integer(after as i64));
            ("sequence > ?", "ASC")
        }
        Direction::Descending { before } => {
            params.push(Value::Integer(before.unwrap_or(u64::MAX >> 1) as i64));
            ("sequence < ?", "DESC")
        }
    };
    params.push(Value::Integer(read.through as i64));
    params.push(Value::Integer(read.limit as i64 + 1));
    let sql = format!(
        "SELECT sequence, entry, entry_hash, chain_hash FROM entries \
         WHERE {} AND {bound} AND sequence <= ? \
         ORDER BY sequence {order} LIMIT ?",
        filter.sql
    );
    (sql, params)
}

/// The caller's principal and SPIFFE ID: the columns the `principal` and `spiffe_id` filters
/// read.
pub fn caller_identity(entry: &AuditEntry) -> (&str, &str) {
    let Some(caller) = &entry.caller else {
        return ("", "");
    };
    let spiffe_id = match &caller.peer {
        Some(caller::Peer::Network(network)) => network.spiffe_id.as_str(),
        _ => "",
    };
    (caller.principal.as_str(), spiffe_id)
}

/// Whether `entry` (as stored) matches `filter` (already validated): the same test as
/// [`condition`], evaluated in memory for entries the store still holds in memory.
pub fn matches(filter: &Filter, entry: &AuditEntry) -> bool {
    let text = |wanted: &str, value: &str| wanted.is_empty() || wanted == value;
    let pattern = |wanted: &str, value: &str| {
        wanted.is_empty() || Pattern::test(wanted, value).unwrap_or(false)
    };
    let any_of = |wanted: &[i32], value: i32| wanted.is_empty() || wanted.contains(&value);
    let (principal, spiffe_id) = caller_identity(entry);
    let time = entry.time.as_ref().and_then(timestamp_nanos).unwrap_or(0);
    text(&filter.request_id, &entry.request_id)
        && text(&filter.source, &entry.source)
        && pattern(&filter.method, &entry.method)
        && text(&filter.principal, principal)
        && pattern(&filter.spiffe_id, spiffe_id)
        && any_of(&filter.outcomes, entry.outcome)
        && any_of(&filter.status_codes, entry.status_code)
        && text(&filter.event, &entry.event)
        && text(&filter.category, &entry.category)
        && pattern(&filter.resource, &entry.resource)
        && (filter.min_level <= 0 || entry.level >= filter.min_level)
        && filter
            .start_time
            .as_ref()
            .and_then(timestamp_nanos)
            .is_none_or(|start| time >= start)
        && filter
            .end_time
            .as_ref()
            .and_then(timestamp_nanos)
            .is_none_or(|end| time < end)
        && filter
            .labels
            .iter()
            .all(|(key, value)| entry.labels.get(key) == Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_filter_matches_everything() {
        let c = condition(&Filter::default(), Dialect::Sqlite);
        assert_eq!(c.sql, "TRUE");
        assert!(c.params.is_empty());
    }

    #[test]
    fn terms_are_joined_with_and() {
        let c = condition(
            &Filter {
                source: "billing".into(),
                method: "/billing.v1.Billing/*".into(),
                outcomes: vec![2, 3],
                ..Default::default()
            },
            Dialect::Sqlite,
        );
        assert_eq!(
            c.sql,
            "source = ? AND (method >= ? AND substr(method, 1, ?) = ?) AND outcome IN (?, ?)"
        );
        assert_eq!(c.params.len(), 6);
    }

    #[test]
    fn prefixes_become_escaped_like_in_postgres() {
        let c = condition(
            &Filter {
                resource: "100%_off/*".into(),
                ..Default::default()
            },
            Dialect::Postgres,
        );
        assert_eq!(c.sql, "resource LIKE ? ESCAPE '\\'");
        assert_eq!(c.params, [Value::Text("100\\%\\_off/%".into())]);
        let everything = condition(
            &Filter {
                method: "*".into(),
                ..Default::default()
            },
            Dialect::Postgres,
        );
        assert_eq!(everything.sql, "TRUE");
    }

    #[test]
    fn unparsable_patterns_match_nothing_in_both() {
        let filter = Filter {
            method: "/a.*/B".into(),
            ..Default::default()
        };
        assert_eq!(condition(&filter, Dialect::Sqlite).sql, "FALSE");
        let entry = AuditEntry {
            method: "/a.*/B".into(),
            ..Default::default()
        };
        assert!(!matches(&filter, &entry));
    }

    /// The SQL of both dialects selects exactly the rows the in-memory matcher selects, over
    /// values full of `LIKE` wildcards, backslashes and case differences.
    mod agreement {
        use super::*;
        use proptest::prelude::*;

        const ALPHABET: &str = "[aA%_\\\\*/]{0,5}";

        fn entry(resource: &str) -> AuditEntry {
            AuditEntry {
                resource: resource.to_string(),
                ..Default::default()
            }
        }

        fn in_memory(filter: &Filter, rows: &[String]) -> Vec<usize> {
            (0..rows.len())
                .filter(|&i| matches(filter, &entry(&rows[i])))
                .collect()
        }

        fn sqlite(filter: &Filter, rows: &[String]) -> Vec<usize> {
            let db = rusqlite::Connection::open_in_memory().unwrap();
            db.execute_batch("CREATE TABLE entries (i INTEGER, resource TEXT NOT NULL)")
                .unwrap();
            for (i, resource) in rows.iter().enumerate() {
                db.execute("INSERT INTO entries VALUES (?1, ?2)", (i as i64, resource))
                    .unwrap();
            }
            let c = condition(filter, Dialect::Sqlite);
            let params: Vec<rusqlite::types::Value> = c
                .params
                .into_iter()
                .map(|value| match value {
                    Value::Integer(n) => n.into(),
                    Value::Text(text) => text.into(),
                })
                .collect();
            let sql = format!("SELECT i FROM entries WHERE {} ORDER BY i", c.sql);
            let mut statement = db.prepare(&sql).unwrap();
            statement
                .query_map(rusqlite::params_from_iter(params), |row| {
                    row.get::<_, i64>(0)
                })
                .unwrap()
                .map(|i| i.unwrap() as usize)
                .collect()
        }

        fn postgres(
            client: &mut ::postgres::Client,
            filter: &Filter,
            rows: &[String],
        ) -> Vec<usize> {
            let mut tx = client.transaction().unwrap();
            tx.batch_execute(
                "CREATE TEMP TABLE entries (i integer, resource text COLLATE \"C\" NOT NULL) \
                 ON COMMIT DROP",
            )
            .unwrap();
            for (i, resource) in rows.iter().enumerate() {
                tx.execute(
                    "INSERT INTO entries VALUES ($1, $2)",
                    &[&(i as i32), resource],
                )
                .unwrap();
            }
            let c = condition(filter, Dialect::Postgres);
            let mut sql = String::new();
            let query = format!("SELECT i FROM entries WHERE {} ORDER BY i", c.sql);
            for (n, part) in query.split('?').enumerate() {
                if n > 0 {
                    sql.push_str(&format!("${n}"));
                }
                sql.push_str(part);
            }
            let params: Vec<Box<dyn ::postgres::types::ToSql + Sync>> = c
                .params
                .into_iter()
                .map(|value| -> Box<dyn ::postgres::types::ToSql + Sync> {
                    match value {
                        Value::Integer(n) => Box::new(n),
                        Value::Text(text) => Box::new(text),
                    }
                })
                .collect();
            let refs: Vec<&(dyn ::postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p.as_ref()).collect();
            let rows = tx.query(&sql, &refs).unwrap();
            rows.iter()
                .map(|row| row.get::<_, i32>(0) as usize)
                .collect()
        }

        fn filter(pattern: String) -> Filter {
            Filter {
                resource: pattern,
                ..Default::default()
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn sqlite_and_memory_agree(
                rows in prop::collection::vec(ALPHABET, 1..12),
                pattern in "[aA%_\\\\/]{0,4}\\*?",
            ) {
                let filter = filter(pattern);
                prop_assert_eq!(sqlite(&filter, &rows), in_memory(&filter, &rows));
            }
        }

        #[test]
        fn postgres_and_memory_agree() {
            let url = std::env::var("AUDIT_TEST_POSTGRES")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let client = ::postgres::Client::connect(&url, ::postgres::NoTls)
                .expect("PostgreSQL on 127.0.0.1:5432 (see README: the test suite needs it)");
            let client = std::cell::RefCell::new(client);
            let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(48));
            let strategy = (
                prop::collection::vec(ALPHABET, 1..12),
                "[aA%_\\\\/]{0,4}\\*?",
            );
            runner
                .run(&strategy, |(rows, pattern)| {
                    let filter = filter(pattern);
                    prop_assert_eq!(
                        postgres(&mut client.borrow_mut(), &filter, &rows),
                        in_memory(&filter, &rows)
                    );
                    Ok(())
                })
                .unwrap();
        }
    }
}
