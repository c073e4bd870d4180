//! The PostgreSQL backend: several `audit-server` replicas share one log in one database.
//!
//! Every group locks the one row of `log_tip` (`SELECT ... FOR UPDATE`) from its start to its
//! commit. That row carries the sequence, chain value, Merkle frontier and newest checkpoint
//! size the group continues from, and the group's commit writes the new ones; so the groups of
//! all replicas commit one after another, in sequence order, and extend one chain and one
//! tree. Because a group commits before the next one can take the lock, an entry is visible
//! before any entry after it is: a reader that sees sequence `n` committed sees every entry
//! up to `n`, and no cursor skips an entry that becomes visible later (PostgreSQL's classic
//! trap, where transactions commit in another order than they took their sequences, cannot
//! arise). The commit notifies `audit_head`; each replica's head follower listens, and polls
//! the tip as well, so a lost notification delays a subscriber by one poll at most.
//!
//! A lost connection is not fatal: writes fail fast with UNAVAILABLE while the writer
//! reconnects, and a commit whose reply was lost is settled by looking for its first entry.

mod read;
mod schema;
mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use audit_ledger::merkle::Frontier;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::CursorClaim;
use super::backend::{
    Backend, BackendError, CursorRow, CursorWrite, HeadFollower, NewCheckpoint, Reader, Row,
    StoredId, Tip, hash_or_zeros,
};
use super::engine::{self, Log};
use super::filter::caller_identity;
use super::{Receipt, fault, signer};
use crate::error::Error;
use crate::validate::timestamp_nanos;

/// How a replica reaches the database: `--store postgres://USER@HOST:PORT/DB?options`.
#[derive(Clone)]
pub struct Settings {
    /// The connection string without this server's own options.
    config: postgres::Config,
    /// Read connections (`pool_size`, default the server's `--read-connections`).
    pub pool_size: Option<usize>,
    /// Longest a statement may run (`statement_timeout`, e.g. `5s`; default 30 s).
    pub statement_timeout: Duration,
    /// How often the head is polled besides notifications (`poll_interval`, default 200 ms).
    pub poll_interval: Duration,
    /// TLS, when `sslmode` asks for it.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl std::fmt::Debug for Settings {
    // By hand: never the password, and the TLS connector only as on or off.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("user", &self.config.get_user())
            .field("hosts", &self.config.get_hosts())
            .field("ports", &self.config.get_ports())
            .field("dbname", &self.config.get_dbname())
            .field("tls", &self.tls.is_some())
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl Settings {
    /// Parses a `postgres://` URL. Besides libpq's `connect_timeout` (seconds, default 5),
    /// `application_name`, `sslmode` (`disable`, `require`, `verify-ca`, `verify-full`),
    /// `sslrootcert`, `sslcert` and `sslkey`, it takes `pool_size`, `statement_timeout` and
    /// `poll_interval`.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let bad = |what: String| Error::Config(format!("--store: {what}"));
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut pool_size = None;
        let mut statement_timeout = Duration::from_secs(30);
        let mut poll_interval = Duration::from_millis(200);
        let mut passed = Vec::new();
        let mut tls_options = tls::TlsOptions::default();
        let duration = |name: &str, value: &str| {
            crate::config::parse_duration(value).map_err(|e| bad(format!("{name}={value}: {e}")))
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "pool_size" => {
                    let size = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad(format!("pool_size={value}: not a positive number")))?;
                    pool_size = Some(size);
                }
                "statement_timeout" => statement_timeout = duration(name, value)?,
                "poll_interval" => poll_interval = duration(name, value)?,
                "sslmode" => tls_options.mode = tls::Mode::parse(value).map_err(bad)?,
                "sslrootcert" => tls_options.root_cert = Some(value.into()),
                "sslcert" => tls_options.cert = Some(value.into()),
                "sslkey" => tls_options.key = Some(value.into()),
                "connect_timeout" | "application_name" | "user" | "password" | "dbname"
                | "host" | "hostaddr" | "port" => passed.push(pair),
                other => return Err(bad(format!("unknown option `{other}`"))),
            }
        }
        let mut text = base.to_string();
        if !passed.is_empty() {
            text = format!("{base}?{}", passed.join("&"));
        }
        let mut config: postgres::Config = text
            .parse()
            .map_err(|e| bad(format!("not a PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("audit-server");
        }
        let tls = tls::connector(&tls_options)?;
        if tls.is_some() {
            config.ssl_mode(postgres::config::SslMode::Require);
        }
        Ok(Settings {
            tls,
            config,
            pool_size,
            statement_timeout,
            poll_interval,
        })
    }

    /// A new connection for `role` (`writer`, `reader` or `follower`, appended to its
    /// application name so that operators can tell them apart), with the statement timeout set.
    fn connect(&self, role: &str) -> Result<Client, postgres::Error> {
        let mut config = self.config.clone();
        let name = config.get_application_name().unwrap_or("audit-server");
        let name = format!("{name} {role}");
        config.application_name(&name);
        let mut client = match &self.tls {
            Some(tls) => config.connect(tls.clone())?,
            None => config.connect(NoTls)?,
        };
        // A replica that stops answering while it holds the tip's lock (a network partition, a
        // frozen process) must not hold the other replicas' writes for longer than a statement
        // may run.
        let millis = self.statement_timeout.as_millis();
        client.batch_execute(&format!(
            "SET statement_timeout = {millis}; SET idle_in_transaction_session_timeout = {millis}"
        ))?;
        Ok(client)
    }
}

