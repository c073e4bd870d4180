//! The engine's writer thread: group commit over a [`Backend`].
//!
//! It takes every write request waiting in its queue, applies them in one transaction (a
//! request refused for a conflicting id writes nothing, so it does not fail the others),
//! commits once, and only then answers each request and publishes the new head.
//!
//! After a failure it never guesses. An exclusive backend (SQLite) is poisoned: it refuses
//! every later write rather than retry something that may or may not be on disk. A shared one
//! (PostgreSQL) refuses writes while it reconnects; a commit whose reply was lost is settled
//! by looking for its first entry once the database answers again, and only then answered.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};

use super::backend::{Backend, BackendError, CursorWrite, NewCheckpoint, Row, StoredId, Tip};
use super::engine::{EntryOutcome, ObserverSlot, advance};
use super::recent::{Kept, Recent};
use super::signer::Signer;
use super::{CursorClaim, PruneStep, Receipt};
use crate::error::Error;
use crate::validate::NewEntry;

/// A write request waiting for the writer.
pub struct WriteJob {
    /// The entries to append atomically.
    pub entries: Vec<NewEntry>,
    /// A durable cursor's lease and position to write in the same group, and where its
    /// outcome goes.
    pub cursor: Option<(CursorWrite, oneshot::Sender<Result<CursorClaim, Error>>)>,
    /// A step of retention to take in the same group.
    pub prune: Option<PruneRequest>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<Vec<Receipt>, Error>>,
    /// Released once the job is answered.
    pub _pending: OwnedSemaphorePermit,
}

/// One step of retention: raise the horizon to `through` (never lower it), signing the new
/// horizon into a checkpoint of the same group, then move at most `rows` entries at or below
/// the horizon out of the log.
pub struct PruneRequest {
    /// The horizon wanted: the size of a stored checkpoint.
    pub through: u64,
    /// Most entries to move in this step.
    pub rows: usize,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<PruneStep, Error>>,
}

impl WriteJob {
    /// Answers the job, and its cursor write and retention step, with `error`.
    fn refuse(self, error: Error) {
        if let Some((_, reply)) = self.cursor {
            let _ = reply.send(Err(Error::StoreFailed(error.to_string())));
        }
        if let Some(prune) = self.prune {
            let _ = prune.reply.send(Err(Error::StoreFailed(error.to_string())));
        }
        let _ = self.reply.send(Err(error));
    }
}

/// How often a shared backend that lost its database tries to reconnect.
const RECONNECT_EVERY: Duration = Duration::from_millis(250);
/// How long a commit whose outcome is unknown waits to be settled before its callers are told
/// to retry.
const SETTLE_PATIENCE: Duration = Duration::from_secs(5);

/// Why one write request of a group failed without failing the group.
enum JobFailure {
    Conflict { field: String, id: String },
}

/// What applying a group did, before its commit.
struct Applied {
    /// Per job: its receipts, or why it was refused.
    outcomes: Vec<Result<Vec<Receipt>, JobFailure>>,
    /// Per job: its cursor claim, if it had a cursor write.
    claims: Vec<Option<CursorClaim>>,
    /// Per job: its retention step, if it had one.
    prunes: Vec<Option<PruneStep>>,
    /// The log once the group commits.
    tip: Tip,
    /// The checkpoint signed into the group, if one was due.
    signed: Option<NewCheckpoint>,
}

/// The rows a group inserts, and where each id is among them.
#[derive(Default)]
struct GroupRows<'a> {
    rows: Vec<Row<'a>>,
    ids: HashMap<&'a str, usize>,
}

fn receipt_of(row: &Row<'_>) -> Receipt {
    Receipt {
        id: row.new.entry.id.clone(),
        sequence: row.sequence,
        request_id: row.new.entry.request_id.clone(),
        entry_hash: row.entry_hash,
        chain_hash: row.chain_hash,
    }
}

/// The state of the writer after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Writable,
    /// The database is unreachable; writes resume once it is back.
    Reconnecting,
    /// Writes are refused until a restart.
    Poisoned,
}

/// Marks the store failed if dropped during a panic.
struct FailOnPanic(watch::Sender<bool>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.send_replace(false);
        }
    }
}

/// The writer thread's state.
pub struct Writer {
    backend: Box<dyn Backend>,
    jobs: mpsc::UnboundedReceiver<WriteJob>,
    recent: Arc<RwLock<Recent>>,
    /// The log as last committed (by this writer, or as a shared backend last showed it).
    tip: Tip,
    max_group_entries: usize,
    head: Arc<watch::Sender<u64>>,
    /// Retention's horizon as last committed.
    pruned: watch::Sender<u64>,
    writable: watch::Sender<bool>,
    signer: Signer,
    health: Health,
    observer: ObserverSlot,
}

