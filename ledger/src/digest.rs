//! The retry digest: what the server stores beside each entry (the `digest` column) to decide
//! whether a retried client-chosen id carries the same entry.
//!
//! It is the SHA-256 of the protobuf encoding of the entry as the client sent it, with the
//! fields the server owns cleared (`sequence`, `received_time`, `recorder`, `entry_hash`,
//! `chain_hash`) and the id in its hyphenated form. Fields the server fills when the client left
//! them empty (`time`, `level`, `request_id`) are hashed as the client sent them, so a retry
//! without a time matches its first recording although each got a different `received_time`.
//! Redacted values (`hmac-sha256:KEYID:HEX`) are hashed as the bare prefix `hmac-sha256:`, so
//! that whether a retry matches never depends on a secret (see [`crate::mask_redacted`]).

use audit_proto::pb::{AuditEntry, Level};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::Hash;

/// The retry digest of `entry` as the client sent it (server-filled fields are ignored).
pub fn retry_digest(entry: &AuditEntry) -> Hash {
    let mut entry = entry.clone();
    clear_server_fields(&mut entry);
    Sha256::digest(entry.encode_to_vec()).into()
}

/// Clears the fields the server owns, which the digest leaves out, and masks redacted values.
fn clear_server_fields(entry: &mut AuditEntry) {
    crate::mask_redacted(entry);
    entry.sequence = 0;
    entry.received_time = None;
    entry.recorder = None;
    entry.entry_hash.clear();
    entry.chain_hash.clear();
}

/// Whether `digest` is the retry digest of the stored entry `stored`, for some request that
/// stores it: the client may have left `time` (the server stores `received_time`), `level`
/// (the server stores `LEVEL_INFO`) or `request_id` (the server generates one) empty. To check
/// many entries, use a [`DigestCheck`], which tries first what the last entry's client left
/// empty.
pub fn stored_digest_matches(stored: &AuditEntry, digest: &[u8]) -> bool {
    DigestCheck::default().matches(stored, digest)
}

/// Checks the retry digests of many stored entries (see [`stored_digest_matches`]), trying
/// first the way the previous entry was sent: entries from one client tend to leave the same
/// fields empty, so most take one hash.
#[derive(Debug, Default, Clone)]
pub struct DigestCheck {
    /// The variant that matched last: bit 0 request id empty, bit 1 time empty, bit 2 level
    /// unspecified.
    last: u8,
}

impl DigestCheck {
    /// Whether `digest` is the retry digest of `stored` for some request that stores it.
    pub fn matches(&mut self, stored: &AuditEntry, digest: &[u8]) -> bool {
        let possible = |variant: u8| {
            (variant & 1 == 0 || !stored.request_id.is_empty())
                && (variant & 2 == 0
                    || (stored.time.is_some() && stored.time == stored.received_time))
                && (variant & 4 == 0 || stored.level == Level::Info as i32)
        };
        let mut sent = stored.clone();
        clear_server_fields(&mut sent);
        let order = std::iter::once(self.last).chain((0..8).filter(|&v| v != self.last));
        for variant in order.filter(|&v| possible(v)) {
            sent.request_id = if variant & 1 == 0 {
                stored.request_id.clone()
            } else {
                String::new()
            };
            sent.time = if variant & 2 == 0 { stored.time } else { None };
            sent.level = if variant & 4 == 0 {
                stored.level
            } else {
                Level::Unspecified as i32
            };
            if Sha256::digest(sent.encode_to_vec()).as_slice() == digest {
                self.last = variant;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    #[test]
    fn defaults_filled_by_the_server_still_match() {
        let received = Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        };
        let sent = AuditEntry {
            id: "0190a0a0-0000-7000-8000-000000000000".into(),
            source: "billing".into(),
            ..Default::default()
        };
        let digest = retry_digest(&sent);
        let stored = AuditEntry {
            sequence: 7,
            request_id: "generated".into(),
            time: Some(received),
            received_time: Some(received),
            level: Level::Info as i32,
            entry_hash: vec![1; 32],
            ..sent.clone()
        };
        assert!(stored_digest_matches(&stored, &digest));
        let mut check = DigestCheck::default();
        assert!(check.matches(&stored, &digest));
        assert!(check.matches(&stored, &digest), "again, with the hint");
        assert!(!check.matches(&stored, &[0; 32]));
        let changed = AuditEntry {
            source: "kms".into(),
            ..stored.clone()
        };
        assert!(!stored_digest_matches(&changed, &digest));
        assert!(!stored_digest_matches(&stored, &[0; 32]));
        let explicit = AuditEntry {
            time: Some(Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            level: Level::Error as i32,
            ..sent
        };
        let stored = AuditEntry {
            received_time: Some(received),
            ..explicit.clone()
        };
        assert!(stored_digest_matches(&stored, &retry_digest(&explicit)));
    }

    #[test]
    fn redacted_values_do_not_change_the_digest() {
        let with = |hash: &str| {
            let mut entry = AuditEntry {
                id: "0190a0a0-0000-7000-8000-000000000000".into(),
                source: "billing".into(),
                ..Default::default()
            };
            entry.labels.insert("email".into(), hash.to_string());
            entry
        };
        let one = with(&format!("hmac-sha256:k1:{}", "a".repeat(64)));
        let other = with(&format!("hmac-sha256:k2:{}", "b".repeat(64)));
        assert_eq!(retry_digest(&one), retry_digest(&other));
        assert!(stored_digest_matches(&other, &retry_digest(&one)));
        assert_ne!(retry_digest(&one), retry_digest(&with("clear")));
    }
}
