//! The redactor: rules and keys, applied to entries.

use audit_format::field::{Field, PeerField};
use audit_proto::pb;
use prost_types::value::Kind;

use crate::glob;
use crate::keys::{KeyError, RedactionKey};
use crate::rules::RedactionRules;

/// Applies redaction rules with the current key, and hashes known values with any key.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    rules: RedactionRules,
    keys: Vec<RedactionKey>,
    current: usize,
}

/// No redaction key has the id asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no redaction key `{0}`")]
pub struct UnknownKey(pub String);

impl Redactor {
    /// Redacts by `rules`, hashing with the key `current` (the first of `keys` when `None`);
    /// every key can hash known values. Rules without a key, duplicate ids and an unknown
    /// current key are refused.
    pub fn new(
        rules: RedactionRules,
        keys: Vec<RedactionKey>,
        current: Option<&str>,
    ) -> Result<Self, KeyError> {
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|k| k.id() == key.id()) {
                return Err(KeyError::Duplicate(key.id().to_string()));
            }
        }
        let current = match current {
            Some(id) => keys
                .iter()
                .position(|k| k.id() == id)
                .ok_or_else(|| KeyError::UnknownCurrent(id.to_string()))?,
            None => 0,
        };
        if keys.is_empty() && !rules.is_empty() {
            return Err(KeyError::Missing);
        }
        Ok(Self {
            rules,
            keys,
            current,
        })
    }

    /// Whether this redactor changes nothing (no rule).
    pub fn is_noop(&self) -> bool {
        self.rules.is_empty()
    }

    /// The id of the key new redactions use, if there is a key.
    pub fn current_key_id(&self) -> Option<&str> {
        self.keys.get(self.current).map(RedactionKey::id)
    }

    /// `hmac-sha256:KEYID:HEX` of `value` under the key `key_id` (the current key when
    /// `None`): what redaction stores for that value.
    pub fn hash(&self, value: &str, key_id: Option<&str>) -> Result<String, UnknownKey> {
        let key = match key_id {
            Some(id) => self.keys.iter().find(|k| k.id() == id),
            None => self.keys.get(self.current),
        }
        .ok_or_else(|| UnknownKey(key_id.unwrap_or_default().to_string()))?;
        Ok(hash_with(key, value))
    }

    /// Replaces the values of `entry` that the rules name with their hash under the current
    /// key. Values already redacted (by a client applying the same rules) are kept.
    pub fn redact(&self, entry: &mut pb::AuditEntry) {
        let Some(key) = self.keys.get(self.current) else {
            return;
        };
        let redact = |text: &mut String| {
            if !text.is_empty() && !audit_ledger::is_redacted(text) {
                *text = hash_with(key, text);
            }
        };
        for field in self.rules.text_fields() {
            if let Some(text) = text_field(entry, field) {
                redact(text);
            }
        }
        for (label, value) in entry.labels.iter_mut() {
            if self.rules.label_matches(label) {
                redact(value);
            }
        }
        if let Some(details) = &mut entry.details {
            for path in self.rules.detail_rules() {
                redact_details(details, path, key);
            }
        }
    }
}

fn hash_with(key: &RedactionKey, value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = key.mac(value.as_bytes());
    let prefix = audit_ledger::REDACTED_PREFIX;
    let mut out = String::with_capacity(prefix.len() + key.id().len() + 1 + 64);
    out.push_str(prefix);
    out.push_str(key.id());
    out.push(':');
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

fn text_field(entry: &mut pb::AuditEntry, field: Field) -> Option<&mut String> {
    let caller = entry.caller.as_mut();
    Some(match field {
        Field::Source => &mut entry.source,
        Field::Method => &mut entry.method,
        Field::Event => &mut entry.event,
        Field::Category => &mut entry.category,
        Field::Resource => &mut entry.resource,
        Field::StatusMessage => &mut entry.status_message,
        Field::Principal => &mut caller?.principal,
        Field::Role => &mut caller?.role,
        Field::SessionId => &mut caller?.session_id,
        Field::UserAgent => &mut caller?.user_agent,
        Field::Caller(peer) => match (caller?.peer.as_mut()?, peer) {
            (pb::caller::Peer::Unix(unix), PeerField::BinaryPath) => &mut unix.binary_path,
            (pb::caller::Peer::Network(network), PeerField::Address) => &mut network.address,
            (pb::caller::Peer::Network(network), PeerField::SpiffeId) => &mut network.spiffe_id,
            (pb::caller::Peer::Network(network), PeerField::CertificateSubject) => {
                &mut network.certificate_subject
            }
            _ => return None,
        },
        // The rules admit only the fields above.
        _ => return None,
    })
}

fn redact_details(details: &mut prost_types::Struct, path: &[String], key: &RedactionKey) {
    let Some((pattern, rest)) = path.split_first() else {
        return;
    };
    for (name, value) in details.fields.iter_mut() {
        if !glob::matches(pattern, name) {
            continue;
        }
        if rest.is_empty() {
            if let Some(text) = canonical_text(value)
                && !text.is_empty()
                && !audit_ledger::is_redacted(&text)
            {
                value.kind = Some(Kind::StringValue(hash_with(key, &text)));
            }
        } else if let Some(Kind::StructValue(inner)) = &mut value.kind {
            redact_details(inner, rest, key);
        }
    }
}

/// The text a details value is hashed as: a string itself, a number and a boolean as the
/// templates print them (`42`, `1.5`, `true`), a struct or list as its JSON; `None` for null.
fn canonical_text(value: &prost_types::Value) -> Option<String> {
    Some(match value.kind.as_ref()? {
        Kind::StringValue(text) => text.clone(),
        Kind::NumberValue(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => (*n as i64).to_string(),
        Kind::NumberValue(n) => n.to_string(),
        Kind::BoolValue(b) => b.to_string(),
        Kind::StructValue(_) | Kind::ListValue(_) => {
            audit_format::json::value_to_json(value).to_string()
        }
        Kind::NullValue(_) => return None,
    })
}

#[cfg(test)]
mod tests;
