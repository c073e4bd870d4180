//! A sample entry with every field set, shared by the format tests.

use audit_proto::pb;

/// An entry with every field set, from a TLS caller.
pub fn sample() -> pb::AuditEntry {
    let mut details = prost_types::Struct::default();
    details.fields.insert(
        "key".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
                fields: [(
                    "sub".to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue("k1".into())),
                    },
                )]
                .into(),
            })),
        },
    );
    details.fields.insert(
        "count".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(3.0)),
        },
    );
    pb::AuditEntry {
        id: "0193a5f0-7c2e-7000-8000-000000000001".into(),
        sequence: 42,
        request_id: "req-1".into(),
        // 2026-11-22T15:04:05.120Z
        time: Some(prost_types::Timestamp {
            seconds: 1_795_359_845,
            nanos: 120_000_000,
        }),
        received_time: Some(prost_types::Timestamp {
            seconds: 1_795_359_845,
            nanos: 130_000_000,
        }),
        source: "kms".into(),
        method: "/kms.v1.Keys/DeleteKey".into(),
        event: "KEY_DELETED".into(),
        category: "KEY_MANAGEMENT".into(),
        resource: "keys/k1".into(),
        level: pb::Level::Warning as i32,
        outcome: pb::Outcome::Denied as i32,
        status_code: 7,
        status_message: "not allowed".into(),
        caller: Some(pb::Caller {
            peer: Some(pb::caller::Peer::Network(pb::NetworkPeer {
                address: "10.0.0.7:5555".into(),
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
                uid: 1000,
                gid: 1000,
                pid: 4242,
                binary_path: "/usr/bin/kms".into(),
            })),
        }),
        latency: Some(prost_types::Duration {
            seconds: 0,
            nanos: 12_500_000,
        }),
        details: Some(details),
        labels: [("region".to_string(), "eu".to_string())].into(),
        entry_hash: vec![0xab; 4],
        chain_hash: vec![0xcd; 4],
    }
}
