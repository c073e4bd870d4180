//! Tamper evidence of the audit log, shared by the server (which computes it) and the verifiers
//! (which check it):
//!
//! - [`entry_hash`]: SHA-256 of a documented canonical encoding of a stored entry (see
//!   [`encode_entry`]), and [`chain_hash`], which links each entry to everything before it.
//! - [`merkle`]: the RFC 6962 Merkle tree over the entry hashes, with inclusion and consistency
//!   proofs and their verification.
//! - [`Checkpoint`]: log name, size, Merkle root, chain head and time, signed with Ed25519 as a
//!   C2SP signed note by a [`SigningKey`] and opened with its [`PublicKey`].
//! - [`retry_digest`]: the digest the store keeps to recognise a retried entry, blind to
//!   redacted values ([`is_redacted`]).
//! - `sqlite` (feature `sqlite`): the store's SQLite schema, in one place, and the checks that
//!   a database holds exactly that schema with intact indexes.
//!
//! ```
//! use audit_ledger::{CHAIN_START, Checkpoint, SigningKey, chain_hash, entry_hash, merkle};
//! use audit_proto::pb::AuditEntry;
//!
//! let entry = AuditEntry { sequence: 1, source: "billing".into(), ..Default::default() };
//! let hash = entry_hash(&entry);
//! let chain = chain_hash(&CHAIN_START, &hash);
//! let mut tree = merkle::Frontier::new();
//! tree.push(&hash);
//!
//! let key = SigningKey::generate("audit.example/log").unwrap();
//! let checkpoint = Checkpoint { origin: "audit.example/log".into(), size: 1, root: tree.root(), chain, time: 1_700_000_000, max_unsigned: Some(1000), pruned: 0 };
//! let note = key.sign(&checkpoint);
//! assert_eq!(key.public_key().open(&note).unwrap(), checkpoint);
//! ```

#![forbid(unsafe_code)]

mod checkpoint;
mod digest;
mod encoding;
pub mod merkle;
mod redacted;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use checkpoint::{Checkpoint, PublicKey, SigningKey};
pub use digest::{DigestCheck, retry_digest, stored_digest_matches};
pub use encoding::{
    CHAIN_START, CHAIN_TAG, ENCODING_VERSION, ENTRY_TAG, Hash, chain_hash, encode_entry,
    entry_hash, entry_hash_at,
};
pub use redacted::{MAX_KEY_ID_LEN, REDACTED_PREFIX, is_key_id, is_redacted, mask_redacted};

/// Why a key, a note or a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The text is not in the expected format.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// What was being parsed (`checkpoint`, `public key`, ...).
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The note carries no signature by the expected key.
    #[error("the checkpoint is not signed by key {0}")]
    NotSignedBy(String),
    /// A signature line names the expected key but the signature does not verify.
    #[error("the checkpoint's signature by key {0} does not verify")]
    BadSignature(String),
    /// No randomness was available to generate a key.
    #[error("cannot generate a key: {0}")]
    Random(String),
}

impl Error {
    fn malformed(what: &'static str, why: impl Into<String>) -> Self {
        Error::Malformed {
            what,
            why: why.into(),
        }
    }
}
