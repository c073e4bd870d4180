//! What a storage backend does for the log engine ([`super::engine`]): persist one group of
//! entries atomically, with everything the engine decided about them (sequences, hashes,
//! checkpoints, the tip of the log), and answer reads. A backend knows none of the log's rules;
//! the engine knows no SQL.
//!
//! The write side ([`Backend`]) is used by the engine's one writer thread, the read side
//! ([`Reader`]) by a pool of blocking threads: both are plain blocking calls.

use audit_ledger::merkle::Frontier;
use audit_ledger::{CHAIN_START, Hash};
use audit_proto::pb::AuditEntry;

use super::{CursorClaim, Page, Read, Receipt, StartupCheck, Stats, StatsQuery, StoredCheckpoint};
use crate::error::Error;
use crate::validate::NewEntry;

/// An entry as the engine hands it to a backend to store.
pub struct Row<'a> {
    /// Its position in the log.
    pub sequence: u64,
    /// The validated entry, its retry digest and where it came from.
    pub new: &'a NewEntry,
    /// Hash of the entry at `sequence`.
    pub entry_hash: Hash,
    /// Chain value after it.
    pub chain_hash: Hash,
}

/// What a backend holds for an id already stored.
#[derive(Debug, Clone)]
pub struct StoredId {
    /// The receipt of its first recording.
    pub receipt: Receipt,
    /// Its retry digest, to tell a retry from a different entry reusing the id.
    pub digest: Vec<u8>,
}

/// A checkpoint the engine signed, to store in the same group.
#[derive(Debug, Clone)]
pub struct NewCheckpoint {
    /// Entries it covers.
    pub size: u64,
    /// When it was signed, in seconds since the Unix epoch.
    pub time: u64,
    /// The signed note.
    pub note: String,
}

/// The tip of the log: what the next group chains onto. Shared by every writer of one
/// database, which reads it under a lock when its group begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tip {
    /// Sequence of the newest entry (0 for an empty log).
    pub sequence: u64,
    /// Chain value after it.
    pub chain: Hash,
    /// Merkle tree of every entry hash so far.
    pub tree: Frontier,
    /// Size of the newest checkpoint.
    pub signed_size: u64,
    /// Retention's horizon as the newest checkpoint signs it: entries up to it may have lost
    /// their bodies (0: none).
    pub pruned: u64,
}

impl Tip {
    /// The tip of an empty log.
    pub fn empty() -> Self {
        Tip {
            sequence: 0,
            chain: CHAIN_START,
            tree: Frontier::new(),
            signed_size: 0,
            pruned: 0,
        }
    }

    /// Adds an entry stored at `sequence` (the next one) with its hashes.
    pub fn push(&mut self, sequence: u64, entry_hash: &Hash, chain: &Hash) {
        debug_assert_eq!(sequence, self.sequence + 1);
        self.sequence = sequence;
        self.chain = *chain;
        self.tree.push(entry_hash);
    }
}

/// Why a backend call failed. The engine decides what follows from it; only the service maps
/// store errors to gRPC.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The database cannot be reached (refused, lost, timed out). Nothing of the open group is
    /// committed, unless the failure struck the commit itself.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Storage failed (I/O error, full disk, constraint violated): what is on disk is not known
    /// to be what the engine meant to write.
    #[error("storage failed: {0}")]
    Failed(String),
}

