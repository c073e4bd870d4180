//! Bad input the protobuf decoder or a JSON encoder would choke on gets INVALID_ARGUMENT naming
//! the field, changes nothing, and stays small enough for every gRPC client to read.

use audit_client::pb;
use audit_tests::{TestServer, all_entries, entry};
use prost_types::{Struct, Value, value::Kind};
use tonic::Code;
use tonic_types::StatusExt;

/// `details` holding `value` under `key`.
fn details(key: &str, value: Value) -> Struct {
    Struct {
        fields: [(key.to_string(), value)].into_iter().collect(),
    }
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

/// `details` with `depth` structs, one inside the other.
fn nested(depth: usize) -> Struct {
    let mut inner = Struct::default();
    for _ in 1..depth {
        inner = details(
            "k",
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        );
    }
    inner
}

fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| (v.field, v.description))
        .collect()
}

#[tokio::test]
async fn non_finite_numbers_in_details_are_refused() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for (bad, shown) in [
        (f64::NAN, "NaN"),
        (f64::INFINITY, "inf"),
        (f64::NEG_INFINITY, "-inf"),
    ] {
        let mut sent = entry("app", "/a.B/C").build();
        sent.details = Some(details("amount", number(bad)));
        let status = client
            .record(sent)
            .await
            .unwrap_err()
            .status()
            .unwrap()
            .clone();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(
            violations(&status),
            [(
                "entry.details.amount".to_string(),
                format!("{shown} is not a finite number (JSON has no NaN or Infinity)")
            )]
        );
    }
    let mut fine = entry("app", "/a.B/C").build();
    fine.details = Some(details("amount", number(12.5)));
    client.record(fine).await.expect("finite numbers are fine");
    assert_eq!(all_entries(&client).await.len(), 1);
}

#[tokio::test]
async fn details_nested_too_deeply_get_invalid_argument() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mut deepest = entry("app", "/a.B/C").build();
    deepest.details = Some(nested(32));
    client.record(deepest).await.expect("32 levels are fine");
    for depth in [33, 34, 60] {
        let mut deep = entry("app", "/a.B/C").build();
        deep.details = Some(nested(depth));
        let status = client
            .record(deep)
            .await
            .unwrap_err()
            .status()
            .unwrap()
            .clone();
        assert_eq!(status.code(), Code::InvalidArgument, "{depth}: {status:?}");
        let (field, description) = violations(&status).remove(0);
        assert!(field.starts_with("entry.details"), "{field}");
        assert_eq!(description, "nested more than 32 levels deep");

        let mut deep = entry("app", "/a.B/C").build();
        deep.details = Some(nested(depth));
        let error = client.record_batch("", [deep]).await.unwrap_err();
        let status = error.status().unwrap().clone();
        assert_eq!(status.code(), Code::InvalidArgument, "{depth}: {status:?}");
        assert!(status.message().contains("nested more than 32 levels deep"));
    }
    assert_eq!(all_entries(&client).await.len(), 1);
}

/// A batch id whose every violation quotes 900 bytes that percent-encoding triples.
fn long_request_id() -> String {
    "\u{fffd}".repeat(300)
}

/// A batch of bad entries with four violations each: a request id other than the batch's, and
/// no source, method or outcome.
fn bad_batch(count: usize) -> Vec<pb::AuditEntry> {
    (0..count)
        .map(|_| pb::AuditEntry {
            request_id: "other".into(),
            ..Default::default()
        })
        .collect()
}

#[tokio::test]
async fn a_batch_of_many_bad_entries_gets_bounded_details() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let status = client
        .record_batch(long_request_id(), bad_batch(1000))
        .await
        .unwrap_err()
        .status()
        .unwrap()
        .clone();
    assert_eq!(status.code(), Code::InvalidArgument);
    let listed = violations(&status);
    assert_eq!(listed.len(), 11, "{listed:?}");
    assert_eq!(listed[0].0, "entries[0].request_id");
    assert!(listed[0].1.starts_with("must be empty or equal to"));
    assert_eq!(listed[1].0, "entries[0].source");
    assert_eq!(
        listed[10],
        (
            "entries".to_string(),
            "3990 more invalid fields not listed".to_string()
        )
    );
    // What travels in the trailers, with room to spare under gRPC's usual 8 KiB.
    let mut headers = http::HeaderMap::new();
    status.add_header(&mut headers).unwrap();
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    assert!(size < 4096, "{size} bytes of status metadata");
    assert!(all_entries(&client).await.is_empty());
}

