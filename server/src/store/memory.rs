//! A backend in memory, for fast tests of the engine and the service without files or
//! processes. Several engines may share one [`MemoryDatabase`] as replicas share a PostgreSQL
//! database: a group holds the database's one transaction lock from `begin` to commit or
//! rollback, as the tip's row lock does there; and the database can be taken down and brought
//! back to test recovery.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use audit_ledger::Hash;
use prost::Message;

use super::aggregate::{BucketCount, ValueCount};
use super::backend::{
    Backend, BackendError, CursorRow, CursorWrite, HeadFollower, NewCheckpoint, Reader, Row,
    StoredEntry, StoredId, Tip,
};
use super::filter::matches;
use super::{
    CursorClaim, Direction, Page, Read, Receipt, StartupCheck, Stats, StatsQuery, StoredCheckpoint,
};
use crate::error::Error;
use crate::validate::timestamp_nanos;

/// One stored entry.
#[derive(Clone)]
struct StoredRow {
    id: String,
    digest: Vec<u8>,
    request_id: String,
    received_ns: i64,
    /// The entry as stored, decoded for filtering (its sequence set).
    entry: audit_proto::pb::AuditEntry,
    /// The entry as stored, encoded (sequence 0), as a database row holds it.
    blob: Vec<u8>,
    entry_hash: Hash,
    chain_hash: Hash,
}

/// What retention keeps of a pruned entry.
#[derive(Clone)]
struct PrunedRow {
    id: String,
    digest: Vec<u8>,
    request_id: String,
    received_ns: i64,
    entry_hash: Hash,
    chain_hash: Hash,
}

impl From<StoredRow> for PrunedRow {
    fn from(row: StoredRow) -> Self {
        PrunedRow {
            id: row.id,
            digest: row.digest,
            request_id: row.request_id,
            received_ns: row.received_ns,
            entry_hash: row.entry_hash,
            chain_hash: row.chain_hash,
        }
    }
}

#[derive(Default)]
struct State {
    entries: BTreeMap<u64, StoredRow>,
    pruned: BTreeMap<u64, PrunedRow>,
    ids: HashMap<String, u64>,
    checkpoints: Vec<StoredCheckpoint>,
    tip: Option<Tip>,
    cursors: HashMap<String, CursorRow>,
}

/// A database in memory, shared by the backends (and replicas) opened on it.
#[derive(Clone, Default)]
pub struct MemoryDatabase {
    state: Arc<Mutex<State>>,
    /// Whether a group holds the transaction lock.
    locked: Arc<(Mutex<bool>, Condvar)>,
    down: Arc<AtomicBool>,
}

impl MemoryDatabase {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend on this database. `shared` makes it behave as a replica: the tip is read at
    /// every group, the head followed, and a lost database recovered.
    pub fn backend(&self, shared: bool) -> Box<dyn Backend> {
        Box::new(MemoryBackend {
            db: self.clone(),
            shared,
            staged: None,
        })
    }

    /// Takes the database down (`false`) or brings it back (`true`): while down, every call
    /// fails as an unreachable database does.
    pub fn set_up(&self, up: bool) {
        self.down.store(!up, Ordering::SeqCst);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("memory state lock")
    }

    fn check_up(&self) -> Result<(), BackendError> {
        match self.down.load(Ordering::SeqCst) {
            true => Err(BackendError::Unavailable("the database is down".into())),
            false => Ok(()),
        }
    }

    fn lock(&self) {
        let (locked, free) = &*self.locked;
        let mut locked = locked.lock().expect("transaction lock");
        while *locked {
            locked = free.wait(locked).expect("transaction lock");
        }
        *locked = true;
    }

    fn unlock(&self) {
        let (locked, free) = &*self.locked;
        *locked.lock().expect("transaction lock") = false;
        free.notify_one();
    }
}

/// What an open group has written, applied at commit.
#[derive(Default)]
struct Staged {
    rows: Vec<(u64, StoredRow)>,
    checkpoints: Vec<NewCheckpoint>,
    cursors: Vec<(String, CursorRow)>,
    /// Entries up to this sequence move to the pruned rows.
    prune_through: Option<u64>,
}

struct MemoryBackend {
    db: MemoryDatabase,
    shared: bool,
    staged: Option<Staged>,
}

impl Backend for MemoryBackend {
    fn open_reader(&self) -> Result<Box<dyn Reader>, Error> {
        Ok(Box::new(MemoryReader {
            db: self.db.clone(),
        }))
    }

