//! The Rust client against the real server: subscriptions that resume across restarts and
//! crashes, refusals, giving up, heartbeat progress, and queries that follow page tokens.
//!
//! A `Subscription` only talks to the server while it is polled, so a test that stops polling
//! while the server restarts and entries are recorded knows exactly where the client must
//! resume.

use std::time::{Duration, Instant};

use audit_client::{Client, QueryOptions, RetryPolicy, Start, Subscription, pb};
use audit_tests::{PATIENCE, TestServer, all_entries, assert_gapless, entry, take_entries};
use futures::{StreamExt, TryStreamExt};
use tonic::Code;

/// Polls `subscription` (which must yield nothing meanwhile) until its resume position is
/// `expected`, failing after [`PATIENCE`].
async fn wait_for_resume_position(subscription: &mut Subscription, expected: u64) {
    let deadline = Instant::now() + PATIENCE;
    while subscription.resume_after() != Some(expected) {
        assert!(
            Instant::now() < deadline,
            "resume position is {:?}, expected Some({expected})",
            subscription.resume_after()
        );
        // `next` is cancel-safe: a timeout only stops polling.
        if let Ok(next) = tokio::time::timeout(Duration::from_millis(50), subscription.next()).await
        {
            panic!("expected no entry, got {next:?}");
        }
    }
}

async fn record_n(client: &Client, source: &str, count: usize) -> Vec<pb::RecordResponse> {
    let mut receipts = Vec::with_capacity(count);
    for i in 0..count {
        receipts.push(
            client
                .record(entry(source, "/a.B/C").resource(format!("{i}")).build())
                .await
                .expect("record"),
        );
    }
    receipts
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy::unlimited().backoff(Duration::from_millis(20), Duration::from_millis(100))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_resumes_after_a_graceful_restart_without_gap_or_duplicate() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mut subscription = client.subscribe_with(
        pb::Filter::default(),
        Start::AfterSequence(0),
        fast_retries(),
    );
    record_n(&client, "before", 4).await;
    let before = take_entries(&mut subscription, 4).await;
    assert_gapless(&before, 1);
    assert_eq!(subscription.resume_after(), Some(4));

    // Entries recorded while the client is away (it is not polled), then more while it
    // reconnects and after.
    let server = server.restart().await;
    let writer_client = server.client().await;
    record_n(&writer_client, "away", 3).await;
    let writer = tokio::spawn(async move { record_n(&writer_client, "live", 20).await });
    let after = take_entries(&mut subscription, 23).await;
    writer.await.expect("writer");
    assert_gapless(&after, 5);
    assert!(after[..3].iter().all(|e| e.source == "away"));
    assert!(after[3..].iter().all(|e| e.source == "live"));

    // What the subscriber saw is exactly what is stored.
    let stored = all_entries(&server.client().await).await;
    let seen: Vec<_> = before.iter().chain(&after).map(|e| &e.id).collect();
    let stored: Vec<_> = stored.iter().map(|e| &e.id).collect();
    assert_eq!(seen, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_resumes_after_a_crash_without_gap_or_duplicate() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let filter = pb::Filter {
        source: "kept".into(),
        ..Default::default()
    };
    let mut subscription = client.subscribe_with(filter, Start::AfterSequence(0), fast_retries());
    // Interleave entries the filter skips, so the resume point is not just "the last sequence".
    for _ in 0..3 {
        record_n(&client, "kept", 1).await;
        record_n(&client, "skipped", 1).await;
    }
    let before = take_entries(&mut subscription, 3).await;
    let sequences: Vec<_> = before.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [1, 3, 5]);

    let server = server.crash_and_restart().await;
    let client = server.client().await;
    for _ in 0..3 {
        record_n(&client, "skipped", 1).await;
        record_n(&client, "kept", 1).await;
    }
    let after = take_entries(&mut subscription, 3).await;
    let sequences: Vec<_> = after.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [8, 10, 12]);
    assert!(after.iter().all(|e| e.source == "kept"));
    // Nothing more: no duplicate shows up late.
    let late = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
    assert!(late.is_err(), "unexpected {late:?}");
}

