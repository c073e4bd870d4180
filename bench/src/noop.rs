//! The transport ceiling: a tonic server for the same service and messages whose handlers answer
//! at once. It runs as its own process (`audit-bench --serve-noop`), like the real server, so
//! both are measured the same way.
//!
//! It routes by hand, as generated code does, rather than implementing the generated trait, so
//! that new RPCs in the proto need no change here (they answer UNIMPLEMENTED).

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use audit_proto::pb::{RecordBatchRequest, RecordBatchResponse, RecordRequest, RecordResponse};
use futures::future::{BoxFuture, Ready, ready};
use tokio::signal::unix::{SignalKind, signal};
use tonic::body::Body;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// The real server's request size limit.
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Answers Record and RecordBatch at once (ids echoed, sequences counted); every other method
/// is UNIMPLEMENTED.
#[derive(Clone, Default)]
struct Noop {
    next: Arc<AtomicU64>,
}

impl NamedService for Noop {
    const NAME: &'static str = audit_proto::SERVICE_NAME;
}

impl UnaryService<RecordRequest> for Noop {
    type Response = RecordResponse;
    type Future = Ready<Result<Response<RecordResponse>, Status>>;

    fn call(&mut self, request: Request<RecordRequest>) -> Self::Future {
        let id = request.into_inner().entry.map(|e| e.id).unwrap_or_default();
        ready(Ok(Response::new(RecordResponse {
            id,
            sequence: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            ..Default::default()
        })))
    }
}

impl UnaryService<RecordBatchRequest> for Noop {
    type Response = RecordBatchResponse;
    type Future = Ready<Result<Response<RecordBatchResponse>, Status>>;

    fn call(&mut self, request: Request<RecordBatchRequest>) -> Self::Future {
        let batch = request.into_inner();
        let count = batch.entries.len() as u64;
        let first = self.next.fetch_add(count, Ordering::Relaxed) + 1;
        ready(Ok(Response::new(RecordBatchResponse {
            request_id: batch.request_id,
            ids: batch.entries.into_iter().map(|e| e.id).collect(),
            sequences: (first..first + count).collect(),
            ..Default::default()
        })))
    }
}

impl tower::Service<http::Request<Body>> for Noop {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let noop = self.clone();
        match request.uri().path() {
            "/audit.v1.AuditService/Record" => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::<RecordResponse, RecordRequest>::default())
                    .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), None);
                Ok(grpc.unary(noop, request).await)
            }),
            "/audit.v1.AuditService/RecordBatch" => Box::pin(async move {
                let mut grpc =
                    Grpc::new(ProstCodec::<RecordBatchResponse, RecordBatchRequest>::default())
                        .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), None);
                Ok(grpc.unary(noop, request).await)
            }),
            _ => Box::pin(async move {
                Ok(Status::unimplemented("not part of the no-op baseline").into_http())
            }),
        }
    }
}

/// Serves the no-op service on a free loopback port until SIGTERM, with the transport settings
/// of the real server (TCP_NODELAY, TCP and HTTP/2 keepalive, message size limit) and the same
/// runtime (tokio's multi-threaded default, one worker per CPU).
pub fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "noop-server listening on {address}")?;
            stdout.flush()?;
        }
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(Noop::default())
            .serve_with_incoming_shutdown(incoming, async move {
                terminate.recv().await;
            })
            .await?;
        Ok(())
    })
}