/// Signs a checkpoint of the log at start-up in a transaction of its own; returns the tip and
/// the checkpoint.
pub fn sign_at_start(
    backend: &mut dyn Backend,
    signer: &Signer,
    tip: Tip,
) -> Result<(Tip, NewCheckpoint), Error> {
    let failed = |e: BackendError| Error::StoreFailed(format!("signing at start-up: {e}"));
    let mut tip = backend.begin().map_err(failed)?.unwrap_or(tip);
    let checkpoint = signer.sign(&tip);
    tip.signed_size = tip.sequence;
    let committed = backend
        .insert_checkpoint(&checkpoint)
        .and_then(|()| backend.commit(&tip));
    if let Err(error) = committed {
        backend.rollback();
        return Err(failed(error));
    }
    tracing::info!(size = tip.sequence, "signed a checkpoint at start-up");
    Ok((tip, checkpoint))
}

impl Writer {
    /// A writer continuing the log from `tip`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backend: Box<dyn Backend>,
        jobs: mpsc::UnboundedReceiver<WriteJob>,
        recent: Arc<RwLock<Recent>>,
        tip: Tip,
        max_group_entries: usize,
        head: Arc<watch::Sender<u64>>,
        pruned: watch::Sender<u64>,
        writable: watch::Sender<bool>,
        signer: Signer,
        observer: ObserverSlot,
    ) -> Self {
        let health = if *writable.borrow() {
            Health::Writable
        } else {
            Health::Poisoned
        };
        Writer {
            backend,
            jobs,
            recent,
            tip,
            max_group_entries,
            head,
            pruned,
            writable,
            signer,
            health,
            observer,
        }
    }

    /// Runs until the job queue closes, then signs the tail.
    pub fn run(mut self) {
        // Should the writer ever panic, the store must not look writable.
        let _fail_on_panic = FailOnPanic(self.writable.clone());
        // Only to wait for a job with a timeout.
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("timer runtime");
        loop {
            let deadline = match self.health {
                Health::Writable => self.signer.deadline(),
                Health::Reconnecting => Some(Instant::now() + RECONNECT_EVERY),
                Health::Poisoned => None,
            };
            let next = match deadline {
                Some(deadline) => timer.block_on(async {
                    tokio::time::timeout_at(deadline.into(), self.jobs.recv()).await
                }),
                None => Ok(self.jobs.blocking_recv()),
            };
            let first = match next {
                Ok(Some(job)) => job,
                Ok(None) => break,
                Err(_elapsed) => {
                    match self.health {
                        Health::Reconnecting => self.reconnect(),
                        _ => self.sign_checkpoint(),
                    }
                    continue;
                }
            };
            let mut count = first.entries.len();
            let mut group = vec![first];
            while count < self.max_group_entries {
                match self.jobs.try_recv() {
                    Ok(job) => {
                        count += job.entries.len();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            if self.health != Health::Writable {
                for job in group {
                    job.refuse(self.refusal());
                }
                continue;
            }
            self.commit_group(group);
        }
        if self.health == Health::Writable {
            self.sign_checkpoint();
        }
        tracing::debug!("store writer stopped");
    }

    fn refusal(&self) -> Error {
        match self.health {
            Health::Reconnecting => {
                Error::StoreFailed("the database is unavailable; retry later".into())
            }
            _ => Error::StoreFailed("store failed earlier; restart required".into()),
        }
    }

    /// Commits one group and answers its jobs.
    fn commit_group(&mut self, mut group: Vec<WriteJob>) {
        let before = self.tip.sequence;
        let started = Instant::now();
        let Applied {
            outcomes,
            claims,
            prunes,
            tip,
            signed,
        } = match self.apply(&group) {
            Ok(applied) => applied,
            Err(error) => {
                self.backend.rollback();
                self.failed(&error, "store write failed");
                self.observe_failed(&group);
                for job in group {
                    job.refuse(Error::StoreFailed(error.to_string()));
                }
                return;
            }
        };
        if let Err(error) = self.backend.commit(&tip) {
            let committed = self.settle(&group, &outcomes, &tip, &error);
            if !committed {
                self.observe_failed(&group);
                for job in group {
                    job.refuse(Error::StoreFailed(format!(
                        "{error}; the entries were not stored, or their outcome is unknown: \
                         retry with the same ids"
                    )));
                }
                return;
            }
        }
        let base = self.tip.sequence;
        self.observe_committed(&group, &outcomes, base, started.elapsed(), signed.is_some());
        self.remember(&mut group, &outcomes, base);
        self.signer.committed(&tip, signed.as_ref());
        self.tip = tip;
        if self.tip.sequence != before {
            advance(&self.head, self.tip.sequence);
        }
        advance(&self.pruned, self.tip.pruned);
        let answers = outcomes.into_iter().zip(claims).zip(prunes);
        for (job, ((outcome, claim), prune)) in group.into_iter().zip(answers) {
            if let (Some((_, reply)), Some(claim)) = (job.cursor, claim) {
                let _ = reply.send(Ok(claim));
            }
            if let (Some(request), Some(step)) = (job.prune, prune) {
                let _ = request.reply.send(Ok(step));
            }
            let result = outcome
                .map_err(|JobFailure::Conflict { field, id }| Error::IdConflict { field, id });
            let _ = job.reply.send(result);
        }
        if let Err(error) = self.backend.after_commit() {
            // Everything acknowledged is stored, but the storage can no longer be bounded.
            tracing::error!(%error, "store housekeeping failed; refusing further writes");
            self.poison();
        }
    }

    /// Tells the observer what a committed group did: entries above `base` are new.
    fn observe_committed(
        &self,
        group: &[WriteJob],
        outcomes: &[Result<Vec<Receipt>, JobFailure>],
        base: u64,
        took: Duration,
        signed: bool,
    ) {
        let Some(observer) = self.observer.get() else {
            return;
        };
        let (mut stored, mut retried, mut conflict) = (0, 0, 0);
        for (job, outcome) in group.iter().zip(outcomes) {
            match outcome {
                Ok(receipts) => {
                    let new = receipts.iter().filter(|r| r.sequence > base).count();
                    stored += new;
                    retried += receipts.len() - new;
                }
                Err(JobFailure::Conflict { .. }) => conflict += job.entries.len(),
            }
        }
        let entries: usize = group.iter().map(|j| j.entries.len()).sum();
        // A group of forwarder position saves only is not an entry commit.
        if entries > 0 {
            observer.committed(entries, took);
        }
        for (outcome, count) in [
            (EntryOutcome::Stored, stored),
            (EntryOutcome::Retried, retried),
            (EntryOutcome::Conflict, conflict),
        ] {
            if count > 0 {
                observer.entries(outcome, count);
            }
        }
        if signed {
            observer.checkpoint_signed();
        }
    }

    /// Tells the observer that the entries of `group` were not stored.
    fn observe_failed(&self, group: &[WriteJob]) {
        if let Some(observer) = self.observer.get() {
            let count = group.iter().map(|j| j.entries.len()).sum();
            observer.entries(EntryOutcome::Failed, count);
        }
    }

    /// Applies every job in the open transaction: the outcome of each, the tip after them, and
    /// the checkpoint signed into the group if one is due (or a retention step raised the
    /// horizon, which only a signed checkpoint may do).
    fn apply(&mut self, group: &[WriteJob]) -> Result<Applied, BackendError> {
        if let Some(shared) = self.backend.begin()? {
            // Another replica may have committed since this writer last did.
            self.tip = shared;
        }
        let mut tip = self.tip.clone();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut group_rows = GroupRows::default();
        for job in group {
            outcomes.push(self.apply_job(&job.entries, &mut tip, &mut group_rows)?);
        }
        // One insert for the whole group: one round trip to a database server.
        if !group_rows.rows.is_empty() {
            self.backend.insert(&group_rows.rows)?;
        }
        let mut claims = Vec::with_capacity(group.len());
        for job in group {
            claims.push(match &job.cursor {
                Some((write, _)) => Some(self.backend.cursor(write)?),
                None => None,
            });
        }
        let mut raised = false;
        let mut prunes = Vec::with_capacity(group.len());
        for job in group {
            prunes.push(match &job.prune {
                Some(request) => {
                    // Up to a signed size only: the checkpoint of that size proves the chain
                    // the kept entries continue.
                    if request.through > tip.pruned && request.through <= tip.signed_size {
                        tip.pruned = request.through;
                        raised = true;
                    }
                    let moved = self.backend.prune(tip.pruned, request.rows)?;
                    Some(PruneStep {
                        horizon: tip.pruned,
                        moved,
                    })
                }
                None => None,
            });
        }
        // A due checkpoint rides on this commit: no extra sync.
        let signed = if self.signer.due(&tip) || raised {
            let checkpoint = self.signer.sign(&tip);
            self.backend.insert_checkpoint(&checkpoint)?;
            tip.signed_size = tip.sequence;
            Some(checkpoint)
        } else {
            None
        };
        Ok(Applied {
            outcomes,
            claims,
            prunes,
            tip,
            signed,
        })
    }

    /// Applies one request: entries whose client-chosen id is already stored are not stored
    /// again (their receipt is the first one); if such an entry's content differs, the request
    /// is refused before anything of it is written. Server-chosen ids are fresh UUIDv7s.
    fn apply_job<'a>(
        &mut self,
        entries: &'a [NewEntry],
        tip: &mut Tip,
        group: &mut GroupRows<'a>,
    ) -> Result<Result<Vec<Receipt>, JobFailure>, BackendError> {
        // Ids stored earlier in this group are not in the backend yet.
        let client_ids: Vec<&str> = entries
            .iter()
            .filter(|new| new.client_id && !group.ids.contains_key(new.entry.id.as_str()))
            .map(|new| new.entry.id.as_str())
            .collect();
        let mut earlier = if client_ids.is_empty() {
            Vec::new()
        } else {
            self.backend.stored(&client_ids)?
        }
        .into_iter();
        let mut stored = Vec::with_capacity(entries.len());
        // The same id twice in one request: one entry, if the content is the same.
        let mut in_request: HashMap<&str, &[u8; 32]> = HashMap::new();
        for new in entries {
            if new.client_id
                && let Some(digest) = in_request.insert(new.entry.id.as_str(), &new.digest)
                && *digest != new.digest
            {
                return Ok(Err(JobFailure::Conflict {
                    field: format!("{}.id", new.path),
                    id: new.entry.id.clone(),
                }));
            }
            let found = match group.ids.get(new.entry.id.as_str()) {
                Some(index) if new.client_id => {
                    let row = &group.rows[*index];
                    Some(StoredId {
                        receipt: receipt_of(row),
                        digest: row.new.digest.to_vec(),
                    })
                }
                _ if new.client_id => earlier.next().flatten(),
                _ => None,
            };
            if let Some(found) = &found
                && found.digest != new.digest
            {
                return Ok(Err(JobFailure::Conflict {
                    field: format!("{}.id", new.path),
                    id: found.receipt.id.clone(),
                }));
            }
            stored.push(found.map(|found| found.receipt));
        }
        let mut receipts = Vec::with_capacity(entries.len());
        for (new, earlier) in entries.iter().zip(stored) {
            if let Some(receipt) = earlier {
                receipts.push(receipt);
                continue;
            }
            if let Some(index) = new
                .client_id
                .then(|| group.ids.get(new.entry.id.as_str()))
                .flatten()
            {
                // Earlier in this request, with the same content (checked above).
                receipts.push(receipt_of(&group.rows[*index]));
                continue;
            }
            let sequence = tip.sequence + 1;
            let entry_hash = audit_ledger::entry_hash_at(&new.entry, sequence);
            let chain_hash = audit_ledger::chain_hash(&tip.chain, &entry_hash);
            tip.push(sequence, &entry_hash, &chain_hash);
            let row = Row {
                sequence,
                new,
                entry_hash,
                chain_hash,
            };
            receipts.push(receipt_of(&row));
            // Only a client-chosen id can come again; server ids are fresh UUIDv7s.
            if new.client_id {
                group.ids.insert(new.entry.id.as_str(), group.rows.len());
            }
            group.rows.push(row);
        }
        Ok(Ok(receipts))
    }

    /// Settles a commit that returned an error: whether the group is stored. Exclusive backends
    /// cannot tell and are poisoned; shared ones reconnect (for a while) and look for the
    /// group's first new entry.
    fn settle(
        &mut self,
        group: &[WriteJob],
        outcomes: &[Result<Vec<Receipt>, JobFailure>],
        tip: &Tip,
        error: &BackendError,
    ) -> bool {
        self.failed(error, "store commit failed");
        if self.health != Health::Reconnecting {
            return false;
        }
        let first_new = group
            .iter()
            .zip(outcomes)
            .filter_map(|(job, outcome)| Some(job).zip(outcome.as_ref().ok()))
            .flat_map(|(job, receipts)| job.entries.iter().zip(receipts))
            .find(|(_, receipt)| receipt.sequence > self.tip.sequence)
            .map(|(new, _)| new.entry.id.clone());
        let Some(first_new) = first_new else {
            // Nothing new was in it: every receipt was already stored.
            return tip.sequence == self.tip.sequence;
        };
        let started = Instant::now();
        while started.elapsed() < SETTLE_PATIENCE {
            if self.backend.recover().is_ok() {
                let found = self.backend.begin().and_then(|_| {
                    let found = self.backend.stored(&[first_new.as_str()]);
                    self.backend.rollback();
                    found
                });
                if let Ok(found) = found {
                    self.recovered();
                    let committed = found.first().is_some_and(Option::is_some);
                    tracing::warn!(committed, "settled a commit whose outcome was unknown");
                    return committed;
                }
            }
            std::thread::sleep(RECONNECT_EVERY);
        }
        tracing::error!(
            id = %first_new,
            "the outcome of a commit is still unknown; its callers are told to retry"
        );
        false
    }

    /// Takes the consequences of a failed backend call.
    fn failed(&mut self, error: &BackendError, what: &str) {
        match (self.backend.shared(), error) {
            (true, BackendError::Unavailable(_)) => {
                tracing::error!(%error, "{what}; refusing writes until the database is back");
                self.health = Health::Reconnecting;
                self.writable.send_replace(false);
                // Other replicas go on; what this one remembers may be stale.
                self.recent.write().expect("recent lock").clear();
            }
            _ => {
                // The outcome on disk is unknown: refuse all further writes rather than
                // guess. Clients retry with their ids once an operator has fixed the store.
                tracing::error!(%error, "{what}; refusing further writes");
                self.poison();
            }
        }
    }

    fn poison(&mut self) {
        self.health = Health::Poisoned;
        self.writable.send_replace(false);
    }

    /// One attempt to reconnect a shared backend.
    fn reconnect(&mut self) {
        if self.backend.recover().is_ok() {
            self.recovered();
        }
    }

    fn recovered(&mut self) {
        tracing::info!("database reachable again; accepting writes");
        self.health = Health::Writable;
        self.writable.send_replace(true);
    }

    /// Moves the entries the last commit stored into the recent window, before the new head is
    /// published: entries inserted now got consecutive sequences after `base`, in job order;
    /// retries of stored ids and failed jobs got none.
    fn remember(
        &self,
        group: &mut [WriteJob],
        outcomes: &[Result<Vec<Receipt>, JobFailure>],
        base: u64,
    ) {
        let mut kept = Vec::new();
        let mut expected = base + 1;
        for (job, outcome) in group.iter_mut().zip(outcomes) {
            let Ok(receipts) = outcome else { continue };
            for (new, receipt) in job.entries.drain(..).zip(receipts) {
                if receipt.sequence == expected {
                    let mut entry = new.entry;
                    entry.entry_hash = receipt.entry_hash.to_vec();
                    entry.chain_hash = receipt.chain_hash.to_vec();
                    kept.push(Kept::new(entry, expected));
                    expected += 1;
                }
            }
        }
        // Prepared above, so that subscribers' reads wait only for the pushes.
        let mut recent = self.recent.write().expect("recent lock");
        for kept in kept {
            recent.push(kept);
        }
    }

    /// Signs a checkpoint of the committed log in a transaction of its own, if entries are
    /// not covered by one.
    fn sign_checkpoint(&mut self) {
        let signed = (|| -> Result<Option<(Tip, NewCheckpoint)>, BackendError> {
            if let Some(shared) = self.backend.begin()? {
                self.tip = shared;
            }
            let mut tip = self.tip.clone();
            if tip.sequence <= tip.signed_size {
                self.backend.rollback();
                return Ok(None);
            }
            let checkpoint = self.signer.sign(&tip);
            tip.signed_size = tip.sequence;
            self.backend.insert_checkpoint(&checkpoint)?;
            self.backend.commit(&tip)?;
            Ok(Some((tip, checkpoint)))
        })();
        match signed {
            Ok(Some((tip, checkpoint))) => {
                if let Some(observer) = self.observer.get() {
                    observer.checkpoint_signed();
                }
                self.signer.committed(&tip, Some(&checkpoint));
                self.tip = tip;
                advance(&self.pruned, self.tip.pruned);
            }
            Ok(None) => self.signer.committed(&self.tip.clone(), None),
            Err(error) => {
                self.backend.rollback();
                self.failed(&error, "signing a checkpoint failed");
            }
        }
    }
}
