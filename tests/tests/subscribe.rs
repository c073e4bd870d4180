//! Subscribe: replay then live with no gap or duplicate, filters, heartbeats, slow subscribers,
//! the subscriber cap, and resumption by the client across a server restart.

use std::time::Duration;

use audit_client::{Client, RetryPolicy, Start, pb};
use audit_tests::{PATIENCE, TestServer, assert_gapless, entry, take_entries};
use pb::subscribe_response::Message;
use tonic::Code;

/// Starts `writers` tasks that each record `per_writer` entries, one call at a time.
fn spawn_writers(
    client: &Client,
    writers: usize,
    per_writer: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    client
                        .record(
                            entry("writer", "/load.v1.Load/Write")
                                .resource(format!("w{w}/{i}"))
                                .build(),
                        )
                        .await
                        .expect("record");
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_then_live_has_no_gap_or_duplicate_while_writers_run() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let history: Vec<_> = (0..300)
        .map(|i| entry("seed", "/a.B/C").resource(format!("{i}")).build())
        .collect();
    client.record_batch("", history).await.expect("seed");

    let writers = spawn_writers(&client, 4, 150);
    // Subscribe while the writers run, from the start of the log: the replay and the live tail
    // meet somewhere in the middle of the writes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut subscription = client.subscribe(pb::Filter::default(), Start::AfterSequence(0));
    let entries = take_entries(&mut subscription, 900).await;
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_gapless(&entries, 1);
    let late = client
        .record(entry("late", "/a.B/C").build())
        .await
        .expect("record");
    let next = take_entries(&mut subscription, 1).await;
    assert_eq!(next[0].sequence, late.sequence);
    assert_eq!(late.sequence, 901);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_subscriber_does_not_hold_writers_and_later_gets_everything() {
    let server = TestServer::start().await;
    let client = server.client().await;
    // A subscriber that reads nothing: its stream buffers and HTTP/2 window fill up quickly.
    let mut stalled = client
        .raw()
        .subscribe(pb::SubscribeRequest {
            start: Some(pb::StartPosition {
                position: Some(pb::start_position::Position::AfterSequence(0)),
            }),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();

    // About 6 MB of entries, far more than any buffer between the server and the subscriber.
    let padding = "x".repeat(2000);
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = client.clone();
            let padding = padding.clone();
            tokio::spawn(async move {
                for i in 0..375 {
                    client
                        .record(
                            entry("writer", "/a.B/C")
                                .resource(format!("w{w}/{i}"))
                                .status(2, padding.clone())
                                .build(),
                        )
                        .await
                        .expect("record");
                }
            })
        })
        .collect();
    // Writers must finish while the subscriber reads nothing.
    tokio::time::timeout(PATIENCE, futures::future::join_all(writers))
        .await
        .expect("writers finished while a subscriber was stalled")
        .into_iter()
        .for_each(|w| w.expect("writer"));

    let mut received = Vec::new();
    while received.len() < 3000 {
        let message = tokio::time::timeout(PATIENCE, stalled.message())
            .await
            .expect("stalled subscriber catches up")
            .expect("stream")
            .expect("stream open");
        if let Some(Message::Entry(entry)) = message.message {
            received.push(entry);
        }
    }
    assert_gapless(&received, 1);
}

#[tokio::test]
async fn filters_apply_to_replay_and_live_and_heartbeats_report_progress() {
    let server = TestServer::start_with_args(&["--heartbeat-interval", "200ms"]).await;
    let client = server.client().await;
    client
        .record_batch(
            "",
            [
                entry("kms", "/kms.v1.Keys/Delete")
                    .outcome(pb::Outcome::Denied)
                    .build(),
                entry("kms", "/kms.v1.Keys/Get").build(),
                entry("billing", "/billing.v1.Billing/Charge")
                    .outcome(pb::Outcome::Denied)
                    .build(),
            ],
        )
        .await
        .expect("seed");
    let filter = pb::Filter {
        source: "kms".into(),
        outcomes: vec![pb::Outcome::Denied as i32],
        ..Default::default()
    };
    let mut stream = client
        .raw()
        .subscribe(pb::SubscribeRequest {
            filter: Some(filter),
            start: Some(pb::StartPosition {
                position: Some(pb::start_position::Position::AfterSequence(0)),
            }),
        })
        .await
        .expect("subscribe")
        .into_inner();
    client
        .record(
            entry("kms", "/kms.v1.Keys/Create")
                .outcome(pb::Outcome::Denied)
                .build(),
        )
        .await
        .expect("live match");
    client
        .record(entry("kms", "/kms.v1.Keys/Create").build())
        .await
        .expect("live non-match");

    let mut entries = Vec::new();
    let mut heartbeat_at = None;
    while heartbeat_at != Some(5) {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("message in time")
            .expect("stream")
            .expect("open");
        match message.message.expect("message") {
            Message::Entry(entry) => entries.push(entry.sequence),
            Message::Heartbeat(heartbeat) => {
                assert!(heartbeat.time.is_some());
                heartbeat_at = Some(heartbeat.sequence);
            }
        }
    }
    assert_eq!(entries, [1, 4], "only matching entries, replayed then live");
}

#[tokio::test]
async fn subscriptions_start_now_by_default_or_at_a_received_time() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .record(entry("old", "/a.B/C").build())
        .await
        .expect("old");
    let mut now = client
        .raw()
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    client
        .record(entry("new", "/a.B/C").build())
        .await
        .expect("new");
    let mut messages = Vec::new();
    for _ in 0..2 {
        let message = tokio::time::timeout(PATIENCE, now.message())
            .await
            .expect("in time")
            .expect("stream")
            .expect("open");
        messages.push(message.message.expect("message"));
    }
    // First where the stream starts (after the old entry), then the new entry.
    assert!(
        matches!(&messages[0], Message::Heartbeat(h) if h.sequence == 1),
        "{messages:?}"
    );
    assert!(
        matches!(&messages[1], Message::Entry(e) if e.source == "new" && e.sequence == 2),
        "{messages:?}"
    );

    let cut = cut.duration_since(std::time::UNIX_EPOCH).unwrap();
    let mut from_time = client.subscribe(
        pb::Filter::default(),
        Start::ReceivedTime(prost_types::Timestamp {
            seconds: cut.as_secs() as i64,
            nanos: cut.subsec_nanos() as i32,
        }),
    );
    let replayed = take_entries(&mut from_time, 1).await;
    assert_eq!(replayed[0].source, "new");
    assert_eq!(replayed[0].sequence, 2);
}

