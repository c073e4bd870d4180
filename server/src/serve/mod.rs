//! Serving HTTP/2 on the bound listeners, with the limits that keep connections from exhausting
//! the server: a cap per listener, handshake and idle timeouts, keepalive pings, a bound on
//! concurrent streams, and a shutdown that waits for calls in progress at most a grace period.

/// Implements `AsyncWrite` for a transport wrapper whose writes go straight to its `io` field
/// (the wrappers here change only what is read).
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<IO> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }
        }
    };
}

mod accept;
mod authority;
mod connection;
mod deadline;
pub mod tls;

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpConnectInfo;

pub use accept::Listener;
use accept::{Accepted, accept_loop};
use connection::{ConnectionInfo, Stop};

use crate::config::ConnectionLimits;

/// Serves `service` on every listener until `stop` is cancelled; then closes the listeners,
/// asks every connection to finish (GOAWAY), waits at most `limits.shutdown_grace` for their
/// calls, and drops the connections still open.
pub async fn serve<S, B>(
    listeners: Vec<Listener>,
    service: S,
    limits: ConnectionLimits,
    stop: CancellationToken,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Default + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = Arc::new(limits);
    let connections = TaskTracker::new();
    let connection_stop = Stop {
        drain: CancellationToken::new(),
        close: CancellationToken::new(),
    };
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        let service = service.clone();
        let limits = limits.clone();
        let connections = connections.clone();
        let connection_stop = connection_stop.clone();
        accepting.spawn(accept_loop(
            listener,
            limits.max_connections,
            stop.clone(),
            move |listener, accepted, permit| {
                let start = start_connection(
                    listener,
                    accepted,
                    service.clone(),
                    limits.clone(),
                    connection_stop.clone(),
                );
                connections.spawn(async move {
                    start.await;
                    drop(permit);
                });
            },
        ));
    }
    // The accept loops end at `stop`, closing their listeners.
    while accepting.join_next().await.is_some() {}

    connection_stop.drain.cancel();
    connections.close();
    if tokio::time::timeout(limits.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "shutdown grace period over; closing the connections still open"
        );
        connection_stop.close.cancel();
        connections.wait().await;
    }
}

/// The future that secures (TLS), identifies (Unix credentials) and serves one connection.
fn start_connection<S, B>(
    listener: &Listener,
    accepted: Accepted,
    service: S,
    limits: Arc<ConnectionLimits>,
    stop: Stop,
) -> impl Future<Output = ()> + Send + 'static
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Default + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let accepted_at = Instant::now();
    let tls = match listener {
        Listener::Tls(_, acceptor) => Some(acceptor.clone()),
        _ => None,
    };
    async move {
        match accepted {
            Accepted::Tcp(stream) => {
                let tcp = TcpConnectInfo {
                    local_addr: stream.local_addr().ok(),
                    remote_addr: stream.peer_addr().ok(),
                };
                let Some(acceptor) = tls else {
                    let info = ConnectionInfo::Tcp(tcp);
                    return connection::serve(stream, info, service, limits, accepted_at, stop)
                        .await;
                };
                let deadline = accepted_at + limits.handshake_timeout;
                let handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream));
                let stream = tokio::select! {
                    handshake = handshake => match handshake {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%error, peer = ?tcp.remote_addr, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = ?tcp.remote_addr, "TLS handshake timed out");
                            return;
                        }
                    },
                    _ = stop.drain.cancelled() => return,
                };
                let leaf = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|leaf| leaf.as_ref());
                let tls = audit_identity::TlsPeerInfo::new(tcp.remote_addr, leaf);
                let info = ConnectionInfo::Tls(tcp, tls);
                connection::serve(stream, info, service, limits, accepted_at, stop).await
            }
            Accepted::Unix(stream) => {
                let connection = match audit_identity::unix::UnixConnection::new(stream) {
                    Ok(connection) => connection,
                    Err(error) => {
                        tracing::debug!(%error, "cannot read the peer of a unix connection");
                        return;
                    }
                };
                let info = ConnectionInfo::Unix(connection.peer().clone());
                let connection = authority::RepairAuthority::new(connection);
                connection::serve(connection, info, service, limits, accepted_at, stop).await
            }
        }
    }
}
