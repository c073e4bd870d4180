//! Access control of each call: who the caller is (from its connection), whether the policy
//! grants the permission the call needs, and the entry that records a refusal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use audit_identity::Peer;
use audit_proto::pb::{self, AuditEntry, Level, Outcome};
use tonic::{Code, Request, Status};

use crate::policy::{self, Decision, Permission, Policy};

/// The policy in force, and the budget for recording refusals.
pub struct Access {
    policy: Option<Policy>,
    budget: Mutex<DenialBudget>,
    clock: Clock,
    /// Refusals so far: recorded as DENIED entries, and over the recording budget.
    denied_recorded: AtomicU64,
    denied_unrecorded: AtomicU64,
}

/// Where [`Access`] reads the time for its recording budget: [`Instant::now`] in the server, a
/// hand-driven clock in tests.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// How many refused calls are recorded as DENIED entries, per one-second window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenialLimits {
    /// Most refusals recorded per second, of all callers together.
    pub per_second: u32,
    /// Most refusals recorded per second of any one caller identity, so one caller's flood
    /// leaves the rest of the budget to the others.
    pub per_identity_per_second: u32,
}

/// A refused call: the status to answer, and the entry to record if the budget allows.
pub struct Refusal {
    /// The refused caller.
    pub peer: Peer,
    /// The answer to the caller.
    pub status: Status,
    /// The DENIED entry describing the attempt, or `None` when over the recording budget.
    pub entry: Option<AuditEntry>,
}

/// Most caller identities whose refusals are counted in one window; refusals of further
/// identities in that window are not recorded. Keeps the budget's memory bounded whatever the
/// configured rate.
const MAX_IDENTITIES_PER_WINDOW: usize = 4096;

/// Refusals recorded and counted in the current one-second window.
struct DenialBudget {
    limits: DenialLimits,
    window: Instant,
    recorded: u32,
    per_identity: HashMap<String, u32>,
    /// Refusals in this window that were not recorded.
    unrecorded: u64,
}

impl DenialBudget {
    fn new(limits: DenialLimits, now: Instant) -> Self {
        Self {
            limits,
            window: now,
            recorded: 0,
            per_identity: HashMap::new(),
            unrecorded: 0,
        }
    }

    /// Whether a refusal of `identity` at `now` may be recorded. A new window logs one line
    /// counting what the last one recorded and skipped, instead of a line per refusal.
    fn admit(&mut self, identity: &str, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            if self.unrecorded > 0 {
                tracing::warn!(
                    recorded = self.recorded,
                    not_recorded = self.unrecorded,
                    "refused calls over --max-denied-per-second or \
                     --max-denied-per-identity-per-second were counted, not recorded"
                );
            }
            *self = Self::new(self.limits, now);
        }
        let known = self.per_identity.len() < MAX_IDENTITIES_PER_WINDOW
            || self.per_identity.contains_key(identity);
        let used = self.per_identity.get(identity).copied().unwrap_or(0);
        if known
            && self.recorded < self.limits.per_second
            && used < self.limits.per_identity_per_second
        {
            self.recorded += 1;
            *self.per_identity.entry(identity.to_string()).or_default() += 1;
            true
        } else {
            self.unrecorded += 1;
            false
        }
    }
}

impl Access {
    /// Access under `policy` (or the development default), recording refusals within `limits`.
    pub fn new(policy: Option<Policy>, limits: DenialLimits) -> Self {
        Self::with_clock(policy, limits, Arc::new(Instant::now))
    }

    /// [`Access::new`] with the budget's windows timed by `clock`.
    pub fn with_clock(policy: Option<Policy>, limits: DenialLimits, clock: Clock) -> Self {
        let now = clock();
        Self {
            policy,
            budget: Mutex::new(DenialBudget::new(limits, now)),
            clock,
            denied_recorded: AtomicU64::new(0),
            denied_unrecorded: AtomicU64::new(0),
        }
    }

