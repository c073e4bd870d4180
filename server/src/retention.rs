//! Retention: keeps the log's disk use bounded for years without losing the ability to prove
//! it was not altered.
//!
//! Every round, the horizon is the newest entry outside `--retain-for` (received longer ago)
//! or outside the newest `--retain-entries`, whichever reaches further; it never passes a
//! forwarder's saved position (an entry is not pruned before every forwarder delivered it), and
//! the engine rounds it down to the size of a signed checkpoint. The engine then signs the new
//! horizon into a checkpoint and moves the entries at or below it out of the log in small steps,
//! each a group commit of its own, so that writers never wait long behind it. What verification
//! needs stays: each entry's sequence, id, hashes and retry digest.
//!
//! With several replicas on one database, one at a time prunes: the one holding the lease of the
//! durable cursor [`LEASE`], renewed every round.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::store::Store;

/// Name of the durable cursor whose lease picks the one replica that prunes. Forwarder names
/// cannot start with `@`.
pub const LEASE: &str = "@retention";

/// What retention keeps, and how it works through the rest.
#[derive(Debug, Clone, clap::Args)]
pub struct Retention {
    /// Keep entries received within this long (e.g. `90d`, `12h`); older ones are pruned: their
    /// content goes, their hashes stay, so the log still verifies. Off by default.
    #[arg(long, env = "AUDIT_RETAIN_FOR", value_parser = crate::config::parse_duration)]
    pub retain_for: Option<Duration>,

    /// Keep at most this many of the newest entries; older ones are pruned. Off by default.
    /// With `--retain-for` too, an entry is pruned once either says so.
    #[arg(long, env = "AUDIT_RETAIN_ENTRIES", value_parser = clap::value_parser!(u64).range(1..))]
    pub retain_entries: Option<u64>,

    /// How often retention looks for entries to prune.
    #[arg(
        long,
        env = "AUDIT_RETENTION_INTERVAL",
        default_value = "1m",
        value_parser = crate::config::parse_duration
    )]
    pub retention_interval: Duration,

    /// Most entries pruned in one step (one commit of their own).
    #[arg(
        long,
        env = "AUDIT_RETENTION_STEP_ENTRIES",
        default_value_t = 500,
        value_parser = clap::value_parser!(u64).range(1..=100_000)
    )]
    pub retention_step_entries: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            retain_for: None,
            retain_entries: None,
            retention_interval: Duration::from_secs(60),
            retention_step_entries: 500,
        }
    }
}

/// Pause between two steps of one round, so that waiting writers commit in between.
const STEP_PAUSE: Duration = Duration::from_millis(2);

impl Retention {
    /// Whether anything is ever pruned.
    pub fn enabled(&self) -> bool {
        self.retain_for.is_some() || self.retain_entries.is_some()
    }

    /// Prunes every `retention_interval` until `stopping` is cancelled. `owner` names this
    /// server in the lease; `forwarders` are the names of the configured forwarders, whose
    /// positions hold the horizon back.
    pub async fn run<S: Store>(
        self,
        store: S,
        owner: String,
        forwarders: Vec<String>,
        stopping: CancellationToken,
    ) {
        let mut rounds = tokio::time::interval(self.retention_interval);
        rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = None;
        loop {
            tokio::select! {
                _ = stopping.cancelled() => {
                    // Free the lease for the next process or another replica at once.
                    let _ = store.release_cursor(LEASE, &owner, 0).await;
                    return;
                }
                _ = rounds.tick() => {}
            }
            match self.round(&store, &owner, &forwarders, &stopping).await {
                Ok(()) => last_error = None,
                Err(error) => {
                    // Once per kind of failure, not once per round.
                    let text = error.to_string();
                    if last_error.as_ref() != Some(&text) {
                        tracing::warn!(%error, "retention round failed; retrying next round");
                        last_error = Some(text);
                    }
                }
            }
        }
    }

    /// One round: claims the lease, finds the horizon, prunes up to it step by step.
    async fn round<S: Store>(
        &self,
        store: &S,
        owner: &str,
        forwarders: &[String],
        stopping: &CancellationToken,
    ) -> Result<(), Error> {
        if let crate::store::CursorClaim::Busy { owner } = store.cursor(LEASE, owner, None).await? {
            tracing::debug!(%owner, "another replica holds retention's lease");
            return Ok(());
        }
        let wanted = self.wanted_horizon(store).await?;
        let mut target = wanted;
        for name in forwarders {
            let position = store.cursor_position(name).await?.unwrap_or(0);
            if position < target {
                tracing::debug!(forwarder = %name, position, "retention waits for a forwarder");
                target = position;
            }
        }
        let before = store.pruned_through();
        let mut moved = 0;
        loop {
            let step = store
                .prune(target, self.retention_step_entries as usize)
                .await?;
            moved += step.moved;
            if step.moved < self.retention_step_entries as usize || stopping.is_cancelled() {
                if moved > 0 || step.horizon > before {
                    tracing::info!(
                        horizon = step.horizon,
                        moved,
                        held_back = wanted > target,
                        "retention pruned the log"
                    );
                }
                return Ok(());
            }
            tokio::time::sleep(STEP_PAUSE).await;
        }
    }

    /// The newest sequence the limits would prune, before forwarders and checkpoints.
    async fn wanted_horizon<S: Store>(&self, store: &S) -> Result<u64, Error> {
        let head = *store.head().borrow();
        let mut horizon = 0;
        if let Some(keep) = self.retain_entries {
            horizon = horizon.max(head.saturating_sub(keep));
        }
        if let Some(age) = self.retain_for {
            let cutoff = SystemTime::now()
                .checked_sub(age)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i64);
            let by_age = match store.first_received_since(cutoff).await {
                Ok(Some(first)) => first - 1,
                // Everything was received before the cutoff.
                Ok(None) => head,
                // Nothing received since the cutoff is left to prune.
                Err(Error::Pruned { through }) => through,
                Err(error) => return Err(error),
            };
            horizon = horizon.max(by_age);
        }
        Ok(horizon)
    }
}
