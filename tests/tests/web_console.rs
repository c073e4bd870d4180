//! The web console against the real `audit-server`: its JSON API (filters, paging, one entry,
//! downloads, checkpoint, proofs, chart counts), the live tail as Server-Sent Events resuming
//! from `Last-Event-ID`, its security headers, hostile entry content in its output, and callers
//! refused (and recorded) or let in by a bearer token.

#[path = "web_console/harness.rs"]
mod harness;
#[path = "web_console/https.rs"]
mod https;

use std::path::Path;
use std::time::Duration;

use audit_client::{Client, pb};
use audit_tests::{PATIENCE, entry};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use harness::{Answer, Console};

fn sequences(page: &Value) -> Vec<u64> {
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_str().unwrap().parse().unwrap())
        .collect()
}

async fn record(client: &Client, entries: impl IntoIterator<Item = pb::AuditEntry>) {
    for e in entries {
        client.record(e).await.unwrap();
    }
}

#[tokio::test]
async fn entries_are_filtered_paged_and_downloaded() {
    let console = Console::start(&[]).await;
    let client = console.client().await;
    record(
        &client,
        (0..5u32).map(|i| {
            entry("billing", "/billing.v1.Billing/Charge")
                .principal("alice")
                .label("env", if i.is_multiple_of(2) { "prod" } else { "dev" })
                .build()
        }),
    )
    .await;
    record(
        &client,
        [
            entry("kms", "/kms.v1.Keys/Delete")
                .outcome(pb::Outcome::Denied)
                .status(7, "no")
                .build(),
            entry("kms", "/kms.v1.Keys/Get").build(),
        ],
    )
    .await;

    // Pages of two follow the page token to the end, without overlap.
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page = console
            .json(&format!(
                "/api/entries?source=billing&page_size=2&page_token={token}"
            ))
            .await;
        seen.extend(sequences(&page));
        token = page["nextPageToken"].as_str().unwrap().to_string();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    let newest = console.json("/api/entries?order=desc&page_size=1").await;
    assert_eq!(sequences(&newest), [7]);

    // Each filter field narrows the search.
    for (query, expected) in [
        ("outcome=DENIED", vec![6]),
        ("status_code=PERMISSION_DENIED", vec![6]),
        ("method=%2Fkms.v1.Keys%2F*", vec![6, 7]),
        ("label=env%3Dprod", vec![1, 3, 5]),
        ("principal=alice&label=env%3Ddev", vec![2, 4]),
        ("source=kms&outcome=success", vec![7]),
    ] {
        let page = console.json(&format!("/api/entries?{query}")).await;
        assert_eq!(sequences(&page), expected, "{query}");
    }

    // Bad input is refused naming the parameter.
    for (query, field) in [
        ("outcome=MAYBE", "outcome"),
        ("page_token=forged", "page_token"),
        (
            "start_time=2026-02-01T00:00:00Z&end_time=2026-01-01T00:00:00Z",
            "end_time",
        ),
        ("colour=red", "colour"),
        ("order=sideways", "order"),
    ] {
        let answer = console.get(&format!("/api/entries?{query}")).await;
        assert_eq!(answer.status, 400, "{query}");
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["violations"][0]["field"], field, "{query}: {body}");
    }

    // One entry, and one that is not there.
    let one = console.json("/api/entries/6").await;
    assert_eq!(one["method"], "/kms.v1.Keys/Delete");
    assert_eq!(one["statusCode"], 7);
    assert_eq!(console.get("/api/entries/99").await.status, 404);
    assert_eq!(console.get("/api/entries/zero").await.status, 400);

    // Downloads: JSON lines and CSV of the same page.
    let lines = console.get("/api/entries?source=kms&format=jsonl").await;
    assert_eq!(lines.header("content-type"), Some("application/x-ndjson"));
    assert!(
        lines
            .header("content-disposition")
            .unwrap()
            .starts_with("attachment")
    );
    assert_eq!(lines.body.lines().count(), 2);
    // A download holds every matching entry, read page by page.
    let all = console
        .get("/api/entries?source=billing&format=jsonl&page_size=2")
        .await;
    let downloaded: Vec<u64> = all
        .body
        .lines()
        .map(|line| {
            let entry: Value = serde_json::from_str(line).unwrap();
            entry["sequence"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(downloaded, [1, 2, 3, 4, 5]);
    let csv = console.get("/api/entries?source=kms&format=csv").await;
    let rows: Vec<&str> = csv.body.lines().collect();
    assert!(rows[0].starts_with("time,sequence,outcome,status,caller,method"));
    assert!(
        rows[1].contains("\"DENIED\",\"PERMISSION_DENIED\""),
        "{}",
        rows[1]
    );
}

#[tokio::test]
async fn every_answer_carries_the_security_headers_and_nothing_writes() {
    let console = Console::start(&[]).await;
    for path in [
        "/",
        "/assets/app.js",
        "/api/entries",
        "/api/nothing",
        "/assets/nope.js",
    ] {
        let answer = console.get(path).await;
        let csp = answer.header("content-security-policy").unwrap_or("");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}");
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(answer.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(answer.header("cache-control"), Some("no-store"));
    }
    let page = console.get("/").await;
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(!page.body.contains("<script>"), "no inline script");
    assert!(!page.body.contains("style="), "no inline style");
    let script = console.get("/assets/app.js").await;
    assert!(
        script
            .header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(!script.body.contains("innerHTML"));
    for method in ["POST", "PUT", "DELETE"] {
        let mut stream = console.send(method, "/api/entries", &[]).await;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        assert_eq!(Answer::parse(&raw).status, 405, "{method}");
    }
}

#[tokio::test]
async fn hostile_entry_content_reaches_the_api_escaped() {
    let console = Console::start(&[]).await;
    let client = console.client().await;
    let hostile = "</script><img src=x onerror=alert(1)>\u{1b}[31m\u{202e}\u{2028}\"'";
    record(
        &client,
        [entry("evil", "/x.v1.X/Y")
            .principal(hostile)
            .resource(hostile)
            .label("k", hostile)
            .detail("html", hostile)
            .build()],
    )
    .await;
    for path in [
        "/api/entries",
        "/api/entries/1",
        "/api/entries?format=jsonl",
    ] {
        let answer = console.get(path).await;
        assert_ne!(answer.header("content-type"), Some("text/html"));
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        for raw in ['\u{1b}', '\u{202e}', '\u{2028}'] {
            assert!(
                !answer.body.contains(raw),
                "{path}: raw {raw:?} in {}",
                answer.body
            );
        }
        assert!(answer.body.contains("\\u001b") && answer.body.contains("\\u202e"));
    }
    // Escaped, and still the same text once parsed.
    let one = console.json("/api/entries/1").await;
    assert_eq!(one["caller"]["principal"], hostile);
    assert_eq!(one["resource"], hostile);
    assert_eq!(one["labels"]["k"], hostile);
    assert_eq!(one["details"]["html"], hostile);
    let csv = console.get("/api/entries?format=csv").await;
    assert!(!csv.body.contains('\u{1b}') && !csv.body.contains('\u{202e}'));
}

/// Reads SSE events from `stream` until `count` `entry` events arrived: their ids and data.
async fn entry_events(
    stream: &mut TcpStream,
    buffer: &mut String,
    count: usize,
) -> Vec<(u64, Value)> {
    let mut events = Vec::new();
    let mut chunk = [0u8; 8192];
    while events.len() < count {
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                event
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::to_string)
            };
            if field("event: ").as_deref() == Some("entry") {
                let id = field("id: ").unwrap().parse().unwrap();
                let data = serde_json::from_str(&field("data: ").unwrap()).unwrap();
                events.push((id, data));
            }
        }
        if events.len() >= count {
            break;
        }
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} events arrived", events.len()))
            .unwrap();
        assert!(read > 0, "the tail ended early");
        buffer.push_str(std::str::from_utf8(&chunk[..read]).unwrap());
    }
    events
}

