//! Redaction keys: an id (named in every hash, so old hashes stay searchable after a rotation)
//! and a secret of at least 32 bytes, read from a file of hex digits.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Fewest bytes a key's secret holds.
pub const MIN_KEY_BYTES: usize = 32;

/// A redaction key. Its `Debug` shows the id only: the secret is never logged.
#[derive(Clone)]
pub struct RedactionKey {
    id: String,
    /// The HMAC keyed once with the secret; each hash starts from a clone of it.
    mac: Hmac<Sha256>,
}

/// Why a key was refused. Messages never contain the key's secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key id is not 1 to 32 letters, digits, `-`, `_` or `.`.
    #[error("redaction key id `{0}`: must be 1 to 32 ASCII letters, digits, `-`, `_` or `.`")]
    BadId(String),
    /// The secret is too short.
    #[error("redaction key `{id}`: {bytes} bytes, fewer than the {MIN_KEY_BYTES} required")]
    TooShort {
        /// The key's id.
        id: String,
        /// Bytes it holds.
        bytes: usize,
    },
    /// The key file could not be read or does not hold hex digits.
    #[error("redaction key file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Two keys have the same id.
    #[error("redaction key id `{0}` is given twice")]
    Duplicate(String),
    /// The current key is not among the keys.
    #[error("the current redaction key `{0}` is not among the redaction keys")]
    UnknownCurrent(String),
    /// Rules were given without a key to hash with.
    #[error("redaction rules are configured but no redaction key (--redaction-key-file)")]
    Missing,
}

impl RedactionKey {
    /// The key `id` with `secret` (at least [`MIN_KEY_BYTES`] bytes).
    pub fn new(id: &str, secret: Vec<u8>) -> Result<Self, KeyError> {
        if !audit_ledger::is_key_id(id) {
            return Err(KeyError::BadId(id.to_string()));
        }
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort {
                id: id.to_string(),
                bytes: secret.len(),
            });
        }
        let mac = Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC takes keys of any length");
        Ok(Self {
            id: id.to_string(),
            mac,
        })
    }

    /// The key named by `spec`, `ID=PATH` or `PATH` (the id is then the file's name without its
    /// extension): the file holds the secret as hex digits (e.g. `openssl rand -hex 32`),
    /// surrounding whitespace ignored.
    pub fn load(spec: &str) -> Result<Self, KeyError> {
        let (id, path) = match spec.split_once('=') {
            Some((id, path)) => (id.to_string(), Path::new(path)),
            None => {
                let path = Path::new(spec);
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
                (stem.unwrap_or_default(), path)
            }
        };
        if !audit_ledger::is_key_id(&id) {
            return Err(KeyError::BadId(id));
        }
        let file_error = |reason: String| KeyError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let secret = decode_hex(text.trim()).ok_or_else(|| {
            file_error("must hold the key as hex digits, e.g. from `openssl rand -hex 32`".into())
        })?;
        Self::new(&id, secret)
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The HMAC-SHA256 of `value` under this key.
    pub(crate) fn mac(&self, value: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(value);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for RedactionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedactionKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_hex_files_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("2026-q1.key");
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        let key = RedactionKey::load(path.to_str().unwrap()).unwrap();
        assert_eq!(key.id(), "2026-q1");
        assert_eq!(
            key.mac(b"x"),
            RedactionKey::new("other", vec![0xab; 32])
                .unwrap()
                .mac(b"x")
        );
        let named = RedactionKey::load(&format!("k9={}", path.display())).unwrap();
        assert_eq!(named.id(), "k9");
        assert!(!format!("{named:?}").contains("ab"), "{named:?}");

        std::fs::write(&path, "ab".repeat(16)).unwrap();
        let short = RedactionKey::load(path.to_str().unwrap()).unwrap_err();
        assert_eq!(
            short.to_string(),
            "redaction key `2026-q1`: 16 bytes, fewer than the 32 required"
        );
        std::fs::write(&path, "not hex at all, but a secret").unwrap();
        let bad = RedactionKey::load(path.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("hex digits") && !bad.contains("secret"),
            "{bad}"
        );
        let missing = RedactionKey::load("k1=/nonexistent/k1.key").unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/k1.key"),
            "{missing}"
        );
        let bad_id = RedactionKey::load(&format!("a:b={}", path.display())).unwrap_err();
        assert_eq!(bad_id, KeyError::BadId("a:b".into()));
    }
}
