//! [`Client`]: typed calls to the audit service.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use audit_proto::pb;
use pb::audit_service_client::AuditServiceClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    Error,
    query::{EntryStream, QueryOptions, query_stream},
    subscribe::{RetryPolicy, Start, Subscription},
};

pub use tonic_health::pb::health_check_response::ServingStatus;

/// How long connecting to the server may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on idle connections, so a subscription notices a peer that vanished without
/// closing the connection (a partition, a killed machine) instead of waiting forever.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of the audit service. Cheap to clone; clones share one connection.
///
/// ```no_run
/// # async fn example() -> Result<(), audit_client::Error> {
/// use audit_client::{Client, EntryBuilder, pb::Outcome};
///
/// let client = Client::connect("http://127.0.0.1:50051").await?;
/// let receipt = client
///     .record(EntryBuilder::new("billing-api", "/billing.v1.Billing/Charge").outcome(Outcome::Success))
///     .await?;
/// println!("stored as #{}", receipt.sequence);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    audit: AuditServiceClient<Channel>,
    health: HealthClient<Channel>,
}

impl Client {
    /// Connects to the server at `uri`: `http://host:port` (`host:port` is taken as `http://`),
    /// or `unix:/path/to/socket` for the server's Unix socket. Fails when the address is invalid
    /// or the server cannot be reached within 5 seconds. The connection is re-established
    /// automatically after it drops.
    pub async fn connect(uri: impl Into<String>) -> Result<Self, Error> {
        let (uri, endpoint, socket) = endpoint(uri.into())?;
        let channel = match socket {
            Some(socket) => {
                endpoint
                    .connect_with_connector(unix_connector(socket))
                    .await
            }
            None => endpoint.connect().await,
        }
        .map_err(|error| Error::Connect { uri, error })?;
        Ok(Self::from_channel(channel))
    }