/// The write side of a backend: one connection, used by the engine's writer thread.
pub trait Backend: Send + 'static {
    /// Opens a connection for reads (one per pooled reader).
    fn open_reader(&self) -> Result<Box<dyn Reader>, Error>;

    /// Whether other processes may write the same log at once (replicas sharing a database).
    /// Then [`Backend::begin`] returns the shared tip, the head is followed with
    /// [`Backend::follow_head`], and a lost database is recovered rather than fatal.
    fn shared(&self) -> bool {
        false
    }

    /// Opens the transaction of one group. A shared backend locks the log's tip until commit or
    /// rollback and returns it; an exclusive one returns `None` (the engine's tip is the truth).
    fn begin(&mut self) -> Result<Option<Tip>, BackendError>;

    /// The stored receipt of each id (UUIDs, validated), pruned entries included, in the open
    /// transaction.
    fn stored(&mut self, ids: &[&str]) -> Result<Vec<Option<StoredId>>, BackendError>;

    /// Inserts rows (consecutive sequences after the tip) in the open transaction.
    fn insert(&mut self, rows: &[Row<'_>]) -> Result<(), BackendError>;

    /// Inserts a signed checkpoint in the open transaction.
    fn insert_checkpoint(&mut self, checkpoint: &NewCheckpoint) -> Result<(), BackendError>;

    /// Claims (or renews) the lease of a durable cursor and saves its position, in the open
    /// transaction (see [`CursorWrite::apply`]).
    fn cursor(&mut self, write: &CursorWrite) -> Result<CursorClaim, BackendError>;

    /// Moves the oldest entries at or below `through`, at most `limit` of them, out of the log's
    /// entries into what retention keeps of each (sequence, id with its retry digest and request
    /// id, time received, both hashes), in the open transaction. Returns how many it moved: 0
    /// once none is left at or below `through`.
    fn prune(&mut self, through: u64, limit: usize) -> Result<usize, BackendError>;

    /// Records `tip` as the log's new tip and commits the transaction durably. An error here
    /// leaves the outcome unknown until [`Backend::recover`] settles it.
    fn commit(&mut self, tip: &Tip) -> Result<(), BackendError>;

    /// Rolls back the open transaction, if any.
    fn rollback(&mut self);

    /// Housekeeping after a commit, on the writer's path (bounding SQLite's write-ahead log).
    fn after_commit(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Reconnects after a failure. Exclusive backends cannot (a failed fsync leaves the disk
    /// in an unknown state), so the default refuses and the engine stays poisoned.
    fn recover(&mut self) -> Result<(), BackendError> {
        Err(BackendError::Failed("restart required".into()))
    }

    /// Follows commits made by other writers: calls `seen` with the committed head whenever it
    /// may have moved, until `stop` is set. Only shared backends need it.
    fn follow_head(&self) -> Option<Box<dyn HeadFollower>> {
        None
    }
}

/// Watches a shared log's head on a thread of its own.
pub trait HeadFollower: Send + 'static {
    /// Runs until `stop` is cancelled, calling `seen` with the committed head as it moves.
    fn run(self: Box<Self>, seen: &dyn Fn(u64), stop: &std::sync::atomic::AtomicBool);
}

/// A stored entry as the start-up verification reads it.
pub struct StoredEntry {
    /// Its sequence.
    pub sequence: u64,
    /// The entry as stored (its `sequence` field set, hashes not).
    pub entry: AuditEntry,
    /// Stored entry hash.
    pub entry_hash: Hash,
    /// Stored chain hash.
    pub chain_hash: Hash,
    /// Stored retry digest.
    pub digest: Vec<u8>,
}

/// The read side of a backend: one connection, used on a blocking thread.
pub trait Reader: Send + 'static {
    /// Entries matching a filter, in the read's direction, within its bounds.
    fn read(&mut self, read: &Read) -> Result<Page, Error>;

    /// The lowest sequence received at or after `nanos` since the Unix epoch, among entries that
    /// still have their body.
    fn first_received_since(&mut self, nanos: i64) -> Result<Option<u64>, Error>;

    /// The newest checkpoint, or the newest of exactly `size` entries.
    fn checkpoint(&mut self, size: Option<u64>) -> Result<Option<StoredCheckpoint>, Error>;

    /// Checkpoints with an index above `after`, oldest first, at most `limit`.
    fn checkpoints(&mut self, after: u64, limit: usize) -> Result<Vec<StoredCheckpoint>, Error>;

    /// The largest size any stored checkpoint signs (0 when there is none).
    fn largest_checkpoint(&mut self) -> Result<u64, Error>;

    /// The stored hash of entry `sequence`, pruned or not.
    fn entry_hash(&mut self, sequence: u64) -> Result<Option<Hash>, Error>;

    /// Calls `each` with the sequence, entry hash and chain hash of every entry (pruned or not)
    /// after `after` up to `through`, in order, until it returns false. A missing or malformed hash (only in
    /// a damaged store) is passed as zeros.
    fn hashes(
        &mut self,
        after: u64,
        through: u64,
        each: &mut dyn FnMut(u64, Hash, Hash) -> bool,
    ) -> Result<(), Error>;

    /// Calls `each` with every stored entry after `after` that still has its body, in order, until it returns an error
    /// (which is returned as `Ok(Err(..))`).
    fn entries(
        &mut self,
        after: u64,
        each: &mut dyn FnMut(StoredEntry) -> Result<(), String>,
    ) -> Result<Result<(), String>, Error>;

    /// The sequence of the newest committed entry, pruned or not.
    fn head(&mut self) -> Result<u64, Error>;

    /// The sequence and time received (nanoseconds since the Unix epoch) of the newest entry
    /// retention pruned, if it pruned any.
    fn pruned_tail(&mut self) -> Result<Option<(u64, i64)>, Error>;

    /// The largest size of a stored checkpoint that is at most `size` (0 when there is none).
    fn checkpoint_size_at_most(&mut self, size: u64) -> Result<u64, Error>;

    /// The saved position of durable cursor `name`.
    fn cursor_position(&mut self, name: &str) -> Result<Option<u64>, Error>;

    /// Counts of entries per time bucket and outcome, and the most frequent principals and
    /// methods (the web console's charts).
    fn stats(&mut self, query: &StatsQuery) -> Result<Stats, Error>;

    /// Checks the schema, and with [`StartupCheck::Full`] the storage's own integrity.
    fn check(&mut self, check: StartupCheck) -> Result<Result<(), String>, Error>;

    /// Starts a consistent snapshot: later reads see the log as of now, until
    /// [`Reader::end_snapshot`]. Backends with one writer, verified before it starts, need none.
    fn begin_snapshot(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// Ends the snapshot started by [`Reader::begin_snapshot`].
    fn end_snapshot(&mut self) {}
}

/// A write to a durable cursor (a forwarder's position): who writes, what, and when.
#[derive(Debug, Clone)]
pub struct CursorWrite {
    /// The cursor's name.
    pub name: String,
    /// Who claims it: one server process.
    pub owner: String,
    /// The position to save; `None` only claims the lease.
    pub position: Option<u64>,
    /// Now, in milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// How long the lease lasts from now, in milliseconds.
    pub lease_ms: i64,
    /// The holder lets the lease go with this write (a clean shutdown): anyone may claim the
    /// cursor at once, from the position saved.
    pub release: bool,
}

/// A cursor's row: its saved position, and who holds its lease until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorRow {
    /// Saved position.
    pub position: Option<u64>,
    /// Lease holder.
    pub owner: String,
    /// End of the lease, in milliseconds since the Unix epoch.
    pub lease_until: i64,
}

impl CursorWrite {
    /// The rule every backend applies to the cursor's stored row: another owner's lease that
    /// has not lapsed makes the write `Busy` and changes nothing; otherwise the writer takes
    /// (or renews) the lease and its position replaces the saved one; a release leaves the
    /// lease lapsed (at the epoch, whatever the clocks of other servers say). Returns the
    /// outcome and the row to store, if any.
    pub fn apply(&self, stored: Option<CursorRow>) -> (CursorClaim, Option<CursorRow>) {
        if let Some(row) = &stored
            && row.owner != self.owner
            && row.lease_until > self.now_ms
        {
            return (
                CursorClaim::Busy {
                    owner: row.owner.clone(),
                },
                None,
            );
        }
        let position = self.position.or(stored.and_then(|row| row.position));
        let row = CursorRow {
            position,
            owner: self.owner.clone(),
            lease_until: if self.release {
                0
            } else {
                self.now_ms + self.lease_ms
            },
        };
        (CursorClaim::Held { position }, Some(row))
    }
}

/// A missing or malformed stored hash reads as zeros; verification reports the entry.
pub fn hash_or_zeros(value: Option<Vec<u8>>) -> Hash {
    value.and_then(|h| h.try_into().ok()).unwrap_or([0; 32])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(owner: &str, position: Option<u64>, now_ms: i64) -> CursorWrite {
        CursorWrite {
            name: "siem".into(),
            owner: owner.into(),
            position,
            now_ms,
            lease_ms: 1000,
            release: false,
        }
    }

    #[test]
    fn a_lease_is_held_until_it_lapses_then_taken_over_with_the_saved_position() {
        let (claim, row) = write("a", Some(7), 0).apply(None);
        assert_eq!(claim, CursorClaim::Held { position: Some(7) });
        let row = row.unwrap();
        assert_eq!(row.lease_until, 1000);
        // Another owner, while the lease runs: refused, nothing to store.
        let (claim, nothing) = write("b", Some(9), 999).apply(Some(row.clone()));
        assert_eq!(claim, CursorClaim::Busy { owner: "a".into() });
        assert_eq!(nothing, None);
        // The holder renews; after it lapses, another takes over from the saved position.
        let (_, renewed) = write("a", None, 500).apply(Some(row));
        let renewed = renewed.unwrap();
        assert_eq!((renewed.position, renewed.lease_until), (Some(7), 1500));
        let (claim, taken) = write("b", None, 1500).apply(Some(renewed));
        assert_eq!(claim, CursorClaim::Held { position: Some(7) });
        assert_eq!(taken.unwrap().owner, "b");
    }

    #[test]
    fn a_released_lease_is_free_at_once_and_keeps_the_position() {
        let (_, row) = write("a", Some(7), 0).apply(None);
        let release = CursorWrite {
            release: true,
            ..write("a", Some(8), 100)
        };
        let (claim, released) = release.apply(row);
        assert_eq!(claim, CursorClaim::Held { position: Some(8) });
        let released = released.unwrap();
        assert_eq!(released.lease_until, 0);
        // Well within the lease the holder had, another owner takes over from the position.
        let (claim, taken) = write("b", None, 101).apply(Some(released));
        assert_eq!(claim, CursorClaim::Held { position: Some(8) });
        assert_eq!(taken.unwrap().owner, "b");
    }

    #[test]
    fn a_release_by_who_lost_the_lease_changes_nothing() {
        let (_, row) = write("b", Some(9), 0).apply(None);
        let release = CursorWrite {
            release: true,
            ..write("a", Some(3), 10)
        };
        let (claim, nothing) = release.apply(row);
        assert_eq!(claim, CursorClaim::Busy { owner: "b".into() });
        assert_eq!(nothing, None);
    }
}
