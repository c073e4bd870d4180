//! The `audit` command-line tool, run as a user would run it, against a real server.

use std::process::{Output, Stdio};

use audit_client::pb;
use audit_tests::{PATIENCE, TestServer, all_entries, binary, entry};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// `audit --server URI ARGS…`, run to completion.
async fn audit(uri: &str, args: &[&str], stdin: Option<&str>) -> Output {
    audit_tests::audit_cli(uri, args, stdin).await
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `audit` and requires exit status 0; returns stdout.
async fn audit_ok(uri: &str, args: &[&str], stdin: Option<&str>) -> String {
    let output = audit(uri, args, stdin).await;
    assert!(
        output.status.success(),
        "audit {args:?} exited with {}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Parses a receipt line `id=ID sequence=N`.
fn receipt(line: &str) -> (String, u64) {
    let (id, sequence) = line
        .strip_prefix("id=")
        .and_then(|rest| rest.split_once(" sequence="))
        .unwrap_or_else(|| panic!("not a receipt line: {line:?}"));
    (id.to_string(), sequence.parse().expect("sequence"))
}

#[tokio::test]
async fn record_from_flags_prints_a_receipt_and_stores_the_entry() {
    let server = TestServer::start().await;
    let out = audit_ok(
        &server.uri(),
        &[
            "record",
            "--source",
            "s",
            "--method",
            "/a.B/C",
            "--outcome",
            "denied",
            "--status-code",
            "7",
            "--principal",
            "alice",
            "--label",
            "env=prod",
        ],
        None,
    )
    .await;
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let (id, sequence) = receipt(lines[0]);
    assert_eq!(sequence, 1);

    let stored = all_entries(&server.client().await).await;
    assert_eq!(stored.len(), 1);
    let e = &stored[0];
    assert_eq!(e.id, id);
    assert_eq!(e.sequence, 1);
    assert_eq!(e.source, "s");
    assert_eq!(e.method, "/a.B/C");
    assert_eq!(e.outcome, pb::Outcome::Denied as i32);
    assert_eq!(e.status_code, 7);
    assert_eq!(e.caller.as_ref().expect("caller").principal, "alice");
    assert_eq!(e.labels.get("env").map(String::as_str), Some("prod"));
}

#[tokio::test]
async fn record_reads_an_entry_or_a_batch_as_json_from_stdin() {
    let server = TestServer::start().await;
    let uri = server.uri();
    let one = r#"{"source":"json","method":"/kms.v1.Kms/Get","outcome":"OUTCOME_SUCCESS",
                  "resource":"keys/k1","caller":{"principal":"bob"}}"#;
    let out = audit_ok(&uri, &["record"], Some(one)).await;
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let (single_id, sequence) = receipt(lines[0]);
    assert_eq!(sequence, 1);

    let batch = r#"[
        {"source":"json","method":"/kms.v1.Kms/Delete","outcome":"OUTCOME_DENIED","statusCode":7},
        {"source":"json","method":"/kms.v1.Kms/Delete","outcome":"OUTCOME_SUCCESS","resource":"keys/k2"}
    ]"#;
    let out = audit_ok(&uri, &["record", "--stdin"], Some(batch)).await;
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let request_id = lines[0]
        .strip_prefix("request_id=")
        .unwrap_or_else(|| panic!("no request id line: {out}"));
    assert!(!request_id.is_empty());
    let receipts: Vec<_> = lines[1..].iter().map(|l| receipt(l)).collect();
    assert_eq!(receipts[0].1, 2);
    assert_eq!(receipts[1].1, 3);

    // A batch with a request id of the caller's choosing.
    let out = audit_ok(
        &uri,
        &["record", "--stdin", "--request-id", "req-42"],
        Some(batch),
    )
    .await;
    assert_eq!(out.lines().next(), Some("request_id=req-42"), "{out}");

    let stored = all_entries(&server.client().await).await;
    assert_eq!(stored.len(), 5);
    assert_eq!(stored[0].id, single_id);
    assert_eq!(stored[0].resource, "keys/k1");
    assert_eq!(stored[0].caller.as_ref().expect("caller").principal, "bob");
    for (entry, (id, sequence)) in stored[1..3].iter().zip(&receipts) {
        assert_eq!(&entry.id, id);
        assert_eq!(entry.sequence, *sequence);
        assert_eq!(
            entry.request_id, request_id,
            "a batch shares its request id"
        );
    }
    assert_ne!(stored[0].request_id, request_id);
    assert_eq!(stored[1].outcome, pb::Outcome::Denied as i32);
    assert_eq!(stored[1].status_code, 7);
    assert_eq!(stored[2].resource, "keys/k2");
    assert!(stored[3..].iter().all(|e| e.request_id == "req-42"));
}

#[tokio::test]
async fn record_refuses_invalid_input_naming_the_field_and_stores_nothing() {
    let server = TestServer::start().await;
    let uri = server.uri();
    let output = audit(
        &uri,
        &[
            "record",
            "--source",
            "s",
            "--method",
            "bad",
            "--outcome",
            "success",
        ],
        None,
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(message.contains("entry.method"), "{message}");
    assert!(message.contains("INVALID_ARGUMENT"), "{message}");

    // A batch with one bad item is refused whole.
    let batch = r#"[{"source":"s","method":"/a.B/C","outcome":"OUTCOME_SUCCESS"},
                    {"source":"s","method":"nope","outcome":"OUTCOME_SUCCESS"}]"#;
    let output = audit(&uri, &["record"], Some(batch)).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("entries[1].method"), "{message}");

    // Not JSON at all.
    let output = audit(&uri, &["record"], Some("not json")).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("JSON"), "{}", stderr(&output));

    // Usage errors exit 2.
    let output = audit(
        &uri,
        &["record", "--source", "s", "--method", "/a.B/C"],
        None,
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--outcome"), "{}", stderr(&output));

    assert!(all_entries(&server.client().await).await.is_empty());
}

