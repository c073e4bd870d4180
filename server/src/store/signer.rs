//! Signed checkpoints: the signing key file, when a checkpoint is due, signing one of the log's
//! tip, and copying each to the checkpoint copy directory. Store-agnostic: the engine stores
//! what this signs in the same group as the entries it covers, so a checkpoint costs no fsync.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use audit_ledger::{Checkpoint, PublicKey, SigningKey};

use super::backend::{NewCheckpoint, Tip};
use crate::error::Error;

/// Name of the key file generated in the data directory.
pub const KEY_FILE: &str = "signing.key";
/// Name of the public key file written beside it, for verifiers.
pub const PUBLIC_KEY_FILE: &str = "signing.pub";
/// Name of the newest checkpoint's copy in the checkpoint copy directory.
pub const LATEST_COPY: &str = "latest.note";

/// When and how the store signs checkpoints.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    /// Private key file (C2SP `PRIVATE+KEY+...`); `None` uses, or creates, `signing.key` in the
    /// data directory.
    pub signing_key: Option<PathBuf>,
    /// Name of the log: the origin line of its checkpoints and the name of a generated key.
    pub log_name: String,
    /// A checkpoint is signed once this many entries are not covered by one.
    pub every_entries: u64,
    /// A checkpoint is signed at most this long after the first entry it does not cover.
    pub interval: Duration,
    /// Directory that receives a copy of each checkpoint as it is signed.
    pub copy_dir: Option<PathBuf>,
    /// What the start-up verification checks besides checkpoints and the unsigned tail.
    pub startup_check: StartupCheck,
}

/// How much of the database the start-up verification reads besides the newest checkpoint's
/// tail (which it always rehashes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartupCheck {
    /// The schema and the database's own integrity check: every index agrees with its table.
    Full,
    /// The schema only.
    Schema,
}

/// Loads the signing key: the configured file, or `signing.key` in `key_dir` (generated with
/// mode 0600 on first start). With a `key_dir`, its public key is written to `signing.pub`.
pub fn load_key(key_dir: Option<&Path>, options: &Checkpointing) -> Result<SigningKey, Error> {
    let failed = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        Error::StoreFailed(format!("{what} {}: {e}", path.display()))
    };
    let key = match (&options.signing_key, key_dir) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|e| failed("read", path, &e))?;
            SigningKey::from_text(&text).map_err(|e| failed("signing key", path, &e))?
        }
        (None, None) => {
            return Err(Error::Config(
                "a store without a data directory needs --signing-key".into(),
            ));
        }
        (None, Some(dir)) => {
            let path = dir.join(KEY_FILE);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    SigningKey::from_text(&text).map_err(|e| failed("signing key", &path, &e))?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let key = SigningKey::generate(&options.log_name)
                        .map_err(|e| failed("generate key", &path, &e))?;
                    write_file(&path, &format!("{}\n", key.to_text()), 0o600)
                        .map_err(|e| failed("write", &path, &e))?;
                    tracing::info!(path = %path.display(), public_key = %key.public_key().to_text(), "generated a signing key");
                    key
                }
                Err(e) => return Err(failed("read", &path, &e)),
            }
        }
    };
    if let Some(dir) = key_dir {
        let public = dir.join(PUBLIC_KEY_FILE);
        let text = format!("{}\n", key.public_key().to_text());
        if std::fs::read_to_string(&public).ok().as_deref() != Some(text.as_str()) {
            write_file(&public, &text, 0o644).map_err(|e| failed("write", &public, &e))?;
        }
    }
    Ok(key)
}

/// Writes a new file durably (the file, then its directory).
pub fn write_file(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let mut file = File::options()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&temp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The writer's signer: the key, the checkpoint policy, and when entries were first left
/// uncovered.
pub struct Signer {
    key: SigningKey,
    origin: String,
    every_entries: u64,
    interval: Duration,
    copy_dir: Option<PathBuf>,
    /// When this writer first saw committed entries not covered by a checkpoint.
    uncovered_since: Option<Instant>,
}

impl Signer {
    /// A signer with `key` under `options`.
    pub fn new(key: SigningKey, options: &Checkpointing) -> Self {
        if let Some(dir) = &options.copy_dir
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            tracing::error!(dir = %dir.display(), error = %e, "cannot create the checkpoint copy directory");
        }
        Signer {
            key,
            origin: options.log_name.clone(),
            every_entries: options.every_entries.max(1),
            interval: options.interval,
            copy_dir: options.copy_dir.clone(),
            uncovered_since: None,
        }
    }

    /// The public key of the signer.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Name of the log.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The `max-unsigned` this signer writes into its checkpoints.
    pub fn every_entries(&self) -> u64 {
        self.every_entries
    }

    /// Whether `tip` (the log as it will be once the current group commits) needs a
    /// checkpoint now.
    pub fn due(&self, tip: &Tip) -> bool {
        tip.sequence > tip.signed_size
            && (tip.sequence - tip.signed_size >= self.every_entries
                || self.deadline().is_some_and(|at| at <= Instant::now()))
    }

    /// When the entries not yet covered must be signed, if there are any.
    pub fn deadline(&self) -> Option<Instant> {
        self.uncovered_since.map(|since| since + self.interval)
    }

    /// Signs a checkpoint of `tip`, to store with it.
    ///
    /// Its `max-unsigned` is `--checkpoint-every-entries`: a checkpoint is signed in the very
    /// commit that brings that many entries beyond the newest one, so an honest store never
    /// holds more (a crash loses no checkpoint its entries committed with).
    pub fn sign(&self, tip: &Tip) -> NewCheckpoint {
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size: tip.sequence,
            root: tip.tree.root(),
            chain: tip.chain,
            time,
            max_unsigned: Some(self.every_entries),
            pruned: tip.pruned,
        };
        NewCheckpoint {
            size: tip.sequence,
            time,
            note: self.key.sign(&checkpoint),
        }
    }

    /// Takes `tip` as committed, with `signed`, a checkpoint of it committed with it, which is
    /// then copied to the checkpoint copy directory.
    pub fn committed(&mut self, tip: &Tip, signed: Option<&NewCheckpoint>) {
        if let Some(checkpoint) = signed {
            self.copy_out(checkpoint);
        }
        if tip.sequence > tip.signed_size {
            self.uncovered_since.get_or_insert_with(Instant::now);
        } else {
            self.uncovered_since = None;
        }
    }

    /// Writes the note to `<size>.note` and `latest.note` in the copy directory, each
    /// atomically. A failure is logged: the checkpoint is in the store, and the next one is
    /// copied again.
    fn copy_out(&self, checkpoint: &NewCheckpoint) {
        let Some(dir) = &self.copy_dir else { return };
        for name in [format!("{}.note", checkpoint.size), LATEST_COPY.to_string()] {
            let path = dir.join(name);
            if let Err(error) = write_file(&path, &checkpoint.note, 0o644) {
                tracing::error!(path = %path.display(), %error, "cannot copy a signed checkpoint");
            }
        }
    }
}
