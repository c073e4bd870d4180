//! A `Filter` as an SQL condition over the `entries` table (in the SQLite or the PostgreSQL
//! dialect), and the same test in memory. The conformance tests hold all three to one meaning.

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

    /// Exact match, or prefix match when the value ends with `*`.
    fn text_or_prefix(&mut self, column: &str, value: &str) {
        match value.strip_suffix('*') {
            Some("") => {}
            // The range term lets the database use the column's index; the second makes it
            // exact.
            Some(prefix) => match self.dialect {
                Dialect::Sqlite => self.term(
                    &format!("({column} >= ? AND substr({column}, 1, ?) = ?)"),
                    [
                        Value::Text(prefix.to_string()),
                        Value::Integer(prefix.chars().count() as i64),
                        Value::Text(prefix.to_string()),
                    ],
                ),
                Dialect::Postgres => self.term(
                    &format!("({column} >= ? AND starts_with({column}, ?))"),
                    [
                        Value::Text(prefix.to_string()),
                        Value::Text(prefix.to_string()),
                    ],
                ),
            },
            None => self.text(column, value),
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
    c.text_or_prefix("method", &filter.method);
    c.text("principal", &filter.principal);
    c.text_or_prefix("spiffe_id", &filter.spiffe_id);
    c.any_of("outcome", &filter.outcomes);
    c.any_of("status_code", &filter.status_codes);
    c.text("event", &filter.event);
    c.text("category", &filter.category);
    c.text_or_prefix("resource", &filter.resource);
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
    let text_or_prefix = |wanted: &str, value: &str| match wanted.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => text(wanted, value),
    };
    let any_of = |wanted: &[i32], value: i32| wanted.is_empty() || wanted.contains(&value);
    let (principal, spiffe_id) = caller_identity(entry);
    let time = entry.time.as_ref().and_then(timestamp_nanos).unwrap_or(0);
    text(&filter.request_id, &entry.request_id)
        && text(&filter.source, &entry.source)
        && text_or_prefix(&filter.method, &entry.method)
        && text(&filter.principal, principal)
        && text_or_prefix(&filter.spiffe_id, spiffe_id)
        && any_of(&filter.outcomes, entry.outcome)
        && any_of(&filter.status_codes, entry.status_code)
        && text(&filter.event, &entry.event)
        && text(&filter.category, &entry.category)
        && text_or_prefix(&filter.resource, &entry.resource)
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
}