/// A server holding four entries:
/// 1. billing /billing.v1.Billing/Charge invoices/1 SUCCESS env=prod
/// 2. kms /kms.v1.Kms/Delete keys/k1 DENIED PERMISSION_DENIED env=prod
/// 3. billing /billing.v1.Billing/Refund invoices/2 ERROR env=dev
/// 4. kms /kms.v1.Kms/Get keys/k2 SUCCESS env=prod
async fn seeded_server() -> TestServer {
    let server = TestServer::start().await;
    let client = server.client().await;
    let entries = [
        entry("billing", "/billing.v1.Billing/Charge")
            .resource("invoices/1")
            .principal("alice")
            .label("env", "prod"),
        entry("kms", "/kms.v1.Kms/Delete")
            .resource("keys/k1")
            .outcome(pb::Outcome::Denied)
            .status(7, "not yours")
            .principal("mallory")
            .label("env", "prod"),
        entry("billing", "/billing.v1.Billing/Refund")
            .resource("invoices/2")
            .outcome(pb::Outcome::Error)
            .status(13, "boom")
            .label("env", "dev"),
        entry("kms", "/kms.v1.Kms/Get")
            .resource("keys/k2")
            .label("env", "prod"),
    ];
    for e in entries {
        client.record(e.build()).await.expect("seed");
    }
    server
}

/// The `#N` sequences shown on readable lines.
fn shown_sequences(out: &str) -> Vec<u64> {
    out.lines()
        .map(|line| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix('#'))
                .unwrap_or_else(|| panic!("no #sequence in {line:?}"))
                .parse()
                .expect("sequence")
        })
        .collect()
}

