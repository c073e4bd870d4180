//! Recording entries and reading them back with Query: every field, every filter, pages.

use std::time::{Duration, SystemTime};

use audit_client::{QueryOptions, pb};
use audit_tests::{TestServer, all_entries, entry, query};
use futures::TryStreamExt;
use pb::{Level, Order, Outcome};
use prost_types::{Timestamp, Value, value::Kind};
use tonic::Code;

fn timestamp(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

#[tokio::test]
async fn every_field_round_trips() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let sent = pb::AuditEntry {
        id: "0190b5a8-1c2d-7e3f-8a4b-5c6d7e8f9a0b".into(),
        sequence: 999, // ignored: the server assigns sequences
        request_id: "req-1".into(),
        time: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
        }),
        received_time: Some(timestamp(1)), // ignored: the server's own
        source: "kms".into(),
        method: "/kms.v1.Keys/Delete".into(),
        event: "KEY_DELETED".into(),
        category: "KEY_MANAGEMENT".into(),
        resource: "keys/k1".into(),
        level: Level::Warning as i32,
        outcome: Outcome::Denied as i32,
        status_code: Code::PermissionDenied as i32,
        status_message: "not allowed\nreally".into(),
        caller: Some(pb::Caller {
            peer: Some(pb::caller::Peer::Network(pb::NetworkPeer {
                address: "10.1.2.3:4444".into(),
                spiffe_id: "spiffe://prod/billing".into(),
                certificate_subject: "CN=billing".into(),
            })),
            principal: "alice".into(),
            role: "admin".into(),
            session_id: "s-9".into(),
            user_agent: "grpc-go/1.60".into(),
        }),
        recorder: Some(pb::Recorder {
            peer: Some(pb::recorder::Peer::Unix(pb::UnixPeer {
                uid: 0,
                gid: 0,
                pid: 1,
                binary_path: "/forged".into(),
            })),
        }),
        latency: Some(prost_types::Duration {
            seconds: 1,
            nanos: 500,
        }),
        details: Some(prost_types::Struct {
            fields: [(
                "reason".to_string(),
                Value {
                    kind: Some(Kind::StringValue("rotation".into())),
                },
            )]
            .into(),
        }),
        labels: [("region".to_string(), "eu".to_string())].into(),
        entry_hash: vec![9; 32], // ignored: the server computes it
        chain_hash: vec![9; 32], // ignored: the server computes it
    };
    let before = SystemTime::now();
    let receipt = client.record(sent.clone()).await.expect("record");
    assert_eq!(receipt.id, sent.id);
    assert_eq!(receipt.sequence, 1);

    let stored = all_entries(&client).await;
    assert_eq!(stored.len(), 1);
    let got = stored[0].clone();
    let received = SystemTime::UNIX_EPOCH
        + Duration::new(
            got.received_time.unwrap().seconds as u64,
            got.received_time.unwrap().nanos as u32,
        );
    assert!(received >= before - Duration::from_secs(1) && received <= SystemTime::now());
    match got.recorder.as_ref().and_then(|r| r.peer.as_ref()) {
        Some(pb::recorder::Peer::Network(peer)) => {
            assert!(peer.address.starts_with("127.0.0.1:"), "{peer:?}")
        }
        other => panic!("recorder must come from the connection, got {other:?}"),
    }
    let entry_hash = audit_ledger::entry_hash(&got);
    assert_eq!(
        receipt.entry_hash, entry_hash,
        "the receipt names the stored entry"
    );
    let expected = pb::AuditEntry {
        sequence: 1,
        received_time: got.received_time,
        recorder: got.recorder.clone(),
        entry_hash: entry_hash.to_vec(),
        chain_hash: audit_ledger::chain_hash(&audit_ledger::CHAIN_START, &entry_hash).to_vec(),
        ..sent
    };
    assert_eq!(got, expected);
}

#[tokio::test]
async fn server_fills_missing_fields() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let receipt = client
        .record(entry("app", "/a.B/C").build())
        .await
        .expect("record");
    let got = all_entries(&client).await.remove(0);
    assert_eq!(got.id, receipt.id);
    let id = uuid::Uuid::parse_str(&got.id).expect("uuid id");
    assert_eq!(id.get_version_num(), 7);
    assert!(uuid::Uuid::parse_str(&got.request_id).is_ok());
    assert_eq!(got.time, got.received_time);
    assert_eq!(got.level, Level::Info as i32);
}

