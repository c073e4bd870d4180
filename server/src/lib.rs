//! The audit service: validation, durable storage with group commit, queries and live
//! subscriptions, served over gRPC with health checks and reflection.
//!
//! [`AuditServer::open`] opens the store and [`AuditServer::serve`] serves it on bound
//! [`Listeners`] until a shutdown signal; the `audit-server` binary is a thin wrapper around both.

#![forbid(unsafe_code)]

pub mod access;
pub mod config;
pub mod error;
pub mod evidence;
pub mod hub;
pub mod listen;
mod message_limit;
mod page_token;
pub mod policy;
pub mod service;
pub mod store;
pub mod validate;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use audit_proto::pb::audit_service_server::AuditServiceServer;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use access::Access;
pub use config::{Config, Limits};
pub use error::Error;
use hub::Hub;
pub use listen::Listeners;
use policy::Policy;
use service::AuditService;
use store::{SqliteStore, Store};

/// Service names whose health follows the store: the server as a whole and the audit service.
const HEALTH_SERVICES: [&str; 2] = ["", audit_proto::SERVICE_NAME];

/// A server whose store is open, ready to serve.
pub struct AuditServer {
    limits: Arc<Limits>,
    store: SqliteStore,
    access: Arc<Access>,
}

impl AuditServer {
    /// Loads the policy and opens the store in `config.data_dir`: fails at once if the policy
    /// is invalid, or the store cannot be written or another server holds it.
    pub fn open(config: Config) -> Result<Self, Error> {
        let policy = config.policy.as_deref().map(Policy::load).transpose()?;
        let access = Arc::new(Access::new(policy, config.max_denied_per_second));
        let limits = Arc::new(config.limits);
        let store = SqliteStore::open(
            &config.data_dir,
            &store::sqlite::Options {
                max_pending_bytes: limits.max_pending_bytes,
                max_group_entries: limits.max_group_entries,
                read_connections: limits.read_connections,
                checkpointing: config.checkpoints.checkpointing(),
                max_wal_bytes: limits.max_wal_bytes,
            },
        )?;
        Ok(Self {
            limits,
            store,
            access,
        })
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
            store,
            access,
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
        let audit = AuditServiceServer::new(AuditService::new(
            store.clone(),
            hub,
            limits.clone(),
            access,
        ))
        .max_decoding_message_size(limits.max_message_bytes);

        let stopping = CancellationToken::new();
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

        // One server per listener, all with the same services.
        macro_rules! serve_on {
            ($builder:expr, $incoming:expr) => {
                $builder
                    // Pings keep idle subscriptions alive through proxies and detect dead peers.
                    .http2_keepalive_interval(Some(Duration::from_secs(30)))
                    .http2_keepalive_timeout(Some(Duration::from_secs(20)))
                    .layer(tower::util::MapResponseLayer::new(
                        message_limit::over_limit_is_resource_exhausted::<tonic::body::Body>,
                    ))
                    .add_service(health_service.clone())
                    .add_service(reflection_v1.clone())
                    .add_service(reflection_v1alpha.clone())
                    .add_service(audit.clone())
                    .serve_with_incoming_shutdown($incoming, stopping.clone().cancelled_owned())
            };
        }
        let tcp_incoming = |listener| {
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60)))
        };
        let mut servers = tokio::task::JoinSet::new();
        let Listeners { tcp, tls, unix } = listeners;
        if let Some(listener) = tcp {
            servers.spawn(serve_on!(Server::builder(), tcp_incoming(listener)));
        }
        if let Some((listener, tls)) = tls {
            let builder = Server::builder()
                .tls_config(tls)
                .map_err(|e| Error::Config(format!("TLS: {e}")))?;
            servers.spawn(serve_on!(builder, tcp_incoming(listener)));
        }
        let socket_file = match unix {
            Some(socket) => {
                let incoming = audit_identity::unix::incoming(socket.listener);
                servers.spawn(serve_on!(Server::builder(), incoming));
                Some(socket.file)
            }
            None => None,
        };
        let mut failure = None;
        while let Some(served) = servers.join_next().await {
            match served {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(Error::Internal(format!("transport: {e}"))),
                Err(e) => failure = Some(Error::Internal(format!("server task: {e}"))),
            }
            // One listener failing stops the others too.
            stopping.cancel();
            streams_done.cancel();
        }
        drop(socket_file);
        store.close().await;
        tracing::info!("server stopped");
        failure.map_or(Ok(()), Err)
    }
}

/// Reports SERVING while the store is writable and NOT_SERVING for good once it fails.
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