    fn shared(&self) -> bool {
        self.shared
    }

    fn begin(&mut self) -> Result<Option<Tip>, BackendError> {
        self.db.check_up()?;
        self.db.lock();
        self.staged = Some(Staged::default());
        let tip = self.db.state().tip.clone().unwrap_or_else(Tip::empty);
        Ok(self.shared.then_some(tip))
    }

    fn stored(&mut self, ids: &[&str]) -> Result<Vec<Option<StoredId>>, BackendError> {
        self.db.check_up()?;
        let state = self.db.state();
        let staged = self.staged.as_ref().map_or(&[][..], |s| &s.rows[..]);
        Ok(ids
            .iter()
            .map(|id| {
                let row = staged
                    .iter()
                    .find(|(_, row)| row.id == *id)
                    .map(|(sequence, row)| (*sequence, PrunedRow::from(row.clone())))
                    .or_else(|| {
                        let sequence = *state.ids.get(*id)?;
                        let row = match state.entries.get(&sequence) {
                            Some(row) => PrunedRow::from(row.clone()),
                            None => state.pruned.get(&sequence)?.clone(),
                        };
                        Some((sequence, row))
                    })?;
                let (sequence, row) = row;
                Some(StoredId {
                    receipt: Receipt {
                        id: row.id,
                        sequence,
                        request_id: row.request_id,
                        entry_hash: row.entry_hash,
                        chain_hash: row.chain_hash,
                    },
                    digest: row.digest,
                })
            })
            .collect())
    }

