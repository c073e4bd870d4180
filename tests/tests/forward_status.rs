//! `ListForwarders` and `audit forwarders` against the real server: a webhook that fails
//! (RETRYING, with its last error and lag) then recovers, one that halts on a 400, and a file
//! forwarder; the server logs each state change once, not once per retry.

use std::convert::Infallible;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use audit_client::pb::{self, ForwarderState};
use audit_tests::{PATIENCE, TestServer, binary, entry, eventually};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A webhook receiver that answers every request with the status in `status`; counts them.
struct Hook {
    status: AtomicU16,
    requests: AtomicUsize,
}

impl Hook {
    async fn start(status: u16) -> (Arc<Hook>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let hook = Arc::new(Hook {
            status: AtomicU16::new(status),
            requests: AtomicUsize::new(0),
        });
        let state = hook.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move {
                                let _ = request.into_body().collect().await;
                                state.requests.fetch_add(1, Ordering::SeqCst);
                                let status = state.status.load(Ordering::SeqCst);
                                Ok::<_, Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from_static(b"{}")))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        (hook, url)
    }
}

/// Polls `ListForwarders` until `check` holds for the answer, for at most [`PATIENCE`].
async fn wait_for(
    client: &audit_client::Client,
    what: &str,
    check: impl Fn(&[pb::ForwarderStatus]) -> bool,
) -> Vec<pb::ForwarderStatus> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let forwarders = client.forwarders().await.unwrap();
        if check(&forwarders) {
            return forwarders;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}: {forwarders:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn named<'a>(forwarders: &'a [pb::ForwarderStatus], name: &str) -> &'a pb::ForwarderStatus {
    forwarders.iter().find(|f| f.name == name).unwrap()
}

fn state(forwarders: &[pb::ForwarderStatus], name: &str) -> ForwarderState {
    ForwarderState::try_from(named(forwarders, name).state).unwrap()
}

