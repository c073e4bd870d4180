//! What a forwarder shows of itself: its position, state and last error, for the metrics and
//! `ListForwarders`. A state change is logged here, once, when it happens (not once per retry),
//! so that the server's log and what `audit forwarders` shows cannot drift apart.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use audit_proto::pb::{ForwarderState, ForwarderStatus, ListForwardersResponse};

use crate::error::Error;
use crate::store::{Direction, Read, Store};

/// What a forwarder is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Delivering, or caught up and waiting for new entries.
    Running = 0,
    /// Its sink (or the store) failed; it retries with back-off.
    Retrying = 1,
    /// Its sink refused a batch for good; nothing more is delivered until a restart.
    Halted = 2,
    /// Another server sharing the store holds its lease.
    Standby = 3,
}

impl State {
    fn from_u8(value: u8) -> State {
        match value {
            1 => State::Retrying,
            2 => State::Halted,
            3 => State::Standby,
            _ => State::Running,
        }
    }

    fn to_proto(self) -> ForwarderState {
        match self {
            State::Running => ForwarderState::Running,
            State::Retrying => ForwarderState::Retrying,
            State::Halted => ForwarderState::Halted,
            State::Standby => ForwarderState::Standby,
        }
    }
}

/// The last error of a forwarder and when it happened.
#[derive(Debug, Clone)]
struct LastError {
    message: String,
    time: SystemTime,
}

/// What a running forwarder shows its metrics and `ListForwarders`.
#[derive(Debug)]
pub struct ForwarderStats {
    /// Every matching entry up to this sequence was acknowledged; `u64::MAX` until known.
    pub position: AtomicU64,
    /// Deliveries that failed (retried or halting).
    pub errors: AtomicU64,
    /// Whether the forwarder halted (it delivers nothing more until restarted).
    pub halted: AtomicBool,
    state: AtomicU8,
    last_error: Mutex<Option<LastError>>,
}

impl Default for ForwarderStats {
    fn default() -> Self {
        Self {
            position: AtomicU64::new(u64::MAX),
            errors: AtomicU64::new(0),
            halted: AtomicBool::new(false),
            state: AtomicU8::new(State::Running as u8),
            last_error: Mutex::new(None),
        }
    }
}

impl ForwarderStats {
    /// What the forwarder is doing.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// The forwarder delivered (or claimed its lease): running again, its last error cleared.
    /// Logged if it was retrying or standing by.
    pub fn running(&self, name: &str, position: u64) {
        *self.last_error.lock().expect("last error lock") = None;
        match self.enter(State::Running) {
            State::Retrying => {
                tracing::info!(forwarder = %name, position, "forwarder delivering again");
            }
            State::Standby => {
                tracing::info!(forwarder = %name, position, "took over this forwarder");
            }
            _ => {}
        }
    }

    /// A delivery (or a store call) failed and is retried: logged when the forwarder starts
    /// retrying, not at every retry.
    pub fn retrying(&self, name: &str, position: u64, error: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.set_error(error);
        if self.enter(State::Retrying) != State::Retrying {
            tracing::warn!(forwarder = %name, position, %error, "forwarder cannot deliver; retrying");
        }
    }

    /// Another server holds the lease: logged when the forwarder starts standing by.
    pub fn standby(&self, name: &str, owner: &str) {
        if self.enter(State::Standby) != State::Standby {
            tracing::info!(forwarder = %name, %owner, "another server drives this forwarder; standing by");
        }
    }

    /// The sink refused a batch for good.
    pub fn halted(&self, name: &str, position: u64, error: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.set_error(error);
        self.halted.store(true, Ordering::Relaxed);
        if self.enter(State::Halted) != State::Halted {
            tracing::error!(
                forwarder = %name,
                position,
                %error,
                "forwarder halted: nothing after its position is delivered until it is fixed and the server restarted"
            );
        }
    }

    /// Enters `state`; returns the state before.
    fn enter(&self, state: State) -> State {
        State::from_u8(self.state.swap(state as u8, Ordering::Relaxed))
    }

    fn set_error(&self, message: &str) {
        *self.last_error.lock().expect("last error lock") = Some(LastError {
            message: message.to_string(),
            time: SystemTime::now(),
        });
    }

    fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().expect("last error lock").clone()
    }
}

/// One configured forwarder as `ListForwarders` shows it.
#[derive(Debug)]
pub struct Described {
    /// Its name.
    pub name: String,
    /// Where it sends, without credentials or options.
    pub destination: String,
    /// The format it writes.
    pub format: String,
    /// Its live state.
    pub stats: Arc<ForwarderStats>,
}

/// The server's forwarders, in configuration order (none by default).
#[derive(Debug, Clone, Default)]
pub struct Forwarders(pub Arc<Vec<Described>>);

impl Forwarders {
    /// The state of every forwarder: position and lag against `store`'s head, state and last
    /// error. Before its position is known (a standby, or `start=now` not yet applied) a
    /// forwarder shows the head, as its metrics do.
    pub async fn report<S: Store>(&self, store: &S) -> Result<ListForwardersResponse, Error> {
        let head = *store.head().borrow();
        let mut forwarders = Vec::with_capacity(self.0.len());
        for described in self.0.iter() {
            let stats = &described.stats;
            let position = match stats.position.load(Ordering::Relaxed) {
                u64::MAX => head,
                position => position.min(head),
            };
            let lag = match head > position {
                true => oldest_unacknowledged_age(store, position).await?,
                false => None,
            };
            let last_error = stats.last_error();
            forwarders.push(ForwarderStatus {
                name: described.name.clone(),
                destination: described.destination.clone(),
                format: described.format.clone(),
                state: stats.state().to_proto() as i32,
                position,
                lag_entries: head - position,
                lag: Some(lag.unwrap_or_default()),
                last_error: last_error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
                last_error_time: last_error.map(|e| e.time.into()),
            });
        }
        Ok(ListForwardersResponse { forwarders })
    }
}

/// How long ago the entry after `position` reached the server.
async fn oldest_unacknowledged_age<S: Store>(
    store: &S,
    position: u64,
) -> Result<Option<prost_types::Duration>, Error> {
    let page = store
        .read(Read {
            filter: Default::default(),
            direction: Direction::Ascending { after: position },
            through: position + 1,
            limit: 1,
            max_bytes: usize::MAX,
        })
        .await?;
    let Some(received) = page.entries.first().and_then(|e| e.received_time) else {
        return Ok(None);
    };
    let received = SystemTime::try_from(received).unwrap_or(SystemTime::UNIX_EPOCH);
    let age = SystemTime::now()
        .duration_since(received)
        .unwrap_or_default();
    Ok(prost_types::Duration::try_from(age).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovery_clears_the_last_error_and_counts_every_failure() {
        let stats = ForwarderStats::default();
        stats.retrying("hook", 3, "HTTP 503");
        stats.retrying("hook", 3, "HTTP 500");
        assert_eq!(stats.state(), State::Retrying);
        assert_eq!(stats.last_error().unwrap().message, "HTTP 500");
        stats.running("hook", 4);
        assert_eq!(stats.state(), State::Running);
        assert!(stats.last_error().is_none());
        stats.halted("hook", 4, "HTTP 400");
        assert_eq!(stats.state(), State::Halted);
        assert!(stats.halted.load(Ordering::Relaxed));
        assert_eq!(stats.errors.load(Ordering::Relaxed), 3);
    }
}
