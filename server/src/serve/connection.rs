//! One accepted connection, served over HTTP/2 until it ends, goes idle, misses its handshake
//! deadline, or the server drains or closes it.
//!
//! Invariants:
//! - a connection that has not completed its TLS handshake and sent the HTTP/2 preface within
//!   the handshake timeout is dropped (hyper alone would wait for the preface forever, even
//!   through a graceful shutdown);
//! - a connection with no stream open for the idle timeout gets a GOAWAY and then ends;
//! - on drain, a connection finishes its open streams after a GOAWAY; on close, it is dropped.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use audit_identity::{TlsPeerInfo, UnixPeerInfo};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpConnectInfo;

use crate::config::ConnectionLimits;

/// Length of the HTTP/2 client connection preface (RFC 9113, section 3.4).
const PREFACE_BYTES: u64 = 24;

/// What the server knows of a connection from its transport, put in every request's extensions
/// (where `audit_identity::Peer` finds it).
#[derive(Debug, Clone)]
pub enum ConnectionInfo {
    /// Plaintext TCP.
    Tcp(TcpConnectInfo),
    /// TLS over TCP.
    Tls(TcpConnectInfo, TlsPeerInfo),
    /// A Unix socket peer.
    Unix(UnixPeerInfo),
}

impl ConnectionInfo {
    fn insert_into(&self, extensions: &mut http::Extensions) {
        match self {
            ConnectionInfo::Tcp(tcp) => {
                extensions.insert(tcp.clone());
            }
            ConnectionInfo::Tls(tcp, tls) => {
                extensions.insert(tcp.clone());
                extensions.insert(tls.clone());
            }
            ConnectionInfo::Unix(unix) => {
                extensions.insert(unix.clone());
            }
        }
    }
}

/// How the server asks its connections to stop.
#[derive(Clone)]
pub struct Stop {
    /// Send GOAWAY and finish open streams.
    pub drain: CancellationToken,
    /// Drop the connection now.
    pub close: CancellationToken,
}

/// Serves `io` until it ends. `accepted` is when the connection was accepted: the handshake
/// deadline counts from then, TLS handshake included.
pub async fn serve<IO, S, B>(
    io: IO,
    info: ConnectionInfo,
    service: S,
    limits: Arc<ConnectionLimits>,
    accepted: Instant,
    stop: Stop,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Default + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::new(accepted));
    let io = Counted {
        io,
        activity: activity.clone(),
    };
    let service = ConnectionService {
        inner: service,
        info: Arc::new(info),
        activity: activity.clone(),
    };
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.keepalive_interval))
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_concurrent_streams(limits.max_concurrent_streams);
    let connection = http2.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);

    let handshake_deadline = accepted + limits.handshake_timeout;
    let mut draining = false;
    loop {
        let handshaken = activity.handshaken();
        let wake_at = if !handshaken {
            handshake_deadline
        } else {
            activity.idle_deadline(limits.idle_timeout)
        };
        tokio::select! {
            served = &mut connection => {
                if let Err(error) = served {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake_at), if !draining => {
                if !activity.handshaken() {
                    tracing::debug!("closing a connection that did not complete its handshake in time");
                    return;
                }
                if activity.idle_for(limits.idle_timeout) {
                    tracing::debug!("closing an idle connection");
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
            _ = activity.changed.notified(), if !draining => {}
            _ = stop.drain.cancelled(), if !draining => {
                if !activity.handshaken() {
                    return;
                }
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = stop.close.cancelled() => return,
        }
    }
}

// === impl Activity ===

/// What a connection has done: bytes received (to tell when the handshake is complete) and open
/// streams (to tell when it is idle).
struct Activity {
    bytes_read: AtomicU64,
    open_streams: AtomicUsize,
    /// When the last stream closed (or the connection was accepted).
    idle_since: Mutex<Instant>,
    /// Wakes the connection's loop when a stream closes or the handshake completes.
    changed: Notify,
}

impl Activity {
    fn new(accepted: Instant) -> Self {
        Self {
            bytes_read: AtomicU64::new(0),
            open_streams: AtomicUsize::new(0),
            idle_since: Mutex::new(accepted),
            changed: Notify::new(),
        }
    }

    fn handshaken(&self) -> bool {
        self.bytes_read.load(Ordering::Relaxed) >= PREFACE_BYTES
    }

    fn read(&self, bytes: usize) {
        let before = self.bytes_read.fetch_add(bytes as u64, Ordering::Relaxed);
        if before < PREFACE_BYTES && before + bytes as u64 >= PREFACE_BYTES {
            self.changed.notify_one();
        }
    }

    fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        self.open_streams.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    fn stream_closed(&self) {
        if self.open_streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.idle_since.lock().expect("idle lock") = Instant::now();
            self.changed.notify_one();
        }
    }

    /// When the connection becomes idle if nothing happens until then.
    fn idle_deadline(&self, idle_timeout: std::time::Duration) -> Instant {
        let since = *self.idle_since.lock().expect("idle lock");
        let deadline = since + idle_timeout;
        if self.open_streams.load(Ordering::Acquire) > 0 {
            // Checked again when the last stream closes.
            Instant::now() + idle_timeout
        } else {
            deadline
        }
    }

    fn idle_for(&self, idle_timeout: std::time::Duration) -> bool {
        self.open_streams.load(Ordering::Acquire) == 0
            && self.idle_since.lock().expect("idle lock").elapsed() >= idle_timeout
    }
}

/// Counts a stream as open until dropped, with the response body or the call's future.
struct StreamGuard(Arc<Activity>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.stream_closed();
    }
}

// === impl ConnectionService ===

/// The server's service for one connection: adds the connection's facts to each request and
/// counts its open streams.
#[derive(Clone)]
struct ConnectionService<S> {
    inner: S,
    info: Arc<ConnectionInfo>,
    activity: Arc<Activity>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnectionService<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Default + Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        self.info.insert_into(request.extensions_mut());
        let stream = self.activity.stream_opened();
        let service = self.inner.clone();
        let deadline = super::deadline::grpc_timeout(request.headers());
        Box::pin(async move {
            use tower::ServiceExt;
            let response = super::deadline::within(deadline, service.oneshot(request)).await?;
            Ok(response.map(|body| TrackedBody {
                body,
                _stream: stream,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its stream counted as open until it is dropped.
    pub struct TrackedBody<B> {
        #[pin]
        body: B,
        _stream: StreamGuard,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// === impl Counted ===

/// A transport that reports the bytes it reads to the connection's activity.
struct Counted<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.activity.read(read);
        }
        polled
    }
}

write_through!(Counted);
