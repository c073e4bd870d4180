//! Who submitted an entry, learnt from the connection: the Unix socket's peer credentials, the
//! SPIFFE ID of a mutual-TLS client certificate, or the TCP peer address; permissions from a
//! policy file, with every refusal recorded as a DENIED entry.

use std::path::PathBuf;

use audit_client::{Client, ServingStatus, pb};
use audit_tests::{TestServer, all_entries, entry, query};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use tempfile::TempDir;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[tokio::test]
async fn the_unix_socket_recorder_is_this_process() {
    let dir = TempDir::new().unwrap();
    let socket = dir.path().join("audit.sock");
    let server = TestServer::start_with_args(&["--unix-socket", socket.to_str().unwrap()]).await;
    assert_eq!(server.unix_socket.as_deref(), Some(socket.as_path()));
    let mode = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o660
    );

    let client = Client::connect(format!("unix:{}", socket.display()))
        .await
        .expect("connect over the unix socket");
    // A recorder sent by the client is replaced by what the kernel says.
    let mut forged = entry("app", "/a.B/C").build();
    forged.recorder = Some(pb::Recorder {
        peer: Some(pb::recorder::Peer::Unix(pb::UnixPeer {
            uid: 4242,
            gid: 4242,
            pid: 1,
            binary_path: "/usr/bin/innocent".into(),
        })),
    });
    client
        .record(forged)
        .await
        .expect("record over the unix socket");
    let stored = all_entries(&client).await.remove(0);
    let expected = pb::UnixPeer {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        pid: std::process::id(),
        binary_path: std::env::current_exe()
            .unwrap()
            .to_string_lossy()
            .into_owned(),
    };
    assert_eq!(
        stored.recorder.and_then(|r| r.peer),
        Some(pb::recorder::Peer::Unix(expected))
    );

    // The CLI speaks to the socket too.
    let cli = std::process::Command::new(audit_tests::binary("audit"))
        .args([
            "--server",
            &format!("unix:{}", socket.display()),
            "query",
            "--json",
        ])
        .output()
        .expect("run audit");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let line = String::from_utf8(cli.stdout).unwrap();
    assert!(line.contains("\"binaryPath\""), "{line}");

    let status = server.stop().await;
    assert!(status.success());
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}

/// Test certificates made at test time: a CA, a server certificate for `localhost`, and client
/// certificates with chosen URI SANs.
struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let ca = Self::authority("audit test CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let pki = Self { dir, ca };
        let (cert, key) = pki.leaf(&[], ExtendedKeyUsagePurpose::ServerAuth, &pki.ca);
        std::fs::write(pki.path("server.pem"), cert).unwrap();
        std::fs::write(pki.path("server.key"), key).unwrap();
        pki
    }

    fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A certificate (PEM) and key (PEM) for `localhost` with these URI SANs, signed by `ca`.
    fn leaf(
        &self,
        uris: &[&str],
        usage: ExtendedKeyUsagePurpose,
        ca: &CertifiedIssuer<'static, KeyPair>,
    ) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "workload");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Server flags for a mutual-TLS listener trusting this CA.
    fn server_args(&self, client_ca: bool) -> Vec<String> {
        let mut args = vec![
            "--tls-listen".to_string(),
            "127.0.0.1:0".to_string(),
            "--tls-cert".to_string(),
            self.path("server.pem").display().to_string(),
            "--tls-key".to_string(),
            self.path("server.key").display().to_string(),
        ];
        if client_ca {
            args.push("--tls-client-ca".to_string());
            args.push(self.path("ca.pem").display().to_string());
        }
        args
    }

    /// Connects to the TLS listener, presenting a client certificate for `uris` when given.
    async fn client(
        &self,
        server: &TestServer,
        uris: Option<&[&str]>,
        ca: Option<&CertifiedIssuer<'static, KeyPair>>,
    ) -> Result<Client, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.pem()))
            .domain_name("localhost");
        if let Some(uris) = uris {
            let (cert, key) = self.leaf(
                uris,
                ExtendedKeyUsagePurpose::ClientAuth,
                ca.unwrap_or(&self.ca),
            );
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let address = server.tls_addr.expect("a TLS listener");
        let channel = Endpoint::from_shared(format!("https://{address}"))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(Client::from_channel(channel))
    }
}

