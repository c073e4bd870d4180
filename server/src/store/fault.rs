//! Named points on the writer's path where a test can make the store fail, as a disk would: the
//! crash-consistency tests fail each point in turn and check that nothing acknowledged is lost
//! and nothing refused is stored.
//!
//! Compiled in only with the `fault-injection` feature, and then inert unless the environment
//! variable `AUDIT_FAULT_INJECT=<point>:<n>` names a point: its `n`-th hit (from 1) fails. Without
//! the feature every hit is a no-op the compiler removes.

/// A place on the write path where an injected fault can strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A group's transaction is open; nothing is inserted yet.
    BeforeInsert,
    /// A group's entries are inserted; the transaction is not committed.
    BeforeCommit,
    /// The commit itself (its WAL write and fsync) fails; the group is rolled back.
    Commit,
    /// The commit reached the disk, but the store is told it failed: the group's outcome is
    /// unknown to it, as after a failed fsync.
    AfterCommit,
    /// Signing a checkpoint into the store.
    SignCheckpoint,
    /// The writer's own WAL checkpoint, run when the WAL outgrows its bound.
    WalCheckpoint,
}

impl Point {
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    const ALL: [(Point, &'static str); 6] = [
        (Point::BeforeInsert, "before-insert"),
        (Point::BeforeCommit, "before-commit"),
        (Point::Commit, "commit"),
        (Point::AfterCommit, "after-commit"),
        (Point::SignCheckpoint, "sign-checkpoint"),
        (Point::WalCheckpoint, "wal-checkpoint"),
    ];
}

/// Fails if a fault is injected at this hit of `point`.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn hit(_point: Point) -> Result<(), rusqlite::Error> {
    Ok(())
}

/// Fails if a fault is injected at this hit of `point`.
#[cfg(feature = "fault-injection")]
pub fn hit(point: Point) -> Result<(), rusqlite::Error> {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static PLAN: OnceLock<Option<(Point, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let plan = PLAN.get_or_init(|| {
        let text = std::env::var("AUDIT_FAULT_INJECT").ok()?;
        let (name, nth) = text.split_once(':')?;
        let point = Point::ALL.iter().find(|(_, n)| *n == name)?.0;
        let plan = (point, nth.parse().ok()?);
        tracing::warn!(?plan, "fault injection armed");
        Some(plan)
    });
    match plan {
        Some((armed, nth)) if *armed == point => {
            if HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
                tracing::warn!(?point, "injecting a fault");
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                    Some(format!("injected fault at {point:?}")),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
