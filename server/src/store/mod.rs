//! The audit log: one engine that keeps the log's rules ([`engine`]) over small storage
//! backends ([`backend`]): SQLite (embedded, the default), PostgreSQL (several replicas sharing
//! one log) and memory (tests); a fault-injecting wrapper fails any of them at an exact point.
//! The rest of the server sees only the [`Store`] trait.

pub mod aggregate;
pub mod backend;
#[cfg(test)]
mod conformance;
pub mod engine;
pub mod fault;
mod filter;
pub mod memory;
pub mod postgres;
mod recent;
pub mod signer;
pub mod sqlite;
mod verify;
mod writer;

use std::future::Future;

use audit_ledger::{Hash, PublicKey};
use audit_proto::pb::{AuditEntry, Filter};
use prost::Message;
use tokio::sync::watch;

use crate::error::Error;
use crate::validate::NewEntry;

pub use aggregate::{Stats, StatsQuery};
pub use engine::Log;

/// How long a durable cursor's lease lasts after its holder's last write.
pub const CURSOR_LEASE: std::time::Duration = std::time::Duration::from_secs(15);
pub use signer::{Checkpointing, StartupCheck};

/// Where a stored entry landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Id of the entry.
    pub id: String,
    /// Sequence of the entry (of the first recording, for a retried id).
    pub sequence: u64,
    /// Request id stored with the entry.
    pub request_id: String,
    /// Hash of the entry as stored (of the first recording, for a retried id).
    pub entry_hash: Hash,
    /// Chain hash stored with the entry.
    pub chain_hash: Hash,
}

/// Which way a read walks the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Entries with a sequence greater than `after`, oldest first.
    Ascending {
        /// Exclusive lower bound.
        after: u64,
    },
    /// Entries with a sequence lower than `before` (or the newest), newest first.
    Descending {
        /// Exclusive upper bound; `None` starts at the newest entry.
        before: Option<u64>,
    },
}

/// One bounded read of entries matching a filter.
#[derive(Debug, Clone)]
pub struct Read {
    /// Entries to select.
    pub filter: Filter,
    /// Where to start and which way to go.
    pub direction: Direction,
    /// Highest sequence to consider: the committed head when the read was planned.
    pub through: u64,
    /// Most entries to return.
    pub limit: usize,
    /// Stop once the returned entries reach this many encoded bytes (at least one is returned).
    pub max_bytes: usize,
}

/// Entries returned by a read.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Matching entries, with their sequences, in the read's direction.
    pub entries: Vec<AuditEntry>,
    /// True when the read reached the end of its range: no further entry matches.
    pub exhausted: bool,
}

/// Builds a page from stored rows under a read's limits, as every backend counts them.
pub struct PageBuilder {
    page: Page,
    limit: usize,
    max_bytes: usize,
    bytes: usize,
}

impl Page {
    /// A builder of the page answering `read`.
    pub fn builder(read: &Read) -> PageBuilder {
        PageBuilder {
            page: Page {
                entries: Vec::new(),
                exhausted: true,
            },
            limit: read.limit,
            max_bytes: read.max_bytes,
            bytes: 0,
        }
    }
}

impl PageBuilder {
    /// Adds the next stored row (the encoded entry and its hashes); returns false, adding
    /// nothing, once the page is full (then it is not exhausted).
    pub fn push(
        &mut self,
        sequence: u64,
        blob: &[u8],
        entry_hash: Vec<u8>,
        chain_hash: Vec<u8>,
    ) -> Result<bool, Error> {
        let page = &mut self.page;
        if page.entries.len() == self.limit
            || (self.bytes >= self.max_bytes && !page.entries.is_empty())
        {
            page.exhausted = false;
            return Ok(false);
        }
        self.bytes += blob.len();
        let mut entry = AuditEntry::decode(blob).map_err(|e| {
            Error::Internal(format!("stored entry {sequence} does not decode: {e}"))
        })?;
        entry.sequence = sequence;
        entry.entry_hash = entry_hash;
        entry.chain_hash = chain_hash;
        // Counted as the recent window counts them: the entry with its hashes.
        self.bytes += prost::encoding::bytes::encoded_len(20, &entry.entry_hash)
            + prost::encoding::bytes::encoded_len(21, &entry.chain_hash);
        page.entries.push(entry);
        Ok(true)
    }

    /// The page.
    pub fn finish(self) -> Page {
        self.page
    }
}

