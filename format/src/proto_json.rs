//! Proto3 JSON for audit messages, in both directions.
//!
//! The mapping is the canonical one (`lowerCamelCase` names, enum names, 64-bit integers as
//! strings, RFC 3339 timestamps, `details` as a JSON object), so `json_format` parsers of other
//! languages read what this module writes, and this module reads what they write (including the
//! original `snake_case` field names). Unknown fields are refused, so typos do not pass silently.
//!
//! Output is safe to print: besides the C0 controls JSON already escapes, every other
//! [unsafe character](crate::escape::is_unsafe_char) (DEL, C1 controls, line separators, bidi
//! controls, invisible characters) is written as a `\uXXXX` escape.
//!
//! Shared by the CLI (`--json`, `audit record`) and the forwarders (`format=json`).

use std::sync::LazyLock;

use audit_proto::pb;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

/// Why text is not proto3 JSON of a message, or a message has no JSON form.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Text that should have been proto3 JSON was not, did not fit the message, or a message
    /// holds what JSON cannot (a NaN in `details`).
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Input that is well-formed but not usable, with the reason.
    #[error("invalid input: {0}")]
    Input(String),
    /// A message could not be converted between its generated and its reflected form: the
    /// generated code and the descriptor set do not match.
    #[error("cannot convert message: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// A generated message with proto3 JSON support through the descriptor set of `audit.v1`.
pub trait JsonMessage: prost::Message + Default {
    /// The full protobuf name of the message, for example `audit.v1.AuditEntry`.
    const FULL_NAME: &'static str;
}

macro_rules! json_messages {
    ($($ty:ty => $name:literal),* $(,)?) => {
        $(impl JsonMessage for $ty {
            const FULL_NAME: &'static str = $name;
        })*
    };
}

json_messages! {
    pb::AuditEntry => "audit.v1.AuditEntry",
    pb::Filter => "audit.v1.Filter",
    pb::RecordRequest => "audit.v1.RecordRequest",
    pb::RecordResponse => "audit.v1.RecordResponse",
    pb::RecordBatchRequest => "audit.v1.RecordBatchRequest",
    pb::RecordBatchResponse => "audit.v1.RecordBatchResponse",
    pb::SubscribeRequest => "audit.v1.SubscribeRequest",
    pb::SubscribeResponse => "audit.v1.SubscribeResponse",
    pb::Heartbeat => "audit.v1.Heartbeat",
    pb::QueryRequest => "audit.v1.QueryRequest",
    pb::QueryResponse => "audit.v1.QueryResponse",
    pb::ForwarderStatus => "audit.v1.ForwarderStatus",
    pb::ListForwardersResponse => "audit.v1.ListForwardersResponse",
    prost_types::Struct => "google.protobuf.Struct",
}

/// The descriptors of `audit.v1`, decoded once.
static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(audit_proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set built with audit-proto is valid")
});

fn descriptor<M: JsonMessage>() -> MessageDescriptor {
    POOL.get_message_by_name(M::FULL_NAME)
        .unwrap_or_else(|| panic!("{} is in the audit.v1 descriptor set", M::FULL_NAME))
}

/// Writes `message` as one line of proto3 JSON (no trailing newline).
pub fn to_json<M: JsonMessage>(message: &M) -> Result<String, Error> {
    let mut dynamic = DynamicMessage::new(descriptor::<M>());
    dynamic.transcode_from(message)?;
    let text = serde_json::to_string(&dynamic)?;
    Ok(escape_json_text(text))
}

/// Reads a message from proto3 JSON text.
pub fn from_json<M: JsonMessage>(text: &str) -> Result<M, Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let dynamic = DynamicMessage::deserialize(descriptor::<M>(), &mut deserializer)?;
    deserializer.end()?;
    Ok(dynamic.transcode_to()?)
}

/// Reads a message from an already parsed JSON value.
pub fn from_json_value<M: JsonMessage>(value: serde_json::Value) -> Result<M, Error> {
    let dynamic = DynamicMessage::deserialize(descriptor::<M>(), value)?;
    Ok(dynamic.transcode_to()?)
}

/// Reads entries from proto3 JSON: an object is one entry, an array is a batch. The result says
/// which it was, so a caller can send one `Record` or one `RecordBatch`.
pub fn entries_from_json(text: &str) -> Result<JsonEntries, Error> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    match value {
        serde_json::Value::Object(_) => Ok(JsonEntries::One(Box::new(from_json_value(value)?))),
        serde_json::Value::Array(items) => {
            if items.is_empty() {
                return Err(Error::Input("the array holds no entries".into()));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    from_json_value(item).map_err(|e| Error::Input(format!("entry [{i}]: {e}")))
                })
                .collect::<Result<_, _>>()
                .map(JsonEntries::Batch)
        }
        _ => Err(Error::Input(
            "expected a JSON object (one entry) or an array of objects (a batch)".into(),
        )),
    }
}

