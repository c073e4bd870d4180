//! The peer a user would pick instead: the same entries written by hand into PostgreSQL with
//! tokio-postgres, into a table with the same columns and indexes, at PostgreSQL's default
//! durability (fsync on, synchronous_commit on).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use audit_proto::pb;
use prost::Message;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use crate::load::{EntryFactory, RunOutcome, Timing, closed_loop};

/// How to get a PostgreSQL to compare against, printed when none answers.
pub const HOW_TO_START: &str = "start one with `apt-get install postgresql && pg_ctlcluster 15 main start` \
     (trust auth for 127.0.0.1 in pg_hba.conf, a database named `test`), or pass --postgres URL";

/// A table created for this run and dropped at the end.
pub struct Table {
    url: String,
    name: String,
    admin: Client,
}

/// Connects, failing within a few seconds when no server answers.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(3), tokio_postgres::connect(url, NoTls))
            .await
            .context("timed out")??;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl Table {
    pub async fn create(url: &str) -> anyhow::Result<Self> {
        let admin = connect(url).await?;
        let name = format!(
            "audit_bench_{}_{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
        );
        admin
            .batch_execute(&format!(
                "CREATE TABLE {name} (
                    sequence    BIGSERIAL PRIMARY KEY,
                    id          UUID NOT NULL UNIQUE,
                    request_id  TEXT NOT NULL,
                    time        TIMESTAMPTZ NOT NULL,
                    received    TIMESTAMPTZ NOT NULL,
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
                    labels      JSONB NOT NULL,
                    entry       BYTEA NOT NULL
                );
                CREATE INDEX ON {name} (time);
                CREATE INDEX ON {name} (received);
                CREATE INDEX ON {name} (request_id);
                CREATE INDEX ON {name} (source);
                CREATE INDEX ON {name} (method);
                CREATE INDEX ON {name} (principal);
                CREATE INDEX ON {name} (spiffe_id);
                CREATE INDEX ON {name} (outcome);"
            ))
            .await?;
        Ok(Table {
            url: url.to_string(),
            name,
            admin,
        })
    }

    pub async fn drop_table(self) -> anyhow::Result<()> {
        self.admin
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.name))
            .await?;
        Ok(())
    }

    async fn writer(&self) -> anyhow::Result<(Client, Statement)> {
        let client = connect(&self.url).await?;
        let insert = client
            .prepare(&format!(
                "INSERT INTO {} (id, request_id, time, received, source, method, event, category,
                 resource, level, outcome, status_code, principal, spiffe_id, labels, entry)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                 ON CONFLICT (id) DO NOTHING",
                self.name
            ))
            .await?;
        Ok((client, insert))
    }

    /// One INSERT, committed on its own, per entry, from `concurrency` connections.
    pub async fn per_entry(
        &self,
        factory: Arc<EntryFactory>,
        concurrency: usize,
        timing: Timing,
    ) -> anyhow::Result<RunOutcome> {
        let mut writers = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            writers.push(Arc::new(self.writer().await?));
        }
        let writers = Arc::new(writers);
        Ok(closed_loop(concurrency, timing, move |worker| {
            let writer = writers[worker].clone();
            let entry = factory.entry();
            async move {
                let row = Row::of(&entry);
                writer
                    .0
                    .execute(&writer.1, &row.params())
                    .await
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
                Ok(1)
            }
        })
        .await)
    }

    /// `batch` INSERTs in one transaction, pipelined, then COMMIT; one connection.
    pub async fn batched(
        &self,
        factory: Arc<EntryFactory>,
        batch: usize,
        timing: Timing,
    ) -> anyhow::Result<RunOutcome> {
        let writer = Arc::new(tokio::sync::Mutex::new(self.writer().await?));
        Ok(closed_loop(1, timing, move |_| {
            let writer = writer.clone();
            let entries = factory.batch(batch);
            async move {
                let fail = |e: tokio_postgres::Error| tonic::Status::internal(e.to_string());
                let mut guard = writer.lock().await;
                let (client, insert) = &mut *guard;
                let insert = insert.clone();
                let rows: Vec<Row> = entries.iter().map(Row::of).collect();
                let tx = client.transaction().await.map_err(fail)?;
                let params: Vec<_> = rows.iter().map(Row::params).collect();
                futures::future::try_join_all(params.iter().map(|p| tx.execute(&insert, p)))
                    .await
                    .map_err(fail)?;
                tx.commit().await.map_err(fail)?;
                Ok(entries.len() as u64)
            }
        })
        .await)
    }
}

/// The column values of one entry, as a hand-written service would compute them.
struct Row {
    id: uuid::Uuid,
    request_id: String,
    time: SystemTime,
    received: SystemTime,
    entry: pb::AuditEntry,
    principal: String,
    spiffe_id: String,
    labels: serde_json::Value,
    blob: Vec<u8>,
}

impl Row {
    fn of(entry: &pb::AuditEntry) -> Row {
        let time = entry
            .time
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or_else(SystemTime::now);
        let (principal, spiffe_id) = match &entry.caller {
            Some(caller) => (
                caller.principal.clone(),
                match &caller.peer {
                    Some(pb::caller::Peer::Network(n)) => n.spiffe_id.clone(),
                    _ => String::new(),
                },
            ),
            None => (String::new(), String::new()),
        };
        Row {
            id: uuid::Uuid::parse_str(&entry.id).unwrap_or_else(|_| uuid::Uuid::new_v4()),
            request_id: if entry.request_id.is_empty() {
                uuid::Uuid::now_v7().hyphenated().to_string()
            } else {
                entry.request_id.clone()
            },
            time,
            received: SystemTime::now(),
            principal,
            spiffe_id,
            labels: serde_json::to_value(&entry.labels).unwrap_or_default(),
            blob: entry.encode_to_vec(),
            entry: entry.clone(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 16] {
        [
            &self.id,
            &self.request_id,
            &self.time,
            &self.received,
            &self.entry.source,
            &self.entry.method,
            &self.entry.event,
            &self.entry.category,
            &self.entry.resource,
            &self.entry.level,
            &self.entry.outcome,
            &self.entry.status_code,
            &self.principal,
            &self.spiffe_id,
            &self.labels,
            &self.blob,
        ]
    }
}
