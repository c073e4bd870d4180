//! [`Verifier`]: checks a log fed one entry at a time, in sequence order, against its checkpoints.

use std::collections::BTreeMap;
use std::fmt;

use audit_ledger::merkle::Frontier;
use audit_ledger::{CHAIN_START, Checkpoint, Hash, PublicKey};
use audit_proto::pb::AuditEntry;

use super::KeySource;

/// The first thing found wrong, at the first sequence it affects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The first sequence that is not proven intact.
    pub sequence: u64,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entry {}: {}", self.sequence, self.reason)
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone)]
pub struct Report {
    /// Entries read and found intact (up to the first problem).
    pub entries: u64,
    /// Of those, the first ones retention pruned: proven by their hashes only (their content is
    /// gone, as the signed horizon allows).
    pub pruned: u64,
    /// Checkpoints whose signature, order and content verified.
    pub checkpoints: u64,
    /// The newest checkpoint that verified against the entries.
    pub newest_checkpoint: Option<Checkpoint>,
    /// The key signatures were checked with.
    pub public_key: PublicKey,
    /// Where that key came from.
    pub key_source: KeySource,
    /// The first problem, by sequence; `None` when the log verified.
    pub problem: Option<Problem>,
}

impl Report {
    /// Whether the log verified.
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }

    /// Entries after the newest verified checkpoint: intact as far as the chain shows, but not
    /// yet covered by a signature.
    pub fn uncovered(&self) -> u64 {
        self.entries
            - self
                .newest_checkpoint
                .as_ref()
                .map_or(0, |c| c.size.min(self.entries))
    }
}

/// A checkpoint waiting for the entries it covers.
#[derive(Debug)]
struct Pending {
    label: String,
    checkpoint: Checkpoint,
}

/// Checks a log fed in sequence order: each entry's hash against its content, the chain
/// between entries, and every checkpoint (signature, order, chain head and Merkle root at its
/// size). Feed the checkpoints first ([`Verifier::checkpoint`]), then the entries
/// ([`Verifier::entry`]), then call [`Verifier::finish`].
#[derive(Debug)]
pub struct Verifier {
    key: PublicKey,
    key_source: KeySource,
    /// Origin of the first valid checkpoint; every other must match it.
    origin: Option<String>,
    /// Checkpoints that verified, by size.
    pending: BTreeMap<u64, Vec<Pending>>,
    /// Largest size of a stored checkpoint that verified, and its index.
    largest: Option<(u64, u64)>,
    /// Entries checked.
    count: u64,
    chain: Hash,
    tree: Frontier,
    /// Size of the newest checkpoint that matched the entries.
    matched: u64,
    matched_checkpoint: Option<Checkpoint>,
    checkpoints_verified: u64,
    /// The first problem, by sequence.
    problem: Option<Problem>,
    /// Set once an entry is bad: later entries prove nothing.
    stopped: bool,
    /// The unsigned tail is held to the newest checkpoint's `max-unsigned` up to this sequence
    /// (all entries when `None`).
    bounded_through: Option<u64>,
    /// Retention's horizon: the largest `pruned` of the checkpoints whose signature verified,
    /// and the index of the one that signed it.
    horizon: (u64, u64),
    /// Entries proven by their hashes only.
    pruned: u64,
}

impl Verifier {
    /// A verifier checking signatures with `key`.
    pub fn new(key: PublicKey, key_source: KeySource) -> Self {
        Self {
            key,
            key_source,
            origin: None,
            pending: BTreeMap::new(),
            largest: None,
            count: 0,
            chain: CHAIN_START,
            tree: Frontier::new(),
            matched: 0,
            matched_checkpoint: None,
            checkpoints_verified: 0,
            problem: None,
            stopped: false,
            bounded_through: None,
            horizon: (0, 0),
            pruned: 0,
        }
    }

    /// Holds only entries up to `head` to the newest checkpoint's bound on unsigned entries:
    /// the head of a running log read before its checkpoints were listed. Entries committed
    /// after that may be covered by checkpoints signed since.
    pub fn bound_tail_through(&mut self, head: u64) {
        self.bounded_through = Some(head);
    }

    /// Whether entries still need to be fed (false once an entry was found bad).
    pub fn wants_entries(&self) -> bool {
        !self.stopped
    }