#[tokio::test]
async fn query_prints_one_readable_line_per_entry() {
    let server = seeded_server().await;
    let out = audit_ok(&server.uri(), &["query"], None).await;
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(shown_sequences(&out), [1, 2, 3, 4]);
    for (line, expected) in lines.iter().zip([
        [
            "/billing.v1.Billing/Charge",
            "invoices/1",
            "SUCCESS",
            "alice",
        ],
        [
            "/kms.v1.Kms/Delete",
            "keys/k1",
            "DENIED",
            "PERMISSION_DENIED",
        ],
        [
            "/billing.v1.Billing/Refund",
            "invoices/2",
            "ERROR",
            "INTERNAL",
        ],
        ["/kms.v1.Kms/Get", "keys/k2", "SUCCESS", "OK"],
    ]) {
        for text in expected {
            assert!(line.contains(text), "{text:?} missing from {line:?}");
        }
    }
    assert!(
        !out.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
}

#[tokio::test]
async fn query_json_prints_proto3_json_lines() {
    let server = seeded_server().await;
    let stored = all_entries(&server.client().await).await;
    let out = audit_ok(&server.uri(), &["query", "--json"], None).await;
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for (line, stored) in lines.iter().zip(&stored) {
        let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(value["id"], stored.id.as_str());
        // proto3 JSON: 64-bit integers are strings, names are lowerCamelCase, enums by name.
        assert_eq!(value["sequence"], stored.sequence.to_string());
        assert_eq!(value["requestId"], stored.request_id.as_str());
        assert_eq!(value["source"], stored.source.as_str());
        assert_eq!(value["method"], stored.method.as_str());
        assert_eq!(value["resource"], stored.resource.as_str());
        assert!(value["receivedTime"].is_string(), "{line}");
        assert_eq!(value["labels"]["env"], stored.labels["env"].as_str());
    }
    let denied: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(denied["outcome"], "OUTCOME_DENIED");
    assert_eq!(denied["statusCode"], 7);
    assert_eq!(denied["statusMessage"], "not yours");
    assert_eq!(denied["caller"]["principal"], "mallory");

    // What `query --json` prints, `record` reads back.
    let copy = TestServer::start().await;
    audit_ok(&copy.uri(), &["record"], Some(lines[1])).await;
    let copied = all_entries(&copy.client().await).await;
    assert_eq!(copied.len(), 1);
    assert_eq!(copied[0].id, stored[1].id);
    assert_eq!(copied[0].status_message, "not yours");
}

#[tokio::test]
async fn query_limit_order_and_filters() {
    let server = seeded_server().await;
    let uri = server.uri();
    let query = |args: &'static [&'static str]| {
        let uri = uri.clone();
        async move {
            let mut argv = vec!["query"];
            argv.extend_from_slice(args);
            shown_sequences(&audit_ok(&uri, &argv, None).await)
        }
    };
    assert_eq!(query(&["--limit", "2"]).await, [1, 2]);
    assert_eq!(query(&["--order", "desc"]).await, [4, 3, 2, 1]);
    assert_eq!(query(&["--order", "desc", "--limit", "3"]).await, [4, 3, 2]);
    assert_eq!(
        query(&["--order", "desc", "--page-size", "1"]).await,
        [4, 3, 2, 1]
    );
    assert_eq!(query(&["--source", "kms"]).await, [2, 4]);
    assert_eq!(query(&["--outcome", "denied"]).await, [2]);
    assert_eq!(
        query(&["--outcome", "denied", "--outcome", "error"]).await,
        [2, 3]
    );
    assert_eq!(query(&["--label", "env=prod"]).await, [1, 2, 4]);
    assert_eq!(
        query(&["--label", "env=prod", "--source", "billing"]).await,
        [1]
    );
    assert_eq!(query(&["--method", "/billing.v1.Billing/*"]).await, [1, 3]);
    assert_eq!(query(&["--status-code", "permission_denied"]).await, [2]);
    assert_eq!(query(&["--principal", "alice"]).await, [1]);
    assert!(query(&["--source", "nobody"]).await.is_empty());

    // A bad flag value is a usage error, before any call.
    let output = audit(&uri, &["query", "--outcome", "maybe"], None).await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
}

