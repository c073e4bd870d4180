//! Redaction of secrets in audit entries, before they are stored or hashed: the configured
//! fields are replaced with `hmac-sha256:KEYID:HEX`, the HMAC-SHA256 of the value under a
//! redaction key (kept apart from the signing key), so that equal values stay equal and
//! searchable without being readable, as Vault's audit devices do.
//!
//! One place for the server (which redacts what it stores) and the client's `AuditLayer`.
//!
//! ```
//! use audit_redact::{RedactionKey, RedactionRules, Redactor};
//!
//! let rules = RedactionRules::parse(&["details.password".into(), "labels.secret_*".into()]).unwrap();
//! let key = RedactionKey::new("k1", vec![7; 32]).unwrap();
//! let redactor = Redactor::new(rules, vec![key], None).unwrap();
//! let hash = redactor.hash("hunter2", None).unwrap();
//! assert!(hash.starts_with("hmac-sha256:k1:"));
//! ```

#![forbid(unsafe_code)]

mod glob;
mod keys;
mod redactor;
mod rules;

pub use audit_ledger::{REDACTED_PREFIX, is_redacted};
pub use keys::{KeyError, MIN_KEY_BYTES, RedactionKey};
pub use redactor::{Redactor, UnknownKey};
pub use rules::{RedactionRules, RuleError};
