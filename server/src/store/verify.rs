//! The start-up verification: the server never signs what it has not verified.
//!
//! When the log opens, [`verify`] checks the schema (and, by default, the database's integrity
//! check), that the newest checkpoint is signed by the server's key and matches the stored log
//! at its size, that no more entries follow it than it allows (`max-unsigned`), that the
//! entries after it still hash, chain and digest as stored, and that the store still holds what
//! the newest copied checkpoint signs. It also rebuilds the tip (chain and Merkle frontier) the
//! writer continues from. Any failure is a reason the log must stay read-only. A new log gets
//! its first checkpoint (size 0) at once, so a log without checkpoints has lost them.

use std::path::Path;

use audit_ledger::merkle::Frontier;
use audit_ledger::{CHAIN_START, Checkpoint, Hash, PublicKey};

use super::backend::{Reader, Tip};
use super::signer::{Checkpointing, LATEST_COPY, StartupCheck};
use crate::error::Error;

/// What the verification found.
pub struct Verified {
    /// The log's tip as stored.
    pub tip: Tip,
    /// Whether a checkpoint must be signed now: the log has none yet, or the newest one allows
    /// a different unsigned tail than `--checkpoint-every-entries` now does.
    pub sign_now: bool,
}

/// Why the log may not be written.
#[derive(Debug)]
pub enum Refusal {
    /// The newest checkpoint is not signed by this server's key: a replica with the wrong key.
    WrongKey(String),
    /// The log did not verify.
    Tampered(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::WrongKey(reason) | Refusal::Tampered(reason) => f.write_str(reason),
        }
    }
}

/// Verifies the log through `reader` (see the module documentation). `migrated` is true when
/// the schema was just migrated from a version without checkpoints. `Err` is a log that cannot
/// be read at all.
pub fn verify(
    reader: &mut dyn Reader,
    public: &PublicKey,
    options: &Checkpointing,
    migrated: bool,
) -> Result<Result<Verified, Refusal>, Error> {
    reader.begin_snapshot()?;
    let verdict = verify_snapshot(reader, public, options, migrated);
    reader.end_snapshot();
    verdict
}