    /// Connects over TLS to `https://host:port` with `tls`: the CA that signs the server's
    /// certificate and, for mutual TLS, the client's own certificate and key.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), audit_client::Error> {
    /// use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    ///
    /// let tls = ClientTlsConfig::new()
    ///     .ca_certificate(Certificate::from_pem(std::fs::read("ca.pem").unwrap()))
    ///     .identity(Identity::from_pem(
    ///         std::fs::read("client.pem").unwrap(),
    ///         std::fs::read("client.key").unwrap(),
    ///     ));
    /// let client = audit_client::Client::connect_tls("https://audit.example:50052", tls).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_tls(uri: impl Into<String>, tls: ClientTlsConfig) -> Result<Self, Error> {
        let (uri, endpoint, _) = endpoint(uri.into())?;
        let channel = async { endpoint.tls_config(tls)?.connect().await }
            .await
            .map_err(|error| Error::Connect { uri, error })?;
        Ok(Self::from_channel(channel))
    }

    /// Like [`Client::connect`], but connects on the first call instead of now, so it only fails
    /// for an invalid address.
    pub fn connect_lazy(uri: impl Into<String>) -> Result<Self, Error> {
        let (_, endpoint, socket) = endpoint(uri.into())?;
        let channel = match socket {
            Some(socket) => endpoint.connect_with_connector_lazy(unix_connector(socket)),
            None => endpoint.connect_lazy(),
        };
        Ok(Self::from_channel(channel))
    }

    /// Uses an existing channel (for TLS, custom timeouts, or a Unix socket connector).
    pub fn from_channel(channel: Channel) -> Self {
        Client {
            audit: AuditServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
        }
    }

    /// The generated client, for calls this type does not wrap.
    pub fn raw(&self) -> AuditServiceClient<Channel> {
        self.audit.clone()
    }

    /// Records one entry. An answer means the entry is durable; the receipt holds its id and
    /// sequence. Invalid entries fail with `INVALID_ARGUMENT`, see [`Error::field_violations`].
    pub async fn record(
        &self,
        entry: impl Into<pb::AuditEntry>,
    ) -> Result<pb::RecordResponse, Error> {
        let request = pb::RecordRequest {
            entry: Some(entry.into()),
        };
        Ok(self.audit.clone().record(request).await?.into_inner())
    }

    /// Records the entries of one call atomically: all are stored, or none. They share
    /// `request_id` (the server generates one when it is empty). The receipt lists ids and
    /// sequences in request order.
    pub async fn record_batch<E: Into<pb::AuditEntry>>(
        &self,
        request_id: impl Into<String>,
        entries: impl IntoIterator<Item = E>,
    ) -> Result<pb::RecordBatchResponse, Error> {
        let request = pb::RecordBatchRequest {
            request_id: request_id.into(),
            entries: entries.into_iter().map(Into::into).collect(),
        };
        Ok(self.audit.clone().record_batch(request).await?.into_inner())
    }

    /// Subscribes to entries matching `filter` from `start`, resuming after drops with the
    /// default [`RetryPolicy`]. See [`Subscription`].
    pub fn subscribe(&self, filter: pb::Filter, start: Start) -> Subscription {
        self.subscribe_with(filter, start, RetryPolicy::default())
    }

    /// Subscribes to entries matching `filter` from `start`, resuming after drops as `policy`
    /// says. See [`Subscription`].
    pub fn subscribe_with(
        &self,
        filter: pb::Filter,
        start: Start,
        policy: RetryPolicy,
    ) -> Subscription {
        Subscription::new(self.audit.clone(), filter, start, policy)
    }

    /// Queries one page. Most callers want [`Client::query`], which follows page tokens.
    pub async fn query_page(&self, request: pb::QueryRequest) -> Result<pb::QueryResponse, Error> {
        Ok(self.audit.clone().query(request).await?.into_inner())
    }

    /// Queries entries matching `filter`, following page tokens until the last page or
    /// `options`' limit. The stream ends after its first error.
    pub fn query(&self, filter: pb::Filter, options: QueryOptions) -> EntryStream {
        query_stream(self.audit.clone(), filter, options)
    }

    /// The newest checkpoint (`size` 0) or the one of `size` entries, with the public key the
    /// server signs with. Use [`crate::verify`] to check it.
    pub async fn checkpoint_response(&self, size: u64) -> Result<pb::GetCheckpointResponse, Error> {
        let request = pb::GetCheckpointRequest { size };
        Ok(self
            .audit
            .clone()
            .get_checkpoint(request)
            .await?
            .into_inner())
    }

    /// Up to `page_size` stored checkpoints with an index above `after_index`, oldest first.
    pub async fn checkpoints(
        &self,
        after_index: u64,
        page_size: u32,
    ) -> Result<Vec<pb::Checkpoint>, Error> {
        let request = pb::ListCheckpointsRequest {
            after_index,
            page_size,
        };
        Ok(self
            .audit
            .clone()
            .list_checkpoints(request)
            .await?
            .into_inner()
            .checkpoints)
    }

    /// The Merkle audit path of entry `sequence` in the tree of `tree_size` entries (0: the
    /// newest checkpoint's size). See [`crate::verify::check_inclusion`].
    pub async fn inclusion_proof(
        &self,
        sequence: u64,
        tree_size: u64,
    ) -> Result<pb::GetInclusionProofResponse, Error> {
        let request = pb::GetInclusionProofRequest {
            sequence,
            tree_size,
        };
        Ok(self
            .audit
            .clone()
            .get_inclusion_proof(request)
            .await?
            .into_inner())
    }

    /// The proof that the log of `first_size` entries is a prefix of the log of `second_size`
    /// (0: the newest checkpoint's size). See [`crate::verify::check_consistency`].
    pub async fn consistency_proof(
        &self,
        first_size: u64,
        second_size: u64,
    ) -> Result<pb::GetConsistencyProofResponse, Error> {
        let request = pb::GetConsistencyProofRequest {
            first_size,
            second_size,
        };
        Ok(self
            .audit
            .clone()
            .get_consistency_proof(request)
            .await?
            .into_inner())
    }

    /// The hash that redaction stores for `value` (`hmac-sha256:KEYID:HEX`), under the key
    /// `key_id` (empty: the current key), to search for a known value. Needs the `admin`
    /// permission; the server records who asked, never the value.
    pub async fn hash_value(
        &self,
        value: &str,
        key_id: &str,
    ) -> Result<pb::HashValueResponse, Error> {
        let request = pb::HashValueRequest {
            value: value.to_string(),
            key_id: key_id.to_string(),
        };
        Ok(self.audit.clone().hash_value(request).await?.into_inner())
    }

    /// The state of each forwarder of the server, in configuration order: position, lag,
    /// state and last error (needs the Read permission).
    pub async fn forwarders(&self) -> Result<Vec<pb::ForwarderStatus>, Error> {
        let request = pb::ListForwardersRequest {};
        let response = self.audit.clone().list_forwarders(request).await?;
        Ok(response.into_inner().forwarders)
    }

    /// The health of `service` (`""` for the whole server, [`audit_proto::SERVICE_NAME`] for the
    /// audit service), as reported by `grpc.health.v1.Health/Check`. A service the server does
    /// not know is [`ServingStatus::ServiceUnknown`].
    pub async fn health(&self, service: &str) -> Result<ServingStatus, Error> {
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        match self.health.clone().check(request).await {
            Ok(response) => Ok(ServingStatus::try_from(response.into_inner().status)
                .unwrap_or(ServingStatus::Unknown)),
            Err(status) if status.code() == tonic::Code::NotFound => {
                Ok(ServingStatus::ServiceUnknown)
            }
            Err(status) => Err(status.into()),
        }
    }
}