/// Whether a failed call lost the connection (then nothing of an open group is committed,
/// unless it struck the commit) rather than being refused by the database.
fn classify(client: &Client, error: postgres::Error) -> BackendError {
    // Connection exceptions (08), operator intervention such as a shutdown or a cancelled
    // statement (57), insufficient resources (53), and a transaction rolled back by the
    // database (40): the database may answer again, and nothing of the group was kept.
    let transient = error.code().is_none_or(|c| {
        ["08", "57", "53", "40"]
            .iter()
            .any(|class| c.code().starts_with(class))
    });
    if client.is_closed() || error.is_closed() || transient {
        BackendError::Unavailable(error.to_string())
    } else {
        BackendError::Failed(error.to_string())
    }
}

/// Runs `work` on a thread of its own: the blocking PostgreSQL client runs a small runtime of
/// its own, which may not start on an async thread.
pub fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(work).join().expect("PostgreSQL thread"))
}

/// Opens the log in the database at `settings`, creating or migrating its schema.
pub fn open(
    settings: &Settings,
    key_dir: Option<&std::path::Path>,
    log: &engine::Options,
) -> Result<Log, Error> {
    off_runtime(|| open_here(settings, key_dir, log))
}

fn open_here(
    settings: &Settings,
    key_dir: Option<&std::path::Path>,
    log: &engine::Options,
) -> Result<Log, Error> {
    let unavailable =
        |e: postgres::Error| Error::StoreFailed(format!("cannot reach PostgreSQL: {e}"));
    let mut client = settings.connect("writer").map_err(unavailable)?;
    schema::migrate(&mut client)?;
    let key = signer::load_key(key_dir, &log.checkpointing)?;
    let backend = PostgresBackend {
        client: Some(client),
        settings: settings.clone(),
    };
    let mut options = log.clone();
    if let Some(size) = settings.pool_size {
        options.read_connections = size;
    }
    let backend = fault::FaultBackend::from_env(Box::new(backend));
    let log = Log::open(backend, key, true, false, &options)?;
    tracing::info!("PostgreSQL store opened");
    Ok(log)
}

/// The write side of the PostgreSQL backend.
pub struct PostgresBackend {
    /// `None` after the connection was lost, until [`Backend::recover`] reconnects.
    client: Option<Client>,
    settings: Settings,
}

impl PostgresBackend {
    /// A backend on a new connection, with the schema migrated (tests use it to wrap the
    /// backend).
    pub fn new(settings: &Settings) -> Result<Self, Error> {
        let client = off_runtime(|| {
            let mut client = settings
                .connect("writer")
                .map_err(|e| Error::StoreFailed(format!("cannot reach PostgreSQL: {e}")))?;
            schema::migrate(&mut client)?;
            Ok::<_, Error>(client)
        })?;
        Ok(Self {
            client: Some(client),
            settings: settings.clone(),
        })
    }

