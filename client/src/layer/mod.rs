//! [`AuditLayer`]: a tower layer that records one audit entry per call of any tonic server.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use audit_client::{AuditLayer, Client, Recorder, RecorderConfig};
//!
//! let client = Client::connect_lazy("http://127.0.0.1:50051")?;
//! let recorder = Recorder::spawn(client, RecorderConfig::new("keystore"));
//! let layer = AuditLayer::new(recorder)
//!     .principal_from_header("x-user")
//!     .exclude("/grpc.health.v1.Health/*");
//! let server = tonic::transport::Server::builder().layer(layer);
//! // server.add_service(KeyStoreServer::new(store)).serve(addr).await?;
//! # Ok(()) }
//! ```
//!
//! Per call, the entry holds the full method, the caller (Unix peer credentials, or network
//! address and SPIFFE ID, from [`audit_identity::Peer`]; the principal from a pluggable
//! extractor; the user agent), the gRPC status code and message (from the headers of a
//! trailers-only response, else from the trailers at the end of the stream, so streaming and
//! failing calls are covered), the latency, and the `request_id`: the caller's `x-request-id`
//! metadata, or a generated UUIDv7, returned in the `x-request-id` response header either way.
//! A call that ends without a status (cancelled, connection closed) is recorded as
//! `CANCELLED`.
//!
//! Handlers add per-operation entries and describe the call through the [`AuditHandle`] in the
//! request extensions.
//!
//! # Capture policy
//!
//! What is recorded of each call, and whether it is fail-open or fail-closed, is decided by a
//! [`CapturePolicy`] ([`AuditLayer::capture_policy`]; by default every call at
//! [`Level::Metadata`] under the layer's [`FailureMode`]): ordered [`Rule`]s by method, caller
//! and status, first match wins. At [`Level::Request`] and [`Level::RequestResponse`] the
//! messages become JSON in `details.request` and `details.response`, decoded with the
//! descriptors given to [`AuditLayer::descriptors`] (base64 with its size when no descriptor
//! knows the method). Each is limited to [`CapturePolicy::max_message_bytes`]: a larger one is
//! recorded as `{"truncated": true, "message_bytes": N, "limit": L}`, never as cut JSON. For
//! streams, the first message of each direction is captured, and `details.request_messages` /
//! `details.response_messages` count them when there were not exactly one. Before the call runs only
//! its method and caller are known: it is refused while the trail is down when any rule that
//! may still decide it is fail-closed, and its messages are captured when any may record them;
//! the rule that decides is the first whose status condition also holds. Exclusions
//! ([`AuditLayer::exclude`]) come before every rule.
//!
//! A [`Redact`] hook ([`AuditLayer::redact`]) changes every entry (the call's and its
//! operations') before it is queued, for example to replace secrets in `details`.
//!
//! # Failure modes
//!
//! The layer's mode ([`AuditLayer::failure_mode`]) applies to calls whose rule sets none.
//!
//! - [`FailureMode::Open`] (the default): the call never waits for the audit trail. Its entry is
//!   queued and delivered in the background with retries; when the queue is full the entry is
//!   dropped, counted ([`RecorderStats::dropped`]) and logged.
//! - [`FailureMode::Closed`]: Vault's rule, an unaudited call must not succeed. Before running
//!   the handler, the layer refuses the call with `UNAVAILABLE` ("audit trail unavailable") if
//!   the recorder knows the audit service is unreachable or its queue is full, so the handler
//!   does not act while the trail is down (the refusal is itself queued as the call's entry).
//!   Otherwise the handler runs, and the call's final status (trailers, or a trailers-only
//!   response) is held until its entry is stored; if that does not happen within the deadline,
//!   the status becomes `UNAVAILABLE` instead. Messages a streaming handler already sent are not
//!   taken back, and an entry stored after its deadline still records what the handler did.