/// Entries read by [`entries_from_json`].
#[derive(Debug, Clone, PartialEq)]
pub enum JsonEntries {
    /// A JSON object: one entry.
    One(Box<pb::AuditEntry>),
    /// A JSON array: the entries of one batch.
    Batch(Vec<pb::AuditEntry>),
}

/// Escapes the [unsafe characters](crate::escape::is_unsafe_char) serde_json leaves as they
/// are.
fn escape_json_text(text: String) -> String {
    crate::json_layouts::escape_unsafe(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{Struct, Value, value::Kind};

    /// An entry from `source` and `method`.
    fn entry(source: &str, method: &str) -> pb::AuditEntry {
        pb::AuditEntry {
            source: source.into(),
            method: method.into(),
            ..Default::default()
        }
    }

    /// `entry` with the number `n` as detail `key`.
    fn detail(mut entry: pb::AuditEntry, key: &str, n: f64) -> pb::AuditEntry {
        let value = Value {
            kind: Some(Kind::NumberValue(n)),
        };
        entry.details = Some(Struct {
            fields: [(key.to_string(), value)].into_iter().collect(),
        });
        entry
    }

    pub(crate) fn sample() -> pb::AuditEntry {
        let mut entry = detail(
            entry("billing-api", "/billing.v1.Billing/Charge"),
            "amount",
            12.5,
        );
        entry.id = "0193a1b2-0000-7000-8000-000000000001".into();
        entry.time = Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_000_000,
        });
        entry.outcome = pb::Outcome::Denied as i32;
        entry.status_code = 7;
        entry.status_message = "no\nway".into();
        entry.caller = Some(pb::Caller {
            principal: "alice".into(),
            peer: Some(pb::caller::Peer::Network(pb::NetworkPeer {
                address: "127.0.0.1:5555".into(),
                ..Default::default()
            })),
            ..Default::default()
        });
        entry.latency = Some(prost_types::Duration {
            seconds: 0,
            nanos: 250_000_000,
        });
        entry.labels = [("k".to_string(), "v".to_string())].into_iter().collect();
        entry.sequence = 42;
        entry
    }

    #[test]
    fn entry_round_trips() {
        let entry = sample();
        let text = to_json(&entry).unwrap();
        assert!(!text.contains('\n'), "{text}");
        let back: pb::AuditEntry = from_json(&text).unwrap();
        assert_eq!(back, entry);
    }

    #[test]
    fn writes_canonical_proto3_json() {
        let text = to_json(&sample()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["sequence"], "42");
        assert_eq!(value["outcome"], "OUTCOME_DENIED");
        assert_eq!(value["statusCode"], 7);
        assert_eq!(value["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(value["latency"], "0.250s");
        assert_eq!(value["caller"]["network"]["address"], "127.0.0.1:5555");
        assert_eq!(value["details"]["amount"], 12.5);
        assert_eq!(value["labels"]["k"], "v");
        assert!(value.get("level").is_none(), "defaults are omitted");
    }

    #[test]
    fn reads_snake_case_and_enum_numbers() {
        let entry: pb::AuditEntry = from_json(
            r#"{"source":"s","method":"/p.S/M","outcome":2,"status_code":7,
                "caller":{"principal":"bob"},"labels":{"a":"b"}}"#,
        )
        .unwrap();
        assert_eq!(entry.outcome, pb::Outcome::Denied as i32);
        assert_eq!(entry.status_code, 7);
        assert_eq!(entry.caller.unwrap().principal, "bob");
    }

    #[test]
    fn refuses_unknown_fields_and_trailing_text() {
        assert!(from_json::<pb::AuditEntry>(r#"{"sauce":"s"}"#).is_err());
        assert!(from_json::<pb::AuditEntry>(r#"{"source":"s"} x"#).is_err());
    }

    #[test]
    fn object_is_one_entry_array_is_a_batch() {
        match entries_from_json(r#"{"source":"a","method":"/p.S/M"}"#).unwrap() {
            JsonEntries::One(e) => assert_eq!(e.source, "a"),
            other => panic!("{other:?}"),
        }
        match entries_from_json(r#"[{"source":"a"},{"source":"b"}]"#).unwrap() {
            JsonEntries::Batch(v) => assert_eq!(v.len(), 2),
            other => panic!("{other:?}"),
        }
        let err = entries_from_json(r#"[{"source":"a"},{"nope":1}]"#).unwrap_err();
        assert!(err.to_string().contains("entry [1]"), "{err}");
        assert!(entries_from_json("[]").is_err());
        assert!(entries_from_json("42").is_err());
    }

    #[test]
    fn invisible_characters_are_escaped_and_read_back() {
        let hidden = "a\u{200b}b\u{feff}c\u{ad}d\u{3164}e\u{e0041}f\u{a0}g";
        let entry = entry(hidden, "/p.S/M");
        let text = to_json(&entry).unwrap();
        assert!(text.is_ascii(), "{text}");
        assert!(text.contains(r"\udb40\udc41"), "a surrogate pair: {text}");
        let back: pb::AuditEntry = from_json(&text).unwrap();
        assert_eq!(back, entry);
    }

    #[test]
    fn numbers_in_details_read_back_exactly() {
        // Found by `entries_round_trip`: without serde_json's `float_roundtrip` this reads back
        // as ...025e-251, one unit in the last place off.
        for n in [-1.5204315171749023e-251, 0.1, 1e308, 5e-324, -0.0] {
            let entry = detail(entry("s", "/p.S/M"), "n", n);
            let back: pb::AuditEntry = from_json(&to_json(&entry).unwrap()).unwrap();
            assert_eq!(back, entry, "{n:e}");
        }
    }

    #[test]
    fn non_finite_numbers_have_no_json_form() {
        let entry = detail(entry("s", "/p.S/M"), "amount", f64::NAN);
        assert!(to_json(&entry).is_err());
    }

    #[test]
    fn output_escapes_dangerous_characters() {
        let entry = entry("s\u{2028}x\u{9b}y\u{202e}z\u{7f}", "/p.S/M\n\u{1b}[2J");
        let text = to_json(&entry).unwrap();
        for bad in ['\n', '\u{1b}', '\u{2028}', '\u{9b}', '\u{202e}', '\u{7f}'] {
            assert!(!text.contains(bad), "{bad:?} in {text}");
        }
        assert!(text.contains(r"\u2028"), "{text}");
        let back: pb::AuditEntry = from_json(&text).unwrap();
        assert_eq!(back, entry);
    }

    /// The proto3 JSON input of `audit record` never panics on any text, and every entry with
    /// a JSON form reads back as itself.
    mod props {
        use super::*;
        use crate::escape::is_unsafe_char;
        use proptest::prelude::*;

        fn json_like() -> impl Strategy<Value = String> {
            prop_oneof![
                "\\PC{0,64}",
                "[\\[\\]{}:,\" a-zA-Z0-9_.-]{0,64}",
                r#"\{"(source|method|outcome|details|labels|time|latency|sequence|caller)":("[^"]{0,10}"|[0-9.e+-]{1,8}|\{\}|\[\]|null|true|NaN)\}"#,
                r#"\[\{"source":"[a-z]{0,4}"\}(,\{"details":\{"k":[0-9e.+-]{1,6}\}\}){0,3}\]"#,
            ]
        }

        prop_compose! {
            fn finite_entry()(
                source in "\\PC{0,12}",
                method in "\\PC{0,12}",
                outcome in 0i32..4,
                status_code in 0i32..17,
                sequence in any::<u64>(),
                labels in prop::collection::btree_map("\\PC{0,6}", "\\PC{0,6}", 0..3),
                numbers in prop::collection::btree_map("\\PC{0,6}", any::<f64>().prop_filter("finite", |n| n.is_finite()), 0..3),
            ) -> pb::AuditEntry {
                pb::AuditEntry {
                    source, method, outcome, status_code, sequence,
                    labels: labels.into_iter().collect(),
                    details: (!numbers.is_empty()).then(|| Struct {
                        fields: numbers
                            .into_iter()
                            .map(|(k, n)| (k, Value { kind: Some(Kind::NumberValue(n)) }))
                            .collect(),
                    }),
                    ..Default::default()
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_text_is_read_or_refused(text in json_like()) {
                let _ = entries_from_json(&text);
                let _ = from_json::<pb::RecordBatchRequest>(&text);
            }

            #[test]
            fn entries_round_trip(entry in finite_entry()) {
                let text = to_json(&entry).unwrap();
                prop_assert!(!text.chars().any(is_unsafe_char), "{text}");
                let back: pb::AuditEntry = from_json(&text).unwrap();
                prop_assert_eq!(back, entry);
            }
        }
    }
}
