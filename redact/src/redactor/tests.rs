use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use prost_types::{Struct, Value};
use sha2::Sha256;

use super::*;
use crate::rules::RedactionRules;

fn key(id: &str, byte: u8) -> RedactionKey {
    RedactionKey::new(id, vec![byte; 32]).unwrap()
}

fn redactor(rules: &[&str], keys: Vec<RedactionKey>, current: Option<&str>) -> Redactor {
    let rules: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
    Redactor::new(RedactionRules::parse(&rules).unwrap(), keys, current).unwrap()
}

fn string(text: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(text.into())),
    }
}

fn object(fields: &[(&str, Value)]) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct {
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        })),
    }
}

fn text(value: Option<&Value>) -> &str {
    match value.and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(text)) => text,
        other => panic!("not text: {other:?}"),
    }
}

/// An entry with every redactable text field set to `secret-FIELD`, over the network.
fn full_entry(unix: bool) -> pb::AuditEntry {
    let peer = if unix {
        pb::caller::Peer::Unix(pb::UnixPeer {
            binary_path: "secret-binary".into(),
            ..Default::default()
        })
    } else {
        pb::caller::Peer::Network(pb::NetworkPeer {
            address: "secret-address".into(),
            spiffe_id: "secret-spiffe".into(),
            certificate_subject: "secret-subject".into(),
        })
    };
    pb::AuditEntry {
        id: "0190a0a0-0000-7000-8000-000000000000".into(),
        source: "secret-source".into(),
        method: "/secret.v1.S/M".into(),
        event: "secret-event".into(),
        category: "secret-category".into(),
        resource: "secret-resource".into(),
        status_message: "secret-message".into(),
        caller: Some(pb::Caller {
            principal: "secret-principal".into(),
            role: "secret-role".into(),
            session_id: "secret-session".into(),
            user_agent: "secret-agent".into(),
            peer: Some(peer),
        }),
        labels: BTreeMap::from([("email".into(), "secret-email".into())]),
        ..Default::default()
    }
}

#[test]
fn hashes_are_hmac_sha256_under_the_named_key() {
    let redactor = redactor(&[], vec![key("k1", 1), key("k0", 2)], None);
    let hash = redactor.hash("hunter2", None).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&[1; 32]).unwrap();
    mac.update(b"hunter2");
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hash, format!("hmac-sha256:k1:{hex}"));
    assert!(audit_ledger::is_redacted(&hash));
    let old = redactor.hash("hunter2", Some("k0")).unwrap();
    assert!(old.starts_with("hmac-sha256:k0:") && old[15..] != hash[15..]);
    assert_eq!(
        redactor.hash("x", Some("k7")).unwrap_err(),
        UnknownKey("k7".into())
    );
    assert_eq!(redactor.current_key_id(), Some("k1"));
}

#[test]
fn redacts_exactly_what_the_rules_name() {
    let redactor = redactor(
        &[
            "caller.principal",
            "labels.secret_*",
            "details.*.token",
            "details.password",
        ],
        vec![key("k1", 1)],
        None,
    );
    let mut entry = full_entry(false);
    entry.labels.insert("secret_api".into(), "s1".into());
    entry.labels.insert("region".into(), "eu".into());
    entry.details = Some(Struct {
        fields: BTreeMap::from([
            ("password".into(), string("hunter2")),
            (
                "pin".into(),
                Value {
                    kind: Some(Kind::NumberValue(1234.0)),
                },
            ),
            (
                "github".into(),
                object(&[("token", string("ghp_1")), ("user", string("octo"))]),
            ),
            ("token".into(), string("top-level token is not under a key")),
        ]),
    });
    redactor.redact(&mut entry);
    let h = |v: &str| redactor.hash(v, None).unwrap();
    assert_eq!(
        entry.caller.as_ref().unwrap().principal,
        h("secret-principal")
    );
    assert_eq!(entry.caller.as_ref().unwrap().role, "secret-role");
    assert_eq!(entry.labels["secret_api"], h("s1"));
    assert_eq!(entry.labels["region"], "eu");
    assert_eq!(entry.labels["email"], "secret-email");
    let details = entry.details.as_ref().unwrap();
    assert_eq!(text(details.fields.get("password")), h("hunter2"));
    let Some(Kind::StructValue(github)) = &details.fields["github"].kind else {
        panic!("github is a struct");
    };
    assert_eq!(text(github.fields.get("token")), h("ghp_1"));
    assert_eq!(text(github.fields.get("user")), "octo");
    assert_eq!(
        text(details.fields.get("token")),
        "top-level token is not under a key"
    );
    assert_eq!(
        details.fields["pin"].kind,
        Some(Kind::NumberValue(1234.0)),
        "no rule names it"
    );

    let before = entry.clone();
    redactor.redact(&mut entry);
    assert_eq!(entry, before, "redacting twice changes nothing");
}