mod call;
mod capture;
mod handle;
pub mod policy;
mod recorder;
mod response;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use audit_format::Pattern;
use audit_identity::Peer;
use audit_proto::pb;
use http::HeaderValue;
use prost_reflect::DescriptorPool;
use tower::{Layer, Service};

use call::{CallRecord, Plan};
use capture::Capture;
use policy::CallFacts;
use response::REQUEST_ID;

pub use capture::CaptureBody;
pub use handle::AuditHandle;
pub use policy::{CapturePolicy, CapturePolicyError, Level, Rule};
pub use recorder::{Recorder, RecorderConfig, RecorderStats};
pub use response::{AuditBody, ResponseFuture};

/// What happens to a call whose entry cannot be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Serve it anyway; the entry is retried in the background, or dropped and counted when the
    /// queue is full.
    #[default]
    Open,
    /// Refuse it with `UNAVAILABLE` unless its entry is stored within `deadline`.
    Closed {
        /// How long a finished call may wait for its entry to be stored.
        deadline: Duration,
    },
}

/// Extracts the caller's principal from a request's head.
type PrincipalFn = dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync;

/// Changes an entry before it is queued: the hook for redaction rules, applied by the layer to
/// the call's entry and to every operation its handler records. Any
/// `Fn(&mut pb::AuditEntry) + Send + Sync` is one.
///
/// ```
/// use audit_client::{AuditLayer, Client, Recorder, RecorderConfig};
///
/// # async fn example() -> Result<(), audit_client::Error> {
/// let recorder = Recorder::spawn(Client::connect_lazy("http://127.0.0.1:50051")?, RecorderConfig::new("keystore"));
/// let layer = AuditLayer::new(recorder).redact(|entry: &mut audit_client::pb::AuditEntry| {
///     entry.labels.remove("password");
/// });
/// # Ok(()) }
/// ```
pub trait Redact: Send + Sync + 'static {
    /// Changes `entry` in place.
    fn redact(&self, entry: &mut pb::AuditEntry);
}

/// The server's redaction rules and keys, applied in the service before its entries leave it
/// (the same rules give the same `hmac-sha256:KEYID:...` values as the audit server's).
impl Redact for audit_redact::Redactor {
    fn redact(&self, entry: &mut pb::AuditEntry) {
        audit_redact::Redactor::redact(self, entry);
    }
}

impl<F> Redact for F
where
    F: Fn(&mut pb::AuditEntry) + Send + Sync + 'static,
{
    fn redact(&self, entry: &mut pb::AuditEntry) {
        self(entry)
    }
}

/// A shared [`Redact`] hook.
#[derive(Clone)]
pub(crate) struct RedactHook(pub(crate) Arc<dyn Redact>);

impl fmt::Debug for RedactHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedactHook")
    }
}

/// A tower layer that audits every call of a tonic server; see the [module docs](self).
#[derive(Clone)]
pub struct AuditLayer {
    recorder: Recorder,
    mode: FailureMode,
    excluded: Arc<[Pattern]>,
    principal: Option<Arc<PrincipalFn>>,
    policy: Arc<CapturePolicy>,
    descriptors: Option<DescriptorPool>,
    redactor: Option<RedactHook>,
}

impl AuditLayer {
    /// Audits calls through `recorder`, fail-open.
    pub fn new(recorder: Recorder) -> Self {
        AuditLayer {
            recorder,
            mode: FailureMode::Open,
            excluded: Arc::new([]),
            principal: None,
            policy: Arc::new(CapturePolicy::default()),
            descriptors: None,
            redactor: None,
        }
    }

