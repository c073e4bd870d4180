//! The server's own log: text or JSON lines on stderr, separate from the audit trail.

use std::process::Stdio;

use audit_tests::{PATIENCE, binary, entry};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn the_json_log_is_one_object_per_line_and_holds_no_entry() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary("audit-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(data.path())
        .env("AUDIT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut address = None;
    while let Some(line) = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        if line == "audit-server ready" {
            break;
        }
        address = line
            .strip_prefix("audit-server listening on ")
            .map(str::to_string);
    }
    let client = audit_client::Client::connect(format!("http://{}", address.unwrap()))
        .await
        .unwrap();
    let secret = "entry-content-that-must-not-reach-the-log";
    client
        .record(entry(secret, "/svc.v1.S/Call"))
        .await
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(child.wait().await.unwrap().success());

    let records: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(records.len() >= 3, "{stderr}");
    for record in &records {
        assert!(record["level"].is_string() && record["fields"]["message"].is_string());
    }
    assert!(
        records
            .iter()
            .any(|r| r["fields"]["message"] == "server stopped"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(secret),
        "the audit trail leaked into the log"
    );
}