async fn audit(uri: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new(binary("audit"))
        .arg("--server")
        .arg(uri)
        .args(args)
        .env_remove("AUDIT_SERVER")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "audit {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn forwarders_show_their_state_lag_and_last_error() {
    let (flaky, flaky_url) = Hook::start(503).await;
    let (_strict, strict_url) = Hook::start(400).await;
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("audit.log");
    let log = out.path().join("server.log");
    let flaky_spec = format!("flaky={flaky_url}?header=X-Token:%20s3cret&batch=10");
    let strict_spec = format!("strict={strict_url}?format=cef");
    let file_spec = format!("file=file://{}", file.display());
    let args = [
        "--forward",
        &flaky_spec,
        "--forward",
        &strict_spec,
        "--forward",
        &file_spec,
    ];
    let server = TestServer::start_logged(&args, &log).await;
    let client = server.client().await;
    for i in 0..5 {
        let entry = entry("kms", "/kms.v1.Keys/Get").resource(format!("keys/{i}"));
        client.record(entry.build()).await.unwrap();
    }
    let forwarders = wait_for(
        &client,
        "flaky retrying, strict halted, file delivered",
        |f| {
            state(f, "flaky") == ForwarderState::Retrying
                && state(f, "strict") == ForwarderState::Halted
                && named(f, "file").position == 5
        },
    )
    .await;
    let names: Vec<&str> = forwarders.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["flaky", "strict", "file"], "configuration order");

    let flaky_status = named(&forwarders, "flaky");
    // The path is left out: some receivers take their token in it.
    let flaky_host = flaky_url.strip_suffix("/hook").unwrap();
    assert_eq!(flaky_status.destination, format!("{flaky_host}/…"));
    assert!(!flaky_status.destination.contains("s3cret"));
    assert_eq!(flaky_status.format, "logstash");
    assert_eq!((flaky_status.position, flaky_status.lag_entries), (0, 5));
    assert!(flaky_status.last_error.contains("503"), "{flaky_status:?}");
    assert!(flaky_status.last_error_time.is_some());
    let lag = flaky_status.lag.unwrap();
    assert!(lag.seconds > 0 || lag.nanos > 0, "{lag:?}");

    let strict = named(&forwarders, "strict");
    assert_eq!(strict.format, "cef");
    assert!(strict.last_error.contains("400"), "{strict:?}");
    assert_eq!(strict.position, 0);

    let file_status = named(&forwarders, "file");
    assert_eq!(state(&forwarders, "file"), ForwarderState::Running);
    assert_eq!(
        file_status.destination,
        format!("file://{}", file.display())
    );
    assert_eq!(file_status.lag_entries, 0);
    assert_eq!(file_status.lag.unwrap(), prost_types::Duration::default());
    assert!(file_status.last_error.is_empty() && file_status.last_error_time.is_none());

    // The command line shows the same, as a table and as JSON lines.
    let table = audit(&server.uri(), &["forwarders"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("LAST_ERROR"),
        "{table}"
    );
    assert_eq!(lines.len(), 4, "{table}");
    let columns = |line: &str| {
        line.split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(columns(lines[1])[..4], ["flaky", "RETRYING", "0", "5"]);
    assert!(lines[1].contains("503"), "{table}");
    assert_eq!(columns(lines[2])[..4], ["strict", "HALTED", "0", "5"]);
    assert_eq!(columns(lines[3])[..4], ["file", "RUNNING", "5", "0"]);
    let json = audit(&server.uri(), &["forwarders", "--json"]).await;
    let parsed: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), 3);
    assert_eq!(parsed[0]["state"], "FORWARDER_STATE_RETRYING");
    assert_eq!(parsed[0]["lagEntries"], "5");
    assert_eq!(parsed[2]["position"], "5");

    // Retried several times, logged once; then it recovers and its error is cleared.
    let retried = flaky.requests.load(Ordering::SeqCst);
    eventually("two more retries", || {
        flaky.requests.load(Ordering::SeqCst) >= retried + 2
    })
    .await;
    flaky.status.store(200, Ordering::SeqCst);
    let forwarders = wait_for(&client, "flaky recovered", |f| {
        state(f, "flaky") == ForwarderState::Running && named(f, "flaky").position == 5
    })
    .await;
    let flaky_status = named(&forwarders, "flaky");
    assert!(flaky_status.last_error.is_empty() && flaky_status.last_error_time.is_none());
    assert_eq!(flaky_status.lag_entries, 0);
    assert!(server.stop().await.success());
    let log = std::fs::read_to_string(&log).unwrap();
    let retry_lines = log
        .lines()
        .filter(|l| l.contains("flaky") && l.contains("retrying"))
        .count();
    assert_eq!(retry_lines, 1, "{log}");
    let halt_lines = log
        .lines()
        .filter(|l| l.contains("strict") && l.contains("halted"))
        .count();
    assert_eq!(halt_lines, 1, "{log}");
}

#[tokio::test]
async fn listing_forwarders_needs_the_read_permission() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("audit.log");
    let forward = format!("file=file://{}", out.display());
    for (allow, granted) in [("record", false), ("read", true)] {
        let policy = dir.path().join(format!("{allow}.toml"));
        let grant = format!("[[grant]]\nto = [\"loopback\"]\nallow = [\"{allow}\"]\n");
        std::fs::write(&policy, grant).unwrap();
        let args = ["--forward", &forward, "--policy", policy.to_str().unwrap()];
        let server = TestServer::start_with_args(&args).await;
        let answer = server.client().await.forwarders().await;
        match answer {
            Ok(forwarders) => {
                assert!(granted, "listed without `read`");
                assert_eq!(forwarders.len(), 1);
            }
            Err(error) => {
                assert!(!granted, "{error}");
                // Refused as every read is: this loopback caller holds no identity.
                assert_eq!(error.code(), Some(tonic::Code::Unauthenticated), "{error}");
                assert!(error.to_string().contains("`read`"), "{error}");
            }
        }
        assert!(server.stop().await.success());
    }
}

#[tokio::test]
async fn a_server_without_forwarders_lists_none() {
    let server = TestServer::start().await;
    let client = server.client().await;
    assert!(client.forwarders().await.unwrap().is_empty());
    assert!(server.stop().await.success());
}
