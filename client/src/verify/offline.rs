//! Verification of a stopped server's data directory, reading its SQLite file read-only.

use std::path::Path;

use audit_ledger::{Hash, PublicKey};
use audit_proto::pb::{self, AuditEntry};
use prost::Message;
use rusqlite::{Connection, OpenFlags};

use super::{KeySource, Report, Trust, Verifier};
use crate::Error;

use audit_ledger::sqlite::{SCHEMA_VERSION, check_integrity, check_schema};

/// Verifies the log in `data_dir` (`audit.db`, and `signing.pub` when `trust` has no key).
///
/// Besides hashes, chain and checkpoints, each row's indexed columns (source, method,
/// principal, ...) and its retry digest must agree with the entry, and the database must hold
/// exactly the server's schema (no extra trigger, no altered index) with indexes that agree
/// with their table (SQLite's integrity check), so that no query filter can be made to hide an
/// entry and no retry be refused. Such a problem is reported at sequence 1, since it affects
/// what every query returns. Fails only when the data cannot be read at all; tampering is
/// reported in the [`Report`].
pub fn verify_data_dir(data_dir: &Path, trust: &Trust) -> Result<Report, Error> {
    let unverifiable = |what: String| Error::Unverifiable(what);
    let (key, source) = match &trust.public_key {
        Some(key) => (key.clone(), KeySource::Trusted),
        None => {
            let path = data_dir.join("signing.pub");
            let text = std::fs::read_to_string(&path).map_err(|e| {
                unverifiable(format!(
                    "no public key given and cannot read {}: {e}",
                    path.display()
                ))
            })?;
            let key = PublicKey::from_text(&text)
                .map_err(|e| unverifiable(format!("{}: {e}", path.display())))?;
            (key, KeySource::DataDir)
        }
    };
    let path = data_dir.join("audit.db");
    if !path.exists() {
        return Err(unverifiable(format!("{} does not exist", path.display())));
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| unverifiable(format!("open {}: {e}", path.display())))?;
    let sql = |e: rusqlite::Error| unverifiable(format!("read {}: {e}", path.display()));
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sql)?;
    if version != SCHEMA_VERSION {
        return Err(unverifiable(format!(
            "{} has schema version {version}; this verifier reads version {SCHEMA_VERSION} \
             (start a current server on it once to migrate it)",
            path.display()
        )));
    }

    let mut verifier = Verifier::new(key, source);
    for note in &trust.checkpoints {
        verifier.trusted_checkpoint(note);
    }
    if let Err(problem) = check_schema(&conn).and_then(|()| check_integrity(&conn)) {
        verifier.problem(
            1,
            format!("the database is not as the server made it: {problem}"),
        );
    }
    {
        let mut statement = conn
            .prepare("SELECT idx, size, note FROM checkpoints ORDER BY idx")
            .map_err(sql)?;
        let mut rows = statement.query([]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let index: i64 = row.get(0).map_err(sql)?;
            let size: i64 = row.get(1).map_err(sql)?;
            let note: String = row.get(2).map_err(sql)?;
            verifier.checkpoint(index as u64, &note, Some(size as u64));
        }
    }

    // What retention kept of the entries it pruned, first: they come before every kept one.
    {
        let mut statement = conn
            .prepare("SELECT sequence, entry_hash, chain_hash FROM pruned ORDER BY sequence")
            .map_err(sql)?;
        let mut rows = statement.query([]).map_err(sql)?;
        let hash = |value: Option<Vec<u8>>| -> Hash {
            value.and_then(|h| h.try_into().ok()).unwrap_or([0; 32])
        };
        while let Some(row) = rows.next().map_err(sql)? {
            let sequence: i64 = row.get(0).map_err(sql)?;
            let entry_hash = hash(row.get(1).map_err(sql)?);
            let chain_hash = hash(row.get(2).map_err(sql)?);
            if !verifier.pruned_entry(sequence as u64, entry_hash, chain_hash) {
                break;
            }
        }
    }

    let mut statement = conn
        .prepare(
            "SELECT sequence, entry, entry_hash, chain_hash, id, request_id, time_ns, \
             received_ns, source, method, event, category, resource, level, outcome, \
             status_code, principal, spiffe_id, labels, digest FROM entries ORDER BY sequence",
        )
        .map_err(sql)?;
    let mut rows = statement.query([]).map_err(sql)?;
    let mut digests = audit_ledger::DigestCheck::default();
    while let Some(row) = rows.next().map_err(sql)? {
        let sequence: i64 = row.get(0).map_err(sql)?;
        let sequence = sequence as u64;
        let blob = match row.get_ref(1).map_err(sql)?.as_blob() {
            Ok(blob) => blob,
            Err(_) => {
                verifier.problem(sequence, "the stored entry is not a blob");
                break;
            }
        };
        let mut entry = match AuditEntry::decode(blob) {
            Ok(entry) => entry,
            Err(error) => {
                verifier.problem(
                    sequence,
                    format!("the stored entry does not decode: {error}"),
                );
                break;
            }
        };
        entry.sequence = sequence;
        entry.entry_hash = row
            .get::<_, Option<Vec<u8>>>(2)
            .map_err(sql)?
            .unwrap_or_default();
        entry.chain_hash = row
            .get::<_, Option<Vec<u8>>>(3)
            .map_err(sql)?
            .unwrap_or_default();
        if !verifier.entry(&entry) {
            break;
        }
        // After the hashes: a changed entry is reported as such, not by its columns.
        if let Some(column) = mismatched_column(&Columns::of_sqlite(row), &entry) {
            verifier.problem(
                sequence,
                format!("the indexed column `{column}` does not match the entry"),
            );
            break;
        }
        let digest = row.get_ref(19).map_err(sql)?.as_blob().unwrap_or_default();
        if !digests.matches(&entry, digest) {
            verifier.problem(
                sequence,
                "the stored retry digest does not match the entry (retries of its id would be \
                 refused)",
            );
            break;
        }
    }
    Ok(verifier.finish())
}