#[tokio::test]
async fn the_live_tail_resumes_from_last_event_id_without_a_gap() {
    let console = Console::start(&[]).await;
    let client = console.client().await;
    let tail_entry =
        |i: usize| entry(if i.is_multiple_of(2) { "a" } else { "b" }, "/t.v1.T/M").build();
    record(&client, (0..4).map(tail_entry)).await;

    // Resume after entry 1: entries 2 to 4 from the store, then 5 and 6 live, in order.
    let mut stream = console
        .send("GET", "/api/tail", &[("Last-Event-ID", "1")])
        .await;
    let mut buffer = String::new();
    let replayed = entry_events(&mut stream, &mut buffer, 3).await;
    assert!(buffer.is_empty() || !buffer.contains("event: entry"));
    record(&client, (4..6).map(tail_entry)).await;
    let live = entry_events(&mut stream, &mut buffer, 2).await;
    let ids: Vec<u64> = replayed.iter().chain(&live).map(|(id, _)| *id).collect();
    assert_eq!(ids, [2, 3, 4, 5, 6]);
    for (id, data) in replayed.iter().chain(&live) {
        assert_eq!(
            data["sequence"],
            id.to_string(),
            "id: is the entry's sequence"
        );
    }
    drop(stream);

    // A browser reconnecting after event 4 gets 5 and 6 again, nothing before, nothing missing.
    let mut again = console
        .send("GET", "/api/tail", &[("Last-Event-ID", "4")])
        .await;
    let mut buffer = String::new();
    let resumed = entry_events(&mut again, &mut buffer, 2).await;
    assert_eq!(
        resumed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [5, 6]
    );

    // Filters apply; without Last-Event-ID a tail starts now.
    let mut filtered = console.send("GET", "/api/tail?source=b", &[]).await;
    let mut buffer = String::new();
    // The first heartbeat says where the tail starts; entries come after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    record(&client, (6..10).map(tail_entry)).await;
    let only_b = entry_events(&mut filtered, &mut buffer, 2).await;
    assert_eq!(
        only_b.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [8, 10]
    );
    assert!(only_b.iter().all(|(_, e)| e["source"] == "b"));

    let bad = console
        .get_with("/api/tail", &[("Last-Event-ID", "yesterday")])
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("Last-Event-ID"));
}