    fn call<T>(
        &mut self,
        work: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, BackendError> {
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| BackendError::Unavailable("not connected".into()))?;
        let error = match work(client) {
            Ok(value) => return Ok(value),
            Err(e) => classify(client, e),
        };
        if matches!(error, BackendError::Unavailable(_)) {
            self.client = None;
        }
        Err(error)
    }
}

const INSERT: &str = "INSERT INTO entries (sequence, id, digest, request_id, time_ns, received_ns,
    source, method, event, category, resource, level, outcome, status_code, principal, spiffe_id,
    labels, entry, entry_hash, chain_hash)
    SELECT s, i, d, r, t, rt, so, m, e, c, re, l, o, sc, p, sp, la::jsonb, en, eh, ch
    FROM UNNEST($1::bigint[], $2::uuid[], $3::bytea[], $4::text[], $5::bigint[], $6::bigint[],
        $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[],
        $13::bigint[], $14::bigint[], $15::text[], $16::text[], $17::text[], $18::bytea[],
        $19::bytea[], $20::bytea[])
        AS u(s, i, d, r, t, rt, so, m, e, c, re, l, o, sc, p, sp, la, en, eh, ch)";

impl Backend for PostgresBackend {
    fn open_reader(&self) -> Result<Box<dyn Reader>, Error> {
        Ok(Box::new(read::PostgresReader::new(self.settings.clone())))
    }

    fn shared(&self) -> bool {
        true
    }

    fn begin(&mut self) -> Result<Option<Tip>, BackendError> {
        let row = self.call(|client| {
            client.batch_execute("BEGIN")?;
            client.query_one(
                "SELECT sequence, chain, frontier, signed_size, pruned FROM log_tip WHERE id = 1 \
                 FOR UPDATE",
                &[],
            )
        })?;
        let frontier: Vec<u8> = row.get(2);
        let tree = Frontier::from_bytes(&frontier)
            .ok_or_else(|| BackendError::Failed("the log's stored frontier is malformed".into()))?;
        let sequence = row.get::<_, i64>(0) as u64;
        if tree.size() != sequence {
            return Err(BackendError::Failed(format!(
                "the log's tip is at {sequence} but its frontier at {}",
                tree.size()
            )));
        }
        Ok(Some(Tip {
            sequence,
            chain: hash_or_zeros(Some(row.get(1))),
            tree,
            signed_size: row.get::<_, i64>(3) as u64,
            pruned: row.get::<_, i64>(4) as u64,
        }))
    }

    fn stored(&mut self, ids: &[&str]) -> Result<Vec<Option<StoredId>>, BackendError> {
        let keys: Vec<uuid::Uuid> = ids
            .iter()
            .map(|id| uuid::Uuid::parse_str(id).expect("validated id"))
            .collect();
        let rows = self.call(|client| {
            client.query(
                "SELECT id, sequence, digest, request_id, entry_hash, chain_hash FROM entries \
                 WHERE id = ANY($1) UNION ALL \
                 SELECT id, sequence, digest, request_id, entry_hash, chain_hash FROM pruned \
                 WHERE id = ANY($1)",
                &[&keys],
            )
        })?;
        let found: std::collections::HashMap<uuid::Uuid, StoredId> = rows
            .iter()
            .map(|row| {
                let id: uuid::Uuid = row.get(0);
                let stored = StoredId {
                    receipt: Receipt {
                        id: id.to_string(),
                        sequence: row.get::<_, i64>(1) as u64,
                        request_id: row.get(3),
                        entry_hash: hash_or_zeros(Some(row.get(4))),
                        chain_hash: hash_or_zeros(Some(row.get(5))),
                    },
                    digest: row.get(2),
                };
                (id, stored)
            })
            .collect();
        Ok(keys
            .iter()
            .zip(ids)
            .map(|(key, id)| {
                found.get(key).cloned().map(|mut stored| {
                    // As the caller spelled it (ids are compared as UUIDs).
                    stored.receipt.id = id.to_string();
                    stored
                })
            })
            .collect())
    }

