//! The store's SQLite schema, known in this one place, and the checks that a database holds
//! exactly it: every table, index, trigger and view as the server creates them
//! ([`check_schema`]), with indexes that agree with their tables ([`check_integrity`]).
//!
//! Queries filter through the indexes, so an index that leaves out rows (a partial index
//! relabelled as a full one with `PRAGMA writable_schema`) hides entries from filtered queries
//! while every hash still verifies; a trigger can rewrite what the server stores. The server
//! checks both when it starts, and the offline verifier before it reads the log.

use rusqlite::Connection;

/// Version of the schema, kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 4;

/// Schema version 1: the entries and the indexed columns queries filter on.
pub const SCHEMA_1: &str = "
CREATE TABLE entries (
    sequence    INTEGER PRIMARY KEY,
    id          BLOB NOT NULL UNIQUE,
    digest      BLOB NOT NULL,
    request_id  TEXT NOT NULL,
    time_ns     INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    source      TEXT NOT NULL,
    method      TEXT NOT NULL,
    event       TEXT NOT NULL,
    category    TEXT NOT NULL,
    resource    TEXT NOT NULL,
    level       INTEGER NOT NULL,
    outcome     INTEGER NOT NULL,
    status_code INTEGER NOT NULL,
    principal   TEXT NOT NULL,
    spiffe_id   TEXT NOT NULL,
    labels      TEXT NOT NULL,
    entry       BLOB NOT NULL
) STRICT;
CREATE INDEX entries_time ON entries(time_ns);
CREATE INDEX entries_received ON entries(received_ns);
CREATE INDEX entries_request_id ON entries(request_id);
CREATE INDEX entries_source ON entries(source);
CREATE INDEX entries_method ON entries(method);
CREATE INDEX entries_principal ON entries(principal);
CREATE INDEX entries_spiffe_id ON entries(spiffe_id);
CREATE INDEX entries_outcome ON entries(outcome);
";

/// Schema version 2: entry and chain hashes on every row, and signed checkpoints.
pub const SCHEMA_2: &str = "
ALTER TABLE entries ADD COLUMN entry_hash BLOB;
ALTER TABLE entries ADD COLUMN chain_hash BLOB;
CREATE TABLE checkpoints (
    idx  INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    time INTEGER NOT NULL,
    note TEXT NOT NULL
) STRICT;
";

/// Schema version 3: the saved positions of durable cursors (forwarders), with the lease that
/// lets one server at a time drive each.
pub const SCHEMA_3: &str = "
CREATE TABLE cursors (
    name        TEXT PRIMARY KEY,
    position    INTEGER,
    owner       TEXT NOT NULL,
    lease_until INTEGER NOT NULL
) STRICT;
";

/// Schema version 4: what retention keeps of the entries it prunes. Pruning moves the oldest
/// entries out of `entries` (their bodies and indexed columns) into this table, which keeps what
/// verification and retries need: the sequence, the id with its retry digest and request id (the
/// first receipt of a retry), the time received (to say that a requested time was pruned) and
/// both hashes.
pub const SCHEMA_4: &str = "
CREATE TABLE pruned (
    sequence    INTEGER PRIMARY KEY,
    id          BLOB NOT NULL UNIQUE,
    digest      BLOB NOT NULL,
    request_id  TEXT NOT NULL,
    received_ns INTEGER NOT NULL,
    entry_hash  BLOB NOT NULL,
    chain_hash  BLOB NOT NULL
) STRICT;
";

/// Every schema version's SQL in order: version `v` is the first `v` of them.
pub const SCHEMAS: [&str; 4] = [SCHEMA_1, SCHEMA_2, SCHEMA_3, SCHEMA_4];

/// One object of `sqlite_schema`: type, name, table and SQL text.
type Object = (String, String, String, Option<String>);

fn objects(conn: &Connection) -> rusqlite::Result<Vec<Object>> {
    conn.prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name")?
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?
        .collect()
}