async fn start(pki: &Pki, client_ca: bool, extra: &[&str]) -> TestServer {
    let mut args = pki.server_args(client_ca);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestServer::start_with_args(&args).await
}

fn denied_filter() -> pb::Filter {
    pb::Filter {
        outcomes: vec![pb::Outcome::Denied as i32],
        event: "ACCESS_DENIED".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn mutual_tls_records_the_spiffe_id_and_refuses_bad_certificates() {
    let pki = Pki::new();
    let server = start(&pki, true, &[]).await;

    let writer = pki
        .client(&server, Some(&["spiffe://test.example/billing/api"]), None)
        .await
        .expect("mTLS connect");
    writer
        .record(entry("billing", "/billing.v1.Billing/Charge").build())
        .await
        .expect("record over mTLS");
    let stored = all_entries(&writer).await.remove(0);
    let Some(pb::recorder::Peer::Network(network)) = stored.recorder.and_then(|r| r.peer) else {
        panic!("network recorder expected");
    };
    assert_eq!(network.spiffe_id, "spiffe://test.example/billing/api");
    assert!(
        network.certificate_subject.contains("workload"),
        "{network:?}"
    );
    assert!(network.address.starts_with("127.0.0.1:"));

    let refused: [(&[&str], &str); 4] = [
        (&[], "no URI SAN"),
        (
            &["spiffe://test.example/a", "spiffe://test.example/b"],
            "2 URI SANs",
        ),
        (&["spiffe://Test.Example/a"], "not a valid SPIFFE ID"),
        (&["spiffe://test.example/a/../b"], "not a valid SPIFFE ID"),
    ];
    for (uris, reason) in refused {
        let client = pki
            .client(&server, Some(uris), None)
            .await
            .expect("TLS handshake");
        let error = client
            .record(entry("app", "/a.B/C").build())
            .await
            .unwrap_err();
        let status = error.status().expect("status");
        assert_eq!(status.code(), Code::Unauthenticated, "{uris:?}");
        assert!(
            status.message().contains(reason),
            "{uris:?}: {}",
            status.message()
        );
    }

    // A certificate from a CA the server does not trust fails the handshake itself.
    let stranger = Pki::authority("stranger CA");
    let attempt = pki
        .client(&server, Some(&["spiffe://test.example/x"]), Some(&stranger))
        .await;
    match attempt {
        Err(_) => {}
        Ok(client) => assert!(client.record(entry("app", "/a.B/C").build()).await.is_err()),
    }

    // Each refused attempt is in the trail, named by the plaintext loopback reader.
    let reader = server.client().await;
    let denied = query(&reader, denied_filter()).await;
    assert_eq!(denied.len(), 4, "{denied:#?}");
    for entry in &denied {
        assert_eq!(entry.source, "audit-server");
        assert_eq!(entry.method, "/audit.v1.AuditService/Record");
        assert_eq!(entry.status_code, Code::Unauthenticated as i32);
    }
    assert_eq!(all_entries(&reader).await.len(), 5);
}

#[tokio::test]
async fn the_cli_speaks_mutual_tls() {
    let pki = Pki::new();
    let server = start(&pki, true, &[]).await;
    let (cert, key) = pki.leaf(
        &["spiffe://test.example/ops/cli"],
        ExtendedKeyUsagePurpose::ClientAuth,
        &pki.ca,
    );
    std::fs::write(pki.path("cli.pem"), cert).unwrap();
    std::fs::write(pki.path("cli.key"), key).unwrap();
    let uri = format!("https://{}", server.tls_addr.unwrap());
    let path = |name: &str| pki.path(name).display().to_string();
    let tls_args = [
        "--server".to_string(),
        uri,
        "--tls-ca".to_string(),
        path("ca.pem"),
        "--tls-cert".to_string(),
        path("cli.pem"),
        "--tls-key".to_string(),
        path("cli.key"),
        "--tls-domain".to_string(),
        "localhost".to_string(),
    ];
    let audit = |extra: &[&str]| {
        std::process::Command::new(audit_tests::binary("audit"))
            .args(&tls_args)
            .args(extra)
            .output()
            .expect("run audit")
    };
    let recorded = audit(&[
        "record",
        "--source",
        "ops",
        "--method",
        "/ops.v1.Ops/Rotate",
        "--outcome",
        "success",
    ]);
    assert!(
        recorded.status.success(),
        "{}",
        String::from_utf8_lossy(&recorded.stderr)
    );
    // The same settings from the environment, beside the server's own AUDIT_TLS_* variables
    // (which the CLI must not read: they name the server's certificate, not the client's).
    let queried = std::process::Command::new(audit_tests::binary("audit"))
        .args(["query", "--json"])
        .env("AUDIT_SERVER", &tls_args[1])
        .env("AUDIT_CLI_TLS_CA", path("ca.pem"))
        .env("AUDIT_CLI_TLS_CERT", path("cli.pem"))
        .env("AUDIT_CLI_TLS_KEY", path("cli.key"))
        .env("AUDIT_CLI_TLS_DOMAIN", "localhost")
        .env("AUDIT_TLS_CERT", path("server.pem"))
        .env("AUDIT_TLS_KEY", path("server.key"))
        .output()
        .expect("run audit");
    assert!(
        queried.status.success(),
        "{}",
        String::from_utf8_lossy(&queried.stderr)
    );
    let out = String::from_utf8(queried.stdout).unwrap();
    assert!(out.contains("spiffe://test.example/ops/cli"), "{out}");

    // Verification and the key go over the same mutual TLS.
    let verified = audit(&["verify"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(String::from_utf8_lossy(&verified.stdout).starts_with("OK"));
    let key = audit(&["key"]);
    assert!(
        key.status.success(),
        "{}",
        String::from_utf8_lossy(&key.stderr)
    );
    assert!(String::from_utf8_lossy(&key.stdout).starts_with("audit-log+"));
}

#[tokio::test]
async fn a_tls_listener_without_policy_refuses_callers_without_a_certificate() {
    let pki = Pki::new();
    let server = start(&pki, false, &[]).await;
    let anonymous = pki.client(&server, None, None).await.expect("TLS connect");
    let error = anonymous
        .record(entry("app", "/a.B/C").build())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::Unauthenticated));
    assert!(
        error
            .status()
            .unwrap()
            .message()
            .contains("client certificate is required"),
        "{error}"
    );
}

#[tokio::test]
async fn the_policy_grants_each_permission_to_its_identities_and_records_refusals() {
    let pki = Pki::new();
    let policy = pki.path("policy.toml");
    std::fs::write(
        &policy,
        r#"
[[grant]]
to = ["spiffe://test.example/writers/*"]
allow = ["record"]

[[grant]]
to = ["spiffe://test.example/siem"]
allow = ["read"]
"#,
    )
    .unwrap();
    let server = start(&pki, true, &["--policy", policy.to_str().unwrap()]).await;
    let writer = pki
        .client(
            &server,
            Some(&["spiffe://test.example/writers/billing"]),
            None,
        )
        .await
        .unwrap();
    let reader = pki
        .client(&server, Some(&["spiffe://test.example/siem"]), None)
        .await
        .unwrap();
    let other = pki
        .client(&server, Some(&["spiffe://test.example/writers-not"]), None)
        .await
        .unwrap();

    writer
        .record(entry("billing", "/a.B/C").build())
        .await
        .expect("writers may record");
    let read_refused = writer
        .raw()
        .query(pb::QueryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(read_refused.code(), Code::PermissionDenied);
    assert!(
        read_refused.message().contains("`read`"),
        "{}",
        read_refused.message()
    );

    let record_refused = reader
        .record(entry("siem", "/a.B/C").build())
        .await
        .unwrap_err();
    assert_eq!(record_refused.code(), Some(Code::PermissionDenied));
    let subscribe_refused = other
        .raw()
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(subscribe_refused.code(), Code::PermissionDenied);

    // Plaintext loopback is granted nothing by this policy.
    let loopback = server.client().await;
    let error = loopback
        .record(entry("app", "/a.B/C").build())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::Unauthenticated));

    let denied = query(&reader, denied_filter()).await;
    let summary: Vec<(String, String, String)> = denied
        .iter()
        .map(|e| {
            let spiffe_id = match e.caller.as_ref().and_then(|c| c.peer.as_ref()) {
                Some(pb::caller::Peer::Network(n)) => n.spiffe_id.clone(),
                _ => String::new(),
            };
            (e.method.clone(), e.labels["permission"].clone(), spiffe_id)
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "/audit.v1.AuditService/Query".to_string(),
                "read".to_string(),
                "spiffe://test.example/writers/billing".to_string()
            ),
            (
                "/audit.v1.AuditService/Record".to_string(),
                "record".to_string(),
                "spiffe://test.example/siem".to_string()
            ),
            (
                "/audit.v1.AuditService/Subscribe".to_string(),
                "read".to_string(),
                "spiffe://test.example/writers-not".to_string()
            ),
            (
                "/audit.v1.AuditService/Record".to_string(),
                "record".to_string(),
                String::new()
            ),
        ]
    );
}