    /// Records a problem at `sequence`; the report keeps the one with the lowest sequence.
    pub fn problem(&mut self, sequence: u64, reason: impl Into<String>) {
        if self.problem.as_ref().is_none_or(|p| sequence < p.sequence) {
            self.problem = Some(Problem {
                sequence,
                reason: reason.into(),
            });
        }
    }

    /// The first sequence after the checkpoints that verified so far.
    fn after_valid(&self) -> u64 {
        self.largest.map_or(0, |(size, _)| size) + 1
    }

    /// A checkpoint kept from earlier by the verifier: the log must contain what it signs.
    pub fn trusted_checkpoint(&mut self, note: &str) {
        match self.key.open(note) {
            Ok(checkpoint) => self.expect(checkpoint, "the trusted checkpoint".to_string()),
            Err(error) => self.problem(1, format!("the trusted checkpoint is refused: {error}")),
        }
    }

    /// The stored checkpoint `index`, in the order the server signed them. `stated_size` is the
    /// size the store lists it under, when it has one.
    pub fn checkpoint(&mut self, index: u64, note: &str, stated_size: Option<u64>) {
        let label = format!("checkpoint #{index}");
        let checkpoint = match self.key.open(note) {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                let at = self.after_valid();
                self.problem(at, format!("{label} is refused: {error}"));
                return;
            }
        };
        if let Some(stated) = stated_size
            && stated != checkpoint.size
        {
            self.problem(
                stated.min(checkpoint.size) + 1,
                format!(
                    "{label} is listed with size {stated} but signs size {}",
                    checkpoint.size
                ),
            );
        }
        match &self.origin {
            None => self.origin = Some(checkpoint.origin.clone()),
            Some(origin) if *origin != checkpoint.origin => {
                let at = self.after_valid();
                self.problem(
                    at,
                    format!("{label} is for log `{}`, not `{origin}`", checkpoint.origin),
                );
                return;
            }
            Some(_) => {}
        }
        if let Some((size, previous)) = self.largest
            && checkpoint.size < size
        {
            self.problem(
                checkpoint.size + 1,
                format!(
                    "{label} signs {} entries, fewer than checkpoint #{previous} signed before it \
                     ({size}): the log was rolled back or truncated",
                    checkpoint.size
                ),
            );
            return;
        }
        self.largest = Some((checkpoint.size, index));
        let (horizon, by) = self.horizon;
        if checkpoint.pruned < horizon {
            // Honest retention only moves forward.
            self.problem(
                checkpoint.pruned + 1,
                format!(
                    "{label} says entries up to {} were pruned, fewer than checkpoint #{by} \
                     before it ({horizon})",
                    checkpoint.pruned
                ),
            );
        } else {
            self.horizon = (checkpoint.pruned, index);
        }
        self.expect(checkpoint, label);
    }

    /// The key signatures are checked with.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// Retention's horizon as the signed checkpoints fed so far state it (0: nothing pruned).
    pub fn horizon(&self) -> u64 {
        self.horizon.0
    }

    /// The next entry when retention pruned it: only its hashes are stored. Allowed up to the
    /// horizon a signed checkpoint states; proves the chain and feeds the tree as an entry does.
    /// Returns whether further entries are wanted.
    pub fn pruned_entry(&mut self, sequence: u64, entry_hash: Hash, chain_hash: Hash) -> bool {
        if self.stopped {
            return false;
        }
        let expected = self.count + 1;
        if sequence != expected {
            return self.bad(
                expected,
                "missing (pruned entries do not follow each other)",
            );
        }
        if sequence > self.horizon.0 {
            return self.bad(
                sequence,
                format!(
                    "its content was removed, but no signed checkpoint says retention pruned it \
                     (the signed horizon is {})",
                    self.horizon.0
                ),
            );
        }
        let chain = audit_ledger::chain_hash(&self.chain, &entry_hash);
        if chain_hash != chain {
            return self.bad(
                expected,
                "(pruned) its chain hash does not follow from the entries before it",
            );
        }
        self.count = expected;
        self.pruned = expected;
        self.chain = chain;
        self.tree.push(&entry_hash);
        self.check_checkpoints_at(expected)
    }

    /// Starts the entries after `checkpoint`, a checkpoint that verified, whose size is the
    /// horizon of what retention pruned, with `tree`, the Merkle tree of its entries (from a
    /// proof whose root the caller checked against the checkpoint's). For a verifier that
    /// cannot read the pruned entries' hashes (a server's `Query` returns none of them).
    pub fn resume_at(&mut self, checkpoint: &Checkpoint, tree: Frontier) {
        debug_assert_eq!(tree.root(), checkpoint.root);
        self.count = checkpoint.size;
        self.pruned = checkpoint.size;
        self.chain = checkpoint.chain;
        self.tree = tree;
        // Checkpoints at or below it prove nothing more than it does.
        self.pending.retain(|size, _| *size > checkpoint.size);
        self.matched = checkpoint.size;
        self.checkpoints_verified += 1;
        self.matched_checkpoint = Some(checkpoint.clone());
    }

    fn expect(&mut self, checkpoint: Checkpoint, label: String) {
        if checkpoint.size == 0 {
            // The first checkpoint, signed when the log was created.
            if checkpoint.root != Frontier::new().root() || checkpoint.chain != CHAIN_START {
                self.problem(1, format!("{label} signs size 0 but not the empty log"));
                return;
            }
            self.checkpoints_verified += 1;
            if self.matched_checkpoint.is_none() {
                self.matched_checkpoint = Some(checkpoint);
            }
            return;
        }
        self.pending
            .entry(checkpoint.size)
            .or_default()
            .push(Pending { label, checkpoint });
    }

    /// The next entry as stored: `sequence`, `entry_hash` and `chain_hash` set. Returns
    /// whether further entries are wanted.
    pub fn entry(&mut self, entry: &AuditEntry) -> bool {
        if self.stopped {
            return false;
        }
        let expected = self.count + 1;
        if entry.sequence != expected {
            let reason = if entry.sequence > expected {
                if entry.sequence == expected + 1 {
                    format!("missing (the next stored entry is {})", entry.sequence)
                } else {
                    format!(
                        "missing, with {} more (the next stored entry is {})",
                        entry.sequence - expected - 1,
                        entry.sequence
                    )
                }
            } else {
                format!(
                    "entry {} comes again after entry {}",
                    entry.sequence, self.count
                )
            };
            return self.bad(expected, reason);
        }
        let hash = audit_ledger::entry_hash(entry);
        if entry.entry_hash.is_empty() {
            return self.bad(expected, "has no entry hash");
        }
        if entry.entry_hash != hash {
            // An entry intact but at another position shows what happened before it.
            let stored_at =
                |sequence| entry.entry_hash == audit_ledger::entry_hash_at(entry, sequence);
            let reason = if expected > 1 && stored_at(expected - 1) {
                "it was stored as the entry before: an entry was inserted before it"
            } else if stored_at(expected + 1) {
                "it was stored as the entry after: an entry before it was removed"
            } else {
                "its content does not match its entry hash (the entry was changed)"
            };
            return self.bad(expected, reason);
        }
        let chain = audit_ledger::chain_hash(&self.chain, &hash);
        if entry.chain_hash != chain {
            return self.bad(
                expected,
                "its chain hash does not follow from the entries before it (an entry was \
                 changed, inserted, removed or moved)",
            );
        }
        self.count = expected;
        self.chain = chain;
        self.tree.push(&hash);
        self.check_checkpoints_at(expected)
    }

    /// Compares the checkpoints of size `size` with the entries read so far.
    fn check_checkpoints_at(&mut self, size: u64) -> bool {
        let Some(pending) = self.pending.remove(&size) else {
            return true;
        };
        let root = self.tree.root();
        for Pending { label, checkpoint } in pending {
            if checkpoint.chain != self.chain || checkpoint.root != root {
                let at = self.matched + 1;
                self.problem(
                    at,
                    format!(
                        "{label} (size {size}) does not match the stored entries: one of entries \
                         {at} to {size} was changed, inserted or removed and the chain \
                         recomputed"
                    ),
                );
                self.stopped = true;
                return false;
            }
            self.checkpoints_verified += 1;
            // Of checkpoints of one size, one that bounds the unsigned tail wins.
            let bounded =
                |c: &Option<Checkpoint>| c.as_ref().is_some_and(|c| c.max_unsigned.is_some());
            if !(self.matched == size && bounded(&self.matched_checkpoint))
                || checkpoint.max_unsigned.is_some()
            {
                self.matched_checkpoint = Some(checkpoint);
            }
            self.matched = size;
        }
        true
    }

    fn bad(&mut self, sequence: u64, reason: impl Into<String>) -> bool {
        self.problem(sequence, reason);
        self.stopped = true;
        false
    }

    /// The entries after the newest checkpoint must be no more than it allows (`max-unsigned`),
    /// and a log with entries must have a checkpoint: a new log's first one is signed at once.
    fn check_unsigned_tail(&mut self) {
        let through = self
            .bounded_through
            .map_or(self.count, |h| h.min(self.count));
        match &self.matched_checkpoint {
            None if through > 0 => self.problem(
                1,
                "no signed checkpoint covers the log, although its first checkpoint is signed \
                 when it is created: checkpoints were deleted (or the log was written by a \
                 server that signed no first checkpoint)",
            ),
            Some(checkpoint) => {
                if let Some(max) = checkpoint.max_unsigned
                    && through > checkpoint.size.saturating_add(max)
                {
                    let (size, tail) = (checkpoint.size, through - checkpoint.size);
                    // None of them is signed, so none is proven: the range starts after it.
                    self.problem(
                        size + 1,
                        format!(
                            "{tail} entries follow the newest checkpoint (size {size}), more \
                             than the {max} its signer leaves unsigned: checkpoints were \
                             deleted, or entries added without the signing key"
                        ),
                    );
                }
            }
            None => {}
        }
    }

    /// The verdict, once every entry has been fed.
    pub fn finish(mut self) -> Report {
        if !self.stopped
            && let Some((&size, pending)) = self.pending.iter().next_back()
        {
            let label = pending[0].label.clone();
            let count = self.count;
            self.problem(
                count + 1,
                format!(
                    "the log ends at entry {count} but {label} signs {size} entries: entries \
                     were removed from the end, or the store was rolled back"
                ),
            );
        }
        if !self.stopped {
            self.check_unsigned_tail();
        }
        Report {
            entries: self.count,
            pruned: self.pruned,
            checkpoints: self.checkpoints_verified,
            newest_checkpoint: self.matched_checkpoint,
            public_key: self.key,
            key_source: self.key_source,
            problem: self.problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use audit_ledger::SigningKey;

    /// A log of `n` entries with correct hashes.
    fn log(n: u64) -> Vec<AuditEntry> {
        let mut chain = CHAIN_START;
        (1..=n)
            .map(|sequence| {
                let mut entry = AuditEntry {
                    sequence,
                    source: format!("s{sequence}"),
                    ..Default::default()
                };
                let hash = audit_ledger::entry_hash(&entry);
                chain = audit_ledger::chain_hash(&chain, &hash);
                entry.entry_hash = hash.to_vec();
                entry.chain_hash = chain.to_vec();
                entry
            })
            .collect()
    }

    fn sign(key: &SigningKey, entries: &[AuditEntry]) -> String {
        let mut tree = Frontier::new();
        for entry in entries {
            tree.push(&entry.entry_hash.clone().try_into().unwrap());
        }
        key.sign(&Checkpoint {
            origin: "log".into(),
            size: entries.len() as u64,
            root: tree.root(),
            chain: entries
                .last()
                .map_or(CHAIN_START, |e| e.chain_hash.clone().try_into().unwrap()),
            time: 1,
            max_unsigned: None,
            pruned: 0,
        })
    }

    /// A checkpoint of `entries` promising at most `max` unsigned entries after it.
    fn sign_bounded(key: &SigningKey, entries: &[AuditEntry], max: u64) -> String {
        let legacy = key.public_key().open(&sign(key, entries)).unwrap();
        key.sign(&Checkpoint {
            max_unsigned: Some(max),
            ..legacy
        })
    }

    fn verify(key: &SigningKey, notes: &[String], entries: &[AuditEntry]) -> Report {
        let mut verifier = Verifier::new(key.public_key(), KeySource::Trusted);
        for (i, note) in notes.iter().enumerate() {
            verifier.checkpoint(i as u64 + 1, note, None);
        }
        for entry in entries {
            if !verifier.entry(entry) {
                break;
            }
        }
        verifier.finish()
    }

    #[test]
    fn untouched_log_verifies() {
        let key = SigningKey::generate("log").unwrap();
        let entries = log(25);
        let notes = vec![sign(&key, &entries[..10]), sign(&key, &entries[..20])];
        let report = verify(&key, &notes, &entries);
        assert!(report.is_ok(), "{:?}", report.problem);
        assert_eq!((report.entries, report.checkpoints), (25, 2));
        assert_eq!(report.uncovered(), 5);
    }

    #[test]
    fn an_unsigned_tail_longer_than_the_bound_is_tampered() {
        let key = SigningKey::generate("log").unwrap();
        let entries = log(30);
        let genesis = sign_bounded(&key, &[], 10);
        let at_10 = sign_bounded(&key, &entries[..10], 10);
        // A crash's short tail: unsigned, not tampered.
        let report = verify(&key, &[genesis.clone(), at_10.clone()], &entries[..20]);
        assert!(report.is_ok(), "{:?}", report.problem);
        assert_eq!(report.uncovered(), 10);
        // Longer than the bound: checkpoints are missing.
        let report = verify(&key, &[genesis.clone(), at_10], &entries[..21]);
        let problem = report.problem.unwrap();
        assert_eq!(problem.sequence, 11);
        assert!(
            problem.reason.contains("more than the 10"),
            "{}",
            problem.reason
        );
        // Every checkpoint after the first one deleted.
        let report = verify(&key, std::slice::from_ref(&genesis), &entries);
        assert_eq!(report.problem.unwrap().sequence, 1);
        // No checkpoint at all.
        let report = verify(&key, &[], &entries[..5]);
        assert_eq!(report.problem.unwrap().sequence, 1);
        // Legacy checkpoints bound nothing.
        let report = verify(&key, &[sign(&key, &entries[..10])], &entries);
        assert!(report.is_ok(), "{:?}", report.problem);
        // A first checkpoint that signs size 0 but not the empty log.
        let forged = key.sign(&Checkpoint {
            chain: [1; 32],
            ..key.public_key().open(&genesis).unwrap()
        });
        assert_eq!(verify(&key, &[forged], &[]).problem.unwrap().sequence, 1);
    }

    #[test]
    fn a_running_log_holds_only_entries_before_the_listing_to_the_bound() {
        let key = SigningKey::generate("log").unwrap();
        let entries = log(30);
        let notes = [
            sign_bounded(&key, &[], 10),
            sign_bounded(&key, &entries[..10], 10),
        ];
        let mut verifier = Verifier::new(key.public_key(), KeySource::Trusted);
        for (i, note) in notes.iter().enumerate() {
            verifier.checkpoint(i as u64 + 1, note, None);
        }
        verifier.bound_tail_through(20);
        for entry in &entries {
            assert!(verifier.entry(entry));
        }
        let report = verifier.finish();
        assert!(report.is_ok(), "{:?}", report.problem);
    }

    #[test]
    fn first_bad_sequence_is_named() {
        let key = SigningKey::generate("log").unwrap();
        let entries = log(30);
        let notes = vec![sign(&key, &entries[..10]), sign(&key, &entries[..20])];
        let first_bad = |entries: &[AuditEntry], notes: &[String]| {
            verify(&key, notes, entries).problem.unwrap().sequence
        };
        let mut edited = entries.clone();
        edited[14].resource = "x".into();
        assert_eq!(first_bad(&edited, &notes), 15);
        let mut removed = entries.clone();
        removed.remove(6);
        assert_eq!(first_bad(&removed, &notes), 7);
        assert_eq!(first_bad(&entries[..17], &notes), 18);
        // A recomputed chain: only the checkpoint at 20 shows it, so 11..=20 is suspect.
        let mut recomputed = entries.clone();
        recomputed[14].resource = "x".into();
        let mut chain: Hash = recomputed[13].chain_hash.clone().try_into().unwrap();
        for entry in &mut recomputed[14..] {
            let hash = audit_ledger::entry_hash(entry);
            chain = audit_ledger::chain_hash(&chain, &hash);
            entry.entry_hash = hash.to_vec();
            entry.chain_hash = chain.to_vec();
        }
        assert_eq!(first_bad(&recomputed, &notes), 11);
        let other = SigningKey::generate("log").unwrap();
        let foreign = vec![notes[0].clone(), sign(&other, &entries[..20])];
        assert_eq!(first_bad(&entries, &foreign), 11);
        let replayed = vec![notes[0].clone(), notes[1].clone(), notes[0].clone()];
        assert_eq!(first_bad(&entries, &replayed), 11);
    }
}
