//! RecordBatch atomicity and shared request ids; idempotent retries with client-chosen ids.

use audit_client::pb;
use audit_tests::{TestServer, all_entries, entry};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn a_batch_shares_one_request_id() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let operations = ["keys/a", "keys/b", "keys/c"].map(|key| {
        entry("kms", "/kms.v1.Keys/BatchDelete")
            .resource(key)
            .build()
    });
    let receipt = client.record_batch("", operations).await.expect("batch");
    assert_eq!(receipt.sequences, [1, 2, 3]);
    assert_eq!(receipt.ids.len(), 3);
    assert!(uuid::Uuid::parse_str(&receipt.request_id).is_ok());

    let stored = all_entries(&client).await;
    assert_eq!(stored.len(), 3);
    for (entry, id) in stored.iter().zip(&receipt.ids) {
        assert_eq!(entry.request_id, receipt.request_id);
        assert_eq!(&entry.id, id);
    }
    let resources: Vec<_> = stored.iter().map(|e| e.resource.as_str()).collect();
    assert_eq!(resources, ["keys/a", "keys/b", "keys/c"]);

    let named = client
        .record_batch("call-42", [entry("kms", "/kms.v1.Keys/Get").build()])
        .await
        .expect("batch with id");
    assert_eq!(named.request_id, "call-42");
    assert_eq!(named.sequences, [4]);
}

#[tokio::test]
async fn a_bad_item_fails_the_whole_batch_and_stores_nothing() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .record(entry("app", "/a.B/C").build())
        .await
        .expect("first entry");
    let batch = vec![
        entry("app", "/a.B/C").build(),
        entry("app", "/a.B/C").build(),
        entry("app", "").build(),
        entry("app", "/a.B/C").request_id("other-call").build(),
    ];
    let error = client.record_batch("call-1", batch).await.unwrap_err();
    let status = error.status().expect("status");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "entries[2].method: required (and 1 more invalid field)"
    );
    let bad_request = status
        .get_details_bad_request()
        .expect("BadRequest details");
    let fields: Vec<_> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["entries[2].method", "entries[3].request_id"]);
    assert_eq!(
        all_entries(&client).await.len(),
        1,
        "nothing of the batch is stored"
    );

    let empty = client
        .record_batch("", Vec::<pb::AuditEntry>::new())
        .await
        .unwrap_err();
    assert_eq!(empty.field_violations()[0].0, "entries");

    let too_many = (0..6).map(|_| entry("app", "/a.B/C").build());
    let server = TestServer::start_with_args(&["--max-batch-entries", "5"]).await;
    let error = server
        .client()
        .await
        .record_batch("", too_many)
        .await
        .unwrap_err();
    assert_eq!(
        error.status().unwrap().message(),
        "entries: 6 entries, more than the limit of 5"
    );
}

#[tokio::test]
async fn duplicate_ids_in_one_batch_are_refused() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let id = uuid::Uuid::now_v7().to_string();
    let error = client
        .record_batch(
            "",
            [
                entry("app", "/a.B/C").id(&id).build(),
                entry("app", "/a.B/C").id(&id).build(),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.field_violations(),
        [(
            "entries[1].id".to_string(),
            "duplicates the id of entries[0]".to_string()
        )]
    );
}

#[tokio::test]
async fn a_retried_id_is_stored_once() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let first = entry("app", "/a.B/C").random_id().resource("r1").build();
    let receipt = client.record(first.clone()).await.expect("record");
    client
        .record(entry("app", "/a.B/C").build())
        .await
        .expect("another entry");
    let retry = client.record(first.clone()).await.expect("retry");
    assert_eq!(retry, receipt, "a retry returns the first receipt");
    assert_eq!(all_entries(&client).await.len(), 2);

    // A retried batch (same ids, server-generated request id) returns the first receipt too.
    let batch: Vec<_> = (0..3)
        .map(|i| {
            entry("app", "/a.B/C")
                .random_id()
                .resource(format!("b{i}"))
                .build()
        })
        .collect();
    let stored = client.record_batch("", batch.clone()).await.expect("batch");
    let again = client.record_batch("", batch).await.expect("batch retry");
    assert_eq!(again, stored);
    assert_eq!(all_entries(&client).await.len(), 5);

    // The same id with other content is not a retry.
    let forged = pb::AuditEntry {
        resource: "r2".into(),
        ..first
    };
    let error = client.record(forged).await.unwrap_err();
    assert_eq!(error.status().unwrap().code(), Code::AlreadyExists);
    assert!(error.status().unwrap().message().starts_with("entry.id:"));
    assert_eq!(all_entries(&client).await.len(), 5);
}

#[tokio::test]
async fn concurrent_retries_of_one_id_store_it_once() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let one = entry("app", "/a.B/C").random_id().build();
    let attempts = (0..16).map(|_| {
        let client = client.clone();
        let one = one.clone();
        tokio::spawn(async move { client.record(one).await.expect("record") })
    });
    let receipts = futures::future::join_all(attempts).await;
    for receipt in receipts {
        assert_eq!(receipt.expect("task").sequence, 1);
    }
    assert_eq!(all_entries(&client).await.len(), 1);
}