#[tokio::test]
async fn too_many_subscribers_get_resource_exhausted() {
    let server = TestServer::start_with_args(&["--max-subscribers", "2"]).await;
    let client = server.client().await;
    let open = || {
        let mut raw = client.raw();
        async move { raw.subscribe(pb::SubscribeRequest::default()).await }
    };
    let first = open().await.expect("first");
    let _second = open().await.expect("second");
    let refused = open().await.expect_err("third");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("too many subscribers"),
        "{}",
        refused.message()
    );

    drop(first);
    let mut reopened = None;
    for _ in 0..100 {
        match open().await {
            Ok(stream) => {
                reopened = Some(stream);
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reopened.is_some(),
        "a slot frees up when a subscriber leaves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_resumes_after_a_server_restart_without_gap_or_duplicate() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let policy =
        RetryPolicy::default().backoff(Duration::from_millis(50), Duration::from_millis(200));
    let mut subscription =
        client.subscribe_with(pb::Filter::default(), Start::AfterSequence(0), policy);
    for i in 0..5 {
        client
            .record(entry("before", "/a.B/C").resource(format!("{i}")).build())
            .await
            .expect("record");
    }
    let before = take_entries(&mut subscription, 5).await;
    assert_gapless(&before, 1);

    let server = server.restart().await;
    let client = server.client().await;
    for i in 0..5 {
        client
            .record(entry("after", "/a.B/C").resource(format!("{i}")).build())
            .await
            .expect("record after restart");
    }
    let after = take_entries(&mut subscription, 5).await;
    assert_gapless(&after, 6);
    assert!(after.iter().all(|e| e.source == "after"));
}
