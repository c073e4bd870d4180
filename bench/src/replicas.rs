//! The PostgreSQL backend, measured beside the hand-written PostgreSQL baseline of the same run:
//! `audit-server --store postgres://...` with one and with two replicas sharing a database,
//! and record-to-delivery latency from a writer on one replica to a subscriber on the other.
//! Each case gets a database of its own, dropped at its end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use audit_proto::pb;

use crate::load::{EntryFactory, Timing, paced};
use crate::process::ServerProcess;
use crate::report::{Case, Latency};
use crate::{Bench, CpuMeter, MAX_CONNECTIONS, Work, connect, drive, fanout, postgres};

/// A database created for one case.
struct Database {
    admin: tokio_postgres::Client,
    name: String,
    url: String,
}

impl Database {
    async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let admin = postgres::connect(admin_url).await?;
        let name = format!("audit_bench_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        Ok(Self {
            url: format!("{base}/{name}"),
            admin,
            name,
        })
    }

    async fn drop_database(self) -> anyhow::Result<()> {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        self.admin.batch_execute(&drop).await?;
        Ok(())
    }
}

impl Bench {
    /// Starts `count` replicas on `db`; the first generates the signing key the others share.
    async fn replicas(
        &mut self,
        db: &Database,
        count: usize,
    ) -> anyhow::Result<Vec<ServerProcess>> {
        let mut servers = Vec::new();
        let mut key: Option<String> = None;
        for _ in 0..count {
            let dir = self.case_dir()?;
            let data = dir.join("data");
            let mut args: Vec<String> = [
                "--listen",
                "127.0.0.1:0",
                "--store",
                &db.url,
                "--data-dir",
                &data.display().to_string(),
                "--log",
                "warn",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(key) = &key {
                args.extend(["--signing-key".to_string(), key.clone()]);
            }
            let log = dir.join("server.log");
            servers.push(ServerProcess::start(&self.server_bin, &args, log).await?);
            key.get_or_insert_with(|| data.join("signing.key").display().to_string());
        }
        Ok(servers)
    }

    /// Write throughput of RecordBatch(`batch`) through `count` replicas, one writer each.
    pub async fn postgres_backend(
        &mut self,
        admin_url: &str,
        count: usize,
        batch: usize,
        size_name: &str,
        factory: &Arc<EntryFactory>,
        timing: Timing,
    ) -> anyhow::Result<()> {
        let key = match count {
            1 => format!("audit-pg batch {batch} {size_name}"),
            n => format!("audit-pg x{n} batch {batch} {size_name}"),
        };
        if !self.wants(&key) {
            return Ok(());
        }
        let db = Database::create(admin_url).await?;
        let servers = self.replicas(&db, count).await?;
        let mut clients = Vec::new();
        for server in &servers {
            clients.extend(connect(&server.uri(), 1).await?);
        }
        let cpu: Vec<CpuMeter> = servers.iter().map(CpuMeter::start).collect();
        let work = Work::Batches {
            batch,
            writers: count,
        };
        let mut outcome = drive(clients, work, factory.clone(), timing).await;
        let mut case = Case::new(key, "audit-pg");
        let cpu_us: f64 = cpu
            .iter()
            .filter_map(|c| c.per_entry_us(outcome.all_entries))
            .sum();
        case.server_cpu_us_per_entry = Some(cpu_us);
        case.notes.insert("replicas".into(), count as f64);
        for server in servers {
            server.stop().await?;
        }
        db.drop_database().await?;
        self.record(case, &mut outcome);
        Ok(())
    }

    /// Record-to-delivery latency across replicas: entries recorded through one replica at
    /// `rate` per second, delivered to a subscriber on the other.
    pub async fn postgres_delivery(
        &mut self,
        admin_url: &str,
        rate: u64,
        factory: &Arc<EntryFactory>,
        timing: Timing,
    ) -> anyhow::Result<()> {
        let key = "audit-pg cross-replica delivery".to_string();
        if !self.wants(&key) {
            return Ok(());
        }
        let db = Database::create(admin_url).await?;
        let servers = self.replicas(&db, 2).await?;
        let subs = fanout::Subscribers::open(&servers[1].uri(), 1, true).await?;
        let clients = connect(&servers[0].uri(), MAX_CONNECTIONS).await?;
        let last_sequence = Arc::new(AtomicU64::new(0));
        let window_from = SystemTime::now() + timing.warmup;
        let window_until = window_from + timing.measure;
        let mut outcome = {
            let factory = factory.clone();
            let last_sequence = last_sequence.clone();
            paced(rate, 1024, timing, move |n| {
                let mut client = clients[n as usize % clients.len()].clone();
                let entry = factory.entry();
                let last_sequence = last_sequence.clone();
                async move {
                    let response = client
                        .record(pb::RecordRequest {
                            entry: Some(entry),
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    last_sequence.fetch_max(response.sequence, Ordering::Relaxed);
                    Ok(1)
                }
            })
            .await
        };
        let seen = subs
            .finish(
                last_sequence.load(Ordering::Relaxed),
                Duration::from_secs(10),
            )
            .await;
        let mut delivery = fanout::delivered_between(&seen, window_from, window_until);
        let mut case = Case::new(key, "audit-pg");
        case.subscribers = Some(1);
        case.notes.insert("target_rate".into(), rate as f64);
        case.notes
            .insert("deliveries".into(), delivery.len() as f64);
        case.delivery = Latency::of(&mut delivery);
        for server in servers {
            server.stop().await?;
        }
        db.drop_database().await?;
        self.record(case, &mut outcome);
        Ok(())
    }
}
