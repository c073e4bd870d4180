//! The console's HTTP listener: HTTP/1.1 and HTTP/2, plaintext or TLS (with optional client
//! certificates), a cap on open connections, a handshake timeout, and a graceful shutdown
//! bounded by the grace period. Each request carries the connection's facts in its extensions,
//! where `audit_identity::Peer` finds them, as on the gRPC listeners.

use std::path::Path;
use std::sync::Arc;

use audit_identity::TlsPeerInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpConnectInfo;
use tower::ServiceExt;

use crate::config::ConnectionLimits;
use crate::error::Error;
use crate::serve::tls::{ClientCertificates, server_acceptor};

/// The console's TLS acceptor. With `client_ca`, a browser may present a certificate from it
/// (its SPIFFE ID is then its identity); browsers without one are still served, so that they
/// can use a bearer token.
pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, Error> {
    let client_ca = client_ca.map(|ca| (ca, ClientCertificates::Optional));
    server_acceptor(
        "web console TLS",
        cert,
        key,
        client_ca,
        &[b"h2", b"http/1.1"],
    )
}

/// Serves `router` on `listener` until `stop`; then lets open requests finish (live tails end
/// with the hub) for at most the shutdown grace period.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, remote) = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "web console: accept failed");
                    // Out of descriptors and the like: pause rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Dropping it closes it at once; debug, so that a flood cannot flood the log.
            tracing::debug!("web console: connection refused: --max-connections reached");
            continue;
        };
        let tcp = TcpConnectInfo {
            local_addr: stream.local_addr().ok(),
            remote_addr: Some(remote),
        };
        let router = router.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = limits.handshake_timeout;
        let keepalive = (limits.keepalive_interval, limits.keepalive_timeout);
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // A client must send each request's headers within the handshake timeout, so
            // that silent connections cannot hold the connection slots.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(keepalive.0))
                .keep_alive_timeout(keepalive.1);
            match tls {
                None => {
                    let service = with_facts(router, tcp, None);
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    let _ = watcher.watch(connection).await;
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await;
                    let Ok(Ok(stream)) = handshake else {
                        tracing::debug!(peer = %remote, "web console: TLS handshake failed");
                        return;
                    };
                    let leaf = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| leaf.as_ref());
                    let facts = TlsPeerInfo::new(Some(remote), leaf);
                    let service = with_facts(router, tcp, Some(facts));
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    let _ = watcher.watch(connection).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("web console: shutdown grace period over; closing its connections");
    }
}

/// The console's routes with the connection's facts put in each request's extensions.
#[derive(Clone)]
struct WithFacts {
    router: Router,
    tcp: TcpConnectInfo,
    tls: Option<TlsPeerInfo>,
}

fn with_facts(router: Router, tcp: TcpConnectInfo, tls: Option<TlsPeerInfo>) -> WithFacts {
    WithFacts { router, tcp, tls }
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for WithFacts {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = tower::util::Oneshot<Router, http::Request<axum::body::Body>>;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(self.tcp.clone());
        if let Some(tls) = &self.tls {
            request.extensions_mut().insert(tls.clone());
        }
        self.router.clone().oneshot(request)
    }
}