/// A stored checkpoint: its position among checkpoints and its signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Position, from 1, in the order signed.
    pub index: u64,
    /// Entries it covers, as listed beside the note.
    pub size: u64,
    /// The signed note.
    pub note: String,
}

/// What one step of retention did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneStep {
    /// The horizon after it: entries up to here are pruned, or being pruned.
    pub horizon: u64,
    /// Entries it moved out of the log (0: none was left at or below the horizon).
    pub moved: usize,
}

/// A durable cursor (a forwarder) as one server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorClaim {
    /// This server holds the cursor's lease; its saved position, if one was saved.
    Held {
        /// The saved position.
        position: Option<u64>,
    },
    /// Another server holds the lease until it lapses.
    Busy {
        /// Who holds it.
        owner: String,
    },
}

/// A durable, append-only audit log.
pub trait Store: Send + Sync + 'static {
    /// Appends entries atomically: every entry is committed and synced to stable storage, or none
    /// is. Entries whose id is already stored with the same content are not stored again; their
    /// receipt gives the first sequence.
    fn append(
        &self,
        entries: Vec<NewEntry>,
    ) -> impl Future<Output = Result<Vec<Receipt>, Error>> + Send;

    /// Reads entries matching a filter, in sequence order. An ascending read that starts inside
    /// the range retention pruned fails with [`Error::Pruned`] rather than skip it.
    fn read(&self, read: Read) -> impl Future<Output = Result<Page, Error>> + Send;

    /// The lowest sequence received by the server at or after `nanos` since the Unix epoch;
    /// [`Error::Pruned`] when entries received since then may have been pruned.
    fn first_received_since(
        &self,
        nanos: i64,
    ) -> impl Future<Output = Result<Option<u64>, Error>> + Send;

    /// The key that signs the store's checkpoints.
    fn public_key(&self) -> PublicKey;

    /// The newest checkpoint, or the newest one of exactly `size` entries.
    fn checkpoint(
        &self,
        size: Option<u64>,
    ) -> impl Future<Output = Result<Option<StoredCheckpoint>, Error>> + Send;

    /// Checkpoints with an index above `after`, oldest first, at most `limit`.
    fn checkpoints(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredCheckpoint>, Error>> + Send;

    /// The stored hash of entry `sequence`, if it is stored.
    fn entry_hash(&self, sequence: u64)
    -> impl Future<Output = Result<Option<Hash>, Error>> + Send;

    /// The Merkle tree hash of each range of leaves (leaf `i` is entry `i + 1`).
    fn tree_hashes(
        &self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> impl Future<Output = Result<Vec<Hash>, Error>> + Send;

    /// Counts of the entries matching `query.filter` per time bucket and outcome, and its most
    /// frequent principals and methods (the web console's charts).
    fn stats(&self, query: StatsQuery) -> impl Future<Output = Result<Stats, Error>> + Send;

    /// Claims (or renews) the lease of durable cursor `name` for `owner` and, with `position`,
    /// saves it; committed with the log before it returns. Several servers sharing a log drive
    /// each cursor one at a time: a lease lasts [`CURSOR_LEASE`] from its last write.
    fn cursor(
        &self,
        name: &str,
        owner: &str,
        position: Option<u64>,
    ) -> impl Future<Output = Result<CursorClaim, Error>> + Send;

    /// Saves `position` of durable cursor `name` and lets `owner`'s lease go (at a clean
    /// shutdown), so that another server, or the next process, claims it at once instead of
    /// waiting for the lease to lapse. `Busy` (changing nothing) if `owner` lost the lease.
    fn release_cursor(
        &self,
        name: &str,
        owner: &str,
        position: u64,
    ) -> impl Future<Output = Result<CursorClaim, Error>> + Send;

    /// The sequence of the newest committed entry (0 when empty), updated after each commit.
    fn head(&self) -> watch::Receiver<u64>;

    /// Retention's horizon: entries 1 to it were pruned (0: none), as this server last saw it.
    fn pruned_through(&self) -> u64;

    /// One step of retention (see [`Log::prune`]): prunes up to the largest checkpoint size at
    /// most `through`, at most `rows` entries in this step.
    fn prune(
        &self,
        through: u64,
        rows: usize,
    ) -> impl Future<Output = Result<PruneStep, Error>> + Send;

    /// The saved position of durable cursor `name`, read without claiming it.
    fn cursor_position(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<u64>, Error>> + Send;

    /// Whether the store accepts writes: false from the start when its log did not verify as it
    /// opened, and for good after a storage failure.
    fn writable(&self) -> watch::Receiver<bool>;
}
