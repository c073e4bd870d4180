//! The shape of a redacted value, `hmac-sha256:KEYID:HEX`, and the mask the retry digest puts in
//! its place.
//!
//! Redaction (crate `audit-redact`) replaces a secret with the HMAC-SHA256 of the value under a
//! key kept apart from the signing key. The retry digest must not depend on the secret: if it
//! did, a caller allowed to record could re-send a stored entry's id with a guessed value and
//! learn from OK against ALREADY_EXISTS whether the guess was right. So the digest sees every
//! redacted value as the bare prefix (key id and hash left out, so that a retry after a key
//! rotation still matches). The stored entry holds the hashes; the mask is computed from it
//! alone, which keeps the digest checkable by the start-up verification.

use audit_proto::pb::AuditEntry;

/// What every redacted value starts with.
pub const REDACTED_PREFIX: &str = "hmac-sha256:";

/// Length of the hash in hex digits.
const HEX_LEN: usize = 64;

/// Longest key id.
pub const MAX_KEY_ID_LEN: usize = 32;

/// Whether `id` may name a redaction key: 1 to 32 ASCII letters, digits, `-`, `_` or `.`.
pub fn is_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `value` is a redacted value, `hmac-sha256:KEYID:HEX` (64 lowercase hex digits).
pub fn is_redacted(value: &str) -> bool {
    let Some(rest) = value.strip_prefix(REDACTED_PREFIX) else {
        return false;
    };
    let Some((id, hex)) = rest.split_once(':') else {
        return false;
    };
    is_key_id(id)
        && hex.len() == HEX_LEN
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Replaces every redacted value of `entry` (text fields, label values, details at any depth)
/// with the bare prefix.
pub fn mask_redacted(entry: &mut AuditEntry) {
    for text in [
        &mut entry.source,
        &mut entry.method,
        &mut entry.event,
        &mut entry.category,
        &mut entry.resource,
        &mut entry.status_message,
    ] {
        mask(text);
    }
    if let Some(caller) = &mut entry.caller {
        for text in [
            &mut caller.principal,
            &mut caller.role,
            &mut caller.session_id,
            &mut caller.user_agent,
        ] {
            mask(text);
        }
        match &mut caller.peer {
            Some(audit_proto::pb::caller::Peer::Unix(unix)) => mask(&mut unix.binary_path),
            Some(audit_proto::pb::caller::Peer::Network(network)) => {
                mask(&mut network.address);
                mask(&mut network.spiffe_id);
                mask(&mut network.certificate_subject);
            }
            None => {}
        }
    }
    entry.labels.values_mut().for_each(mask);
    if let Some(details) = &mut entry.details {
        details.fields.values_mut().for_each(mask_value);
    }
}

fn mask(text: &mut String) {
    if is_redacted(text) {
        *text = REDACTED_PREFIX.to_string();
    }
}

fn mask_value(value: &mut prost_types::Value) {
    use prost_types::value::Kind;
    match &mut value.kind {
        Some(Kind::StringValue(text)) => mask(text),
        Some(Kind::StructValue(inner)) => inner.fields.values_mut().for_each(mask_value),
        Some(Kind::ListValue(list)) => list.values.iter_mut().for_each(mask_value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_the_exact_shape() {
        let hex = "0123456789abcdef".repeat(4);
        assert!(is_redacted(&format!("hmac-sha256:k1:{hex}")));
        assert!(is_redacted(&format!("hmac-sha256:2026-01.a_b:{hex}")));
        assert!(!is_redacted(&format!("hmac-sha256::{hex}")), "no key id");
        assert!(
            !is_redacted(&format!("hmac-sha256:k1:{}", &hex[1..])),
            "short"
        );
        assert!(!is_redacted(&format!(
            "hmac-sha256:k1:{}",
            hex.to_uppercase()
        )));
        assert!(!is_redacted(&format!("hmac-sha256:k 1:{hex}")));
        assert!(!is_redacted(&format!("hmac-sha1:k1:{hex}")));
        assert!(!is_redacted("hmac-sha256:"));
        assert!(!is_key_id(&"a".repeat(33)));
    }
}
