//! `AuditLayer` end to end: a real host tonic server (the example key store) in this process,
//! wrapped with the layer, recording into a real audit server.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use audit_client::pb::{self, Outcome};
use audit_client::{AuditLayer, Client, Recorder, RecorderConfig};
use audit_example_keystore::{audit_layer, pb as ks, server};
use audit_tests::{PATIENCE, TestServer, all_entries, query};
use hyper_util::rt::TokioIo;
use ks::key_store_client::KeyStoreClient;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// A recorder that retries quickly, so the tests do not wait for the default backoff.
fn recorder_config() -> RecorderConfig {
    RecorderConfig::new("keystore")
        .attempt_timeout(Duration::from_millis(500))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
}

fn recorder(audit: &Client) -> Recorder {
    Recorder::spawn(audit.clone(), recorder_config())
}

/// The example key store served on `127.0.0.1:0` with `layer`; stops when dropped.
struct Host {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Host {
    async fn start(layer: AuditLayer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = server(layer).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));
        Host { addr, _stop: stop }
    }

    async fn keystore(&self) -> KeyStoreClient<Channel> {
        KeyStoreClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect to the key store")
    }
}

/// A request with optional `x-user` and `x-request-id` metadata.
fn request<T>(message: T, user: Option<&str>, request_id: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(user) = user {
        request
            .metadata_mut()
            .insert("x-user", user.parse().unwrap());
    }
    if let Some(id) = request_id {
        request
            .metadata_mut()
            .insert("x-request-id", id.parse().unwrap());
    }
    request
}

fn create(name: &str) -> tonic::Request<ks::CreateKeyRequest> {
    request(ks::CreateKeyRequest { name: name.into() }, None, None)
}

fn delete(name: &str) -> tonic::Request<ks::DeleteKeyRequest> {
    request(ks::DeleteKeyRequest { name: name.into() }, None, None)
}

/// Waits until everything queued so far has been delivered.
async fn flush(recorder: &Recorder) {
    tokio::time::timeout(PATIENCE, recorder.flush())
        .await
        .expect("the recorder delivered its queue in time");
}

fn response_request_id<T>(response: &tonic::Response<T>) -> String {
    response
        .metadata()
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .unwrap()
        .to_string()
}

fn status_request_id(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .unwrap()
        .to_string()
}

/// Every entry, in the order of the calls: the calls of one drain are delivered concurrently,
/// so their sequences may not follow the calls' order, but their `time` (when the call began)
/// does.
async fn entries_by_time(audit: &Client) -> Vec<pb::AuditEntry> {
    let mut entries = all_entries(audit).await;
    entries.sort_by_key(|e| e.time.map(|t| (t.seconds, t.nanos)));
    entries
}

fn network_address(entry: &pb::AuditEntry) -> String {
    match &entry.caller.as_ref().expect("caller").peer {
        Some(pb::caller::Peer::Network(peer)) => peer.address.clone(),
        other => panic!("expected a network peer, got {other:?}"),
    }
}