#[tokio::test]
async fn start_now_resumes_from_the_opening_heartbeat_after_an_early_restart() {
    let server = TestServer::start().await;
    let client = server.client().await;
    record_n(&client, "old", 3).await;
    let mut subscription = client.subscribe_with(pb::Filter::default(), Start::Now, fast_retries());
    assert_eq!(subscription.resume_after(), None);
    // The server's first message says where "now" is.
    wait_for_resume_position(&mut subscription, 3).await;

    // The server restarts before any entry; one is recorded before the client reconnects. A
    // client that asked for "now" again would miss it.
    let server = server.restart().await;
    let client = server.client().await;
    let missed_by_now = client
        .record(entry("while-away", "/a.B/C").build())
        .await
        .expect("record");
    let first = take_entries(&mut subscription, 1).await;
    assert_eq!(first[0].sequence, missed_by_now.sequence);
    assert_eq!(first[0].source, "while-away");
    let later = client
        .record(entry("later", "/a.B/C").build())
        .await
        .expect("record");
    let second = take_entries(&mut subscription, 1).await;
    assert_eq!(second[0].sequence, later.sequence);
}

#[tokio::test]
async fn heartbeats_advance_the_resume_position_past_filtered_out_entries() {
    let server = TestServer::start_with_args(&["--heartbeat-interval", "200ms"]).await;
    let client = server.client().await;
    let nothing = pb::Filter {
        source: "nobody".into(),
        ..Default::default()
    };
    let mut subscription =
        client.subscribe_with(nothing.clone(), Start::AfterSequence(0), fast_retries());
    wait_for_resume_position(&mut subscription, 0).await;
    record_n(&client, "someone", 5).await;
    wait_for_resume_position(&mut subscription, 5).await;

    // After a restart it resumes from there: the next matching entry is the first it yields.
    let server = server.restart().await;
    let client = server.client().await;
    record_n(&client, "someone", 2).await;
    let receipt = client
        .record(entry("nobody", "/a.B/C").build())
        .await
        .expect("record");
    let got = take_entries(&mut subscription, 1).await;
    assert_eq!(got[0].sequence, receipt.sequence);
    assert_eq!(receipt.sequence, 8);
}

#[tokio::test]
async fn a_refused_subscription_yields_the_error_once_and_ends() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let invalid = pb::Filter {
        status_codes: vec![99],
        ..Default::default()
    };
    // Even with unlimited retries: a refusal is not retried.
    let mut subscription = client.subscribe_with(invalid, Start::Now, RetryPolicy::unlimited());
    let error = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("answer in time")
        .expect("one item")
        .expect_err("refused");
    assert_eq!(error.code(), Some(Code::InvalidArgument), "{error}");
    assert!(!error.is_retryable());
    let fields: Vec<_> = error
        .field_violations()
        .into_iter()
        .map(|(field, _)| field)
        .collect();
    assert!(
        fields.iter().any(|f| f.contains("status_codes")),
        "{fields:?}"
    );
    let end = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("ends in time");
    assert!(end.is_none(), "expected the end, got {end:?}");
}

#[tokio::test]
async fn a_subscription_gives_up_when_its_server_is_gone_for_good() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let policy = RetryPolicy::default()
        .max_consecutive_failures(Some(3))
        .backoff(Duration::from_millis(10), Duration::from_millis(20));
    let mut subscription = client.subscribe_with(pb::Filter::default(), Start::Now, policy);
    // Open (the server's first message says where "now" is) before recording.
    wait_for_resume_position(&mut subscription, 0).await;
    let receipt = record_n(&client, "last", 1).await;
    let seen = take_entries(&mut subscription, 1).await;
    assert_eq!(seen[0].id, receipt[0].id);

    let status = server.stop().await;
    assert!(status.success(), "{status}");
    let began = Instant::now();
    let error = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("gives up in bounded time")
        .expect("one item")
        .expect_err("gave up");
    let took = began.elapsed();
    assert_eq!(error.code(), Some(Code::Unavailable), "{error}");
    // It waited 10 + 20 + 20 ms between its attempts before giving up.
    assert!(took >= Duration::from_millis(50), "gave up after {took:?}");
    assert!(subscription.next().await.is_none());
}

