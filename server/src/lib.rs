//! The audit service: validation, durable storage with group commit, queries and live
//! subscriptions, served over gRPC with health checks and reflection.
//!
//! [`serve`] runs the whole server on a bound listener until a shutdown signal; the
//! `audit-server` binary and the end-to-end tests both call it.

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod hub;
mod message_limit;
mod page_token;
pub mod service;
pub mod store;
pub mod validate;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use audit_proto::pb::audit_service_server::AuditServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use config::{Config, Limits};
pub use error::Error;
use hub::Hub;
use service::AuditService;
use store::{SqliteStore, Store};

/// Service names whose health follows the store: the server as a whole and the audit service.
const HEALTH_SERVICES: [&str; 2] = ["", audit_proto::SERVICE_NAME];

/// Opens the store in `config.data_dir` and serves gRPC on `listener` until `shutdown`
/// completes; then stops accepting, ends subscriptions, finishes in-flight writes and returns.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    AuditServer::open(config)?.serve(listener, shutdown).await
}

/// A server whose store is open, ready to serve.
pub struct AuditServer {
    limits: Arc<Limits>,
    store: SqliteStore,
}

impl AuditServer {
    /// Opens the store in `config.data_dir`: fails at once if it cannot be written or another
    /// server holds it.
    pub fn open(config: Config) -> Result<Self, Error> {
        let limits = Arc::new(config.limits);
        let store = SqliteStore::open(
            &config.data_dir,
            &store::sqlite::Options {
                max_pending_bytes: limits.max_pending_bytes,
                max_group_entries: limits.max_group_entries,
                read_connections: limits.read_connections,
            },
        )?;
        Ok(Self { limits, store })
    }

    /// Serves gRPC on `listener` until `shutdown` completes; then stops accepting, ends
    /// subscriptions, finishes in-flight writes and closes the store.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let Self { limits, store } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
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
        let audit = AuditServiceServer::new(AuditService::new(store.clone(), hub, limits.clone()))
            .max_decoding_message_size(limits.max_message_bytes);

        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let stopping = {
            let health = health.clone();
            let streams_done = streams_done.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: no new connections; finishing in-flight calls");
                set_health(&health, ServingStatus::NotServing).await;
                streams_done.cancel();
            }
        };
        let served = Server::builder()
            // Pings keep idle subscriptions alive through proxies and detect dead peers.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .layer(tower::util::MapResponseLayer::new(
                message_limit::over_limit_is_resource_exhausted::<tonic::body::Body>,
            ))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(audit)
            .serve_with_incoming_shutdown(incoming, stopping)
            .await;
        streams_done.cancel();
        store.close().await;
        tracing::info!("server stopped");
        served.map_err(|e| Error::Internal(format!("transport: {e}")))
    }
}

/// Reports SERVING while the store is writable and NOT_SERVING for good once it fails.
async fn follow_store_health(
    mut writable: tokio::sync::watch::Receiver<bool>,
    health: HealthReporter,
) {
    loop {
        let status = if *writable.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_health(&health, status).await;
        if writable.changed().await.is_err() {
            return;
        }
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        health.set_service_status(service, status).await;
    }
}