#[tokio::test]
async fn tail_replays_then_follows_live_entries_and_exits_after_count() {
    let server = seeded_server().await;
    let client = server.client().await;
    let mut tail = Command::new(binary("audit"))
        .args(["--server", &server.uri(), "tail"])
        .args(["--from-sequence", "2", "--count", "5", "--source", "kms"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start audit tail");
    let mut lines = BufReader::new(tail.stdout.take().expect("stdout")).lines();
    let mut next_line = async || {
        tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("a line in time")
            .expect("read stdout")
            .expect("a line before the end")
    };
    // The two stored kms entries from #2 on, replayed.
    let replayed = [next_line().await, next_line().await];
    assert_eq!(shown_sequences(&replayed.join("\n")), [2, 4]);
    assert!(replayed[0].contains("/kms.v1.Kms/Delete"), "{replayed:?}");

    // Then live entries, recorded only now; the filter still applies.
    for (source, resource) in [
        ("kms", "keys/live1"),
        ("billing", "invoices/live"),
        ("kms", "keys/live2"),
        ("kms", "keys/live3"),
    ] {
        client
            .record(entry(source, "/kms.v1.Kms/Get").resource(resource).build())
            .await
            .expect("record");
    }
    let live = [next_line().await, next_line().await, next_line().await];
    assert_eq!(shown_sequences(&live.join("\n")), [5, 7, 8]);
    assert!(live[0].contains("keys/live1"), "{live:?}");
    assert!(live[2].contains("keys/live3"), "{live:?}");

    let status = tokio::time::timeout(PATIENCE, tail.wait())
        .await
        .expect("tail exits after --count entries")
        .expect("wait");
    assert!(status.success(), "{status}");
    assert_eq!(lines.next_line().await.expect("read"), None);
}

#[tokio::test]
async fn control_characters_are_escaped_on_one_line_per_entry() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let principal = "eve\nFORGED 2026-01-01T00:00:00.000Z  #999  SUCCESS";
    let resource = "\x1b[31mred\u{2028}after\r\tend\u{202e}";
    client
        .record(
            entry("evil", "/a.B/C")
                .principal(principal)
                .resource(resource)
                .build(),
        )
        .await
        .expect("record");
    client
        .record(entry("plain", "/a.B/C").resource("ok").build())
        .await
        .expect("record");

    let check = |out: &str, what: &str| {
        assert_eq!(out.lines().count(), 2, "{what}: {out:?}");
        assert_eq!(out.matches('\n').count(), 2, "{what}: {out:?}");
        for forbidden in ['\x1b', '\r', '\t', '\u{2028}', '\u{202e}'] {
            assert!(
                !out.contains(forbidden),
                "{what}: raw {forbidden:?} in {out:?}"
            );
        }
        let first = out.lines().next().unwrap();
        for visible in [
            r"eve\nFORGED",
            r"\x1b[31mred",
            r"\u{2028}after",
            r"\r\tend",
            r"\u{202e}",
        ] {
            assert!(
                first.contains(visible),
                "{what}: {visible} missing: {first}"
            );
        }
        assert_eq!(shown_sequences(out), [1, 2], "{what}");
    };

    let uri = server.uri();
    check(&audit_ok(&uri, &["query"], None).await, "query");
    check(
        &audit_ok(&uri, &["query", "--color", "always"], None)
            .await
            // Colour codes come from the tool; the entry's own ESC must still be escaped.
            .replace("\x1b[0m", "")
            .replace("\x1b[1m", "")
            .replace("\x1b[2m", "")
            .replace("\x1b[32m", "")
            .replace("\x1b[36m", ""),
        "query --color always",
    );
    check(
        &audit_ok(
            &uri,
            &["tail", "--from-sequence", "1", "--count", "2"],
            None,
        )
        .await,
        "tail",
    );

    // JSON lines stay one line each too, and decode back to the original text.
    let out = audit_ok(&uri, &["query", "--json"], None).await;
    assert_eq!(out.lines().count(), 2, "{out:?}");
    for forbidden in ['\x1b', '\r', '\u{2028}', '\u{202e}'] {
        assert!(!out.contains(forbidden), "raw {forbidden:?} in {out:?}");
    }
    let value: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(value["caller"]["principal"], principal);
    assert_eq!(value["resource"], resource);
}

#[tokio::test]
async fn health_reports_serving_or_fails_clearly() {
    let server = TestServer::start().await;
    let out = audit_ok(&server.uri(), &["health"], None).await;
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("(server)"), "{out}");
    assert!(lines[1].starts_with("audit.v1.AuditService"), "{out}");
    assert!(lines.iter().all(|l| l.ends_with(" SERVING")), "{out}");

    let uri = server.uri();
    assert!(server.stop().await.success());
    let output = audit(&uri, &["health", "--timeout", "2"], None).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(message.starts_with("audit: error:"), "{message}");
    assert!(message.contains("cannot connect"), "{message}");
    assert!(message.contains(&uri), "{message}");
}

#[tokio::test]
async fn every_command_has_help() {
    // No server needed: help never connects.
    let nowhere = "http://127.0.0.1:1";
    for args in [
        &["--help"][..],
        &["tail", "--help"],
        &["query", "--help"],
        &["record", "--help"],
        &["health", "--help"],
    ] {
        let out = audit_ok(nowhere, args, None).await;
        assert!(out.contains("Usage: audit"), "{args:?}: {out}");
    }
    let out = audit_ok(nowhere, &["record", "--help"], None).await;
    assert!(out.contains("--source") && out.contains("--stdin"), "{out}");
    let out = audit_ok(nowhere, &["tail", "--help"], None).await;
    assert!(
        out.contains("--from-sequence") && out.contains("--count"),
        "{out}"
    );
}

