//! The audit service: validation, durable storage with group commit, queries and live
//! subscriptions, served over gRPC with health checks and reflection.
//!
//! [`AuditServer::open`] opens the store and [`AuditServer::serve`] serves it on bound
//! [`Listeners`] until a shutdown signal; the `audit-server` binary is a thin wrapper around both.

#![forbid(unsafe_code)]

pub mod access;
mod codec_status;
pub mod config;
pub mod config_file;
pub mod error;
pub mod evidence;
pub mod forward;
pub mod guard;
pub mod hub;
pub mod listen;
pub mod metrics;
mod page_token;
pub mod policy;
pub mod redaction;
pub mod retention;
pub mod serve;
pub mod service;
pub mod store;
pub mod validate;
pub mod web;

use std::future::Future;
use std::sync::Arc;

use audit_proto::pb::audit_service_server::AuditServiceServer;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use access::Access;
pub use config::{Config, ConnectionLimits, Limits};
pub use error::Error;
use hub::Hub;
pub use listen::Listeners;
use policy::Policy;
use service::AuditService;
use store::{Log, Store};

/// How long after its grace period a forwarder whose receiver holds a batch is stopped anyway.
const FORWARDER_HARD_STOP: std::time::Duration = std::time::Duration::from_secs(5);

/// Service names whose health follows the store: the server as a whole and the audit service.
const HEALTH_SERVICES: [&str; 2] = ["", audit_proto::SERVICE_NAME];

/// A server whose store is open, ready to serve.
pub struct AuditServer {
    limits: Arc<Limits>,
    connections: ConnectionLimits,
    store: Log,
    access: Arc<Access>,
    web: Option<web::WebListener>,
    forwarders: forward::Prepared<Log>,
    metrics: Option<(metrics::MetricsListener, Arc<metrics::Metrics>)>,
    retention: retention::Retention,
}

impl AuditServer {
    /// Loads the policy and opens the store in `config.data_dir`: fails at once if the policy
    /// is invalid, or the store cannot be written or another server holds it.
    ///
    /// Also builds the forwarders (`--forward`, `--config`): a bad one fails the start, named.
    pub fn open(config: Config) -> Result<Self, Error> {
        let policy = config.policy.as_deref().map(Policy::load).transpose()?;
        let mut forwards = config.forward.clone();
        if let Some(path) = &config.config {
            forwards.extend(config_file::load(path)?);
        }
        let denials = access::DenialLimits {
            per_second: config.max_denied_per_second,
            per_identity_per_second: config.max_denied_per_identity_per_second,
        };
        let web = web::WebListener::bind(&config.web)?;
        let metrics_listener = metrics::MetricsListener::bind(config.metrics_listen)?;
        let access = Arc::new(Access::new(policy, denials));
        let file_rules = redaction::file_rules(config.config.as_deref())?;
        let mut limits = config.limits;
        limits.redaction = Arc::new(config.redaction.build(&file_rules)?);
        let limits = Arc::new(limits);
        let log = store::engine::Options {
            max_pending_bytes: limits.max_pending_bytes,
            max_group_entries: limits.max_group_entries,
            read_connections: limits.read_connections,
            checkpointing: config.checkpoints.checkpointing(),
        };
        let store = match &config.store {
            config::StoreLocation::Sqlite => store::sqlite::open(
                &config.data_dir,
                &log,
                &store::sqlite::Options {
                    max_wal_bytes: limits.max_wal_bytes,
                },
            )?,
            config::StoreLocation::Postgres(settings) => {
                // Only the key lives in the data directory, when `--signing-key` is not given.
                let key_dir = match log.checkpointing.signing_key {
                    Some(_) => None,
                    None => {
                        create_private_dir(&config.data_dir)?;
                        Some(config.data_dir.as_path())
                    }
                };
                store::postgres::open(settings, key_dir, &log)?
            }
        };
        let forwarders = forward::prepare(
            &forwards,
            &store,
            &limits,
            config.connections.shutdown_grace,
        )?;
        let metrics = metrics_listener.map(|listener| {
            let metrics = metrics::Metrics::new(access.clone());
            store.observe(metrics.clone());
            (listener, metrics)
        });
        Ok(Self {
            limits,
            connections: config.connections,
            store,
            access,
            web,
            forwarders,
            metrics,
            retention: config.retention,
        })
    }