/// Checks that `conn` holds exactly the objects a new store of the current version holds (a
/// store migrated from version 1 holds the same). `Err` says what differs.
pub fn check_schema(conn: &Connection) -> Result<(), String> {
    let expected = Connection::open_in_memory()
        .and_then(|fresh| {
            for schema in SCHEMAS {
                fresh.execute_batch(schema)?;
            }
            objects(&fresh)
        })
        .map_err(|e| format!("cannot build the expected schema: {e}"))?;
    let found = objects(conn).map_err(|e| format!("cannot read the schema: {e}"))?;
    let describe = |(kind, name, ..): &Object| format!("{kind} `{name}`");
    for object in &found {
        match expected.iter().find(|e| e.0 == object.0 && e.1 == object.1) {
            None => return Err(format!("unexpected {} in the schema", describe(object))),
            Some(want) if want != object => {
                return Err(format!(
                    "{} differs from the server's schema: {}",
                    describe(object),
                    object.3.as_deref().unwrap_or("(no SQL)")
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(missing) = expected.iter().find(|e| !found.contains(e)) {
        return Err(format!("{} is missing from the schema", describe(missing)));
    }
    Ok(())
}

/// Runs `PRAGMA integrity_check`: every index holds exactly the rows of its table, and the
/// file's structure is sound. Reads the whole database. `Err` gives SQLite's first findings.
pub fn check_integrity(conn: &Connection) -> Result<(), String> {
    let findings: Vec<String> = conn
        .prepare("PRAGMA integrity_check(10)")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| row.get::<_, String>(0))?
                .collect()
        })
        .map_err(|e| format!("integrity check failed to run: {e}"))?;
    if findings == ["ok"] {
        Ok(())
    } else {
        Err(format!("integrity check: {}", findings.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for schema in SCHEMAS {
            conn.execute_batch(schema).unwrap();
        }
        conn.execute(
            "INSERT INTO entries VALUES (1, x'01', x'02', 'r', 0, 0, 's', 'm', 'e', 'c', 'x', 2, \
             1, 0, 'mallory', '', '{}', x'', NULL, NULL)",
            [],
        )
        .unwrap();
        conn
    }

    #[test]
    fn a_new_store_passes() {
        let conn = store();
        assert_eq!(check_schema(&conn), Ok(()));
        assert_eq!(check_integrity(&conn), Ok(()));
    }

    #[test]
    fn a_planted_trigger_is_found() {
        let conn = store();
        conn.execute_batch(
            "CREATE TRIGGER hide AFTER INSERT ON entries BEGIN DELETE FROM entries WHERE \
             principal = 'mallory'; END;",
        )
        .unwrap();
        let error = check_schema(&conn).unwrap_err();
        assert!(error.contains("unexpected trigger `hide`"), "{error}");
    }

    #[test]
    fn an_index_relabelled_as_full_fails_the_integrity_check() {
        let dir = std::env::temp_dir().join(format!("relabel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.db");
        let _ = std::fs::remove_file(&path);
        {
            let conn = Connection::open(&path).unwrap();
            for schema in SCHEMAS {
                conn.execute_batch(schema).unwrap();
            }
            conn.execute(
                "INSERT INTO entries VALUES (1, x'01', x'02', 'r', 0, 0, 's', 'm', 'e', 'c', 'x', \
                 2, 1, 0, 'mallory', '', '{}', x'', NULL, NULL)",
                [],
            )
            .unwrap();
            conn.execute_batch(
                "DROP INDEX entries_principal;
                 CREATE INDEX entries_principal ON entries(principal)
                     WHERE principal != 'mallory';
                 PRAGMA writable_schema = ON;
                 UPDATE sqlite_schema SET sql =
                     'CREATE INDEX entries_principal ON entries(principal)'
                     WHERE name = 'entries_principal';
                 PRAGMA writable_schema = OFF;",
            )
            .unwrap();
        }
        let conn = Connection::open(&path).unwrap();
        assert_eq!(
            check_schema(&conn),
            Ok(()),
            "the schema reads as the server's"
        );
        let error = check_integrity(&conn).unwrap_err();
        assert!(
            error.contains("missing from index entries_principal"),
            "{error}"
        );
        drop(conn);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_changed_or_missing_index_is_found() {
        let conn = store();
        conn.execute_batch(
            "DROP INDEX entries_principal;
             CREATE INDEX entries_principal ON entries(principal) WHERE principal != 'mallory';",
        )
        .unwrap();
        let error = check_schema(&conn).unwrap_err();
        assert!(
            error.contains("index `entries_principal` differs"),
            "{error}"
        );
        conn.execute_batch("DROP INDEX entries_principal").unwrap();
        let error = check_schema(&conn).unwrap_err();
        assert!(error.contains("`entries_principal` is missing"), "{error}");
    }
}
