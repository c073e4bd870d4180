//! The capture policy of `AuditLayer` end to end: the example key store served in this process
//! behind a layer with capture rules, recording into a real audit server; each level records
//! exactly what its rule says.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use audit_client::pb;
use audit_client::{
    AuditLayer, CapturePolicy, Client, Level, Pattern, Recorder, RecorderConfig, Rule,
};
use audit_example_keystore::{audit_layer, pb as ks, server};
use audit_tests::{PATIENCE, TestServer, all_entries};
use ks::key_store_client::KeyStoreClient;
use prost_reflect::DescriptorPool;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;

const CREATE: &str = "/keystore.v1.KeyStore/CreateKey";
const DELETE: &str = "/keystore.v1.KeyStore/DeleteKey";
const BATCH_DELETE: &str = "/keystore.v1.KeyStore/BatchDeleteKeys";
const LIST: &str = "/keystore.v1.KeyStore/ListKeys";

fn recorder(audit: &Client) -> Recorder {
    let config = RecorderConfig::new("keystore")
        .attempt_timeout(Duration::from_millis(500))
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    Recorder::spawn(audit.clone(), config)
}

fn pattern(text: &str) -> Pattern {
    text.parse().expect("a valid pattern")
}

fn descriptors() -> DescriptorPool {
    DescriptorPool::decode(ks::FILE_DESCRIPTOR_SET).expect("the key store's descriptors")
}

/// The key store on `127.0.0.1:0` behind `layer`; stops when dropped.
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

fn as_user<T>(message: T, user: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-user", user.parse().unwrap());
    request
}

fn create(name: &str, user: &str) -> tonic::Request<ks::CreateKeyRequest> {
    as_user(ks::CreateKeyRequest { name: name.into() }, user)
}

async fn flush(recorder: &Recorder) {
    tokio::time::timeout(PATIENCE, recorder.flush())
        .await
        .expect("the recorder delivered its queue in time");
}

/// Every stored entry, in the order the calls began.
async fn entries(audit: &Client) -> Vec<pb::AuditEntry> {
    let mut entries = all_entries(audit).await;
    entries.sort_by_key(|e| e.time.map(|t| (t.seconds, t.nanos)));
    entries
}

/// An entry's `details` as plain JSON (`{}` when it has none).
fn details(entry: &pb::AuditEntry) -> Value {
    let details = entry.details.clone().unwrap_or_default();
    serde_json::from_str(&audit_client::json::to_json(&details).unwrap()).unwrap()
}

#[tokio::test]
async fn each_level_records_what_its_rule_says_and_the_first_match_wins() {
    let audit_server = TestServer::start().await;
    let audit = audit_server.client().await;
    let recorder = recorder(&audit);
    let policy = CapturePolicy::new()
        // First match wins: bob's calls are metadata whatever the method's rule says.
        .rule(Rule::new(Level::Metadata).principal(pattern("bob")))
        .rule(Rule::new(Level::None).method(pattern(DELETE)))
        .rule(Rule::new(Level::RequestResponse).method(pattern(CREATE)))
        .rule(Rule::new(Level::Request).method(pattern(BATCH_DELETE)))
        .rule(Rule::new(Level::RequestResponse).method(pattern("/keystore.v1.KeyStore/List*")));
    let layer = audit_layer(recorder.clone())
        .capture_policy(policy)
        .descriptors(descriptors());
    let host = Host::start(layer).await;
    let mut keystore = host.keystore().await;

    keystore.create_key(create("alpha", "alice")).await.unwrap();
    keystore.create_key(create("beta", "bob")).await.unwrap();
    let mut listed = keystore
        .list_keys(as_user(ks::ListKeysRequest::default(), "alice"))
        .await
        .unwrap()
        .into_inner();
    let mut keys = 0;
    while let Some(key) = listed.message().await.unwrap() {
        assert!(key.key.is_some());
        keys += 1;
    }
    assert_eq!(keys, 2);
    let delete = ks::DeleteKeyRequest {
        name: "beta".into(),
    };
    keystore.delete_key(as_user(delete, "alice")).await.unwrap();
    let batch = ks::BatchDeleteKeysRequest {
        names: vec!["alpha".into(), "gamma".into()],
    };
    keystore
        .batch_delete_keys(as_user(batch, "alice"))
        .await
        .unwrap();
    flush(&recorder).await;

    let entries = entries(&audit).await;
    let methods: Vec<&str> = entries.iter().map(|e| e.method.as_str()).collect();
    // The delete (level none) recorded nothing; the batch recorded its call and two operations.
    assert_eq!(
        methods,
        [
            CREATE,
            CREATE,
            LIST,
            BATCH_DELETE,
            BATCH_DELETE,
            BATCH_DELETE
        ]
    );
    assert_eq!(recorder.stats().recorded, 6);

    // request_response: both messages, as proto3 JSON.
    assert_eq!(
        details(&entries[0]),
        json!({
            "request": {"name": "alpha"},
            "response": {"key": {"name": "alpha", "createdBy": "alice"}},
        })
    );
    // metadata (bob's rule came first): no message at all.
    assert_eq!(entries[1].resource, "keys/beta");
    assert_eq!(details(&entries[1]), json!({}));
    // A server stream: the request, the first response and how many there were.
    assert_eq!(
        details(&entries[2]),
        json!({
            "request": {},
            "response": {"key": {"name": "alpha", "createdBy": "alice"}},
            "response_messages": 2.0,
        })
    );
    // request: the request only; the operations are recorded as the handler made them.
    let batch_call = entries
        .iter()
        .find(|e| e.method == BATCH_DELETE && e.event == "KEYS_BATCH_DELETED")
        .expect("the batch call's entry");
    assert_eq!(
        details(batch_call),
        json!({"request": {"names": ["alpha", "gamma"]}})
    );
    let operations: Vec<&str> = entries
        .iter()
        .filter(|e| e.event == "KEY_DELETED")
        .map(|e| e.resource.as_str())
        .collect();
    assert_eq!(operations.len(), 2, "{operations:?}");
}