    /// The caller of `request` if it may call `method`, which needs `permission`.
    pub fn check<T>(
        &self,
        request: &Request<T>,
        method: &str,
        permission: Permission,
    ) -> Result<Peer, Box<Refusal>> {
        let (peer, refusal) = match Peer::of(request) {
            Err(bad_certificate) => {
                let peer = Peer::Tls {
                    address: request.remote_addr(),
                    certificate: None,
                };
                (peer, Status::unauthenticated(bad_certificate.to_string()))
            }
            Ok(peer) => match policy::decide(self.policy.as_ref(), &peer, permission) {
                Decision::Allow => return Ok(peer),
                Decision::Unauthenticated(why) => (peer, Status::unauthenticated(why)),
                Decision::Denied(why) => (peer, Status::permission_denied(why)),
            },
        };
        Err(self.refuse(peer, method, permission, refusal))
    }

    /// [`Access::check`] for a web console caller on `peer` that sent a bearer token: `token` is
    /// the token's name in the token file, or why the token proves nothing (unknown, or sent
    /// where it could be read). Refusals are recorded as those of `check` are.
    pub fn check_token(
        &self,
        peer: Peer,
        token: Result<&str, String>,
        method: &str,
        permission: Permission,
    ) -> Result<(), Box<Refusal>> {
        let refusal = match token {
            Err(why) => Status::unauthenticated(why),
            Ok(name) => match policy::decide_token(self.policy.as_ref(), name, permission) {
                Decision::Allow => return Ok(()),
                Decision::Unauthenticated(why) => Status::unauthenticated(why),
                Decision::Denied(why) => Status::permission_denied(why),
            },
        };
        Err(self.refuse(peer, method, permission, refusal))
    }

    /// The refusal of `peer`'s call, with its entry if the budget allows.
    fn refuse(
        &self,
        peer: Peer,
        method: &str,
        permission: Permission,
        refusal: Status,
    ) -> Box<Refusal> {
        // Recorded refusals are in the audit log and the rest are counted: a line each would
        // let a flood of refused calls fill the server's log instead.
        tracing::debug!(
            caller = %peer.describe(),
            method,
            permission = permission.name(),
            reason = refusal.message(),
            "call refused"
        );
        let entry = self
            .within_budget(&peer)
            .then(|| denied_entry(&peer, method, permission, &refusal));
        let count = match entry {
            Some(_) => &self.denied_recorded,
            None => &self.denied_unrecorded,
        };
        count.fetch_add(1, Ordering::Relaxed);
        Box::new(Refusal {
            peer,
            status: refusal,
            entry,
        })
    }

    /// Refusals so far: `(recorded, over the budget)`.
    pub fn denied(&self) -> (u64, u64) {
        (
            self.denied_recorded.load(Ordering::Relaxed),
            self.denied_unrecorded.load(Ordering::Relaxed),
        )
    }

    /// Whether another refusal of `peer` may be recorded in this window.
    fn within_budget(&self, peer: &Peer) -> bool {
        let now = (self.clock)();
        let identity = identity_key(peer);
        self.budget
            .lock()
            .expect("budget lock")
            .admit(&identity, now)
    }
}

/// Whom the per-identity budget counts a refusal against: the SPIFFE ID or certificate subject
/// of a TLS client, the uid of a Unix peer, else the IP address (not the port, which a caller
/// changes with every connection).
fn identity_key(peer: &Peer) -> String {
    match peer {
        Peer::Unix(unix) => format!("uid:{}", unix.uid),
        Peer::Tls {
            certificate: Some(certificate),
            ..
        } => format!("spiffe:{}", certificate.spiffe_id.as_str()),
        Peer::Tls { address, .. } | Peer::Tcp { address } => match address {
            Some(address) => format!("ip:{}", address.ip()),
            None => "address unknown".to_string(),
        },
        Peer::Unknown => "unknown".to_string(),
    }
}