/// The Python SDK's interpreter (grpcio, gRPC's C core), installed by
/// `sdk-examples/python/install`, which `scripts/test` runs before these tests.
fn sdk_python() -> std::path::PathBuf {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sdk-examples/python/.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run sdk-examples/python/install first",
        python.display()
    );
    python
}

/// Sends a RecordBatch of 1000 bad entries with grpcio and prints the status code it sees.
const PYTHON_BAD_BATCH: &str = r#"
import sys, grpc
from audit.v1 import entry_pb2, service_pb2, service_pb2_grpc
stub = service_pb2_grpc.AuditServiceStub(grpc.insecure_channel(sys.argv[1]))
entries = [entry_pb2.AuditEntry(request_id="other") for _ in range(1000)]
try:
    stub.RecordBatch(service_pb2.RecordBatchRequest(request_id=sys.argv[2], entries=entries), timeout=10)
    print("OK")
except grpc.RpcError as error:
    print(error.code().name)
"#;

#[tokio::test]
async fn a_c_core_client_sees_invalid_argument_for_a_batch_of_many_bad_entries() {
    let server = TestServer::start().await;
    let output = tokio::process::Command::new(sdk_python())
        .args(["-c", PYTHON_BAD_BATCH, &server.addr.to_string()])
        .arg(long_request_id())
        .output()
        .await
        .expect("run python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "INVALID_ARGUMENT"
    );
}

/// Sends a Record larger than the server's message limit with grpcio, over TCP and the Unix
/// socket, and prints the status code it sees each time.
const PYTHON_OVERSIZE: &str = r#"
import sys, grpc
from audit.v1 import entry_pb2, service_pb2, service_pb2_grpc
entry = entry_pb2.AuditEntry(source="py", method="/a.B/C", status_message="x" * 300_000)
for target in sys.argv[1:]:
    stub = service_pb2_grpc.AuditServiceStub(grpc.insecure_channel(target))
    try:
        stub.Record(service_pb2.RecordRequest(entry=entry), timeout=10)
        print("OK")
    except grpc.RpcError as error:
        print(error.code().name)
"#;

#[tokio::test]
async fn a_c_core_client_sees_resource_exhausted_for_an_oversized_message() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("audit.sock");
    let socket_arg = socket.to_str().unwrap();
    let server = TestServer::start_with_args(&[
        "--max-message-bytes",
        "100000",
        "--unix-socket",
        socket_arg,
    ])
    .await;
    let output = tokio::process::Command::new(sdk_python())
        .args(["-c", PYTHON_OVERSIZE, &server.addr.to_string()])
        .arg(format!("unix:{socket_arg}"))
        .output()
        .await
        .expect("run python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "RESOURCE_EXHAUSTED\nRESOURCE_EXHAUSTED"
    );
}

#[tokio::test]
async fn a_batch_mixing_a_retry_and_a_new_entry_answers_with_the_new_request_id() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let first = entry("kms", "/kms.v1.Keys/Delete")
        .random_id()
        .resource("keys/a")
        .build();
    let retry = first.clone();
    let earlier = client
        .record_batch("", [first.clone()])
        .await
        .expect("first batch");
    let new = entry("kms", "/kms.v1.Keys/Delete")
        .resource("keys/b")
        .build();
    let receipt = client
        .record_batch("", [first, new])
        .await
        .expect("retry with a new entry");
    assert_eq!(receipt.sequences, [1, 2]);
    assert_ne!(receipt.request_id, earlier.request_id);
    let found = audit_tests::query(
        &client,
        pb::Filter {
            request_id: receipt.request_id.clone(),
            ..Default::default()
        },
    )
    .await;
    let resources: Vec<_> = found.iter().map(|e| e.resource.as_str()).collect();
    assert_eq!(
        resources,
        ["keys/b"],
        "the new entry is found by the receipt's id"
    );

    // A batch of nothing but retries answers with the id they were stored with.
    let again = client.record_batch("", [retry]).await.expect("pure retry");
    assert_eq!(again.request_id, earlier.request_id);
    assert_eq!(again.sequences, [1]);
}
