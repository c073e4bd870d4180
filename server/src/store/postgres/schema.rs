//! The PostgreSQL schema, created and migrated on start with versioned migrations under an
//! advisory lock, so that replicas starting together migrate once. A server refuses a database
//! whose schema is newer than it knows.

use audit_ledger::CHAIN_START;
use audit_ledger::merkle::Frontier;
use postgres::Client;

use crate::error::Error;

/// The newest schema version this server knows.
pub const VERSION: i32 = 3;

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 3] = [
    r#"
CREATE TABLE entries (
    sequence    bigint PRIMARY KEY,
    id          uuid NOT NULL UNIQUE,
    digest      bytea NOT NULL,
    request_id  text COLLATE "C" NOT NULL,
    time_ns     bigint NOT NULL,
    received_ns bigint NOT NULL,
    source      text COLLATE "C" NOT NULL,
    method      text COLLATE "C" NOT NULL,
    event       text COLLATE "C" NOT NULL,
    category    text COLLATE "C" NOT NULL,
    resource    text COLLATE "C" NOT NULL,
    level       bigint NOT NULL,
    outcome     bigint NOT NULL,
    status_code bigint NOT NULL,
    principal   text COLLATE "C" NOT NULL,
    spiffe_id   text COLLATE "C" NOT NULL,
    labels      jsonb NOT NULL,
    entry       bytea NOT NULL,
    entry_hash  bytea NOT NULL,
    chain_hash  bytea NOT NULL
);
CREATE INDEX entries_time ON entries(time_ns);
CREATE INDEX entries_received ON entries(received_ns);
CREATE INDEX entries_request_id ON entries(request_id);
CREATE INDEX entries_source ON entries(source);
CREATE INDEX entries_method ON entries(method);
CREATE INDEX entries_principal ON entries(principal);
CREATE INDEX entries_spiffe_id ON entries(spiffe_id);
CREATE INDEX entries_outcome ON entries(outcome);
CREATE TABLE checkpoints (
    idx  bigint PRIMARY KEY,
    size bigint NOT NULL,
    time bigint NOT NULL,
    note text NOT NULL
);
-- The tip of the log: one row, locked by each group from its start to its commit. It orders
-- the commits of every replica, and carries what the next group chains onto.
CREATE TABLE log_tip (
    id          smallint PRIMARY KEY CHECK (id = 1),
    sequence    bigint NOT NULL,
    chain       bytea NOT NULL,
    frontier    bytea NOT NULL,
    signed_size bigint NOT NULL
);
"#,
    r#"
-- Saved positions of durable cursors (forwarders), and the lease that lets one replica at a
-- time drive each.
CREATE TABLE cursors (
    name        text PRIMARY KEY,
    position    bigint,
    owner       text NOT NULL,
    lease_until bigint NOT NULL
);
"#,
    r#"
-- What retention keeps of the entries it prunes: what verification and retries need.
CREATE TABLE pruned (
    sequence    bigint PRIMARY KEY,
    id          uuid NOT NULL UNIQUE,
    digest      bytea NOT NULL,
    request_id  text COLLATE "C" NOT NULL,
    received_ns bigint NOT NULL,
    entry_hash  bytea NOT NULL,
    chain_hash  bytea NOT NULL
);
-- Retention's horizon, as the newest checkpoint signs it.
ALTER TABLE log_tip ADD COLUMN pruned bigint NOT NULL DEFAULT 0;
"#,
];

/// Key of the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x6175_6469_745f_7631; // "audit_v1"

/// Creates or migrates the schema; true when the log was just created.
pub fn migrate(client: &mut Client) -> Result<bool, Error> {
    let failed = |e: postgres::Error| Error::StoreFailed(format!("migrating the schema: {e}"));
    let mut tx = client.transaction().map_err(failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(failed)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS audit_schema (version integer NOT NULL)")
        .map_err(failed)?;
    let version: i32 = tx
        .query_opt("SELECT version FROM audit_schema", &[])
        .map_err(failed)?
        .map_or(0, |row| row.get(0));
    if version > VERSION {
        return Err(Error::StoreFailed(format!(
            "database schema version {version} is newer than this server's ({VERSION})"
        )));
    }
    for (from, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(migration).map_err(failed)?;
        tracing::info!(version = from + 1, "PostgreSQL schema migrated");
    }
    let created = version == 0;
    if created {
        tx.execute(
            "INSERT INTO log_tip (id, sequence, chain, frontier, signed_size) \
             VALUES (1, 0, $1, $2, 0)",
            &[&CHAIN_START.as_slice(), &Frontier::new().to_bytes()],
        )
        .map_err(failed)?;
        tx.execute(
            "INSERT INTO audit_schema (version) VALUES ($1)",
            &[&VERSION],
        )
        .map_err(failed)?;
    } else if version < VERSION {
        tx.execute("UPDATE audit_schema SET version = $1", &[&VERSION])
            .map_err(failed)?;
    }
    tx.commit().map_err(failed)?;
    Ok(created)
}

/// Checks that the database holds this server's schema version and the tip's one row.
pub fn check(client: &mut Client) -> Result<Result<(), String>, postgres::Error> {
    let version: Option<i32> = client
        .query_opt("SELECT version FROM audit_schema", &[])?
        .map(|row| row.get(0));
    if version != Some(VERSION) {
        return Ok(Err(format!(
            "the database's schema version is {version:?}, not {VERSION}"
        )));
    }
    let tips: i64 = client
        .query_one("SELECT count(*) FROM log_tip", &[])?
        .get(0);
    if tips != 1 {
        return Ok(Err(format!("the log_tip table holds {tips} rows, not 1")));
    }
    Ok(Ok(()))
}