    fn insert(&mut self, rows: &[Row<'_>]) -> Result<(), BackendError> {
        use prost::Message;
        let nanos =
            |t: &Option<prost_types::Timestamp>| t.as_ref().and_then(timestamp_nanos).unwrap_or(0);
        let mut columns = Columns::default();
        for row in rows {
            let entry = &row.new.entry;
            let (principal, spiffe_id) = caller_identity(entry);
            columns.sequence.push(row.sequence as i64);
            columns
                .id
                .push(uuid::Uuid::parse_str(&entry.id).expect("validated id"));
            columns.digest.push(row.new.digest.to_vec());
            columns.request_id.push(entry.request_id.clone());
            columns.time_ns.push(nanos(&entry.time));
            columns.received_ns.push(nanos(&entry.received_time));
            columns.source.push(entry.source.clone());
            columns.method.push(entry.method.clone());
            columns.event.push(entry.event.clone());
            columns.category.push(entry.category.clone());
            columns.resource.push(entry.resource.clone());
            columns.level.push(i64::from(entry.level));
            columns.outcome.push(i64::from(entry.outcome));
            columns.status_code.push(i64::from(entry.status_code));
            columns.principal.push(principal.to_string());
            columns.spiffe_id.push(spiffe_id.to_string());
            columns
                .labels
                .push(serde_json::to_string(&entry.labels).expect("string map serializes"));
            columns.entry.push(entry.encode_to_vec());
            columns.entry_hash.push(row.entry_hash.to_vec());
            columns.chain_hash.push(row.chain_hash.to_vec());
        }
        let c = &columns;
        self.call(|client| {
            client.execute(
                INSERT,
                &[
                    &c.sequence,
                    &c.id,
                    &c.digest,
                    &c.request_id,
                    &c.time_ns,
                    &c.received_ns,
                    &c.source,
                    &c.method,
                    &c.event,
                    &c.category,
                    &c.resource,
                    &c.level,
                    &c.outcome,
                    &c.status_code,
                    &c.principal,
                    &c.spiffe_id,
                    &c.labels,
                    &c.entry,
                    &c.entry_hash,
                    &c.chain_hash,
                ],
            )
        })?;
        Ok(())
    }

    fn insert_checkpoint(&mut self, checkpoint: &NewCheckpoint) -> Result<(), BackendError> {
        let (size, time) = (checkpoint.size as i64, checkpoint.time as i64);
        self.call(|client| {
            // Under the tip's lock: indexes follow the order checkpoints are signed in.
            client.execute(
                "INSERT INTO checkpoints (idx, size, time, note) \
                 SELECT COALESCE(MAX(idx), 0) + 1, $1, $2, $3 FROM checkpoints",
                &[&size, &time, &checkpoint.note],
            )
        })?;
        Ok(())
    }

    fn cursor(&mut self, write: &CursorWrite) -> Result<CursorClaim, BackendError> {
        let name = write.name.clone();
        let stored = self
            .call(|client| {
                client.query_opt(
                    "SELECT position, owner, lease_until FROM cursors WHERE name = $1",
                    &[&name],
                )
            })?
            .map(|row| CursorRow {
                position: row.get::<_, Option<i64>>(0).map(|p| p as u64),
                owner: row.get(1),
                lease_until: row.get(2),
            });
        let (claim, row) = write.apply(stored);
        if let Some(row) = row {
            let position = row.position.map(|p| p as i64);
            self.call(|client| {
                client.execute(
                    "INSERT INTO cursors (name, position, owner, lease_until) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET \
                     position = excluded.position, owner = excluded.owner, \
                     lease_until = excluded.lease_until",
                    &[&name, &position, &row.owner, &row.lease_until],
                )
            })?;
        }
        Ok(claim)
    }

    fn prune(&mut self, through: u64, limit: usize) -> Result<usize, BackendError> {
        let (through, limit) = (through.min(i64::MAX as u64) as i64, limit as i64);
        let moved = self.call(|client| {
            client.execute(
                "WITH step AS (DELETE FROM entries WHERE sequence IN (SELECT sequence FROM entries \
                 WHERE sequence <= $1 ORDER BY sequence LIMIT $2) RETURNING sequence, id, \
                 digest, request_id, received_ns, entry_hash, chain_hash) \
                 INSERT INTO pruned SELECT * FROM step",
                &[&through, &limit],
            )
        })?;
        Ok(moved as usize)
    }

    fn commit(&mut self, tip: &Tip) -> Result<(), BackendError> {
        let sequence = tip.sequence as i64;
        let signed = tip.signed_size as i64;
        let pruned = tip.pruned as i64;
        let frontier = tip.tree.to_bytes();
        self.call(|client| {
            client.execute(
                "UPDATE log_tip SET sequence = $1, chain = $2, frontier = $3, signed_size = $4, \
                 pruned = $5 WHERE id = 1",
                &[
                    &sequence,
                    &tip.chain.as_slice(),
                    &frontier,
                    &signed,
                    &pruned,
                ],
            )?;
            client.execute(
                "SELECT pg_notify('audit_head', $1)",
                &[&sequence.to_string()],
            )?;
            client.batch_execute("COMMIT")
        })
    }

    fn rollback(&mut self) {
        if let Some(client) = self.client.as_mut()
            && client.batch_execute("ROLLBACK").is_err()
            && client.is_closed()
        {
            self.client = None;
        }
    }

    fn recover(&mut self) -> Result<(), BackendError> {
        if let Some(client) = self.client.as_mut()
            && client.batch_execute("ROLLBACK; SELECT 1").is_ok()
        {
            return Ok(());
        }
        self.client = None;
        let client = self
            .settings
            .connect("writer")
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        self.client = Some(client);
        Ok(())
    }

    fn follow_head(&self) -> Option<Box<dyn HeadFollower>> {
        Some(Box::new(Follower {
            settings: self.settings.clone(),
        }))
    }
}

/// The columns of a group's rows, sent as arrays in one statement.
#[derive(Default)]
struct Columns {
    sequence: Vec<i64>,
    id: Vec<uuid::Uuid>,
    digest: Vec<Vec<u8>>,
    request_id: Vec<String>,
    time_ns: Vec<i64>,
    received_ns: Vec<i64>,
    source: Vec<String>,
    method: Vec<String>,
    event: Vec<String>,
    category: Vec<String>,
    resource: Vec<String>,
    level: Vec<i64>,
    outcome: Vec<i64>,
    status_code: Vec<i64>,
    principal: Vec<String>,
    spiffe_id: Vec<String>,
    labels: Vec<String>,
    entry: Vec<Vec<u8>>,
    entry_hash: Vec<Vec<u8>>,
    chain_hash: Vec<Vec<u8>>,
}

/// Follows the head other replicas commit: `LISTEN audit_head`, and a poll of the tip every
/// `poll_interval` in case a notification is lost (or the listening connection is).
struct Follower {
    settings: Settings,
}

impl Follower {
    fn head(client: &mut Client) -> Result<u64, postgres::Error> {
        let row = client.query_one("SELECT sequence FROM log_tip WHERE id = 1", &[])?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Listens and polls on one connection until it fails or `stop` is set.
    fn listen(&self, seen: &dyn Fn(u64), stop: &AtomicBool) -> Result<(), postgres::Error> {
        let mut client = self.settings.connect("follower")?;
        client.batch_execute("LISTEN audit_head")?;
        let mut polled = Instant::now();
        seen(Self::head(&mut client)?);
        while !stop.load(Ordering::SeqCst) {
            let wait = self.settings.poll_interval.min(Duration::from_millis(100));
            let mut woken = false;
            {
                let mut notifications = client.notifications();
                let see = |notification: postgres::Notification| {
                    if let Ok(head) = notification.payload().parse::<u64>() {
                        seen(head);
                    }
                };
                if let Some(notification) = notifications.timeout_iter(wait).next()? {
                    woken = true;
                    see(notification);
                }
                // Only those already received, so that `stop` is seen under any load.
                let mut pending = notifications.iter();
                while let Some(notification) = pending.next()? {
                    see(notification);
                }
            }
            if !woken && polled.elapsed() >= self.settings.poll_interval {
                seen(Self::head(&mut client)?);
                polled = Instant::now();
            }
        }
        Ok(())
    }
}

impl HeadFollower for Follower {
    fn run(self: Box<Self>, seen: &dyn Fn(u64), stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            if let Err(error) = self.listen(seen, stop) {
                tracing::warn!(%error, "following the log's head failed; reconnecting");
                std::thread::sleep(self.settings.poll_interval);
            }
        }
    }
}
