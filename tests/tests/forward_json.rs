//! The `json` forwarder format against the real server: each entry as the same proto3 JSON line
//! that `audit query --json` prints, byte for byte, read back by a proto3 JSON parser as the
//! stored entry, hostile text included.

use audit_client::json;
use audit_tests::{TestServer, all_entries, entry, eventually, forwarder_position};

#[tokio::test]
async fn json_lines_are_the_stored_entries_in_proto3_json() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("audit.log");
    let forward = format!("file=file://{}?format=json", path.display());
    let server = TestServer::start_with_args(&["--forward", &forward]).await;
    let client = server.client().await;
    let hostile = "line\nbreak \"quoted\" \\ ]\u{2028}\u{1b}[31m ünï 🦀";
    for i in 0..3 {
        let entry = entry("kms", "/kms.v1.Keys/Get")
            .resource(format!("keys/{i} {hostile}"))
            .label("note", hostile)
            .detail("amount", 12.5 + f64::from(i))
            .build();
        client.record(entry).await.unwrap();
    }
    eventually("three entries delivered", || {
        forwarder_position(&server.data_dir, "file") == Some(3)
    })
    .await;
    let stored = all_entries(&client).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let is_checkpoint = |line: &&str| {
        serde_json::from_str::<serde_json::Value>(line).unwrap()["type"] == "checkpoint"
    };
    let lines: Vec<&str> = text.lines().filter(|l| !is_checkpoint(l)).collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (line, entry) in lines.iter().zip(&stored) {
        assert_eq!(*line, json::to_json(entry).unwrap(), "byte for byte");
        assert!(
            !line.contains('\u{2028}') && !line.contains('\u{1b}'),
            "{line}"
        );
        let back: audit_client::pb::AuditEntry = json::from_json(line).unwrap();
        assert_eq!(&back, entry);
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["labels"]["note"], hostile);
        assert_eq!(value["sequence"], entry.sequence.to_string());
    }
    assert!(server.stop().await.success());
}