#[tokio::test]
async fn tail_gives_up_after_max_retries_when_the_server_is_gone() {
    let server = TestServer::start().await;
    let uri = server.uri();
    server
        .client()
        .await
        .record(entry("s", "/a.B/C").build())
        .await
        .expect("record");
    let mut tail = Command::new(binary("audit"))
        .args(["--server", &uri, "tail", "--from-sequence", "1"])
        .args(["--max-retries", "2"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start audit tail");
    // Once it has printed the stored entry it is subscribed; then the server goes away for good.
    let mut lines = BufReader::new(tail.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("a line in time")
        .expect("read stdout");
    assert!(first.is_some_and(|line| line.contains("#1")));
    assert!(server.stop().await.success());
    let status = tokio::time::timeout(PATIENCE, tail.wait())
        .await
        .expect("tail gives up in time")
        .expect("wait");
    assert_eq!(status.code(), Some(1));
    let mut message = String::new();
    tokio::io::AsyncReadExt::read_to_string(tail.stderr.as_mut().expect("stderr"), &mut message)
        .await
        .expect("read stderr");
    assert!(
        message.contains("audit: error: subscription failed"),
        "{message}"
    );
}

#[tokio::test]
async fn tail_resumes_across_a_server_restart_without_gap_or_duplicate() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for i in 0..2 {
        client
            .record(entry("s", "/a.B/C").resource(format!("before{i}")).build())
            .await
            .expect("record");
    }
    let mut tail = Command::new(binary("audit"))
        .args(["--server", &server.uri(), "tail", "--from-sequence", "1"])
        .args(["--count", "4"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start audit tail");
    let mut lines = BufReader::new(tail.stdout.take().expect("stdout")).lines();
    let mut next_line = async || {
        tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("a line in time")
            .expect("read stdout")
            .expect("a line before the end")
    };
    let mut seen = vec![next_line().await, next_line().await];

    let server = server.restart().await;
    let client = server.client().await;
    for i in 0..2 {
        client
            .record(entry("s", "/a.B/C").resource(format!("after{i}")).build())
            .await
            .expect("record after restart");
    }
    seen.push(next_line().await);
    seen.push(next_line().await);
    assert_eq!(shown_sequences(&seen.join("\n")), [1, 2, 3, 4]);
    assert!(
        seen[2].contains("after0") && seen[3].contains("after1"),
        "{seen:?}"
    );
    let status = tokio::time::timeout(PATIENCE, tail.wait())
        .await
        .expect("tail exits after --count entries")
        .expect("wait");
    assert!(status.success(), "{status}");
}

/// Puts NaN into the details of stored entry `sequence` of a stopped server, as a server that
/// accepted non-finite numbers would have stored it.
fn store_nan_details(data_dir: &std::path::Path, sequence: i64) {
    use prost::Message as _;
    let db = rusqlite::Connection::open(data_dir.join("audit.db")).expect("open audit.db");
    let blob: Vec<u8> = db
        .query_row(
            "SELECT entry FROM entries WHERE sequence = ?",
            [sequence],
            |row| row.get(0),
        )
        .expect("stored entry");
    let mut stored = pb::AuditEntry::decode(blob.as_slice()).expect("decode");
    stored.details = Some(prost_types::Struct {
        fields: [(
            "amount".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)),
            },
        )]
        .into_iter()
        .collect(),
    });
    db.execute(
        "UPDATE entries SET entry = ? WHERE sequence = ?",
        rusqlite::params![stored.encode_to_vec(), sequence],
    )
    .expect("rewrite entry");
}

#[tokio::test]
async fn json_export_goes_on_past_an_entry_it_cannot_write() {
    let mut server = seeded_server().await;
    let temp = server.keep_data_dir();
    let data_dir = server.data_dir.clone();
    assert!(server.stop().await.success());
    store_nan_details(&data_dir, 2);
    let server = TestServer::start_in(&data_dir, &[]).await;

    let output = audit(&server.uri(), &["query", "--json"], None).await;
    let sequences: Vec<String> = stdout(&output)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            value["sequence"].as_str().expect("sequence").to_string()
        })
        .collect();
    assert_eq!(sequences, ["1", "3", "4"], "every other entry is exported");
    assert!(
        stderr(&output).contains("skipped entry #2"),
        "{}",
        stderr(&output)
    );
    assert!(!output.status.success(), "the export says it is incomplete");

    let tail = audit(
        &server.uri(),
        &["tail", "--from-sequence", "1", "--count", "3", "--json"],
        None,
    )
    .await;
    assert!(tail.status.success(), "{}", stderr(&tail));
    assert_eq!(stdout(&tail).lines().count(), 3);
    assert!(
        stderr(&tail).contains("skipped entry #2"),
        "{}",
        stderr(&tail)
    );
    drop(temp);
}