#[tokio::test]
async fn refusals_beyond_the_budget_are_not_recorded() {
    let pki = Pki::new();
    let server = start(&pki, false, &["--max-denied-per-second", "3"]).await;
    let anonymous = pki.client(&server, None, None).await.unwrap();
    for _ in 0..10 {
        let error = anonymous
            .record(entry("app", "/a.B/C").build())
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(Code::Unauthenticated));
    }
    let denied = query(&server.client().await, denied_filter()).await;
    assert!(
        (3..=6).contains(&denied.len()),
        "at most 3 per second recorded, got {}",
        denied.len()
    );
}

/// A policy granting `read` to `spiffe://test.example/siem` and nothing to anyone else.
fn reader_only_policy(pki: &Pki) -> PathBuf {
    let policy = pki.path("policy.toml");
    std::fs::write(
        &policy,
        "[[grant]]\nto = [\"spiffe://test.example/siem\"]\nallow = [\"read\"]\n",
    )
    .unwrap();
    policy
}

fn network_peer(entry: &pb::AuditEntry) -> pb::NetworkPeer {
    match entry.caller.as_ref().and_then(|c| c.peer.clone()) {
        Some(pb::caller::Peer::Network(network)) => network,
        other => panic!("not a network caller: {other:?}"),
    }
}

