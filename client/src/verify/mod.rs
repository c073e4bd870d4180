//! Verification of the log's tamper evidence: hash chain, signed checkpoints and Merkle proofs.
//!
//! - [`verify_data_dir`] reads a stopped server's data directory (the SQLite file, read-only);
//!   [`verify_server`] reads a running server through `Query` and `ListCheckpoints`. Both feed
//!   a [`Verifier`] and return a [`Report`] naming the first bad sequence, if any.
//! - [`archive`]: self-verifying archives written by `audit export`, checked offline with
//!   [`archive::verify_archive`].
//! - [`check_inclusion`] and [`check_consistency`] check a receipt or an earlier checkpoint
//!   against the server's newest checkpoint with RFC 6962 proofs, without reading the log.
//!
//! What is proven: every entry up to the newest checkpoint the verifier trusts is exactly as
//! it was stored, in place, none missing or added, provided the signing key was not stolen
//! together with the store. Entries after the newest checkpoint are only as good as the chain
//! (an attacker who can write the store can recompute it), but there may be no more of them
//! than that checkpoint's `max-unsigned` allows, and a log must have a checkpoint (its first is
//! signed when it is created): deleting checkpoints is detected. A store rolled back to an
//! older copy, with its checkpoints, is only caught with a newer checkpoint kept elsewhere
//! ([`Trust::checkpoints`], e.g. the server's `--checkpoint-copy` directory).

pub mod archive;
#[cfg(feature = "offline")]
mod offline;
#[cfg(feature = "offline")]
mod offline_postgres;
mod online;
mod verifier;

pub use audit_ledger::{Checkpoint, Hash, PublicKey};
#[cfg(feature = "offline")]
pub use offline::verify_data_dir;
#[cfg(feature = "offline")]
pub use offline_postgres::verify_postgres;
pub use online::{check_consistency, check_inclusion, verify_server};
pub use verifier::{Problem, Report, Verifier};

/// What a verifier trusts: the key that signs checkpoints, and checkpoints kept from earlier.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// The key that signs the log's checkpoints. When `None`, the verifier uses the key the
    /// server (or its data directory) presents, which proves nothing against someone who
    /// controls that server: give the key from a trusted copy.
    pub public_key: Option<PublicKey>,
    /// Signed checkpoint notes kept from earlier (`audit checkpoint > FILE`): the log must still
    /// contain what they sign. This catches a store rolled back to an older copy.
    pub checkpoints: Vec<String>,
}

/// Where the verifier got the public key it checked signatures with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Given by the caller ([`Trust::public_key`]).
    Trusted,
    /// Read from the data directory being verified (`signing.pub`).
    DataDir,
    /// Presented by the server being verified.
    Server,
}