#[test]
fn numbers_booleans_and_structs_are_hashed_by_their_text() {
    let redactor = redactor(&["details.*"], vec![key("k1", 1)], None);
    let mut entry = pb::AuditEntry {
        details: Some(Struct {
            fields: BTreeMap::from([
                (
                    "int".into(),
                    Value {
                        kind: Some(Kind::NumberValue(42.0)),
                    },
                ),
                (
                    "float".into(),
                    Value {
                        kind: Some(Kind::NumberValue(1.5)),
                    },
                ),
                (
                    "flag".into(),
                    Value {
                        kind: Some(Kind::BoolValue(true)),
                    },
                ),
                (
                    "nested".into(),
                    object(&[("b", string("x")), ("a", string("y"))]),
                ),
                (
                    "none".into(),
                    Value {
                        kind: Some(Kind::NullValue(0)),
                    },
                ),
            ]),
        }),
        ..Default::default()
    };
    redactor.redact(&mut entry);
    let fields = &entry.details.as_ref().unwrap().fields;
    let h = |v: &str| redactor.hash(v, None).unwrap();
    assert_eq!(text(fields.get("int")), h("42"));
    assert_eq!(text(fields.get("float")), h("1.5"));
    assert_eq!(text(fields.get("flag")), h("true"));
    assert_eq!(text(fields.get("nested")), h(r#"{"a":"y","b":"x"}"#));
    assert_eq!(fields["none"].kind, Some(Kind::NullValue(0)));
}

/// Every field a rule can redact is masked by the retry digest: entries differing only in a
/// redacted value have the same digest, whatever the value was.
#[test]
fn the_retry_digest_never_depends_on_a_redacted_value() {
    let names = [
        "source",
        "method",
        "event",
        "category",
        "resource",
        "status_message",
        "caller.principal",
        "caller.role",
        "caller.session_id",
        "caller.user_agent",
        "caller.unix.binary_path",
        "caller.address",
        "caller.spiffe_id",
        "caller.certificate_subject",
        "labels.email",
        "details.a.b",
    ];
    for name in names {
        let redactor = redactor(&[name], vec![key("k1", 1)], None);
        let unix = name == "caller.unix.binary_path";
        let with = |secret: &str| {
            let mut entry = full_entry(unix);
            let mut other = entry.clone();
            // Change every field; only the redacted one may be masked.
            let renamed = |t: &mut String| *t = t.replace("secret", secret);
            for t in [
                &mut other.source,
                &mut other.method,
                &mut other.event,
                &mut other.category,
                &mut other.resource,
                &mut other.status_message,
            ] {
                renamed(t);
            }
            let caller = other.caller.as_mut().unwrap();
            for t in [
                &mut caller.principal,
                &mut caller.role,
                &mut caller.session_id,
                &mut caller.user_agent,
            ] {
                renamed(t);
            }
            match caller.peer.as_mut().unwrap() {
                pb::caller::Peer::Unix(u) => renamed(&mut u.binary_path),
                pb::caller::Peer::Network(n) => {
                    renamed(&mut n.address);
                    renamed(&mut n.spiffe_id);
                    renamed(&mut n.certificate_subject);
                }
            }
            other.labels.values_mut().for_each(renamed);
            let detail = format!("{secret}-detail");
            other.details = Some(Struct {
                fields: BTreeMap::from([("a".into(), object(&[("b", string(&detail))]))]),
            });
            // Take from `other` only the field the rule names.
            let mut only = other.clone();
            redactor.redact(&mut only);
            redactor.redact(&mut entry);
            entry = merge_redacted(entry, &only);
            entry
        };
        let one = with("guess-1");
        let two = with("guess-2");
        assert_ne!(one, two, "{name}: the hashes differ");
        assert_eq!(
            audit_ledger::retry_digest(&one),
            audit_ledger::retry_digest(&two),
            "{name}"
        );
    }
}

/// `base` with every value that is redacted in `redacted` taken from it.
fn merge_redacted(mut base: pb::AuditEntry, redacted: &pb::AuditEntry) -> pb::AuditEntry {
    let take = |b: &mut String, r: &String| {
        if audit_ledger::is_redacted(r) {
            b.clone_from(r);
        }
    };
    take(&mut base.source, &redacted.source);
    take(&mut base.method, &redacted.method);
    take(&mut base.event, &redacted.event);
    take(&mut base.category, &redacted.category);
    take(&mut base.resource, &redacted.resource);
    take(&mut base.status_message, &redacted.status_message);
    let (b, r) = (
        base.caller.as_mut().unwrap(),
        redacted.caller.as_ref().unwrap(),
    );
    take(&mut b.principal, &r.principal);
    take(&mut b.role, &r.role);
    take(&mut b.session_id, &r.session_id);
    take(&mut b.user_agent, &r.user_agent);
    match (b.peer.as_mut().unwrap(), r.peer.as_ref().unwrap()) {
        (pb::caller::Peer::Unix(b), pb::caller::Peer::Unix(r)) => {
            take(&mut b.binary_path, &r.binary_path)
        }
        (pb::caller::Peer::Network(b), pb::caller::Peer::Network(r)) => {
            take(&mut b.address, &r.address);
            take(&mut b.spiffe_id, &r.spiffe_id);
            take(&mut b.certificate_subject, &r.certificate_subject);
        }
        _ => unreachable!(),
    }
    for (k, v) in base.labels.iter_mut() {
        take(v, &redacted.labels[k]);
    }
    if let Some(details) = &redacted.details
        && let Some(Kind::StructValue(a)) = &details.fields["a"].kind
        && audit_ledger::is_redacted(text(a.fields.get("b")))
    {
        base.details = redacted.details.clone();
    }
    base
}

#[test]
fn keys_are_checked_together() {
    let rules = RedactionRules::parse(&["labels.email".into()]).unwrap();
    assert_eq!(
        Redactor::new(rules.clone(), vec![], None).unwrap_err(),
        KeyError::Missing
    );
    assert_eq!(
        Redactor::new(rules.clone(), vec![key("k1", 1), key("k1", 2)], None).unwrap_err(),
        KeyError::Duplicate("k1".into())
    );
    assert_eq!(
        Redactor::new(rules.clone(), vec![key("k1", 1)], Some("k2")).unwrap_err(),
        KeyError::UnknownCurrent("k2".into())
    );
    let rotated = Redactor::new(rules, vec![key("k1", 1), key("k2", 2)], Some("k2")).unwrap();
    assert_eq!(rotated.current_key_id(), Some("k2"));
    let mut entry = full_entry(false);
    rotated.redact(&mut entry);
    assert!(entry.labels["email"].starts_with("hmac-sha256:k2:"));
    let empty = Redactor::new(RedactionRules::default(), vec![], None).unwrap();
    assert!(empty.is_noop());
    assert_eq!(
        empty.hash("x", None).unwrap_err(),
        UnknownKey(String::new())
    );
}