#[tokio::test]
async fn proofs_verify_against_the_signed_checkpoint_and_stats_count() {
    let console = Console::start(&[]).await;
    let client = console.client().await;
    let outcomes = [
        pb::Outcome::Success,
        pb::Outcome::Success,
        pb::Outcome::Denied,
        pb::Outcome::Error,
        pb::Outcome::Success,
    ];
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let principal = if i < 3 { "alice" } else { "bob" };
        record(
            &client,
            [entry("s", "/s.v1.S/M")
                .outcome(outcome)
                .principal(principal)
                .build()],
        )
        .await;
    }
    let mut checkpoint = Value::Null;
    for _ in 0..100 {
        checkpoint = console.json("/api/checkpoint").await;
        if checkpoint["checkpoint"]["size"] == "5" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(checkpoint["checkpoint"]["size"], "5", "{checkpoint}");
    let proof = console.json("/api/proof/3").await;
    let key = audit_ledger::PublicKey::from_text(proof["publicKey"].as_str().unwrap()).unwrap();
    let signed = key
        .open(proof["checkpoint"]["note"].as_str().unwrap())
        .expect("the note is signed by the server's key");
    let hash = |text: &Value| -> [u8; 32] {
        let text = text.as_str().unwrap();
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    };
    let path: Vec<[u8; 32]> = proof["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(hash)
        .collect();
    assert!(signed.verify_inclusion(3, &hash(&proof["entryHash"]), &path));
    assert!(!signed.verify_inclusion(2, &hash(&proof["entryHash"]), &path));
    assert_eq!(
        console.get("/api/proof/6").await.status,
        409,
        "not yet covered"
    );

    let stats = console.json("/api/stats?bucket=minute").await;
    assert_eq!(stats["total"], 5);
    let sum = |outcome: &str| -> u64 {
        stats["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b[outcome].as_u64().unwrap())
            .sum()
    };
    assert_eq!((sum("success"), sum("denied"), sum("error")), (3, 1, 1));
    assert_eq!(stats["buckets"].as_array().unwrap().len(), 60);
    assert_eq!(stats["principals"][0]["value"], "alice");
    assert_eq!(stats["principals"][0]["count"], 3);
    assert_eq!(stats["methods"][0]["count"], 5);
    let denied = console.json("/api/stats?bucket=hour&outcome=DENIED").await;
    assert_eq!(denied["total"], 1);
    let bad = console.get("/api/stats?bucket=week").await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("\"field\":\"bucket\""));
    let too_many = console
        .get("/api/stats?bucket=minute&start_time=2020-01-01T00:00:00Z")
        .await;
    assert_eq!(too_many.status, 400);
}

/// An HTTP Basic `Authorization` value (standard base64, written here to keep the test's
/// dependencies as they are).
fn basic(user: &str, password: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = format!("{user}:{password}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    tokio::fs::write(&path, text).await.unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn callers_need_read_and_refusals_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let desk = "desk-token-0123456789abcdef";
    let viewer = "viewer-token-0123456789abcdef";
    let tokens = write(
        dir.path(),
        "tokens",
        &format!("desk {desk}\nviewer {viewer}\n"),
    )
    .await;
    let policy = write(
        dir.path(),
        "policy.toml",
        "[[grant]]\nto = [\"token:desk\"]\nallow = [\"read\"]\n",
    )
    .await;
    let console = Console::start_in(dir, &["--policy", &policy, "--web-token-file", &tokens]).await;

    // Loopback is not enough under a policy; an unknown token neither; both are 401 and invite
    // the browser to send a token.
    let anonymous = console.get("/api/entries").await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(
        anonymous
            .header("www-authenticate")
            .unwrap()
            .starts_with("Basic")
    );
    let page = console.get("/").await;
    assert_eq!(page.status, 401, "the page itself is guarded");
    let wrong = console
        .get_with(
            "/api/entries",
            &[("Authorization", "Bearer not-a-token-at-all")],
        )
        .await;
    assert_eq!(wrong.status, 401);
    // A known token without the permission is 403.
    let bearer = format!("Bearer {viewer}");
    let forbidden = console
        .get_with("/api/checkpoint", &[("Authorization", bearer.as_str())])
        .await;
    assert_eq!(forbidden.status, 403);
    assert!(
        forbidden
            .body
            .contains("token:viewer does not have the `read` permission")
    );

    // The desk's token, as a bearer token or as a browser's Basic password, is let in, and
    // sees each refusal as a DENIED entry of the server.
    let bearer = format!("Bearer {desk}");
    let page = console
        .get_with("/", &[("Authorization", basic("anyone", desk).as_str())])
        .await;
    assert_eq!(page.status, 200);
    let refusals = console
        .get_with(
            "/api/entries?source=audit-server&outcome=DENIED",
            &[("Authorization", bearer.as_str())],
        )
        .await;
    assert_eq!(refusals.status, 200, "{}", refusals.body);
    let refusals: Value = serde_json::from_str(&refusals.body).unwrap();
    let methods: Vec<&str> = refusals["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "GET /api/entries",
            "GET /",
            "GET /api/entries",
            "GET /api/checkpoint"
        ]
    );
    let first = &refusals["entries"][0];
    assert_eq!(first["statusCode"], 16, "UNAUTHENTICATED");
    assert_eq!(first["labels"]["permission"], "read");
    assert!(
        first["caller"]["network"]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(refusals["entries"][3]["statusCode"], 7, "PERMISSION_DENIED");
}

#[tokio::test]
async fn live_tails_count_against_the_subscriber_limit() {
    let console = Console::start(&["--max-subscribers", "1"]).await;
    let mut first = console.send("GET", "/api/tail", &[]).await;
    let mut opening = [0u8; 64];
    let read = tokio::time::timeout(PATIENCE, first.read(&mut opening))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&opening[..read]).starts_with("HTTP/1.0 200"));
    let second = console.get("/api/tail").await;
    assert_eq!(second.status, 429, "{}", second.body);
    assert!(second.body.contains("too many subscribers"));
    drop(first);
    // The first tail's slot is given back once its connection is gone.
    let mut freed = false;
    for _ in 0..50 {
        let mut again = console.send("GET", "/api/tail", &[]).await;
        let mut head = [0u8; 16];
        let read = tokio::time::timeout(PATIENCE, again.read(&mut head))
            .await
            .unwrap()
            .unwrap();
        if head[..read].starts_with(b"HTTP/1.0 200") {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the slot of a closed tail is freed");
}