/// Parses `uri` (adding `http://` when it has no scheme) into an endpoint with our timeouts.
/// The endpoint for `uri`, and the socket path for a `unix:` URI.
fn endpoint(uri: String) -> Result<(String, Endpoint, Option<PathBuf>), Error> {
    let socket = uri
        .strip_prefix("unix://")
        .or_else(|| uri.strip_prefix("unix:"))
        .map(PathBuf::from);
    let http_uri = if socket.is_some() {
        // The authority is unused: the connector dials the socket.
        "http://localhost".to_string()
    } else if uri.contains("://") {
        uri.clone()
    } else {
        format!("http://{uri}")
    };
    let endpoint = Endpoint::from_shared(http_uri.clone())
        .map_err(|error| Error::InvalidUri {
            uri: uri.clone(),
            error,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let shown = if socket.is_some() { uri } else { http_uri };
    Ok((shown, endpoint, socket))
}

/// Dials the Unix socket at `path` for every connection of a channel.
fn unix_connector(
    path: PathBuf,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<UnixStream>,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TokioIo<UnixStream>>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: http::Uri| {
        let path = path.clone();
        async move { UnixStream::connect(path).await.map(TokioIo::new) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_missing_scheme() {
        let (uri, _, socket) = endpoint("127.0.0.1:50051".into()).unwrap();
        assert_eq!((uri.as_str(), socket), ("http://127.0.0.1:50051", None));
        let (uri, _, _) = endpoint("https://audit.example:443".into()).unwrap();
        assert_eq!(uri, "https://audit.example:443");
    }

    #[test]
    fn unix_uris_name_a_socket() {
        for uri in ["unix:/run/audit.sock", "unix:///run/audit.sock"] {
            let (shown, _, socket) = endpoint(uri.into()).unwrap();
            assert_eq!(shown, uri);
            assert_eq!(socket, Some(PathBuf::from("/run/audit.sock")));
        }
    }

    #[test]
    fn refuses_invalid_uri() {
        let err = Client::connect_lazy("http://exa mple").unwrap_err();
        assert!(matches!(err, Error::InvalidUri { .. }), "{err}");
    }

    #[tokio::test]
    async fn unreachable_server_is_a_connect_error() {
        // Port 1 on localhost: nothing listens there, so the connection is refused at once.
        let err = Client::connect("http://127.0.0.1:1").await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        assert!(err.is_retryable());
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    }
}