#[tokio::test]
async fn invisible_characters_and_column_padding_are_shown() {
    let server = TestServer::start().await;
    let client = server.client().await;
    // Padding that would make the principal look like the method and resource columns.
    let principal = "eve\u{200b}                    /a.B/Forged                   keys/x";
    let resource = "keys/\u{feff}k\u{ad}\u{3164}\u{e0041}\u{a0}";
    client
        .record(
            entry("evil", "/a.B/C")
                .principal(principal)
                .resource(resource)
                .build(),
        )
        .await
        .expect("record");
    let out = audit_ok(&server.uri(), &["query"], None).await;
    let line = out.lines().next().expect("a line");
    for hidden in [
        '\u{200b}',
        '\u{feff}',
        '\u{ad}',
        '\u{3164}',
        '\u{e0041}',
        '\u{a0}',
    ] {
        assert!(!line.contains(hidden), "raw {hidden:?} in {line:?}");
    }
    for shown in [
        r"eve\u{200b}\x20\x20",
        r"keys/\u{feff}k\u{ad}\u{3164}\u{e0041}\u{a0}",
    ] {
        assert!(line.contains(shown), "{shown} missing: {line}");
    }
    // The only gaps of two spaces are the renderer's own, between its seven columns.
    let columns: Vec<&str> = line.split("  ").filter(|c| !c.trim().is_empty()).collect();
    assert_eq!(columns.len(), 7, "{line}");
}

#[tokio::test]
async fn query_and_tail_print_every_format_and_templates() {
    let server = seeded_server().await;
    let uri = server.uri();
    let cef = audit_ok(
        &uri,
        &["query", "--format", "cef", "--outcome", "denied"],
        None,
    )
    .await;
    assert!(
        cef.starts_with("CEF:0|audit|audit-server|")
            && cef.contains("|/kms.v1.Kms/Delete|/kms.v1.Kms/Delete|3|")
            && cef.contains(" suser=mallory ")
            && cef.trim_end().lines().count() == 1,
        "{cef}"
    );
    for format in ["logstash", "ecs", "ocsf", "json"] {
        let out = audit_ok(&uri, &["query", "--format", format], None).await;
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{format}: {e}")))
            .collect();
        assert_eq!(lines.len(), 4, "{format}: {out}");
    }
    let httpd = audit_ok(
        &uri,
        &["query", "--format", "httpd-common", "--limit", "1"],
        None,
    )
    .await;
    assert!(
        httpd.contains(r#" - alice ["#)
            && httpd.contains(r#""/billing.v1.Billing/Charge invoices/1" 0 -"#),
        "{httpd}"
    );
    let template = audit_ok(
        &uri,
        &[
            "query",
            "--template",
            "#%{sequence:03d} %{caller.principal:q} %{labels.env} %{status_name} %{labels.none}",
            "--no-value",
            "n/a",
        ],
        None,
    )
    .await;
    assert_eq!(
        template,
        "#001 \"alice\" prod OK n/a\n#002 \"mallory\" prod PERMISSION_DENIED n/a\n\
         #003 n/a dev INTERNAL n/a\n#004 n/a prod OK n/a\n"
    );
    let tailed = audit_ok(
        &uri,
        &[
            "tail",
            "--from-sequence",
            "3",
            "--count",
            "2",
            "--template",
            "%{sequence} %{method}",
        ],
        None,
    )
    .await;
    assert_eq!(tailed, "3 /billing.v1.Billing/Refund\n4 /kms.v1.Kms/Get\n");

    // Bad formats and templates are refused before anything is printed, saying what and where.
    let unknown = audit(&uri, &["query", "--format", "xml"], None).await;
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("one of: default, json"),
        "{}",
        stderr(&unknown)
    );
    let bad = audit(&uri, &["query", "--template", "ok %{nope}"], None).await;
    assert!(!bad.status.success());
    assert!(stdout(&bad).is_empty());
    assert!(
        stderr(&bad).contains("position 4") && stderr(&bad).contains("unknown variable `nope`"),
        "{}",
        stderr(&bad)
    );
}
