//! Verification of a log kept in PostgreSQL, read straight from the database (no server
//! needed): the same checks as for a SQLite data directory, plus PostgreSQL's own ways to hide
//! entries from queries (a trigger or rule on the log's tables, a partial index) and the tip
//! row the replicas chain onto.

use std::collections::HashMap;

use audit_proto::pb::AuditEntry;
use prost::Message;

use super::offline::{Columns, mismatched_column};
use super::{KeySource, Report, Trust, Verifier};
use crate::Error;

/// The schema version this verifier reads.
const SCHEMA_VERSION: i32 = 3;
/// Entries read at a time.
const SLICE: i64 = 5_000;

/// Verifies the log in the PostgreSQL database at `url` (`postgres://USER@HOST:PORT/DB`). The
/// public key must be given in `trust`: a database holds no key file. Fails only when the
/// database cannot be read; tampering is reported in the [`Report`].
pub async fn verify_postgres(url: &str, trust: &Trust) -> Result<Report, Error> {
    let unverifiable = |what: String| Error::Unverifiable(what);
    let key = trust.public_key.clone().ok_or_else(|| {
        unverifiable(
            "verifying a PostgreSQL log needs --public-key (the database holds no key)".into(),
        )
    })?;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| unverifiable(format!("connect to {url}: {e}")))?;
    tokio::spawn(connection);
    let sql = |e: tokio_postgres::Error| unverifiable(format!("read {url}: {e}"));
    // One snapshot: replicas may be writing.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(sql)?;
    let version: Option<i32> = client
        .query_opt("SELECT version FROM audit_schema", &[])
        .await
        .map_err(sql)?
        .map(|row| row.get(0));
    if version != Some(SCHEMA_VERSION) {
        return Err(unverifiable(format!(
            "the database's schema version is {version:?}; this verifier reads version \
             {SCHEMA_VERSION}"
        )));
    }

    let mut verifier = Verifier::new(key, KeySource::Trusted);
    for note in &trust.checkpoints {
        verifier.trusted_checkpoint(note);
    }
    if let Some(problem) = schema_problem(&client).await.map_err(sql)? {
        verifier.problem(
            1,
            format!("the database is not as the server made it: {problem}"),
        );
    }
    for row in client
        .query("SELECT idx, size, note FROM checkpoints ORDER BY idx", &[])
        .await
        .map_err(sql)?
    {
        let (index, size, note): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
        verifier.checkpoint(index as u64, &note, Some(size as u64));
    }

    // What retention kept of the entries it pruned, first: they come before every kept one.
    let mut after = 0i64;
    let mut newest = 0i64;
    'pruned: loop {
        let rows = client
            .query(
                "SELECT sequence, entry_hash, chain_hash FROM pruned WHERE sequence > $1 \
                 ORDER BY sequence LIMIT $2",
                &[&after, &SLICE],
            )
            .await
            .map_err(sql)?;
        let hash = |value: Vec<u8>| -> audit_ledger::Hash { value.try_into().unwrap_or([0; 32]) };
        for row in &rows {
            let sequence: i64 = row.get(0);
            (after, newest) = (sequence, sequence);
            if !verifier.pruned_entry(sequence as u64, hash(row.get(1)), hash(row.get(2))) {
                break 'pruned;
            }
        }
        if (rows.len() as i64) < SLICE {
            break;
        }
    }
    let mut digests = audit_ledger::DigestCheck::default();
    'slices: loop {
        let rows = client
            .query(
                "SELECT sequence, entry, entry_hash, chain_hash, id, request_id, time_ns, \
                 received_ns, source, method, event, category, resource, level, outcome, \
                 status_code, principal, spiffe_id, labels, digest FROM entries \
                 WHERE sequence > $1 ORDER BY sequence LIMIT $2",
                &[&after, &SLICE],
            )
            .await
            .map_err(sql)?;
        for row in &rows {
            let sequence: i64 = row.get(0);
            after = sequence;
            newest = sequence;
            let sequence = sequence as u64;
            let blob: &[u8] = row.get(1);
            let mut entry = match AuditEntry::decode(blob) {
                Ok(entry) => entry,
                Err(error) => {
                    verifier.problem(
                        sequence,
                        format!("the stored entry does not decode: {error}"),
                    );
                    break 'slices;
                }
            };
            entry.sequence = sequence;
            entry.entry_hash = row.get(2);
            entry.chain_hash = row.get(3);
            if !verifier.entry(&entry) {
                break 'slices;
            }
            let labels: Option<HashMap<String, String>> = row
                .get::<_, Option<serde_json::Value>>(18)
                .and_then(|value| serde_json::from_value(value).ok());
            let columns = Columns {
                id: row
                    .get::<_, Option<uuid::Uuid>>(4)
                    .map(|id| id.as_bytes().to_vec()),
                request_id: row.get(5),
                time_ns: row.get(6),
                received_ns: row.get(7),
                source: row.get(8),
                method: row.get(9),
                event: row.get(10),
                category: row.get(11),
                resource: row.get(12),
                level: row.get(13),
                outcome: row.get(14),
                status_code: row.get(15),
                principal: row.get(16),
                spiffe_id: row.get(17),
                labels,
            };
            if let Some(column) = mismatched_column(&columns, &entry) {
                verifier.problem(
                    sequence,
                    format!("the indexed column `{column}` does not match the entry"),
                );
                break 'slices;
            }
            let digest: &[u8] = row.get(19);
            if !digests.matches(&entry, digest) {
                verifier.problem(
                    sequence,
                    "the stored retry digest does not match the entry (retries of its id would \
                     be refused)",
                );
                break 'slices;
            }
        }
        if (rows.len() as i64) < SLICE {
            break;
        }
    }
    // The tip is what the next write chains onto: a tip behind the entries would let a replica
    // overwrite the log's end, one ahead would leave a gap.
    let tip: i64 = client
        .query_one("SELECT sequence FROM log_tip WHERE id = 1", &[])
        .await
        .map_err(sql)?
        .get(0);
    if tip != newest {
        verifier.problem(
            (tip.min(newest) + 1) as u64,
            format!("the log's tip row says {tip} entries but {newest} are stored"),
        );
    }
    Ok(verifier.finish())
}

/// A trigger or rule on the log's tables, or an index that leaves out rows, if there is one.
async fn schema_problem(
    client: &tokio_postgres::Client,
) -> Result<Option<String>, tokio_postgres::Error> {
    let tables = ["entries", "pruned", "checkpoints", "log_tip"];
    let triggers = client
        .query(
            "SELECT tgname, relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
             WHERE NOT t.tgisinternal AND relname = ANY($1)",
            &[&&tables[..]],
        )
        .await?;
    if let Some(row) = triggers.first() {
        let (name, table): (String, String) = (row.get(0), row.get(1));
        return Ok(Some(format!("table {table} has a trigger `{name}`")));
    }
    let rules = client
        .query(
            "SELECT rulename, tablename FROM pg_rules WHERE tablename = ANY($1)",
            &[&&tables[..]],
        )
        .await?;
    if let Some(row) = rules.first() {
        let (name, table): (String, String) = (row.get(0), row.get(1));
        return Ok(Some(format!("table {table} has a rule `{name}`")));
    }
    let partial = client
        .query(
            "SELECT indexname FROM pg_indexes WHERE tablename = ANY($1) \
             AND indexdef LIKE '% WHERE %'",
            &[&&tables[..]],
        )
        .await?;
    if let Some(row) = partial.first() {
        let name: String = row.get(0);
        return Ok(Some(format!("index `{name}` leaves out rows")));
    }
    Ok(None)
}
