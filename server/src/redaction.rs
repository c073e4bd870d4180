//! Redaction of secrets on the server: its settings (flags and the config file's `redact`
//! list), and `HashValue`, which hashes a known value the way redaction stores it.
//!
//! The rules and the hashing live in `audit-redact`; validation applies them (see
//! [`crate::validate::entry`]) before an entry's retry digest and hash are computed, so a secret
//! is never stored, hashed into the chain, sent to a subscriber or forwarded.

use std::path::Path;

use audit_identity::Peer;
use audit_proto::pb::{self, AuditEntry, HashValueRequest, HashValueResponse, Level, Outcome};
use audit_redact::{RedactionKey, RedactionRules, Redactor};

use crate::config::Limits;
use crate::error::{Error, Violation};

/// Redaction settings (see the README, "Redaction").
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedactionConfig {
    /// A field whose value is stored as `hmac-sha256:KEYID:HEX` instead (repeatable): a text
    /// field (`caller.principal`), `labels.KEY` or `details.PATH`, with `*` in label keys and
    /// path segments (`labels.secret_*`, `details.*.token`). Adds to the config file's `redact`.
    #[arg(
        long = "redact",
        value_name = "FIELD",
        env = "AUDIT_REDACT",
        value_delimiter = ','
    )]
    pub redact: Vec<String>,

    /// A redaction key, `ID=PATH` or `PATH` (the id is then the file name without extension),
    /// the file holding at least 32 bytes as hex (`openssl rand -hex 32`). Repeatable: every
    /// key hashes for `HashValue`; the current one redacts new entries. Keep it apart from the
    /// signing key; it is never logged.
    #[arg(
        long = "redaction-key-file",
        value_name = "[ID=]PATH",
        env = "AUDIT_REDACTION_KEY_FILE",
        value_delimiter = ','
    )]
    pub key_files: Vec<String>,

    /// Id of the key that redacts new entries; the first `--redaction-key-file` by default.
    #[arg(
        long = "redaction-key-current",
        value_name = "ID",
        env = "AUDIT_REDACTION_KEY_CURRENT"
    )]
    pub current_key: Option<String>,
}

impl RedactionConfig {
    /// The redactor of these settings plus the config file's rules (`file_rules`); a bad rule
    /// or key fails the start, named.
    pub fn build(&self, file_rules: &[String]) -> Result<Redactor, Error> {
        let rules: Vec<String> = file_rules.iter().chain(&self.redact).cloned().collect();
        let rules = RedactionRules::parse(&rules).map_err(|e| Error::Config(e.to_string()))?;
        let keys = self
            .key_files
            .iter()
            .map(|spec| RedactionKey::load(spec))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Config(e.to_string()))?;
        Redactor::new(rules, keys, self.current_key.as_deref())
            .map_err(|e| Error::Config(e.to_string()))
    }
}

/// The `redact` list of the configuration file at `path`, if it has one.
pub fn file_rules(path: Option<&Path>) -> Result<Vec<String>, Error> {
    match path {
        Some(path) => crate::config_file::load_redact(path),
        None => Ok(Vec::new()),
    }
}

/// The answer to `HashValue`: the hash of the value under the named (or current) key.
pub fn hash_value(request: &HashValueRequest, limits: &Limits) -> Result<HashValueResponse, Error> {
    let redactor = &limits.redaction;
    if redactor.current_key_id().is_none() {
        return Err(Error::NotConfigured(
            "no redaction key is configured (--redaction-key-file)".into(),
        ));
    }
    if request.value.is_empty() {
        return Err(Error::InvalidArgument(vec![Violation::new(
            "value",
            "required: redaction leaves empty values as they are",
        )]));
    }
    if request.value.len() > limits.max_entry_bytes {
        return Err(Error::InvalidArgument(vec![Violation::new(
            "value",
            format!("longer than the limit of {} bytes", limits.max_entry_bytes),
        )]));
    }
    let key_id = Some(request.key_id.as_str()).filter(|id| !id.is_empty());
    let hash = redactor.hash(&request.value, key_id).map_err(|unknown| {
        Error::InvalidArgument(vec![Violation::new("key_id", unknown.to_string())])
    })?;
    Ok(HashValueResponse {
        key_id: key_id
            .or(redactor.current_key_id())
            .unwrap_or_default()
            .to_string(),
        hash,
    })
}

/// The entry recording that `peer` hashed a value with `key_id`: who and with which key,
/// never the value nor its hash (which would let a reader of the trail link it to entries).
pub fn hashed_entry(peer: &Peer, method: &str, key_id: &str) -> AuditEntry {
    AuditEntry {
        source: "audit-server".into(),
        method: method.into(),
        event: "VALUE_HASHED".into(),
        category: "REDACTION".into(),
        level: Level::Info as i32,
        outcome: Outcome::Success as i32,
        caller: Some(pb::Caller {
            peer: peer.to_caller_peer(),
            ..Default::default()
        }),
        labels: [("key_id".to_string(), key_id.to_string())].into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn limits_with_key(dir: &Path) -> Limits {
        let path = dir.join("k1.key");
        std::fs::write(&path, "01".repeat(32)).unwrap();
        let config = RedactionConfig {
            redact: vec!["caller.principal".into()],
            key_files: vec![path.display().to_string()],
            current_key: None,
        };
        Limits {
            redaction: Arc::new(config.build(&["labels.email".into()]).unwrap()),
            ..Limits::default()
        }
    }

    #[test]
    fn hash_value_answers_with_the_key_it_used_and_names_bad_fields() {
        let dir = tempfile::tempdir().unwrap();
        let limits = limits_with_key(dir.path());
        let request = |value: &str, key_id: &str| HashValueRequest {
            value: value.into(),
            key_id: key_id.into(),
        };
        let answer = hash_value(&request("alice", ""), &limits).unwrap();
        assert_eq!(answer.key_id, "k1");
        assert_eq!(answer.hash, limits.redaction.hash("alice", None).unwrap());
        assert_eq!(
            hash_value(&request("alice", "k1"), &limits).unwrap(),
            answer
        );
        let field = |error: Error| match error {
            Error::InvalidArgument(violations) => violations[0].field.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(hash_value(&request("", ""), &limits).unwrap_err()),
            "value"
        );
        assert_eq!(
            field(hash_value(&request("a", "k2"), &limits).unwrap_err()),
            "key_id"
        );
        let long = "x".repeat(limits.max_entry_bytes + 1);
        assert_eq!(
            field(hash_value(&request(&long, ""), &limits).unwrap_err()),
            "value"
        );
        let keyless = hash_value(&request("alice", ""), &Limits::default()).unwrap_err();
        assert!(matches!(keyless, Error::NotConfigured(_)), "{keyless:?}");
    }

    #[test]
    fn rules_of_the_file_and_the_flags_both_apply() {
        let dir = tempfile::tempdir().unwrap();
        let limits = limits_with_key(dir.path());
        let mut entry = AuditEntry {
            caller: Some(pb::Caller {
                principal: "alice".into(),
                ..Default::default()
            }),
            labels: [
                ("email".to_string(), "a@example.com".to_string()),
                ("region".to_string(), "eu".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        limits.redaction.redact(&mut entry);
        let hash = |v: &str| limits.redaction.hash(v, None).unwrap();
        assert_eq!(entry.caller.unwrap().principal, hash("alice"));
        assert_eq!(entry.labels["email"], hash("a@example.com"));
        assert_eq!(entry.labels["region"], "eu");
    }
}