/// The entry recording a refused call: the server is its source, the refused caller its caller.
fn denied_entry(peer: &Peer, method: &str, permission: Permission, status: &Status) -> AuditEntry {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("permission".to_string(), permission.name().to_string());
    AuditEntry {
        source: "audit-server".into(),
        method: method.into(),
        event: "ACCESS_DENIED".into(),
        category: "AUTHORIZATION".into(),
        level: Level::Warning as i32,
        outcome: Outcome::Denied as i32,
        status_code: match status.code() {
            Code::Unauthenticated => Code::Unauthenticated as i32,
            _ => Code::PermissionDenied as i32,
        },
        status_message: status.message().to_string(),
        caller: Some(pb::Caller {
            peer: peer.to_caller_peer(),
            ..Default::default()
        }),
        labels,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// A clock the test moves by hand.
    fn manual_clock() -> (Clock, Arc<Mutex<Instant>>) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let read = now.clone();
        (Arc::new(move || *read.lock().unwrap()), now)
    }

    fn tcp(address: &str) -> Peer {
        Peer::Tcp {
            address: Some(address.parse::<SocketAddr>().unwrap()),
        }
    }

    /// Refusals of `peer` (plaintext from afar, which the default policy refuses), counting
    /// those that would be recorded.
    fn recorded(access: &Access, peer: &Peer, calls: usize) -> usize {
        (0..calls).filter(|_| access.within_budget(peer)).count()
    }

    const LIMITS: DenialLimits = DenialLimits {
        per_second: 10,
        per_identity_per_second: 3,
    };

    #[test]
    fn a_flooding_identity_leaves_the_budget_to_the_others() {
        let (clock, _) = manual_clock();
        let access = Access::with_clock(None, LIMITS, clock);
        assert_eq!(recorded(&access, &tcp("192.0.2.1:1000"), 1000), 3);
        // A new port is the same caller.
        assert_eq!(recorded(&access, &tcp("192.0.2.1:1001"), 5), 0);
        for other in ["192.0.2.2:1", "192.0.2.3:1"] {
            assert_eq!(recorded(&access, &tcp(other), 1), 1);
        }
    }

    #[test]
    fn the_total_stays_within_the_budget_and_windows_renew_it() {
        let (clock, now) = manual_clock();
        let access = Access::with_clock(None, LIMITS, clock);
        let total: usize = (0..20)
            .map(|i| recorded(&access, &tcp(&format!("192.0.2.{i}:1")), 5))
            .sum();
        assert_eq!(total, 10);
        *now.lock().unwrap() += Duration::from_millis(999);
        assert_eq!(recorded(&access, &tcp("198.51.100.1:1"), 1), 0);
        *now.lock().unwrap() += Duration::from_millis(1);
        assert_eq!(recorded(&access, &tcp("192.0.2.1:1"), 5), 3);
    }

    #[test]
    fn identities_are_callers_not_connections() {
        assert_eq!(
            identity_key(&tcp("10.0.0.1:5")),
            identity_key(&tcp("10.0.0.1:6"))
        );
        assert_ne!(
            identity_key(&tcp("10.0.0.1:5")),
            identity_key(&tcp("10.0.0.2:5"))
        );
        let unix = |uid| {
            Peer::Unix(audit_identity::UnixPeerInfo {
                uid,
                gid: 0,
                pid: Some(1),
                binary_path: None,
            })
        };
        assert_eq!(identity_key(&unix(7)), "uid:7");
        assert_ne!(identity_key(&unix(7)), identity_key(&unix(8)));
    }

    /// What the server's log receives, at info level and above.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Log {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_flood_of_refusals_is_counted_in_one_log_line_a_second() {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let (clock, now) = manual_clock();
        let access = Access::with_clock(None, LIMITS, clock);
        let mut recorded = 0;
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                for _ in 0..1000 {
                    // No connection facts: an unknown caller, refused by the default policy.
                    let refusal = access
                        .check(&Request::new(()), "/a.B/C", Permission::Record)
                        .unwrap_err();
                    recorded += usize::from(refusal.entry.is_some());
                }
                *now.lock().unwrap() += Duration::from_secs(1);
            }
        });
        assert_eq!(recorded, 3 * 3, "the per-identity budget each second");
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        // Two windows ended with a refusal after them; the third is logged by the next one.
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("not_recorded=997"), "{text}");
    }
}