#[tokio::test]
async fn unary_calls_record_one_entry_each_with_their_status() {
    let audit_server = TestServer::start().await;
    let audit = audit_server.client().await;
    let recorder = recorder(&audit);
    let host = Host::start(audit_layer(recorder.clone())).await;
    let mut keystore = host.keystore().await;

    keystore.create_key(create("alpha")).await.unwrap();
    let missing = keystore.delete_key(delete("nope")).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let exists = keystore.create_key(create("alpha")).await.unwrap_err();
    assert_eq!(exists.code(), Code::AlreadyExists);
    let invalid = keystore.create_key(create("Bad Name")).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    flush(&recorder).await;

    let entries = entries_by_time(&audit).await;
    let summary: Vec<(&str, i32, &str, i32)> = entries
        .iter()
        .map(|e| {
            (
                e.method.as_str(),
                e.status_code,
                e.status_message.as_str(),
                e.outcome,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "/keystore.v1.KeyStore/CreateKey",
                0,
                "",
                Outcome::Success as i32
            ),
            (
                "/keystore.v1.KeyStore/DeleteKey",
                5,
                "key nope does not exist",
                Outcome::Error as i32
            ),
            (
                "/keystore.v1.KeyStore/CreateKey",
                6,
                "key alpha exists",
                Outcome::Error as i32
            ),
            (
                "/keystore.v1.KeyStore/CreateKey",
                3,
                "name: 1 to 64 of a-z, 0-9, `-`, `_`, `.`",
                Outcome::Error as i32
            ),
        ]
    );
    for entry in &entries {
        assert_eq!(entry.source, "keystore");
        assert_eq!(entry.category, "KEY_MANAGEMENT");
        assert!(!entry.id.is_empty() && !entry.request_id.is_empty());
        assert!(entry.latency.is_some(), "{entry:?}");
        assert!(
            network_address(entry).starts_with("127.0.0.1:"),
            "{entry:?}"
        );
        let caller = entry.caller.as_ref().unwrap();
        assert!(caller.user_agent.contains("tonic"), "{caller:?}");
    }
    assert_eq!(entries[0].event, "KEY_CREATED");
    assert_eq!(entries[0].resource, "keys/alpha");
    assert_eq!(entries[1].event, "KEY_DELETED");
    // One request id per call.
    let mut ids: Vec<&str> = entries.iter().map(|e| e.request_id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    assert_eq!(recorder.stats().recorded, 4);
    assert_eq!(recorder.stats().dropped, 0);
}

#[tokio::test]
async fn server_streaming_calls_take_their_status_from_the_trailers() {
    let audit_server = TestServer::start().await;
    let audit = audit_server.client().await;
    let recorder = recorder(&audit);
    let host = Host::start(audit_layer(recorder.clone())).await;
    let mut keystore = host.keystore().await;
    for name in ["k1", "k2", "k3"] {
        keystore.create_key(create(name)).await.unwrap();
    }
    flush(&recorder).await;
    let before = all_entries(&audit).await.len();

    let list = |limit| {
        request(
            ks::ListKeysRequest {
                prefix: "k".into(),
                limit,
            },
            None,
            None,
        )
    };
    let mut all = keystore.list_keys(list(10)).await.unwrap().into_inner();
    let mut names = Vec::new();
    while let Some(item) = all.message().await.unwrap() {
        names.push(item.key.unwrap().name);
    }
    assert_eq!(names, ["k1", "k2", "k3"]);

    // Two keys arrive, then the stream ends with RESOURCE_EXHAUSTED in its trailers.
    let mut limited = keystore.list_keys(list(2)).await.unwrap().into_inner();
    assert!(limited.message().await.unwrap().is_some());
    assert!(limited.message().await.unwrap().is_some());
    let status = limited.message().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    flush(&recorder).await;

    let entries = entries_by_time(&audit).await;
    let lists = &entries[before..];
    assert_eq!(lists.len(), 2, "{lists:#?}");
    for entry in lists {
        assert_eq!(entry.method, "/keystore.v1.KeyStore/ListKeys");
        assert_eq!(entry.event, "KEYS_LISTED");
        assert_eq!(entry.resource, "keys/k*");
    }
    assert_eq!(
        (lists[0].status_code, lists[0].outcome),
        (0, Outcome::Success as i32)
    );
    assert_eq!(lists[1].status_code, Code::ResourceExhausted as i32);
    assert_eq!(
        lists[1].status_message,
        "more than 2 keys match; narrow the prefix"
    );
    assert_eq!(lists[1].outcome, Outcome::Error as i32);
}

#[tokio::test]
async fn request_id_is_honoured_or_generated_and_returned() {
    let audit_server = TestServer::start().await;
    let audit = audit_server.client().await;
    let recorder = recorder(&audit);
    let host = Host::start(audit_layer(recorder.clone())).await;
    let mut keystore = host.keystore().await;

    let given = keystore
        .create_key(request(
            ks::CreateKeyRequest { name: "a".into() },
            None,
            Some("req-given-42"),
        ))
        .await
        .unwrap();
    assert_eq!(response_request_id(&given), "req-given-42");
    let generated = keystore.create_key(create("b")).await.unwrap();
    let generated_id = response_request_id(&generated);
    assert!(
        uuid::Uuid::parse_str(&generated_id).is_ok(),
        "{generated_id}"
    );
    // A failing (trailers-only) call returns it too.
    let failed = keystore.delete_key(delete("nope")).await.unwrap_err();
    let failed_id = status_request_id(&failed);
    assert_ne!(failed_id, generated_id);
    // Not a usable id (a space): replaced by a generated one.
    let replaced = keystore
        .create_key(request(
            ks::CreateKeyRequest { name: "c".into() },
            None,
            Some("has space"),
        ))
        .await
        .unwrap();
    let replaced_id = response_request_id(&replaced);
    assert!(uuid::Uuid::parse_str(&replaced_id).is_ok(), "{replaced_id}");
    flush(&recorder).await;

    let ids: Vec<String> = entries_by_time(&audit)
        .await
        .into_iter()
        .map(|e| e.request_id)
        .collect();
    assert_eq!(
        ids,
        [
            "req-given-42".to_string(),
            generated_id,
            failed_id,
            replaced_id
        ]
    );
}

#[tokio::test]
async fn principal_comes_from_the_extractor() {
    let audit_server = TestServer::start().await;
    let audit = audit_server.client().await;
    let recorder = recorder(&audit);
    // A custom extractor: the principal is the `x-user` metadata, prefixed.
    let layer = AuditLayer::new(recorder.clone()).principal(|parts| {
        let user = parts.headers.get("x-user")?.to_str().ok()?;
        Some(format!("users/{user}"))
    });
    let host = Host::start(layer).await;
    let mut keystore = host.keystore().await;
    keystore
        .create_key(request(
            ks::CreateKeyRequest { name: "a".into() },
            Some("alice"),
            None,
        ))
        .await
        .unwrap();
    keystore.create_key(create("b")).await.unwrap();
    flush(&recorder).await;

    let principals: Vec<String> = entries_by_time(&audit)
        .await
        .into_iter()
        .map(|e| e.caller.unwrap().principal)
        .collect();
    assert_eq!(principals, ["users/alice", ""]);
    let by_principal = query(
        &audit,
        pb::Filter {
            principal: "users/alice".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_principal.len(), 1);
}

#[tokio::test]
async fn batch_operations_share_the_calls_request_id() {
    let audit_server = TestServer::start().await;
    let audit = audit_server.client().await;
    let recorder = recorder(&audit);
    let host = Host::start(audit_layer(recorder.clone())).await;
    let mut keystore = host.keystore().await;
    keystore.create_key(create("k1")).await.unwrap();
    keystore.create_key(create("k2")).await.unwrap();

    let names = ["k1", "k2", "k3"].map(String::from).to_vec();
    let response = keystore
        .batch_delete_keys(request(
            ks::BatchDeleteKeysRequest { names },
            Some("bob"),
            Some("batch-7"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.deleted, ["k1", "k2"]);
    assert_eq!(response.missing, ["k3"]);
    flush(&recorder).await;

    let entries = query(
        &audit,
        pb::Filter {
            request_id: "batch-7".into(),
            ..Default::default()
        },
    )
    .await;
    let summary: Vec<(&str, &str, i32)> = entries
        .iter()
        .map(|e| (e.event.as_str(), e.resource.as_str(), e.status_code))
        .collect();
    assert_eq!(
        summary,
        [
            ("KEYS_BATCH_DELETED", "", 0),
            ("KEY_DELETED", "keys/k1", 0),
            ("KEY_DELETED", "keys/k2", 0),
            ("KEY_DELETED", "keys/k3", Code::NotFound as i32),
        ]
    );
    for entry in &entries {
        assert_eq!(entry.method, "/keystore.v1.KeyStore/BatchDeleteKeys");
        assert_eq!(entry.caller.as_ref().unwrap().principal, "bob");
        assert_eq!(entry.source, "keystore");
    }
    assert_eq!(entries[3].outcome, Outcome::Error as i32);
    // Stored in one batch: consecutive sequences.
    audit_tests::assert_gapless(&entries, entries[0].sequence);
}

#[tokio::test]
async fn excluded_methods_record_nothing() {
    let audit_server = TestServer::start().await;
    let audit = audit_server.client().await;
    let recorder = recorder(&audit);
    let layer = audit_layer(recorder.clone()).exclude("/keystore.v1.KeyStore/ListKeys");
    let host = Host::start(layer).await;
    let channel = Endpoint::from_shared(format!("http://{}", host.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let check = tonic_health::pb::HealthCheckRequest::default();
    health.check(check).await.unwrap();
    let mut keystore = KeyStoreClient::new(channel);
    let mut list = keystore
        .list_keys(ks::ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    while list.message().await.unwrap().is_some() {}
    keystore.create_key(create("a")).await.unwrap();
    flush(&recorder).await;

    let methods: Vec<String> = all_entries(&audit)
        .await
        .into_iter()
        .map(|e| e.method)
        .collect();
    assert_eq!(methods, ["/keystore.v1.KeyStore/CreateKey"]);
}

/// Stops `server`, keeping its data directory; returns what is needed to bring it back.
async fn take_down(mut server: TestServer) -> (SocketAddr, std::path::PathBuf, tempfile::TempDir) {
    let addr = server.addr;
    let data_dir = server.data_dir.clone();
    let temp = server.keep_data_dir().expect("a temporary data dir");
    assert!(server.stop().await.success());
    (addr, data_dir, temp)
}

async fn bring_back(addr: SocketAddr, data_dir: &Path) -> TestServer {
    TestServer::start_on(addr, data_dir, &[]).await
}

#[tokio::test]
async fn fail_closed_refuses_calls_while_the_audit_server_is_down() {
    let audit_server = TestServer::start().await;
    let audit = Client::connect_lazy(audit_server.uri()).unwrap();
    let recorder = recorder(&audit);
    let deadline = Duration::from_secs(1);
    let host = Host::start(audit_layer(recorder.clone()).fail_closed(deadline)).await;
    let mut keystore = host.keystore().await;
    keystore.create_key(create("before")).await.unwrap();

    let (addr, data_dir, _temp) = take_down(audit_server).await;

    // The first call runs (nothing has failed yet), but its entry cannot be stored: refused
    // once the deadline passes, not later.
    let started = Instant::now();
    let refused = keystore.create_key(create("during")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(refused.message(), "audit trail unavailable");
    assert!(
        started.elapsed() < deadline + Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Now the recorder knows the trail is down: calls are refused at once, without running.
    let started = Instant::now();
    let refused = keystore.create_key(create("never")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(started.elapsed() < deadline, "{:?}", started.elapsed());
    let listed = keystore.list_keys(ks::ListKeysRequest::default()).await;
    assert_eq!(listed.unwrap_err().code(), Code::Unavailable);

    // Back up: calls succeed again once the recorder has delivered its queue.
    let audit_server = bring_back(addr, &data_dir).await;
    flush(&recorder).await;
    assert!(recorder.is_available());
    // "never" was not created: the refused call did not run.
    keystore.create_key(create("never")).await.unwrap();
    flush(&recorder).await;

    let entries = entries_by_time(&audit_server.client().await).await;
    let summary: Vec<(&str, i32)> = entries
        .iter()
        .map(|e| (e.resource.as_str(), e.status_code))
        .collect();
    assert_eq!(
        summary,
        [
            ("keys/before", 0),
            // Ran and succeeded, stored late: the caller was told UNAVAILABLE.
            ("keys/during", 0),
            // Refused before running (so no resource): recorded as refused.
            ("", Code::Unavailable as i32),
            ("", Code::Unavailable as i32),
            ("keys/never", 0),
        ]
    );
    assert_eq!(entries[2].method, "/keystore.v1.KeyStore/CreateKey");
    assert_eq!(entries[2].status_message, "audit trail unavailable");
    assert_eq!(entries[3].method, "/keystore.v1.KeyStore/ListKeys");
    assert_eq!(recorder.stats().dropped, 0);
}

#[tokio::test]
async fn fail_open_serves_calls_counts_drops_and_delivers_after_recovery() {
    let audit_server = TestServer::start().await;
    let audit = Client::connect_lazy(audit_server.uri()).unwrap();
    // Room for two queued calls, one in delivery.
    let recorder = Recorder::spawn(
        audit.clone(),
        recorder_config().queue_capacity(2).drain_size(1),
    );
    let host = Host::start(audit_layer(recorder.clone())).await;
    let mut keystore = host.keystore().await;
    let (addr, data_dir, _temp) = take_down(audit_server).await;

    let calls = 10;
    for i in 0..calls {
        keystore
            .create_key(create(&format!("key{i}")))
            .await
            .expect("fail-open serves calls while the trail is down");
    }
    let stats = recorder.stats();
    assert!(stats.dropped >= 1, "{stats:?}");
    assert_eq!(stats.recorded, 0, "{stats:?}");
    assert!(!recorder.is_available());

    let audit_server = bring_back(addr, &data_dir).await;
    flush(&recorder).await;
    let stats = recorder.stats();
    assert_eq!(stats.recorded + stats.dropped, calls, "{stats:?}");
    let entries = entries_by_time(&audit_server.client().await).await;
    assert_eq!(entries.len() as u64, stats.recorded);
    // The oldest calls were queued before the queue filled; they arrive in order.
    assert_eq!(entries[0].resource, "keys/key0");
    assert!(entries.iter().all(|e| e.status_code == 0));
}

#[tokio::test]
async fn unix_socket_callers_are_identified_by_their_credentials() {
    let audit_server = TestServer::start().await;
    let audit = audit_server.client().await;
    let recorder = recorder(&audit);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keystore.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let router = server(audit_layer(recorder.clone())).await;
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(router.serve_with_incoming_shutdown(
        audit_identity::unix::incoming(listener),
        async {
            let _ = stopped.await;
        },
    ));

    let socket = path.clone();
    let channel = Endpoint::from_static("http://keystore.local")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .unwrap();
    let mut keystore = KeyStoreClient::new(channel);
    keystore.create_key(create("local")).await.unwrap();
    flush(&recorder).await;

    let entries = all_entries(&audit).await;
    assert_eq!(entries.len(), 1);
    match &entries[0].caller.as_ref().unwrap().peer {
        Some(pb::caller::Peer::Unix(peer)) => {
            assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
            assert_eq!(peer.gid, nix::unistd::getgid().as_raw());
            assert_eq!(peer.pid, std::process::id());
            let me = std::env::current_exe().unwrap();
            assert_eq!(peer.binary_path, me.to_string_lossy());
        }
        other => panic!("expected a Unix peer, got {other:?}"),
    }
}

/// A certificate (PEM) and key (PEM) for `localhost` with `usage`, signed by `ca`, and no URI
/// SAN: a valid TLS client certificate that is not an X509-SVID.
fn certificate(
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn a_caller_whose_certificate_is_not_an_svid_keeps_its_address() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};
    let audit_server = TestServer::start().await;
    let audit = audit_server.client().await;
    let recorder = recorder(&audit);

    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let (server_cert, server_key) = certificate(&ca, rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = certificate(&ca, rcgen::ExtendedKeyUsagePurpose::ClientAuth);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(server_cert, server_key))
        .client_ca_root(Certificate::from_pem(ca.pem()));
    let router = Server::builder()
        .tls_config(tls)
        .unwrap()
        .layer(audit_layer(recorder.clone()))
        .add_service(ks::key_store_server::KeyStoreServer::new(
            audit_example_keystore::KeyStore::default(),
        ));
    let (_stop, stopped) = oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));

    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca.pem()))
                .identity(Identity::from_pem(client_cert, client_key))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    KeyStoreClient::new(channel)
        .create_key(create("k1"))
        .await
        .expect("the key store serves the call");
    flush(&recorder).await;

    let entries = all_entries(&audit).await;
    assert_eq!(entries.len(), 1);
    let address = network_address(&entries[0]);
    assert!(
        address.starts_with("127.0.0.1:"),
        "caller address {address:?}"
    );
}