    fn insert(&mut self, rows: &[Row<'_>]) -> Result<(), BackendError> {
        self.db.check_up()?;
        let staged = self.staged.as_mut().expect("a group is open");
        for row in rows {
            let entry = &row.new.entry;
            let mut stored = entry.clone();
            stored.sequence = row.sequence;
            staged.rows.push((
                row.sequence,
                StoredRow {
                    id: entry.id.clone(),
                    digest: row.new.digest.to_vec(),
                    request_id: entry.request_id.clone(),
                    received_ns: entry
                        .received_time
                        .as_ref()
                        .and_then(timestamp_nanos)
                        .unwrap_or(0),
                    entry: stored,
                    blob: entry.encode_to_vec(),
                    entry_hash: row.entry_hash,
                    chain_hash: row.chain_hash,
                },
            ));
        }
        Ok(())
    }

    fn insert_checkpoint(&mut self, checkpoint: &NewCheckpoint) -> Result<(), BackendError> {
        self.db.check_up()?;
        let staged = self.staged.as_mut().expect("a group is open");
        staged.checkpoints.push(checkpoint.clone());
        Ok(())
    }

    fn cursor(&mut self, write: &CursorWrite) -> Result<CursorClaim, BackendError> {
        self.db.check_up()?;
        let staged = self.staged.as_mut().expect("a group is open");
        let stored = staged
            .cursors
            .iter()
            .rev()
            .find(|(name, _)| *name == write.name)
            .map(|(_, row)| row.clone())
            .or_else(|| self.db.state().cursors.get(&write.name).cloned());
        let (claim, row) = write.apply(stored);
        if let Some(row) = row {
            staged.cursors.push((write.name.clone(), row));
        }
        Ok(claim)
    }

    fn prune(&mut self, through: u64, limit: usize) -> Result<usize, BackendError> {
        self.db.check_up()?;
        let state = self.db.state();
        let step: Vec<u64> = state
            .entries
            .range(..=through)
            .map(|(s, _)| *s)
            .take(limit)
            .collect();
        if let Some(last) = step.last() {
            self.staged.as_mut().expect("a group is open").prune_through = Some(*last);
        }
        Ok(step.len())
    }

    fn commit(&mut self, tip: &Tip) -> Result<(), BackendError> {
        let Some(staged) = self.staged.take() else {
            return Err(BackendError::Failed("no open group".into()));
        };
        if let Err(error) = self.db.check_up() {
            self.db.unlock();
            return Err(error);
        }
        {
            let mut state = self.db.state();
            for (sequence, row) in staged.rows {
                if state.entries.contains_key(&sequence) || state.ids.contains_key(&row.id) {
                    drop(state);
                    self.db.unlock();
                    return Err(BackendError::Failed(format!(
                        "entry {sequence} or its id is already stored"
                    )));
                }
                state.ids.insert(row.id.clone(), sequence);
                state.entries.insert(sequence, row);
            }
            for checkpoint in staged.checkpoints {
                let index = state.checkpoints.len() as u64 + 1;
                state.checkpoints.push(StoredCheckpoint {
                    index,
                    size: checkpoint.size,
                    note: checkpoint.note,
                });
            }
            state.cursors.extend(staged.cursors);
            if let Some(through) = staged.prune_through {
                let kept = state.entries.split_off(&(through + 1));
                let moved = std::mem::replace(&mut state.entries, kept);
                state
                    .pruned
                    .extend(moved.into_iter().map(|(s, row)| (s, PrunedRow::from(row))));
            }
            state.tip = Some(tip.clone());
        }
        self.db.unlock();
        Ok(())
    }

    fn rollback(&mut self) {
        if self.staged.take().is_some() {
            self.db.unlock();
        }
    }

    fn recover(&mut self) -> Result<(), BackendError> {
        if !self.shared {
            return Err(BackendError::Failed("restart required".into()));
        }
        self.rollback();
        self.db.check_up()
    }

    fn follow_head(&self) -> Option<Box<dyn HeadFollower>> {
        self.shared.then(|| {
            Box::new(MemoryFollower {
                db: self.db.clone(),
            }) as Box<dyn HeadFollower>
        })
    }
}

/// Polls the database's head, as the PostgreSQL follower does when a notification is lost.
struct MemoryFollower {
    db: MemoryDatabase,
}

impl HeadFollower for MemoryFollower {
    fn run(self: Box<Self>, seen: &dyn Fn(u64), stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            let head = self.db.state().tip.as_ref().map_or(0, |t| t.sequence);
            seen(head);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

struct MemoryReader {
    db: MemoryDatabase,
}

impl MemoryReader {
    fn up(&self) -> Result<(), Error> {
        self.db
            .check_up()
            .map_err(|e| Error::StoreFailed(e.to_string()))
    }
}

impl Reader for MemoryReader {
    fn read(&mut self, read: &Read) -> Result<Page, Error> {
        self.up()?;
        let state = self.db.state();
        let range: Box<dyn Iterator<Item = (&u64, &StoredRow)>> = match read.direction {
            Direction::Ascending { after } => {
                Box::new(state.entries.range(after.saturating_add(1)..=read.through))
            }
            Direction::Descending { before } => {
                let before = before.unwrap_or(u64::MAX);
                Box::new(
                    state
                        .entries
                        .range(..before)
                        .rev()
                        .filter(|(s, _)| **s <= read.through),
                )
            }
        };
        let mut page = Page::builder(read);
        for (sequence, row) in range {
            if !matches(&read.filter, &row.entry) {
                continue;
            }
            let hashes = (row.entry_hash.to_vec(), row.chain_hash.to_vec());
            if !page.push(*sequence, &row.blob, hashes.0, hashes.1)? {
                break;
            }
        }
        Ok(page.finish())
    }

    fn first_received_since(&mut self, nanos: i64) -> Result<Option<u64>, Error> {
        self.up()?;
        let state = self.db.state();
        Ok(state
            .entries
            .iter()
            .filter(|(_, row)| row.received_ns >= nanos)
            .map(|(s, _)| *s)
            .min())
    }

    fn checkpoint(&mut self, size: Option<u64>) -> Result<Option<StoredCheckpoint>, Error> {
        self.up()?;
        let state = self.db.state();
        Ok(state
            .checkpoints
            .iter()
            .rev()
            .find(|c| size.is_none_or(|size| c.size == size))
            .cloned())
    }

    fn checkpoints(&mut self, after: u64, limit: usize) -> Result<Vec<StoredCheckpoint>, Error> {
        self.up()?;
        let state = self.db.state();
        Ok(state
            .checkpoints
            .iter()
            .filter(|c| c.index > after)
            .take(limit)
            .cloned()
            .collect())
    }

    fn largest_checkpoint(&mut self) -> Result<u64, Error> {
        self.up()?;
        Ok(self
            .db
            .state()
            .checkpoints
            .iter()
            .map(|c| c.size)
            .max()
            .unwrap_or(0))
    }

    fn entry_hash(&mut self, sequence: u64) -> Result<Option<Hash>, Error> {
        self.up()?;
        let state = self.db.state();
        Ok(state
            .entries
            .get(&sequence)
            .map(|r| r.entry_hash)
            .or_else(|| state.pruned.get(&sequence).map(|r| r.entry_hash)))
    }

    fn hashes(
        &mut self,
        after: u64,
        through: u64,
        each: &mut dyn FnMut(u64, Hash, Hash) -> bool,
    ) -> Result<(), Error> {
        self.up()?;
        let state = self.db.state();
        let range = after.saturating_add(1)..=through;
        let pruned = state.pruned.range(range.clone());
        let pruned = pruned.map(|(s, row)| (*s, row.entry_hash, row.chain_hash));
        let kept = state.entries.range(range);
        let kept = kept.map(|(s, row)| (*s, row.entry_hash, row.chain_hash));
        for (sequence, entry_hash, chain_hash) in pruned.chain(kept) {
            if !each(sequence, entry_hash, chain_hash) {
                break;
            }
        }
        Ok(())
    }

    fn entries(
        &mut self,
        after: u64,
        each: &mut dyn FnMut(StoredEntry) -> Result<(), String>,
    ) -> Result<Result<(), String>, Error> {
        self.up()?;
        let state = self.db.state();
        for (sequence, row) in state.entries.range(after.saturating_add(1)..) {
            let stored = StoredEntry {
                sequence: *sequence,
                entry: row.entry.clone(),
                entry_hash: row.entry_hash,
                chain_hash: row.chain_hash,
                digest: row.digest.clone(),
            };
            if let Err(reason) = each(stored) {
                return Ok(Err(reason));
            }
        }
        Ok(Ok(()))
    }

    fn head(&mut self) -> Result<u64, Error> {
        self.up()?;
        Ok(self.db.state().tip.as_ref().map_or(0, |t| t.sequence))
    }

    fn pruned_tail(&mut self) -> Result<Option<(u64, i64)>, Error> {
        self.up()?;
        let state = self.db.state();
        let tail = state.pruned.iter().next_back();
        Ok(tail.map(|(sequence, row)| (*sequence, row.received_ns)))
    }

    fn checkpoint_size_at_most(&mut self, size: u64) -> Result<u64, Error> {
        self.up()?;
        let state = self.db.state();
        let sizes = state.checkpoints.iter().map(|c| c.size);
        Ok(sizes.filter(|s| *s <= size).max().unwrap_or(0))
    }

    fn cursor_position(&mut self, name: &str) -> Result<Option<u64>, Error> {
        self.up()?;
        Ok(self
            .db
            .state()
            .cursors
            .get(name)
            .and_then(|row| row.position))
    }

    fn stats(&mut self, query: &StatsQuery) -> Result<Stats, Error> {
        use std::collections::BTreeMap;
        self.up()?;
        let state = self.db.state();
        let mut buckets: BTreeMap<(i64, i32), u64> = BTreeMap::new();
        let mut principals: HashMap<String, u64> = HashMap::new();
        let mut methods: HashMap<String, u64> = HashMap::new();
        for row in state.entries.range(..=query.through).map(|(_, row)| row) {
            if !matches(&query.filter, &row.entry) {
                continue;
            }
            let time = row
                .entry
                .time
                .as_ref()
                .and_then(timestamp_nanos)
                .unwrap_or(0);
            // As SQL divides: towards zero.
            let bucket = (time - query.start_ns) / query.bucket_ns.max(1);
            *buckets.entry((bucket, row.entry.outcome)).or_default() += 1;
            let (principal, _) = super::filter::caller_identity(&row.entry);
            *principals.entry(principal.to_string()).or_default() += 1;
            *methods.entry(row.entry.method.clone()).or_default() += 1;
        }
        let top = |counts: HashMap<String, u64>| {
            let mut counts: Vec<ValueCount> = counts
                .into_iter()
                .map(|(value, count)| ValueCount { value, count })
                .collect();
            counts.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
            counts.truncate(query.top);
            counts
        };
        let buckets: Vec<BucketCount> = buckets
            .into_iter()
            .map(|((index, outcome), count)| BucketCount {
                index,
                outcome,
                count,
            })
            .collect();
        Ok(Stats {
            total: buckets.iter().map(|b| b.count).sum(),
            buckets,
            principals: top(principals),
            methods: top(methods),
        })
    }

    fn check(&mut self, _check: StartupCheck) -> Result<Result<(), String>, Error> {
        Ok(Ok(()))
    }
}