fn verify_snapshot(
    reader: &mut dyn Reader,
    public: &PublicKey,
    options: &Checkpointing,
    migrated: bool,
) -> Result<Result<Verified, Refusal>, Error> {
    let tampered = |reason: String| Ok(Err(Refusal::Tampered(reason)));
    if let Err(reason) = reader.check(StartupCheck::Schema)? {
        return tampered(reason);
    }
    if options.startup_check == StartupCheck::Full
        && let Err(reason) = reader.check(StartupCheck::Full)?
    {
        return tampered(reason);
    }
    let largest = reader.largest_checkpoint()?;
    let newest = match reader.checkpoint(None)? {
        None => None,
        Some(stored) => {
            let index = stored.index;
            let checkpoint = match public.open(&stored.note) {
                Ok(checkpoint) => checkpoint,
                Err(e) => {
                    return Ok(Err(Refusal::WrongKey(format!(
                        "the newest checkpoint #{index} does not verify with the server's key: {e}"
                    ))));
                }
            };
            if checkpoint.size != stored.size {
                return tampered(format!(
                    "checkpoint #{index} is listed with size {} but signs {}",
                    stored.size, checkpoint.size
                ));
            }
            if checkpoint.origin != options.log_name {
                return tampered(format!(
                    "checkpoint #{index} is for log `{}`, not `{}`",
                    checkpoint.origin, options.log_name
                ));
            }
            if largest > stored.size {
                return tampered(format!(
                    "the newest checkpoint #{index} signs {} entries, fewer than an earlier \
                     one ({largest}): checkpoints were replaced or the log truncated",
                    stored.size
                ));
            }
            Some((index, checkpoint))
        }
    };
    let copied = match &options.copy_dir {
        Some(dir) => match read_copy(&dir.join(LATEST_COPY), public) {
            Ok(copy) => copy,
            Err(reason) => return tampered(reason),
        },
        None => None,
    };

    // The whole log once: its tree and chain, and both at the sizes to compare.
    let wanted = [
        newest.as_ref().map(|(_, c)| c.size),
        copied.as_ref().map(|c| c.size),
    ];
    let mut at: Vec<(u64, Hash, Hash)> = Vec::new();
    let mut tip = Tip::empty();
    let mut gap = None;
    reader.hashes(0, u64::MAX >> 1, &mut |sequence, entry_hash, chain_hash| {
        if sequence != tip.sequence + 1 {
            gap = Some(format!(
                "entry {} is missing (the next stored entry is {sequence})",
                tip.sequence + 1
            ));
            return false;
        }
        tip.push(sequence, &entry_hash, &chain_hash);
        if wanted.contains(&Some(sequence)) {
            at.push((sequence, tip.tree.root(), tip.chain));
        }
        true
    })?;
    if let Some(reason) = gap {
        return tampered(reason);
    }
    let head = tip.sequence;
    let matches = |checkpoint: &Checkpoint| {
        checkpoint.size == 0
            && checkpoint.root == Frontier::new().root()
            && checkpoint.chain == CHAIN_START
            || at.contains(&(checkpoint.size, checkpoint.root, checkpoint.chain))
    };

    if let Some(copy) = &copied {
        let stored = newest.as_ref().map_or(0, |(_, c)| c.size);
        if copy.size > head || !matches(copy) {
            return tampered(format!(
                "the store no longer contains what the copied checkpoint {} signs ({} entries): \
                 entries were changed or removed, or the store was rolled back",
                LATEST_COPY, copy.size
            ));
        }
        if copy.size > stored {
            return tampered(format!(
                "the copied checkpoint signs {} entries but the store's newest checkpoint only \
                 {stored}: checkpoints were deleted from the store",
                copy.size
            ));
        }
    }

    let Some((index, checkpoint)) = newest else {
        if head == 0 || migrated {
            return Ok(Ok(Verified {
                tip,
                sign_now: true,
            }));
        }
        return tampered(format!(
            "the store holds {head} entries but no checkpoint: a log's first checkpoint is \
             signed when it is created, so its checkpoints were deleted"
        ));
    };
    if checkpoint.size > head {
        return tampered(format!(
            "checkpoint #{index} signs {} entries but the store holds {head}: entries were \
             removed or the store was rolled back",
            checkpoint.size
        ));
    }
    if !matches(&checkpoint) {
        return tampered(format!(
            "checkpoint #{index} (size {}) does not match the stored entries: entries up to it \
             were changed, inserted or removed",
            checkpoint.size
        ));
    }
    let tail = head - checkpoint.size;
    if let Some(max) = checkpoint.max_unsigned
        && tail > max
    {
        return tampered(format!(
            "{tail} entries follow the newest checkpoint #{index} (size {}), more than the {max} \
             it allows: checkpoints were deleted",
            checkpoint.size
        ));
    }
    if let Some((tail, _)) = reader.pruned_tail()?
        && tail > checkpoint.pruned
    {
        return tampered(format!(
            "entries up to {tail} have no body, but the newest checkpoint #{index} says \
             retention pruned only {}: entries were deleted",
            checkpoint.pruned
        ));
    }
    if let Err(reason) = verify_tail(reader, checkpoint.size, checkpoint.chain)? {
        return tampered(reason);
    }
    tip.signed_size = checkpoint.size;
    tip.pruned = checkpoint.pruned;
    Ok(Ok(Verified {
        tip,
        sign_now: checkpoint.max_unsigned != Some(options.every_entries.max(1)),
    }))
}

/// The checkpoint copied to `path` by an earlier run, if there is one.
fn read_copy(path: &Path, public: &PublicKey) -> Result<Option<Checkpoint>, String> {
    match std::fs::read_to_string(path) {
        Ok(note) => public
            .open(&note)
            .map(Some)
            .map_err(|e| format!("the copied checkpoint {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Rehashes the entries after the newest checkpoint (`after`, with chain value `chain`): each
/// entry's hash, its chain link and its retry digest must be what the server stored.
fn verify_tail(
    reader: &mut dyn Reader,
    after: u64,
    mut chain: Hash,
) -> Result<Result<(), String>, Error> {
    let mut digests = audit_ledger::DigestCheck::default();
    reader.entries(after, &mut |stored| {
        let sequence = stored.sequence;
        let bad = |what: &str| format!("entry {sequence} (not yet signed) {what}");
        let hash = audit_ledger::entry_hash(&stored.entry);
        if stored.entry_hash != hash {
            return Err(bad("does not match its entry hash"));
        }
        chain = audit_ledger::chain_hash(&chain, &hash);
        if stored.chain_hash != chain {
            return Err(bad(
                "has a chain hash that does not follow from the entries before it",
            ));
        }
        if !digests.matches(&stored.entry, &stored.digest) {
            return Err(bad("has a retry digest that does not match it"));
        }
        Ok(())
    })
}