    /// What the web console listens on (`web http://127.0.0.1:8080`), if it is on.
    pub fn describe_web(&self) -> Option<String> {
        self.web.as_ref().map(web::WebListener::describe)
    }

    /// What the metrics listener listens on (`metrics http://127.0.0.1:9464`), if it is on.
    pub fn describe_metrics(&self) -> Option<String> {
        self.metrics
            .as_ref()
            .map(|(listener, _)| listener.describe())
    }

    /// Serves gRPC on every listener until `shutdown` completes; then stops accepting, ends
    /// subscriptions, finishes in-flight writes and closes the store.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Self {
            limits,
            connections,
            store,
            access,
            web,
            forwarders,
            metrics,
            retention,
        } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        // Health is known before the first connection is served, not shortly after.
        let writable = *store.writable().borrow();
        set_health(&health, serving_status(writable)).await;
        tokio::spawn(follow_store_health(store.writable(), health.clone()));

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(audit_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_error = |e| Error::Internal(format!("reflection: {e}"));
        let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;

        let streams_done = CancellationToken::new();
        let hub = Hub::new(
            store.clone(),
            limits.max_subscribers,
            limits.heartbeat_interval,
            limits.max_response_bytes,
            streams_done.clone(),
        );
        let stopping = CancellationToken::new();
        let console = web.map(|web| {
            let console =
                web::Console::new(store.clone(), hub.clone(), limits.clone(), access.clone());
            tokio::spawn(web.serve(console, connections.clone(), stopping.clone()))
        });
        let metrics = metrics.map(|(listener, metrics)| {
            metrics.watch(store.clone(), hub.clone(), forwarders.stats());
            tokio::spawn(listener.serve(metrics.clone(), stopping.clone()));
            metrics
        });
        let audit = AuditServiceServer::new(
            AuditService::new(store.clone(), hub, limits.clone(), access.clone())
                .with_forwarders(forwarders.list()),
        )
        .max_decoding_message_size(limits.max_message_bytes);

        tokio::spawn({
            let health = health.clone();
            let streams_done = streams_done.clone();
            let stopping = stopping.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: no new connections; finishing in-flight calls");
                set_health(&health, ServingStatus::NotServing).await;
                streams_done.cancel();
                stopping.cancel();
            }
        });

        let routes = tonic::service::Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(audit);
        let service = tower::ServiceBuilder::new()
            .layer_fn(|inner| metrics::Counted::new(inner, metrics.clone()))
            .map_response(codec_status::contract_status::<tonic::body::Body>)
            .service(guard::Guarded::new(
                routes,
                access,
                guard::RefusalRecorder::new(store.clone(), limits.clone()),
            ));
        let (listeners, socket_file) = listeners.into_parts();
        let shutdown_grace = connections.shutdown_grace;
        if retention.enabled() {
            let names = forwarders
                .stats()
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
            tokio::spawn(retention.run(store.clone(), owner, names, stopping.clone()));
        }
        let forwarders = forwarders.start();
        serve::serve(listeners, service, connections, stopping).await;
        if let Some(console) = console {
            let _ = console.await;
        }
        drop(socket_file);
        // Writes are over: forwarders deliver what is committed, then the store closes.
        forwarders.stop(shutdown_grace + FORWARDER_HARD_STOP).await;
        store.close().await;
        tracing::info!("server stopped");
        Ok(())
    }
}

/// Creates `dir` with mode 0700 if it is missing.
fn create_private_dir(dir: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::StoreFailed(format!("create {}: {e}", dir.display())))
}

/// Reports SERVING while the store is writable and NOT_SERVING while it is not (for good after
/// a storage failure; until the database is back for a shared store).
async fn follow_store_health(
    mut writable: tokio::sync::watch::Receiver<bool>,
    health: HealthReporter,
) {
    loop {
        let status = serving_status(*writable.borrow_and_update());
        set_health(&health, status).await;
        if writable.changed().await.is_err() {
            return;
        }
    }
}

fn serving_status(writable: bool) -> ServingStatus {
    if writable {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        health.set_service_status(service, status).await;
    }
}