    /// Sets the failure mode of calls whose capture rule sets none (fail-open by default).
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.mode = mode;
        self
    }

    /// Fail-closed (for calls whose capture rule sets no mode): a call is refused with
    /// `UNAVAILABLE` unless its entry is stored within `deadline`.
    pub fn fail_closed(self, deadline: Duration) -> Self {
        self.failure_mode(FailureMode::Closed { deadline })
    }

    /// Does not audit methods matching `pattern`, a [`Pattern`]: a full method
    /// (`/grpc.health.v1.Health/Check`) or a prefix ending in `*` (`/grpc.health.v1.Health/*`).
    /// Checked before the capture policy.
    ///
    /// # Panics
    ///
    /// If `pattern` has a `*` before its end (or is empty); use [`AuditLayer::exclude_pattern`]
    /// with a parsed [`Pattern`] for patterns that are not written in the code.
    pub fn exclude(self, pattern: &str) -> Self {
        let pattern =
            Pattern::parse(pattern).unwrap_or_else(|error| panic!("AuditLayer::exclude: {error}"));
        self.exclude_pattern(pattern)
    }

    /// Does not audit methods matching `pattern`.
    pub fn exclude_pattern(mut self, pattern: Pattern) -> Self {
        let mut excluded = self.excluded.to_vec();
        excluded.push(pattern);
        self.excluded = excluded.into();
        self
    }

    /// Decides what is recorded of each call; see [Capture policy](self#capture-policy).
    pub fn capture_policy(mut self, policy: CapturePolicy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// The message descriptors of the served methods (the host service's file descriptor set,
    /// `DescriptorPool::decode(FILE_DESCRIPTOR_SET)`), so that captured messages are recorded
    /// as JSON. Without them, captured messages are recorded as base64.
    pub fn descriptors(mut self, pool: DescriptorPool) -> Self {
        self.descriptors = Some(pool);
        self
    }

    /// Applies `hook` to every entry before it is queued (see [`Redact`]).
    pub fn redact(mut self, hook: impl Redact) -> Self {
        self.redactor = Some(RedactHook(Arc::new(hook)));
        self
    }

    /// Takes the caller's principal from the request head (metadata set by an authentication
    /// layer in front of this one, a verified token, ...). Unset by default; handlers can also
    /// set it with [`AuditHandle::annotate`].
    pub fn principal(
        mut self,
        extract: impl Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.principal = Some(Arc::new(extract));
        self
    }

    /// Takes the caller's principal from the metadata header `name`, as sent. Trust it only
    /// when something in front of the service (a proxy, an authentication layer) sets it.
    pub fn principal_from_header(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.principal(move |parts| {
            let value = parts.headers.get(name.as_str())?.to_str().ok()?;
            Some(value.to_string())
        })
    }

    /// The recorder entries go to.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }
}

impl fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer")
            .field("recorder", &self.recorder)
            .field("mode", &self.mode)
            .field("excluded", &self.excluded)
            .field("principal", &self.principal.is_some())
            .field("policy", &self.policy)
            .field("descriptors", &self.descriptors.is_some())
            .field("redactor", &self.redactor.is_some())
            .finish()
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service audited by an [`AuditLayer`].
#[derive(Debug, Clone)]
pub struct Audit<S> {
    inner: S,
    layer: AuditLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Audit<S>
where
    S: Service<http::Request<CaptureBody<ReqBody>>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<AuditBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        let method = request.uri().path();
        if layer.excluded.iter().any(|pattern| pattern.matches(method)) {
            return self.pass_through(request);
        }
        let method = method.to_string();
        let (mut parts, body) = request.into_parts();

        let peer = Peer::from_extensions(&parts.extensions).unwrap_or_else(|error| {
            tracing::debug!(%error, "caller's client certificate has no valid SPIFFE ID");
            Peer::without_certificate(&parts.extensions)
        });
        let principal = layer
            .principal
            .as_ref()
            .and_then(|extract| extract(&parts))
            .unwrap_or_default();
        let facts = CallFacts {
            method: &method,
            principal: &principal,
            spiffe_id: peer.spiffe_id().map(|id| id.as_str()),
            uid: match &peer {
                Peer::Unix(unix) => Some(unix.uid),
                _ => None,
            },
        };
        let plan = Plan {
            candidates: layer.policy.plan(&facts),
            policy: layer.policy.clone(),
            default: layer.mode,
        };
        let max_level = plan.max_level();
        if max_level == Level::None {
            return self.pass_through(http::Request::from_parts(parts, body));
        }

