//! The policy in front of the services served beside the audit service: health checks need the
//! `health` permission (always granted on the Unix socket and plaintext loopback) and server
//! reflection needs `read`. Refusals are answered and recorded exactly as the audit service's
//! own. The audit service authorizes each of its methods itself.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::metadata::MetadataMap;
use uuid::Uuid;

use crate::access::{Access, Refusal};
use crate::config::Limits;
use crate::policy::Permission;
use crate::store::Store;
use crate::validate::{self, Context as EntryContext};

/// What a call to `path` needs, for the services this guard covers; `None` for the others.
fn permission_for(path: &str) -> Option<Permission> {
    if path.starts_with("/grpc.health.v1.Health/") {
        Some(Permission::Health)
    } else if path.starts_with("/grpc.reflection.") {
        Some(Permission::Read)
    } else {
        None
    }
}

/// Records refusals as DENIED entries (those within the budget, which [`Access`] decides).
#[derive(Clone)]
pub struct RefusalRecorder<S> {
    store: S,
    limits: Arc<Limits>,
}

impl<S: Store> RefusalRecorder<S> {
    /// Records into `store`.
    pub fn new(store: S, limits: Arc<Limits>) -> Self {
        Self { store, limits }
    }

    /// Records `refusal`'s entry, if it has one; a failure is logged, never returned, since the
    /// caller is refused either way.
    pub async fn record(&self, refusal: &Refusal) {
        let Some(entry) = refusal.entry.clone() else {
            return;
        };
        let recorder = refusal.peer.to_recorder();
        let context = EntryContext {
            received_time: validate::now(),
            recorder: recorder.peer.is_some().then_some(recorder),
        };
        // The server's own entry: cut to the limits rather than refused by them.
        let mut new = validate::own_entry(entry, &context, &self.limits);
        new.entry.request_id = Uuid::now_v7().hyphenated().to_string();
        if let Err(error) = self.store.append(vec![new]).await {
            tracing::error!(%error, "could not record a refused call");
        }
    }
}

/// A service whose health and reflection calls pass the policy first.
#[derive(Clone)]
pub struct Guarded<T, S> {
    inner: T,
    access: Arc<Access>,
    refusals: RefusalRecorder<S>,
}

impl<T, S> Guarded<T, S> {
    /// Guards `inner` with `access`, recording refusals with `refusals`.
    pub fn new(inner: T, access: Arc<Access>, refusals: RefusalRecorder<S>) -> Self {
        Self {
            inner,
            access,
            refusals,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<T, S, B> tower::Service<Request<B>> for Guarded<T, S>
where
    T: tower::Service<Request<B>, Response = Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    T::Future: Send + 'static,
    S: Store + Clone + Send + Sync + 'static,
    B: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is the inner service's, awaited per call on a clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        use tower::ServiceExt;
        let inner = self.inner.clone();
        let Some(permission) = permission_for(request.uri().path()) else {
            return Box::pin(inner.oneshot(request));
        };
        let probe =
            tonic::Request::from_parts(MetadataMap::new(), request.extensions().clone(), ());
        let refusal = match self.access.check(&probe, request.uri().path(), permission) {
            Ok(_) => return Box::pin(inner.oneshot(request)),
            Err(refusal) => refusal,
        };
        let refusals = self.refusals.clone();
        Box::pin(async move {
            refusals.record(&refusal).await;
            Ok(refusal.status.into_http())
        })
    }
}
