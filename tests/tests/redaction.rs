//! Redaction: configured fields are stored as `hmac-sha256:KEYID:HEX`, never in clear (not in
//! the SQLite files, not in Query or Subscribe); `audit hash` finds them; old hashes stay
//! searchable after a key rotation; bad rules and keys stop the start; `HashValue` is for
//! admins only and audited; a retried id cannot be used to test a guess of a redacted value.

use std::path::{Path, PathBuf};
use std::process::Output;

use audit_client::{Client, Start, pb};
use audit_tests::{TestServer, all_entries, entry, query, start_failure, take_entries};
use tempfile::TempDir;
use tonic::Code;

const PASSWORD: &str = "correct-horse-battery-staple-7f3e";
const PRINCIPAL: &str = "alice.secret@example.com";
const API_TOKEN: &str = "ghp_secret_token_91c4";
const LABEL_SECRET: &str = "label-secret-value-55d0";
/// Not redacted: shows that the store's files are searched where the data is.
const VISIBLE: &str = "visible-resource-marker-0b2c";

/// A key file `ID.key` in `dir` holding 32 bytes of `byte` as hex.
fn key_file(dir: &Path, id: &str, byte: u8) -> PathBuf {
    let path = dir.join(format!("{id}.key"));
    std::fs::write(&path, format!("{}\n", format!("{byte:02x}").repeat(32))).unwrap();
    path
}

/// `audit --server URI ARGS…`, run to completion.
async fn audit(uri: &str, args: &[&str], stdin: Option<&str>) -> Output {
    audit_tests::audit_cli(uri, args, stdin).await
}

/// The hash `audit hash` prints for `value`.
async fn cli_hash(uri: &str, value: &str, key_id: Option<&str>) -> String {
    let mut args = vec!["hash", value];
    if let Some(id) = key_id {
        args.extend(["--key-id", id]);
    }
    let output = audit(uri, &args, None).await;
    assert!(
        output.status.success(),
        "audit hash: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    text.strip_suffix('\n').expect("one line").to_string()
}

fn principal(entry: &pb::AuditEntry) -> &str {
    &entry.caller.as_ref().expect("caller").principal
}

fn detail_text<'a>(entry: &'a pb::AuditEntry, path: &[&str]) -> &'a str {
    use prost_types::value::Kind;
    let mut fields = &entry.details.as_ref().expect("details").fields;
    let (last, parents) = path.split_last().unwrap();
    for key in parents {
        match &fields[*key].kind {
            Some(Kind::StructValue(inner)) => fields = &inner.fields,
            other => panic!("{key} is not a struct: {other:?}"),
        }
    }
    match &fields[*last].kind {
        Some(Kind::StringValue(text)) => text,
        other => panic!("{last} is not text: {other:?}"),
    }
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for item in std::fs::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files.push((path, bytes));
            }
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Asserts that no secret is in any file of `dir`, and that the visible marker is in one.
fn assert_no_secret_in_files(dir: &Path) {
    let files = all_bytes(dir);
    assert!(
        files.iter().any(|(_, bytes)| contains(bytes, VISIBLE)),
        "the unredacted marker is in the store's files"
    );
    for (path, bytes) in &files {
        for secret in [PASSWORD, PRINCIPAL, API_TOKEN, LABEL_SECRET] {
            assert!(
                !contains(bytes, secret),
                "{secret} in clear in {}",
                path.display()
            );
        }
    }
}

fn secret_entry() -> pb::AuditEntry {
    let github = prost_types::Struct {
        fields: [
            ("token".to_string(), prost_types::Value::from(API_TOKEN)),
            ("user".to_string(), prost_types::Value::from("octocat")),
        ]
        .into(),
    };
    entry("billing", "/billing.v1.Billing/Login")
        .resource(VISIBLE)
        .principal(PRINCIPAL)
        .label("secret_api", LABEL_SECRET)
        .label("region", "eu-west-1")
        .detail("password", PASSWORD)
        .detail(
            "github",
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StructValue(github)),
            },
        )
        .build()
}

fn assert_redacted(entry: &pb::AuditEntry) {
    let text = format!("{entry:?}");
    for secret in [PASSWORD, PRINCIPAL, API_TOKEN, LABEL_SECRET] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(principal(entry).starts_with("hmac-sha256:k1:"), "{entry:?}");
    assert!(detail_text(entry, &["password"]).starts_with("hmac-sha256:k1:"));
    assert!(detail_text(entry, &["github", "token"]).starts_with("hmac-sha256:k1:"));
    assert_eq!(detail_text(entry, &["github", "user"]), "octocat");
    assert!(entry.labels["secret_api"].starts_with("hmac-sha256:k1:"));
    assert_eq!(entry.labels["region"], "eu-west-1");
    assert_eq!(entry.resource, VISIBLE);
}