        let request_id = match parts.headers.get(REQUEST_ID) {
            Some(id) if is_valid_request_id(id) => id.clone(),
            _ => {
                let id = HeaderValue::try_from(uuid::Uuid::now_v7().to_string())
                    .expect("a UUID is a valid header value");
                // The handler sees the same id in its metadata as the audit trail does.
                parts.headers.insert(REQUEST_ID, id.clone());
                id
            }
        };
        let caller = pb::Caller {
            peer: peer.to_caller_peer(),
            principal,
            user_agent: parts
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|agent| agent.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            ..Default::default()
        };
        let capture = (max_level >= Level::Request).then(|| {
            Capture::new(
                layer.policy.message_limit(),
                max_level == Level::RequestResponse,
                layer
                    .descriptors
                    .as_ref()
                    .and_then(|pool| messages_of(pool, &method)),
            )
        });
        let template = pb::AuditEntry {
            source: layer.recorder.source().to_string(),
            method,
            request_id: request_id.to_str().unwrap_or_default().to_string(),
            time: Some(SystemTime::now().into()),
            caller: Some(caller),
            ..Default::default()
        };
        let handle = AuditHandle::new(template, layer.recorder.clone(), layer.redactor.clone());
        parts.extensions.insert(handle.clone());

        let may_fail_closed = plan.may_fail_closed();
        let mut call = CallRecord::new(handle, plan, capture.clone());
        if may_fail_closed && !layer.recorder.is_available() {
            // Vault's rule: do not act while the audit trail is down. The refusal is queued as
            // the call's entry, for when the trail comes back.
            call.finish_open(tonic::Code::Unavailable, "audit trail unavailable");
            return ResponseFuture::refused(Some(request_id));
        }
        let request = http::Request::from_parts(parts, CaptureBody::new(body, capture));
        ResponseFuture::new(self.inner.call(request), Some(call), Some(request_id))
    }
}

impl<S> Audit<S> {
    /// Serves a call without auditing it.
    fn pass_through<ReqBody, ResBody>(
        &mut self,
        request: http::Request<ReqBody>,
    ) -> ResponseFuture<S::Future, ResBody>
    where
        S: Service<http::Request<CaptureBody<ReqBody>>, Response = http::Response<ResBody>>,
    {
        let request = request.map(|body| CaptureBody::new(body, None));
        ResponseFuture::new(self.inner.call(request), None, None)
    }
}

/// The input and output descriptors of `method` (`/package.Service/Method`) in `pool`.
fn messages_of(
    pool: &DescriptorPool,
    method: &str,
) -> Option<(
    prost_reflect::MessageDescriptor,
    prost_reflect::MessageDescriptor,
)> {
    let (service, name) = method.strip_prefix('/')?.split_once('/')?;
    let method = pool
        .get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == name)?;
    Some((method.input(), method.output()))
}

/// A caller's `x-request-id` is kept when it is 1 to 128 visible ASCII characters; otherwise
/// the call gets a generated one.
fn is_valid_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "only allowed as the last character")]
    fn exclusions_refuse_inner_stars() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let client = crate::Client::connect_lazy("http://127.0.0.1:1").unwrap();
        let recorder = Recorder::spawn(client, RecorderConfig::new("test"));
        let _ = AuditLayer::new(recorder).exclude("/grpc.*/Check");
    }

    #[test]
    fn request_id_validation() {
        assert!(is_valid_request_id(&HeaderValue::from_static("req-42")));
        assert!(!is_valid_request_id(&HeaderValue::from_static("")));
        assert!(!is_valid_request_id(&HeaderValue::from_static("a b")));
        let long = "x".repeat(129);
        assert!(!is_valid_request_id(&HeaderValue::from_str(&long).unwrap()));
    }
}