#[tokio::test]
async fn invalid_entries_name_the_field_and_store_nothing() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let cases: Vec<(pb::AuditEntry, &str)> = vec![
        (entry("", "/a.B/C").build(), "entry.source"),
        (entry("app", "").build(), "entry.method"),
        (entry("app", "not-a-method").build(), "entry.method"),
        (
            pb::AuditEntry {
                outcome: 0,
                ..entry("app", "/a.B/C").build()
            },
            "entry.outcome",
        ),
        (
            pb::AuditEntry {
                status_code: 17,
                ..entry("app", "/a.B/C").build()
            },
            "entry.status_code",
        ),
        (entry("app", "/a.B/C").id("nope").build(), "entry.id"),
        (
            entry("app", "/a.B/C").resource("x".repeat(2000)).build(),
            "entry.resource",
        ),
    ];
    for (bad, field) in cases {
        let error = client.record(bad).await.expect_err(field);
        let status = error.status().expect("a gRPC status");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().starts_with(field),
            "message `{}` names {field}",
            status.message()
        );
        let fields: Vec<_> = error
            .field_violations()
            .into_iter()
            .map(|(field, _)| field)
            .collect();
        assert_eq!(fields, [field]);
    }
    let missing = client
        .raw()
        .record(pb::RecordRequest { entry: None })
        .await
        .expect_err("no entry");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(missing.message(), "entry: required");
    assert!(all_entries(&client).await.is_empty());
}