struct Redacting {
    server: TestServer,
    keys: TempDir,
}

/// A server redacting the principal (flag), the password and tokens (config file) and secret
/// labels (flag), with key `k1`.
async fn redacting_server() -> Redacting {
    let keys = tempfile::tempdir().unwrap();
    let k1 = key_file(keys.path(), "k1", 0x11);
    let config = keys.path().join("audit.toml");
    std::fs::write(
        &config,
        "redact = [\"details.password\", \"details.*.token\"]\n",
    )
    .unwrap();
    let server = TestServer::start_with_args(&[
        "--config",
        config.to_str().unwrap(),
        "--redact",
        "caller.principal",
        "--redact",
        "labels.secret_*",
        "--redaction-key-file",
        k1.to_str().unwrap(),
    ])
    .await;
    Redacting { server, keys }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_store_query_or_subscribers_and_stay_searchable() {
    let Redacting {
        mut server,
        keys: _keys,
    } = redacting_server().await;
    let client = server.client().await;
    let mut live = client.subscribe(pb::Filter::default(), Start::AfterSequence(0));
    client.record(secret_entry()).await.expect("record");
    client
        .record_batch("", [secret_entry(), secret_entry()])
        .await
        .expect("record batch");

    let streamed = take_entries(&mut live, 3).await;
    streamed.iter().for_each(assert_redacted);
    let stored = all_entries(&client).await;
    assert_eq!(stored.len(), 3);
    stored.iter().for_each(assert_redacted);
    assert_no_secret_in_files(&server.data_dir);

    // The hash `audit hash` computes is the stored one, and finds the entries.
    let hash = cli_hash(&server.uri(), PRINCIPAL, None).await;
    assert_eq!(hash, principal(&stored[0]));
    let password = audit(
        &server.uri(),
        &["hash", "-"],
        Some(&format!("{PASSWORD}\n")),
    )
    .await;
    assert!(password.status.success());
    assert_eq!(
        String::from_utf8(password.stdout).unwrap().trim_end(),
        detail_text(&stored[0], &["password"])
    );
    let found = query(
        &client,
        pb::Filter {
            principal: hash.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(found.len(), 3);
    let other = cli_hash(&server.uri(), "bob@example.com", None).await;
    assert_ne!(other, hash);
    let none = query(
        &client,
        pb::Filter {
            principal: other,
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty());

    // After a clean stop (which checkpoints the WAL into the database file), still nothing.
    let temp = server.keep_data_dir();
    let data_dir = server.data_dir.clone();
    drop(live);
    assert!(server.stop().await.success());
    assert_no_secret_in_files(&data_dir);
    drop(temp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_id_does_not_tell_whether_a_guessed_secret_is_right() {
    let Redacting {
        server,
        keys: _keys,
    } = redacting_server().await;
    let client = server.client().await;
    let id = "0190a0a0-1111-7000-8000-00000000abcd";
    let first = client
        .record(pb::AuditEntry {
            id: id.into(),
            ..secret_entry()
        })
        .await
        .expect("record");
    // An attacker with `record` re-sends the id with guesses: right or wrong, the same answer.
    for guess in [PASSWORD, "wrong-guess", ""] {
        let mut retry = pb::AuditEntry {
            id: id.into(),
            ..secret_entry()
        };
        retry
            .details
            .as_mut()
            .unwrap()
            .fields
            .insert("password".into(), prost_types::Value::from(guess));
        if guess.is_empty() {
            // An empty value is not redacted: a different entry, whatever the secret.
            let refused = client.record(retry).await.unwrap_err();
            assert_eq!(refused.code(), Some(Code::AlreadyExists), "{refused}");
            continue;
        }
        let receipt = client
            .record(retry)
            .await
            .unwrap_or_else(|e| panic!("{guess}: {e}"));
        assert_eq!(receipt, first, "the first recording's receipt, for {guess}");
    }
    // A change of a field that is not redacted is still a conflict.
    let changed = pb::AuditEntry {
        id: id.into(),
        resource: "other-resource".into(),
        ..secret_entry()
    };
    let conflict = client.record(changed).await.unwrap_err();
    assert_eq!(conflict.code(), Some(Code::AlreadyExists), "{conflict}");
    let stored = all_entries(&client).await;
    assert_eq!(stored.len(), 1, "stored once: {stored:#?}");
    let hash = cli_hash(&server.uri(), PASSWORD, None).await;
    assert_eq!(
        detail_text(&stored[0], &["password"]),
        hash,
        "the first value stands"
    );
    // The store's own check of retry digests passes on restart.
    let server = server.restart().await;
    assert_eq!(
        all_entries(&server.client().await).await.len(),
        2,
        "and one VALUE_HASHED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_redacts_new_entries_and_old_hashes_stay_searchable() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = key_file(keys.path(), "k1", 0x11);
    let k2 = key_file(keys.path(), "k2", 0x22);
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let k1_only = format!("k1={}", k1.display());
    let server = TestServer::start_in(
        &data_dir,
        &[
            "--redact",
            "caller.principal",
            "--redaction-key-file",
            &k1_only,
        ],
    )
    .await;
    let client = server.client().await;
    let old = entry("app", "/a.B/C").principal(PRINCIPAL).resource("old");
    client.record(old.build()).await.unwrap();
    let old_hash = cli_hash(&server.uri(), PRINCIPAL, None).await;
    assert!(old_hash.starts_with("hmac-sha256:k1:"));
    assert!(server.stop().await.success());

    // Rotation: k2 becomes current, k1 stays for searching.
    let k2_spec = format!("k2={}", k2.display());
    let server = TestServer::start_in(
        &data_dir,
        &[
            "--redact",
            "caller.principal",
            "--redaction-key-file",
            &k1_only,
            "--redaction-key-file",
            &k2_spec,
            "--redaction-key-current",
            "k2",
        ],
    )
    .await;
    let client = server.client().await;
    let new = entry("app", "/a.B/C").principal(PRINCIPAL).resource("new");
    client.record(new.build()).await.unwrap();
    let stored = query(
        &client,
        pb::Filter {
            source: "app".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(principal(&stored[0]), old_hash);
    assert!(principal(&stored[1]).starts_with("hmac-sha256:k2:"));

    let new_hash = cli_hash(&server.uri(), PRINCIPAL, None).await;
    assert_eq!(new_hash, principal(&stored[1]));
    assert_eq!(
        cli_hash(&server.uri(), PRINCIPAL, Some("k1")).await,
        old_hash
    );
    let by = |hash: &str| pb::Filter {
        principal: hash.to_string(),
        ..Default::default()
    };
    let found_old = query(&client, by(&old_hash)).await;
    let found_new = query(&client, by(&new_hash)).await;
    assert_eq!(
        found_old
            .iter()
            .map(|e| e.resource.as_str())
            .collect::<Vec<_>>(),
        ["old"]
    );
    assert_eq!(
        found_new
            .iter()
            .map(|e| e.resource.as_str())
            .collect::<Vec<_>>(),
        ["new"]
    );

    let unknown = client.hash_value(PRINCIPAL, "k9").await.unwrap_err();
    assert_eq!(unknown.code(), Some(Code::InvalidArgument));
    assert!(unknown.to_string().contains("key_id"), "{unknown}");
    assert!(server.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_and_keys_stop_the_start_with_a_clear_message() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = key_file(keys.path(), "k1", 0x11);
    let k1 = k1.to_str().unwrap();
    let short = keys.path().join("short.key");
    std::fs::write(&short, "ab".repeat(16)).unwrap();
    let garbage = keys.path().join("garbage.key");
    std::fs::write(&garbage, "my-clear-secret-in-a-key-file").unwrap();
    let config = keys.path().join("bad.toml");
    std::fs::write(&config, "redact = [\"labels.\"]\n").unwrap();
    let other = key_file(keys.path(), "other", 0x33);
    let k1_again = format!("k1={}", other.display());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--redact", "sequence", "--redaction-key-file", k1],
            "redaction rule `sequence`",
        ),
        (
            vec!["--redact", "caller.unix.uid", "--redaction-key-file", k1],
            "only text can be redacted",
        ),
        (vec!["--redact", "details.password"], "no redaction key"),
        (
            vec!["--redact", "bogus", "--redaction-key-file", k1],
            "not a field that can be redacted",
        ),
        (
            vec!["--redaction-key-file", short.to_str().unwrap()],
            "fewer than the 32 required",
        ),
        (
            vec!["--redaction-key-file", garbage.to_str().unwrap()],
            "hex digits",
        ),
        (
            vec!["--redaction-key-file", "k1=/nonexistent/k1.key"],
            "/nonexistent/k1.key",
        ),
        (
            vec![
                "--redaction-key-file",
                k1,
                "--redaction-key-file",
                &k1_again,
            ],
            "given twice",
        ),
        (
            vec!["--redaction-key-file", k1, "--redaction-key-current", "k7"],
            "`k7` is not among",
        ),
        (
            vec![
                "--config",
                config.to_str().unwrap(),
                "--redaction-key-file",
                k1,
            ],
            "redaction rule `labels.`",
        ),
    ];
    for (args, expected) in cases {
        let stderr = start_failure(&args).await;
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("my-clear-secret"), "{stderr}");
        assert!(!stderr.contains(&"11".repeat(32)), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_value_is_for_admins_and_recorded_without_the_value() {
    let Redacting { server, keys } = redacting_server().await;
    let client = server.client().await;
    let hash = cli_hash(&server.uri(), "a-value-to-search", None).await;
    let recorded = all_entries(&client).await;
    let hashed: Vec<_> = recorded
        .iter()
        .filter(|e| e.event == "VALUE_HASHED")
        .collect();
    assert_eq!(hashed.len(), 1, "{recorded:?}");
    assert_eq!(hashed[0].method, "/audit.v1.AuditService/HashValue");
    assert_eq!(hashed[0].labels["key_id"], "k1");
    assert!(
        hashed[0].caller.as_ref().unwrap().peer.is_some(),
        "who hashed"
    );
    let text = format!("{:?}", hashed[0]);
    assert!(
        !text.contains("a-value-to-search") && !text.contains(&hash[15..]),
        "{text}"
    );
    assert!(server.stop().await.success());

    // Callers with record and read, but not admin, are refused, and the refusal is recorded:
    // a plaintext loopback caller (unauthenticated) and a Unix socket caller (by uid).
    let policy = keys.path().join("policy.toml");
    let uid = nix::unistd::getuid();
    std::fs::write(
        &policy,
        format!("[[grant]]\nto = [\"loopback\", \"uid:{uid}\"]\nallow = [\"record\", \"read\"]\n"),
    )
    .unwrap();
    let k1 = keys.path().join("k1.key");
    let socket = keys.path().join("audit.sock");
    let limited = TestServer::start_with_args(&[
        "--policy",
        policy.to_str().unwrap(),
        "--unix-socket",
        socket.to_str().unwrap(),
        "--redact",
        "caller.principal",
        "--redaction-key-file",
        k1.to_str().unwrap(),
    ])
    .await;
    let output = audit(&limited.uri(), &["hash", "a-value-to-search"], None).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("UNAUTHENTICATED") && stderr.contains("`admin`"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
    let unix_uri = format!("unix:{}", socket.display());
    let output = audit(&unix_uri, &["hash", "a-value-to-search"], None).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("PERMISSION_DENIED"),
        "{stderr}"
    );
    let unix_client = Client::connect(unix_uri).await.unwrap();
    let denied = unix_client.hash_value("x", "").await.unwrap_err();
    assert_eq!(denied.code(), Some(Code::PermissionDenied));
    let refusals = all_entries(&unix_client).await;
    let refused: Vec<_> = refusals
        .iter()
        .filter(|e| {
            e.method == "/audit.v1.AuditService/HashValue"
                && e.outcome == pb::Outcome::Denied as i32
        })
        .collect();
    assert_eq!(refused.len(), 3, "{refusals:?}");
    assert!(refusals.iter().all(|e| e.event != "VALUE_HASHED"));
    assert!(
        refusals
            .iter()
            .all(|e| !format!("{e:?}").contains("a-value-to-search"))
    );

    // Without a key there is nothing to hash with.
    let keyless = TestServer::start().await;
    let none = keyless
        .client()
        .await
        .hash_value("x", "")
        .await
        .unwrap_err();
    assert_eq!(none.code(), Some(Code::FailedPrecondition), "{none}");
    assert!(none.to_string().contains("--redaction-key-file"), "{none}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_a_postgres_store() {
    let db = audit_tests::PostgresDatabase::create().await;
    let keys = tempfile::tempdir().unwrap();
    let k1 = key_file(keys.path(), "k1", 0x11);
    let server = TestServer::start_with_args(&[
        "--store",
        &db.url,
        "--redact",
        "caller.principal",
        "--redact",
        "labels.secret_*",
        "--redact",
        "details.password",
        "--redact",
        "details.*.token",
        "--redaction-key-file",
        k1.to_str().unwrap(),
    ])
    .await;
    let client = server.client().await;
    client.record(secret_entry()).await.expect("record");
    all_entries(&client).await.iter().for_each(assert_redacted);
    // Every table, every row, as text (bytea as hex): neither the secret nor its bytes.
    let hex = |text: &str| -> String { text.bytes().map(|b| format!("{b:02x}")).collect() };
    let tables = db
        .query("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
        .await;
    let mut rows = String::new();
    for table in tables {
        let name: String = table.get(0);
        for row in db.query(&format!("SELECT t::text FROM {name} t")).await {
            rows.push_str(&row.get::<_, String>(0));
            rows.push('\n');
        }
    }
    assert!(
        rows.contains(&hex(VISIBLE)),
        "the unredacted marker is found"
    );
    for secret in [PASSWORD, PRINCIPAL, API_TOKEN, LABEL_SECRET] {
        assert!(
            !rows.contains(secret) && !rows.contains(&hex(secret)),
            "{secret}"
        );
    }
    assert!(server.stop().await.success());
}