#[tokio::test]
async fn a_status_condition_refines_the_level_and_a_file_policy_loads() {
    let audit_server = TestServer::start().await;
    let audit = audit_server.client().await;
    let recorder = recorder(&audit);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.toml");
    std::fs::write(
        &path,
        format!(
            "default_level = \"none\"\n\
             [[rule]]\nmethods = [\"{CREATE}\"]\ncodes = [\"ALREADY_EXISTS\"]\nlevel = \"request\"\n\
             [[rule]]\nmethods = [\"{CREATE}\"]\nlevel = \"none\"\n"
        ),
    )
    .unwrap();
    let policy = CapturePolicy::load(&path).expect("the policy file loads");
    let layer = audit_layer(recorder.clone())
        .capture_policy(policy)
        .descriptors(descriptors());
    let host = Host::start(layer).await;
    let mut keystore = host.keystore().await;

    keystore.create_key(create("alpha", "alice")).await.unwrap();
    let exists = keystore.create_key(create("alpha", "alice")).await;
    assert_eq!(exists.unwrap_err().code(), Code::AlreadyExists);
    // Default level none: other methods record nothing.
    keystore
        .list_keys(as_user(ks::ListKeysRequest::default(), "alice"))
        .await
        .unwrap();
    flush(&recorder).await;

    let entries = entries(&audit).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].status_code, Code::AlreadyExists as i32);
    assert_eq!(details(&entries[0]), json!({"request": {"name": "alpha"}}));
}

#[tokio::test]
async fn messages_over_the_limit_are_a_marker_and_unknown_methods_are_base64() {
    let audit_server = TestServer::start().await;
    let audit = audit_server.client().await;
    let recorder = recorder(&audit);
    let limit = 32;
    let policy = CapturePolicy::new()
        .max_message_bytes(limit)
        .rule(Rule::new(Level::Request).method(pattern(CREATE)));
    let layer = audit_layer(recorder.clone())
        .capture_policy(policy.clone())
        .descriptors(descriptors());
    let host = Host::start(layer).await;
    let mut keystore = host.keystore().await;
    // Without descriptors, the same rules record the message's bytes.
    let bare = Host::start(audit_layer(recorder.clone()).capture_policy(policy)).await;

    let short = "k".repeat(10); // {"name":"kkkkkkkkkk"}: 21 bytes of JSON
    let long = "k".repeat(40); // 42 bytes of protobuf: over the limit
    let edge = "k".repeat(25); // 27 bytes of protobuf, 36 of JSON: over as JSON only
    for name in [&short, &long, &edge] {
        keystore.create_key(create(name, "alice")).await.unwrap();
    }
    bare.keystore()
        .await
        .create_key(create("b", "alice"))
        .await
        .unwrap();
    flush(&recorder).await;

    let entries = entries(&audit).await;
    let captured: Vec<Value> = entries
        .iter()
        .map(|e| details(e)["request"].clone())
        .collect();
    assert_eq!(
        captured,
        [
            json!({"name": short}),
            json!({"truncated": true, "message_bytes": 42.0, "limit": 32.0}),
            json!({"truncated": true, "message_bytes": 27.0, "limit": 32.0}),
            // Field 1, length 1, "b".
            json!({"message_bytes": 3.0, "base64": "CgFi"}),
        ]
    );
}