#[tokio::test]
async fn limits_are_configurable() {
    let server = TestServer::start_with_args(&[
        "--max-field-bytes",
        "16",
        "--max-labels",
        "2",
        "--max-entry-bytes",
        "400",
    ])
    .await;
    let client = server.client().await;
    let error = client
        .record(entry("a-source-that-is-too-long", "/a.B/C").build())
        .await
        .unwrap_err();
    assert_eq!(
        error.status().unwrap().message(),
        "entry.source: is 25 bytes, more than the limit of 16"
    );
    let error = client
        .record(
            entry("app", "/a.B/C")
                .label("a", "1")
                .label("b", "2")
                .label("c", "3")
                .build(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.field_violations()[0].0, "entry.labels");
    let error = client
        .record(entry("app", "/a.B/C").status(2, "y".repeat(500)).build())
        .await
        .unwrap_err();
    assert_eq!(error.field_violations()[0].0, "entry");
    assert_eq!(error.status().unwrap().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn oversized_messages_are_refused_and_the_server_keeps_serving() {
    let server = TestServer::start_with_args(&["--max-message-bytes", "10000"]).await;
    let client = server.client().await;
    let big: Vec<_> = (0..200)
        .map(|i| {
            entry("app", "/a.B/C")
                .resource(format!("resource-{i:0>60}"))
                .build()
        })
        .collect();
    let error = client.record_batch("", big).await.unwrap_err();
    let status = error.status().expect("status");
    // The code gRPC's own implementations use, as the README says.
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("10000"), "{}", status.message());
    client
        .record(entry("app", "/a.B/C").build())
        .await
        .expect("still serving");
    assert_eq!(all_entries(&client).await.len(), 1);
}

/// Records a small, varied log for the filter tests.
async fn record_sample(client: &audit_client::Client) {
    let samples = [
        entry("billing", "/billing.v1.Billing/Charge")
            .principal("alice")
            .resource("invoices/1")
            .event("CHARGED")
            .category("PAYMENTS")
            .time(SystemTime::UNIX_EPOCH + Duration::from_secs(1000))
            .label("region", "eu"),
        entry("billing", "/billing.v1.Billing/Refund")
            .principal("bob")
            .outcome(Outcome::Denied)
            .status(7, "no")
            .resource("invoices/2")
            .time(SystemTime::UNIX_EPOCH + Duration::from_secs(2000))
            .level(Level::Warning)
            .label("region", "us"),
        entry("kms", "/kms.v1.Keys/Delete")
            .principal("alice")
            .spiffe_id("spiffe://prod/billing/api")
            .outcome(Outcome::Error)
            .status(13, "boom")
            .resource("keys/k1")
            .time(SystemTime::UNIX_EPOCH + Duration::from_secs(3000))
            .level(Level::Critical)
            .label("region", "eu")
            .label("tier", "gold"),
        entry("kms", "/kms.v1.Keys/Create")
            .principal("carol")
            .spiffe_id("spiffe://prod/kms")
            .request_id("req-7")
            .resource("keys/k2")
            .event("KEY_CREATED")
            .time(SystemTime::UNIX_EPOCH + Duration::from_secs(4000)),
    ];
    for sample in samples {
        client.record(sample.build()).await.expect("record sample");
    }
}

async fn sequences(client: &audit_client::Client, filter: pb::Filter) -> Vec<u64> {
    query(client, filter)
        .await
        .iter()
        .map(|e| e.sequence)
        .collect()
}

#[tokio::test]
async fn every_filter_field_is_applied() {
    let server = TestServer::start().await;
    let client = server.client().await;
    record_sample(&client).await;
    let f = pb::Filter::default;
    let cases: Vec<(pb::Filter, Vec<u64>)> = vec![
        (f(), vec![1, 2, 3, 4]),
        (
            pb::Filter {
                source: "kms".into(),
                ..f()
            },
            vec![3, 4],
        ),
        (
            pb::Filter {
                request_id: "req-7".into(),
                ..f()
            },
            vec![4],
        ),
        (
            pb::Filter {
                method: "/billing.v1.Billing/Refund".into(),
                ..f()
            },
            vec![2],
        ),
        (
            pb::Filter {
                method: "/billing.v1.Billing/*".into(),
                ..f()
            },
            vec![1, 2],
        ),
        (
            pb::Filter {
                method: "/billing.v1.Billing/".into(),
                ..f()
            },
            vec![],
        ),
        (
            pb::Filter {
                principal: "alice".into(),
                ..f()
            },
            vec![1, 3],
        ),
        (
            pb::Filter {
                spiffe_id: "spiffe://prod/kms".into(),
                ..f()
            },
            vec![4],
        ),
        (
            pb::Filter {
                spiffe_id: "spiffe://prod/*".into(),
                ..f()
            },
            vec![3, 4],
        ),
        (
            pb::Filter {
                outcomes: vec![Outcome::Denied as i32, Outcome::Error as i32],
                ..f()
            },
            vec![2, 3],
        ),
        (
            pb::Filter {
                status_codes: vec![13],
                ..f()
            },
            vec![3],
        ),
        (
            pb::Filter {
                event: "CHARGED".into(),
                ..f()
            },
            vec![1],
        ),
        (
            pb::Filter {
                category: "PAYMENTS".into(),
                ..f()
            },
            vec![1],
        ),
        (
            pb::Filter {
                resource: "keys/*".into(),
                ..f()
            },
            vec![3, 4],
        ),
        (
            pb::Filter {
                resource: "invoices/2".into(),
                ..f()
            },
            vec![2],
        ),
        (
            pb::Filter {
                min_level: Level::Warning as i32,
                ..f()
            },
            vec![2, 3],
        ),
        (
            pb::Filter {
                start_time: Some(timestamp(2000)),
                end_time: Some(timestamp(4000)),
                ..f()
            },
            vec![2, 3],
        ),
        (
            pb::Filter {
                labels: [("region".to_string(), "eu".to_string())].into(),
                ..f()
            },
            vec![1, 3],
        ),
        (
            pb::Filter {
                labels: [
                    ("region".to_string(), "eu".to_string()),
                    ("tier".to_string(), "gold".to_string()),
                ]
                .into(),
                ..f()
            },
            vec![3],
        ),
        (
            pb::Filter {
                source: "kms".into(),
                principal: "alice".into(),
                ..f()
            },
            vec![3],
        ),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            sequences(&client, filter.clone()).await,
            expected,
            "{filter:?}"
        );
    }
}

#[tokio::test]
async fn pages_follow_tokens_in_both_orders() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let batch: Vec<_> = (0..25)
        .map(|i| entry("app", "/a.B/C").resource(format!("r{i}")).build())
        .collect();
    client.record_batch("", batch).await.expect("batch");

    let mut raw = client.raw();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = raw
            .query(pb::QueryRequest {
                page_size: 10,
                page_token: token.clone(),
                order: Order::Descending as i32,
                ..Default::default()
            })
            .await
            .expect("query")
            .into_inner();
        pages += 1;
        seen.extend(page.entries.iter().map(|e| e.sequence));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (1..=25).rev().collect::<Vec<_>>());

    let ascending: Vec<u64> = client
        .query(pb::Filter::default(), QueryOptions::new().page_size(7))
        .map_ok(|e| e.sequence)
        .try_collect()
        .await
        .expect("query");
    assert_eq!(ascending, (1..=25).collect::<Vec<_>>());

    let first = raw
        .query(pb::QueryRequest {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let misuse = raw
        .query(pb::QueryRequest {
            page_size: 10,
            page_token: first.next_page_token,
            filter: Some(pb::Filter {
                source: "other".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("token of another filter");
    assert_eq!(misuse.code(), Code::InvalidArgument);
    assert!(
        misuse.message().starts_with("page_token:"),
        "{}",
        misuse.message()
    );
}

#[tokio::test]
async fn invalid_filters_name_the_field() {
    let server = TestServer::start().await;
    let mut raw = server.client().await.raw();
    let status = raw
        .query(pb::QueryRequest {
            filter: Some(pb::Filter {
                status_codes: vec![99],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("filter.status_codes[0]:"));
    let status = raw
        .query(pb::QueryRequest {
            order: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(status.message().starts_with("order:"));
}