/// The indexed columns of one stored row, as read from either database.
pub(super) struct Columns {
    pub id: Option<Vec<u8>>,
    pub request_id: Option<String>,
    pub time_ns: Option<i64>,
    pub received_ns: Option<i64>,
    pub source: Option<String>,
    pub method: Option<String>,
    pub event: Option<String>,
    pub category: Option<String>,
    pub resource: Option<String>,
    pub level: Option<i64>,
    pub outcome: Option<i64>,
    pub status_code: Option<i64>,
    pub principal: Option<String>,
    pub spiffe_id: Option<String>,
    /// The labels column parsed as a JSON object of strings.
    pub labels: Option<std::collections::HashMap<String, String>>,
}

impl Columns {
    /// The columns of a SQLite row of `SELECT sequence, entry, entry_hash, chain_hash, id, ...`.
    fn of_sqlite(row: &rusqlite::Row<'_>) -> Self {
        let labels = row
            .get::<_, String>(18)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        Columns {
            id: row.get(4).ok(),
            request_id: row.get(5).ok(),
            time_ns: row.get(6).ok(),
            received_ns: row.get(7).ok(),
            source: row.get(8).ok(),
            method: row.get(9).ok(),
            event: row.get(10).ok(),
            category: row.get(11).ok(),
            resource: row.get(12).ok(),
            level: row.get(13).ok(),
            outcome: row.get(14).ok(),
            status_code: row.get(15).ok(),
            principal: row.get(16).ok(),
            spiffe_id: row.get(17).ok(),
            labels,
        }
    }
}

/// The first indexed column that disagrees with `entry`, as the server derives them.
pub(super) fn mismatched_column(row: &Columns, entry: &AuditEntry) -> Option<&'static str> {
    fn nanos(time: Option<&prost_types::Timestamp>) -> i64 {
        time.and_then(|t| {
            t.seconds
                .checked_mul(1_000_000_000)?
                .checked_add(i64::from(t.nanos))
        })
        .unwrap_or(0)
    }
    let (principal, spiffe_id) = match &entry.caller {
        None => ("", ""),
        Some(caller) => (
            caller.principal.as_str(),
            match &caller.peer {
                Some(pb::caller::Peer::Network(network)) => network.spiffe_id.as_str(),
                _ => "",
            },
        ),
    };
    let id = uuid::Uuid::parse_str(&entry.id).map(|id| id.as_bytes().to_vec());
    let text = |value: &Option<String>, want: &str| value.as_deref() == Some(want);
    let labels: std::collections::HashMap<String, String> = entry
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let checks: [(&'static str, bool); 15] = [
        ("id", id.ok() == row.id),
        ("request_id", text(&row.request_id, &entry.request_id)),
        ("time_ns", row.time_ns == Some(nanos(entry.time.as_ref()))),
        (
            "received_ns",
            row.received_ns == Some(nanos(entry.received_time.as_ref())),
        ),
        ("source", text(&row.source, &entry.source)),
        ("method", text(&row.method, &entry.method)),
        ("event", text(&row.event, &entry.event)),
        ("category", text(&row.category, &entry.category)),
        ("resource", text(&row.resource, &entry.resource)),
        ("level", row.level == Some(i64::from(entry.level))),
        ("outcome", row.outcome == Some(i64::from(entry.outcome))),
        (
            "status_code",
            row.status_code == Some(i64::from(entry.status_code)),
        ),
        ("principal", text(&row.principal, principal)),
        ("spiffe_id", text(&row.spiffe_id, spiffe_id)),
        ("labels", row.labels.as_ref() == Some(&labels)),
    ];
    checks.into_iter().find(|(_, ok)| !ok).map(|(name, _)| name)
}