#[tokio::test]
async fn a_subscription_to_a_stopped_server_gives_up() {
    let server = TestServer::start().await;
    let uri = server.uri();
    server.stop().await;
    let client = Client::connect_lazy(uri).expect("valid uri");
    let policy = RetryPolicy::default()
        .max_consecutive_failures(Some(3))
        .backoff(Duration::from_millis(10), Duration::from_millis(20));
    let mut subscription = client.subscribe_with(pb::Filter::default(), Start::Now, policy);
    let began = Instant::now();
    let error = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("gives up in bounded time")
        .expect("one item")
        .expect_err("gave up");
    assert_eq!(error.code(), Some(Code::Unavailable), "{error}");
    assert!(error.is_retryable());
    assert!(
        began.elapsed() >= Duration::from_millis(50),
        "{:?}",
        began.elapsed()
    );
    assert!(subscription.next().await.is_none());
}

/// 25 entries; the odd-numbered ones are DENIED.
async fn seeded_server() -> (TestServer, Client) {
    let server = TestServer::start().await;
    let client = server.client().await;
    let entries = (1..=25).map(|i| {
        let outcome = if i % 2 == 1 {
            pb::Outcome::Denied
        } else {
            pb::Outcome::Success
        };
        entry("pager", "/a.B/C")
            .resource(format!("{i}"))
            .outcome(outcome)
            .build()
    });
    client.record_batch("", entries).await.expect("seed");
    (server, client)
}

async fn sequences(client: &Client, filter: pb::Filter, options: QueryOptions) -> Vec<u64> {
    client
        .query(filter, options)
        .map_ok(|e| e.sequence)
        .try_collect()
        .await
        .expect("query")
}

#[tokio::test]
async fn query_follows_page_tokens_in_both_orders() {
    let (_server, client) = seeded_server().await;
    // The server really pages at this size, so the stream has to follow tokens.
    let first = client
        .query_page(pb::QueryRequest {
            page_size: 4,
            ..Default::default()
        })
        .await
        .expect("page");
    assert_eq!(first.entries.len(), 4);
    assert!(!first.next_page_token.is_empty());

    let small_pages = QueryOptions::new().page_size(4);
    let ascending = sequences(&client, pb::Filter::default(), small_pages).await;
    assert_eq!(ascending, (1..=25).collect::<Vec<_>>());
    let descending = sequences(
        &client,
        pb::Filter::default(),
        small_pages.order(pb::Order::Descending),
    )
    .await;
    assert_eq!(descending, (1..=25).rev().collect::<Vec<_>>());

    // With a filter, across pages.
    let denied = pb::Filter {
        outcomes: vec![pb::Outcome::Denied as i32],
        ..Default::default()
    };
    let odd: Vec<u64> = (1..=25).step_by(2).collect();
    assert_eq!(sequences(&client, denied.clone(), small_pages).await, odd);
    assert_eq!(
        sequences(&client, denied, small_pages.order(pb::Order::Descending)).await,
        odd.iter().rev().copied().collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn query_honours_the_limit_in_both_orders() {
    let (_server, client) = seeded_server().await;
    let all = pb::Filter::default;
    let pages = QueryOptions::new().page_size(4);
    assert_eq!(
        sequences(&client, all(), pages.limit(10)).await,
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        sequences(&client, all(), pages.order(pb::Order::Descending).limit(10)).await,
        (16..=25).rev().collect::<Vec<_>>()
    );
    // A limit on a page boundary, a limit of one with the server's page size, and a limit
    // beyond the log.
    assert_eq!(
        sequences(&client, all(), pages.limit(8)).await,
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(
        sequences(
            &client,
            all(),
            QueryOptions::new().order(pb::Order::Descending).limit(1)
        )
        .await,
        [25]
    );
    assert_eq!(
        sequences(&client, all(), pages.limit(100)).await,
        (1..=25).collect::<Vec<_>>()
    );
    let denied = pb::Filter {
        outcomes: vec![pb::Outcome::Denied as i32],
        ..Default::default()
    };
    assert_eq!(
        sequences(&client, denied, pages.order(pb::Order::Descending).limit(5)).await,
        [25, 23, 21, 19, 17]
    );
}
