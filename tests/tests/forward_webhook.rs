//! The webhook forwarder against the real server and a receiver written here with hyper:
//! retries on 503 and 429 (honouring `Retry-After`) until every entry arrived, in order; a 400
//! halts it without skipping anything; `kill -9` repeats only the unacknowledged batch; a
//! receiver that never answers does not slow writers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use audit_tests::{TestServer, entry, eventually, forwarder_position};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the receiver got and how it answers.
#[derive(Default)]
struct Receiver {
    /// Each request: its headers and its body, parsed.
    requests: Mutex<Vec<(http::HeaderMap, Vec<serde_json::Value>)>>,
    /// Answers for the first requests, in order; 200 after them.
    script: Mutex<Vec<(StatusCode, Option<&'static str>)>>,
    /// Answer 400 to a batch holding an entry with this sequence or a later one.
    refuse_from: Mutex<Option<u64>>,
    /// Wait this long before answering.
    delay: Mutex<Duration>,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1:0; returns it and its URL.
    async fn start() -> (Arc<Receiver>, String) {
        Self::start_with(None).await
    }

    /// Starts a receiver on 127.0.0.1:0, over TLS with `tls`; returns it and its URL.
    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> (Arc<Receiver>, String) {
        Self::start_on("127.0.0.1:0", tls).await
    }

    /// Starts a receiver on `address`, over TLS with `tls`; returns it and its URL.
    async fn start_on(
        address: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> (Arc<Receiver>, String) {
        let listener = TcpListener::bind(address).await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/hook", listener.local_addr().unwrap());
        let receiver = Arc::new(Receiver::default());
        let state = receiver.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.answer(request).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        (receiver, url)
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let items: Vec<serde_json::Value> =
            if parts.headers["content-type"] == "application/x-ndjson" {
                let text = std::str::from_utf8(&body).unwrap();
                assert!(text.ends_with('\n'), "JSON lines end with a line break");
                text.lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect()
            } else {
                serde_json::from_slice(&body).expect("a JSON array")
            };
        self.requests
            .lock()
            .unwrap()
            .push((parts.headers, items.clone()));
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let next = {
            let mut script = self.script.lock().unwrap();
            (!script.is_empty()).then(|| script.remove(0))
        };
        let refuse_from = *self.refuse_from.lock().unwrap();
        let refused = refuse_from.is_some_and(|from| {
            items
                .iter()
                .any(|i| i["type"] != "checkpoint" && i["sequence"].as_u64() >= Some(from))
        });
        let (status, retry_after) = match next {
            _ if refused => (StatusCode::BAD_REQUEST, None),
            Some(answer) => answer,
            None => (StatusCode::OK, None),
        };
        let mut response = Response::builder().status(status);
        if let Some(after) = retry_after {
            response = response.header("retry-after", after);
        }
        response.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    }

    /// The sequence of every entry received, in arrival order.
    fn sequences(&self) -> Vec<u64> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, items)| items.iter())
            .filter(|item| item["type"] != "checkpoint")
            .map(|item| item["sequence"].as_u64().expect("a sequence"))
            .collect()
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn position(server: &TestServer, name: &str) -> Option<u64> {
    forwarder_position(&server.data_dir, name)
}

/// Every sequence in 1..=total at least once, first appearances in order.
fn assert_at_least_once_in_order(sequences: &[u64], total: u64) {
    let mut firsts = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for sequence in sequences {
        if seen.insert(*sequence) {
            firsts.push(*sequence);
        }
    }
    assert_eq!(
        firsts,
        (1..=total).collect::<Vec<_>>(),
        "missing or out of order"
    );
}

async fn record(server: &TestServer, count: u64) {
    let client = server.client().await;
    for i in 0..count {
        client
            .record(
                entry("kms", "/kms.v1.Keys/Get")
                    .resource(format!("keys/{i}"))
                    .build(),
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn failures_are_retried_until_every_entry_arrived_in_order() {
    let (receiver, url) = Receiver::start().await;
    *receiver.script.lock().unwrap() = vec![
        (StatusCode::SERVICE_UNAVAILABLE, None),
        (StatusCode::SERVICE_UNAVAILABLE, None),
        (StatusCode::INTERNAL_SERVER_ERROR, None),
        (StatusCode::TOO_MANY_REQUESTS, Some("1")),
    ];
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "Bearer s3cret\n").unwrap();
    let forward = format!(
        "hook={url}?batch=7&auth_file={}&header=X-Tenant:%20blue",
        token.path().display()
    );
    let server = TestServer::start_with_args(&["--forward", &forward]).await;
    record(&server, 30).await;
    eventually("the position reaches 30", || {
        position(&server, "hook") == Some(30)
    })
    .await;
    assert_at_least_once_in_order(&receiver.sequences(), 30);
    let requests = receiver.requests.lock().unwrap().clone();
    // The four refused batches were sent again.
    assert!(requests.len() >= 5, "{} requests", requests.len());
    for (headers, items) in requests.iter() {
        assert_eq!(headers["authorization"], "Bearer s3cret");
        assert_eq!(headers["x-tenant"], "blue");
        assert_eq!(headers["content-type"], "application/json");
        assert!(
            items.len() <= 8,
            "a batch of {} (7 entries + a checkpoint at most)",
            items.len()
        );
        for item in items.iter().filter(|i| i["type"] != "checkpoint") {
            assert!(
                item["id"].as_str().is_some_and(|id| !id.is_empty()),
                "{item}"
            );
        }
    }
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn a_400_halts_the_forwarder_and_a_restart_resumes_without_a_gap() {
    let (receiver, url) = Receiver::start().await;
    *receiver.refuse_from.lock().unwrap() = Some(2);
    let forward = format!("hook={url}?batch=1&format=cef");
    let mut server = TestServer::start_with_args(&["--forward", &forward]).await;
    record(&server, 1).await;
    eventually("the first entry acknowledged", || {
        position(&server, "hook") == Some(1)
    })
    .await;
    record(&server, 4).await;
    eventually("the refused request", || receiver.sequences().contains(&2)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Halted: the refused batch is not retried, nothing after it is sent or skipped.
    assert_eq!(receiver.sequences(), [1, 2]);
    assert_eq!(position(&server, "hook"), Some(1));
    // A line format travels as `message` beside sequence and id.
    let first = receiver
        .requests
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| r.1.clone())
        .find(|i| i["sequence"] == 1)
        .unwrap();
    assert!(
        first["message"].as_str().unwrap().starts_with("CEF:0|"),
        "{first}"
    );
    assert!(first["id"].as_str().is_some_and(|id| !id.is_empty()));

    *receiver.refuse_from.lock().unwrap() = None;
    server = server.restart().await;
    eventually("every entry acknowledged", || {
        position(&server, "hook") == Some(5)
    })
    .await;
    let sequences = receiver.sequences();
    assert_eq!(sequences, [1, 2, 2, 3, 4, 5]);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn kill_9_mid_delivery_repeats_only_the_unacknowledged_batch() {
    const TOTAL: u64 = 1000;
    let (receiver, url) = Receiver::start().await;
    *receiver.delay.lock().unwrap() = Duration::from_millis(30);
    let forward = format!("hook={url}?batch=10&body=array");
    let mut server = TestServer::start_with_args(&["--forward", &forward]).await;
    let client = server.client().await;
    for chunk in 0..TOTAL / 100 {
        let entries = (0..100).map(|i| {
            entry("app", "/a.B/C")
                .resource(format!("{}", chunk * 100 + i))
                .build()
        });
        client.record_batch("", entries).await.unwrap();
    }
    eventually("twenty batches received", || receiver.count() >= 20).await;
    let data = server.keep_data_dir();
    let data_dir = server.data_dir.clone();
    server.kill().await;
    let saved = forwarder_position(&data_dir, "hook").unwrap();
    assert!(saved < TOTAL, "delivery was over before the kill");

    *receiver.delay.lock().unwrap() = Duration::ZERO;
    let server = TestServer::start_in(&data_dir, &["--forward", &forward]).await;
    eventually("every entry acknowledged", || {
        position(&server, "hook") == Some(TOTAL)
    })
    .await;
    let sequences = receiver.sequences();
    assert_at_least_once_in_order(&sequences, TOTAL);
    let mut counts = BTreeMap::new();
    for sequence in &sequences {
        *counts.entry(*sequence).or_insert(0) += 1;
    }
    let repeated: Vec<u64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(
        repeated.iter().all(|s| *s > saved),
        "repeated {repeated:?}, saved {saved}"
    );
    assert!(
        repeated.len() <= 10,
        "more than one batch repeated: {repeated:?}"
    );
    assert!(server.stop().await.success());
    drop(data);
}

/// Entries per second recorded by one writer through `server`, in batches of 50.
async fn write_rate(server: &TestServer, batches: u64) -> f64 {
    let client = server.client().await;
    let started = Instant::now();
    for b in 0..batches {
        let entries = (0..50).map(|i| entry("app", "/a.B/C").resource(format!("{b}/{i}")).build());
        client.record_batch("", entries).await.unwrap();
    }
    (batches * 50) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_slow_writers() {
    // Accepts connections and never reads or answers them.
    let stuck = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = stuck.accept().await {
            holder.lock().unwrap().push(stream);
        }
    });
    let plain = TestServer::start().await;
    let forward = format!("stuck=http://{stuck_addr}/hook?timeout=60s");
    let forwarding =
        TestServer::start_with_args(&["--forward", &forward, "--shutdown-grace", "2s"]).await;
    // Warm up both, then alternate, keeping each one's best run.
    write_rate(&plain, 5).await;
    write_rate(&forwarding, 5).await;
    let (mut without, mut with) = (0f64, 0f64);
    for _ in 0..3 {
        without = without.max(write_rate(&plain, 40).await);
        with = with.max(write_rate(&forwarding, 40).await);
    }
    let ratio = with / without;
    eprintln!(
        "write rate with a stuck webhook / without: {ratio:.2} ({with:.0} / {without:.0} entries/s)"
    );
    assert!(
        ratio > 0.6,
        "writers slowed by a stuck sink: ratio {ratio:.2}"
    );
    // The forwarder is indeed stuck: connected, nothing acknowledged.
    assert!(!held.lock().unwrap().is_empty());
    assert_eq!(position(&forwarding, "stuck"), None);
    assert!(plain.stop().await.success());
    assert!(forwarding.stop().await.success());
}

/// A CA (PEM, in `dir/ca.pem`) and a TLS acceptor for `localhost` with a certificate it signed.
fn tls_receiver(dir: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls_pki_types::pem::PemObject as _;
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
                .unwrap(),
        )
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn https_verifies_the_receiver_against_the_ca() {
    let pki = tempfile::tempdir().unwrap();
    let (receiver, url) = Receiver::start_with(Some(tls_receiver(pki.path()))).await;
    let forward = format!(
        "hook={url}?ca={}&server_name=localhost&body=array",
        pki.path().join("ca.pem").display()
    );
    let server = TestServer::start_with_args(&["--forward", &forward]).await;
    record(&server, 3).await;
    eventually("the position reaches 3", || {
        position(&server, "hook") == Some(3)
    })
    .await;
    assert_at_least_once_in_order(&receiver.sequences(), 3);
    assert!(server.stop().await.success());

    // A receiver whose certificate another CA signed gets nothing.
    let other = tempfile::tempdir().unwrap();
    let (stranger, url) = Receiver::start_with(Some(tls_receiver(other.path()))).await;
    let forward = format!(
        "hook={url}?ca={}&server_name=localhost",
        pki.path().join("ca.pem").display()
    );
    let server =
        TestServer::start_with_args(&["--forward", &forward, "--shutdown-grace", "1s"]).await;
    record(&server, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(stranger.count(), 0);
    assert_eq!(position(&server, "hook"), None);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn linger_gathers_entries_into_fuller_batches() {
    let (receiver, url) = Receiver::start().await;
    let forward = format!("hook={url}?batch=100&linger=3s&body=ndjson");
    let server = TestServer::start_with_args(&["--forward", &forward]).await;
    record(&server, 10).await;
    eventually("the position reaches 10", || {
        position(&server, "hook") == Some(10)
    })
    .await;
    assert_at_least_once_in_order(&receiver.sequences(), 10);
    let with_entries = receiver
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, items)| items.iter().any(|i| i["type"] != "checkpoint"))
        .count();
    assert!(with_entries <= 2, "{with_entries} requests for 10 entries");
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_everything_once_it_is_up() {
    // A port nobody listens on, until the receiver starts on it below.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let forward = format!("hook=http://{address}/hook?batch=2");
    let server = TestServer::start_with_args(&["--forward", &forward]).await;
    record(&server, 5).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(position(&server, "hook"), None);
    let (receiver, _) = Receiver::start_on(&address.to_string(), None).await;
    eventually("the position reaches 5", || {
        position(&server, "hook") == Some(5)
    })
    .await;
    assert_eq!(receiver.sequences(), [1, 2, 3, 4, 5]);
    assert!(server.stop().await.success());
}
