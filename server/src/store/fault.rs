//! A backend that fails at an exact point, as a disk or a database would, wrapping another: the
//! crash-consistency tests fail each point in turn and check that nothing acknowledged is lost,
//! nothing refused is stored, and the engine poisons or recovers as designed.
//!
//! Tests in this crate arm it directly ([`FaultBackend::new`]). The server binary arms it from
//! the environment variable `AUDIT_FAULT_INJECT=<point>:<n>` (its `n`-th hit, from 1, fails),
//! and only when built with the `fault-injection` feature.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::backend::{
    Backend, BackendError, CursorWrite, HeadFollower, NewCheckpoint, Reader, Row, StoredId, Tip,
};
use crate::error::Error;

/// A place on the write path where an injected fault can strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A group's transaction is open; nothing is inserted yet.
    BeforeInsert,
    /// A group's entries are inserted; the transaction is not committed.
    BeforeCommit,
    /// The commit itself fails; the group is rolled back.
    Commit,
    /// The commit reached the storage, but the engine is told it failed: the group's outcome
    /// is unknown to it, as after a failed fsync or a connection lost during COMMIT.
    AfterCommit,
    /// Storing a signed checkpoint.
    SignCheckpoint,
    /// Housekeeping after a commit (SQLite's WAL checkpoint).
    WalCheckpoint,
    /// A retention step moving entries out of the log.
    Prune,
}

impl Point {
    /// Every point with its name in `AUDIT_FAULT_INJECT`.
    pub const ALL: [(Point, &'static str); 7] = [
        (Point::BeforeInsert, "before-insert"),
        (Point::BeforeCommit, "before-commit"),
        (Point::Commit, "commit"),
        (Point::AfterCommit, "after-commit"),
        (Point::SignCheckpoint, "sign-checkpoint"),
        (Point::WalCheckpoint, "wal-checkpoint"),
        (Point::Prune, "prune"),
    ];
}

/// What a fault looks like to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An I/O failure (exclusive backends are poisoned by it).
    Storage,
    /// A lost database connection (shared backends recover from it).
    Connection,
}

/// When the armed fault strikes: the `nth` hit of `point`.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where.
    pub point: Point,
    /// Which hit, from 1.
    pub nth: u64,
    /// As what.
    pub kind: Kind,
    hits: Arc<AtomicU64>,
}

impl Plan {
    /// A fault at the `nth` hit of `point`.
    pub fn new(point: Point, nth: u64, kind: Kind) -> Self {
        Plan {
            point,
            nth,
            kind,
            hits: Arc::default(),
        }
    }

    /// Hits of the armed point so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Wraps a backend and fails it as planned.
pub struct FaultBackend {
    inner: Box<dyn Backend>,
    plan: Plan,
}

impl FaultBackend {
    /// `inner`, failing as `plan` says.
    pub fn new(inner: Box<dyn Backend>, plan: Plan) -> Self {
        FaultBackend { inner, plan }
    }

    /// `inner`, wrapped when `AUDIT_FAULT_INJECT` arms a fault and the `fault-injection`
    /// feature is on.
    pub fn from_env(inner: Box<dyn Backend>) -> Box<dyn Backend> {
        match plan_from_env() {
            Some(plan) => {
                tracing::warn!(?plan, "fault injection armed");
                Box::new(FaultBackend::new(inner, plan))
            }
            None => inner,
        }
    }

    fn hit(&self, point: Point) -> Result<(), BackendError> {
        if point != self.plan.point {
            return Ok(());
        }
        if self.plan.hits.fetch_add(1, Ordering::SeqCst) + 1 != self.plan.nth {
            return Ok(());
        }
        tracing::warn!(?point, "injecting a fault");
        let what = format!("injected fault at {point:?}");
        Err(match self.plan.kind {
            Kind::Storage => BackendError::Failed(what),
            Kind::Connection => BackendError::Unavailable(what),
        })
    }
}

#[cfg(feature = "fault-injection")]
fn plan_from_env() -> Option<Plan> {
    let text = std::env::var("AUDIT_FAULT_INJECT").ok()?;
    let (name, nth) = text.split_once(':')?;
    let point = Point::ALL.iter().find(|(_, n)| *n == name)?.0;
    Some(Plan::new(point, nth.parse().ok()?, Kind::Storage))
}

#[cfg(not(feature = "fault-injection"))]
fn plan_from_env() -> Option<Plan> {
    None
}

impl Backend for FaultBackend {
    fn open_reader(&self) -> Result<Box<dyn Reader>, Error> {
        self.inner.open_reader()
    }

    fn shared(&self) -> bool {
        self.inner.shared()
    }

    fn begin(&mut self) -> Result<Option<Tip>, BackendError> {
        self.inner.begin()
    }

    fn stored(&mut self, ids: &[&str]) -> Result<Vec<Option<StoredId>>, BackendError> {
        self.inner.stored(ids)
    }

    fn insert(&mut self, rows: &[Row<'_>]) -> Result<(), BackendError> {
        self.hit(Point::BeforeInsert)?;
        self.inner.insert(rows)
    }

    fn insert_checkpoint(&mut self, checkpoint: &NewCheckpoint) -> Result<(), BackendError> {
        self.hit(Point::SignCheckpoint)?;
        self.inner.insert_checkpoint(checkpoint)
    }

    fn cursor(&mut self, write: &CursorWrite) -> Result<super::CursorClaim, BackendError> {
        self.inner.cursor(write)
    }

    fn prune(&mut self, through: u64, limit: usize) -> Result<usize, BackendError> {
        self.hit(Point::Prune)?;
        self.inner.prune(through, limit)
    }

    fn commit(&mut self, tip: &Tip) -> Result<(), BackendError> {
        for point in [Point::BeforeCommit, Point::Commit] {
            if let Err(error) = self.hit(point) {
                self.inner.rollback();
                return Err(error);
            }
        }
        self.inner.commit(tip)?;
        self.hit(Point::AfterCommit)
    }

    fn rollback(&mut self) {
        self.inner.rollback();
    }

    fn after_commit(&mut self) -> Result<(), BackendError> {
        self.inner.after_commit()?;
        self.hit(Point::WalCheckpoint)
    }

    fn recover(&mut self) -> Result<(), BackendError> {
        self.inner.recover()
    }

    fn follow_head(&self) -> Option<Box<dyn HeadFollower>> {
        self.inner.follow_head()
    }
}