#[tokio::test]
async fn a_fail_closed_rule_refuses_while_a_fail_open_rule_serves() {
    let audit_server = TestServer::start().await;
    let audit = Client::connect_lazy(audit_server.uri()).unwrap();
    let recorder = recorder(&audit);
    let deadline = Duration::from_secs(1);
    let policy = CapturePolicy::new()
        .rule(
            Rule::new(Level::Metadata)
                .method(pattern(CREATE))
                .fail_closed(deadline),
        )
        .rule(Rule::new(Level::Metadata).method(pattern(LIST)).fail_open());
    // The layer's own default is fail-closed: the fail-open rule overrides it for ListKeys.
    let layer = audit_layer(recorder.clone())
        .fail_closed(deadline)
        .capture_policy(policy);
    let host = Host::start(layer).await;
    let mut keystore = host.keystore().await;
    keystore
        .create_key(create("before", "alice"))
        .await
        .unwrap();
    flush(&recorder).await;

    assert!(audit_server.stop().await.success());

    // The first call runs but its entry cannot be stored in time: refused at the deadline.
    let started = Instant::now();
    let refused = keystore
        .create_key(create("during", "alice"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(started.elapsed() < deadline + Duration::from_secs(2));
    // Now known down: refused without running.
    let refused = keystore
        .create_key(create("never", "alice"))
        .await
        .unwrap_err();
    assert_eq!(refused.message(), "audit trail unavailable");
    // The fail-open rule serves, while its entry waits in the queue.
    let mut listed = keystore
        .list_keys(as_user(ks::ListKeysRequest::default(), "alice"))
        .await
        .expect("fail-open serves while the trail is down")
        .into_inner();
    let mut names = Vec::new();
    while let Some(key) = listed.message().await.unwrap() {
        names.push(key.key.unwrap().name);
    }
    // "never" was not created: the refused call did not run.
    assert_eq!(names, ["before", "during"]);
    assert!(!recorder.is_available());
    assert!(recorder.stats().queued >= 1);
}

#[tokio::test]
async fn the_redaction_hook_sees_every_entry_before_it_is_queued() {
    let audit_server = TestServer::start().await;
    let audit = audit_server.client().await;
    let recorder = recorder(&audit);
    let policy = CapturePolicy::new()
        .rule(Rule::new(Level::Request).method(pattern("/keystore.v1.KeyStore/*")));
    let layer = audit_layer(recorder.clone())
        .capture_policy(policy)
        .descriptors(descriptors())
        .redact(|entry: &mut pb::AuditEntry| {
            if let Some(details) = entry.details.as_mut() {
                details.fields.remove("request");
                details
                    .fields
                    .insert("request".into(), prost_types::Value::from("[redacted]"));
            }
            entry.labels.insert("redacted".into(), "yes".into());
        });
    let host = Host::start(layer).await;
    let mut keystore = host.keystore().await;
    keystore
        .create_key(create("secret", "alice"))
        .await
        .unwrap();
    let batch = ks::BatchDeleteKeysRequest {
        names: vec!["secret".into()],
    };
    keystore
        .batch_delete_keys(as_user(batch, "alice"))
        .await
        .unwrap();
    flush(&recorder).await;

    let entries = entries(&audit).await;
    assert_eq!(entries.len(), 3);
    assert!(
        entries
            .iter()
            .all(|e| e.labels.get("redacted").map(String::as_str) == Some("yes"))
    );
    // The call entries had their captured request replaced; the operation had none.
    let redacted: Vec<Value> = entries.iter().map(details).collect();
    assert_eq!(
        redacted,
        [
            json!({"request": "[redacted]"}),
            json!({"request": "[redacted]"}),
            json!({}),
        ]
    );
}

#[tokio::test]
async fn the_servers_redaction_rules_applied_in_the_layer_give_the_servers_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k1.key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    let key_arg = format!("k1={}", key.display());
    let audit_server = TestServer::start_with_args(&[
        "--redact",
        "caller.principal",
        "--redaction-key-file",
        &key_arg,
    ])
    .await;
    let audit = audit_server.client().await;
    let recorder = recorder(&audit);
    // The same rules and key in the service: the principal never leaves it in clear.
    let redactor = audit_redact::Redactor::new(
        audit_redact::RedactionRules::parse(&["caller.principal".to_string()]).unwrap(),
        vec![audit_redact::RedactionKey::load(&key_arg).unwrap()],
        None,
    )
    .unwrap();
    let host = Host::start(audit_layer(recorder.clone()).redact(redactor)).await;
    let mut keystore = host.keystore().await;
    keystore.create_key(create("k", "alice")).await.unwrap();
    flush(&recorder).await;
    let entries = entries(&audit).await;
    assert_eq!(entries.len(), 1);
    let principal = &entries[0].caller.as_ref().unwrap().principal;
    // Hashed once, in the service, exactly as the server hashes a known value.
    let expected = audit.hash_value("alice", "").await.unwrap().hash;
    assert_eq!(principal, &expected);
    assert!(principal.starts_with("hmac-sha256:k1:"), "{principal}");
}