#[tokio::test]
async fn refusals_of_callers_with_long_identities_are_recorded_cut_to_the_limits() {
    let pki = Pki::new();
    let policy = reader_only_policy(&pki);
    let server = start(&pki, true, &["--policy", policy.to_str().unwrap()]).await;
    // Valid by the SPIFFE rules (up to 2048 bytes), longer than the 1024-byte field limit.
    let long = format!("spiffe://test.example/{}", "w".repeat(2000));
    let caller = pki.client(&server, Some(&[&long]), None).await.unwrap();
    let error = caller
        .record(entry("app", "/a.B/C").build())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::PermissionDenied));

    let reader = pki
        .client(&server, Some(&["spiffe://test.example/siem"]), None)
        .await
        .unwrap();
    let denied = query(&reader, denied_filter()).await;
    assert_eq!(denied.len(), 1, "the refusal is recorded");
    let spiffe_id = network_peer(&denied[0]).spiffe_id;
    assert!(spiffe_id.len() <= 1024, "{} bytes", spiffe_id.len());
    let (kept, marker) = spiffe_id.split_once("...[cut ").expect("a cut marker");
    assert!(long.starts_with(kept) && kept.len() > 900, "{spiffe_id}");
    assert_eq!(marker, format!("{} bytes]", long.len() - kept.len()));
    assert_eq!(denied[0].method, "/audit.v1.AuditService/Record");
}

#[tokio::test]
async fn one_callers_flood_does_not_crowd_out_the_refusals_of_others() {
    let pki = Pki::new();
    let policy = reader_only_policy(&pki);
    let server = start(
        &pki,
        true,
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--max-denied-per-second",
            "20",
            "--max-denied-per-identity-per-second",
            "5",
        ],
    )
    .await;
    let flooder = pki
        .client(&server, Some(&["spiffe://test.example/flood"]), None)
        .await
        .unwrap();
    let other = pki
        .client(&server, Some(&["spiffe://test.example/other"]), None)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let flood = (0..100).map(|_| flooder.record(entry("app", "/a.B/C").build()));
    for result in futures::future::join_all(flood).await {
        assert_eq!(result.unwrap_err().code(), Some(Code::PermissionDenied));
    }
    for _ in 0..3 {
        let error = other.record(entry("app", "/a.B/C").build()).await;
        assert_eq!(error.unwrap_err().code(), Some(Code::PermissionDenied));
    }
    let windows = started.elapsed().as_secs() + 1;

    let reader = pki
        .client(&server, Some(&["spiffe://test.example/siem"]), None)
        .await
        .unwrap();
    let denied = query(&reader, denied_filter()).await;
    let of = |id: &str| {
        denied
            .iter()
            .filter(|e| network_peer(e).spiffe_id == id)
            .count() as u64
    };
    assert_eq!(
        of("spiffe://test.example/other"),
        3,
        "every refusal of the other caller"
    );
    let flooded = of("spiffe://test.example/flood");
    assert!(
        (5..=5 * windows).contains(&flooded),
        "{flooded} refusals of the flooding caller recorded in {windows} windows"
    );
}

#[tokio::test]
async fn refusals_of_a_process_with_a_long_executable_path_are_recorded_cut_to_the_limits() {
    let dir = TempDir::new().unwrap();
    // The CLI, copied to a path longer than the 1024-byte field limit.
    let mut deep = dir.path().to_path_buf();
    for _ in 0..6 {
        deep.push("d".repeat(200));
    }
    std::fs::create_dir_all(&deep).unwrap();
    let cli = deep.join("audit");
    std::fs::copy(audit_tests::binary("audit"), &cli).unwrap();
    assert!(cli.as_os_str().len() > 1200);

    let socket = dir.path().join("audit.sock");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[grant]]\nto = [\"loopback\"]\nallow = [\"read\"]\n",
    )
    .unwrap();
    let server = TestServer::start_with_args(&[
        "--unix-socket",
        socket.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ])
    .await;
    let refused = tokio::process::Command::new(&cli)
        .args(["--server", &format!("unix:{}", socket.display())])
        .args([
            "record",
            "--source",
            "app",
            "--method",
            "/a.B/C",
            "--outcome",
            "success",
        ])
        .output()
        .await
        .expect("run the copied CLI");
    assert!(
        !refused.status.success(),
        "the policy grants the socket nothing"
    );

    let denied = query(&server.client().await, denied_filter()).await;
    assert_eq!(denied.len(), 1, "the refusal is recorded");
    let binary_path = match denied[0].caller.as_ref().and_then(|c| c.peer.clone()) {
        Some(pb::caller::Peer::Unix(unix)) => unix.binary_path,
        other => panic!("not a unix caller: {other:?}"),
    };
    assert!(binary_path.len() <= 1024, "{} bytes", binary_path.len());
    let (kept, _) = binary_path.split_once("...[cut ").expect("a cut marker");
    assert!(cli.to_str().unwrap().starts_with(kept), "{binary_path}");
}

#[tokio::test]
async fn health_and_reflection_follow_the_policy() {
    let pki = Pki::new();
    let policy = pki.path("policy.toml");
    std::fs::write(
        &policy,
        r#"
[[grant]]
to = ["spiffe://test.example/writers/*"]
allow = ["record"]

[[grant]]
to = ["spiffe://test.example/probe"]
allow = ["health"]

[[grant]]
to = ["spiffe://test.example/siem"]
allow = ["read"]
"#,
    )
    .unwrap();
    let server = start(&pki, true, &["--policy", policy.to_str().unwrap()]).await;
    let writer = pki
        .client(&server, Some(&["spiffe://test.example/writers/a"]), None)
        .await
        .unwrap();
    let probe = pki
        .client(&server, Some(&["spiffe://test.example/probe"]), None)
        .await
        .unwrap();
    let reader = pki
        .client(&server, Some(&["spiffe://test.example/siem"]), None)
        .await
        .unwrap();

    assert_eq!(probe.health("").await.unwrap(), ServingStatus::Serving);
    let refused = writer.health("").await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::PermissionDenied), "{refused}");
    // Local probes need no grant.
    let loopback = server.client().await;
    assert_eq!(loopback.health("").await.unwrap(), ServingStatus::Serving);

    // Reflection reveals the API: it needs `read`, which loopback is not granted here.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let channel = tonic::transport::Endpoint::from_shared(server.uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let refused = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([list]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");

    let denied = query(&reader, denied_filter()).await;
    let summary: Vec<(&str, &str)> = denied
        .iter()
        .map(|e| (e.method.as_str(), e.labels["permission"].as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("/grpc.health.v1.Health/Check", "health"),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "read"
            ),
        ]
    );
}

#[tokio::test]
async fn a_tls_handshake_that_never_starts_is_closed() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new();
    let server = start(&pki, true, &["--handshake-timeout", "1s"]).await;
    let mut silent = tokio::net::TcpStream::connect(server.tls_addr.unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(audit_tests::PATIENCE, silent.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the server kept a silent TLS connection open"
    );
}
