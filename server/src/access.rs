//! Access control of each call: who the caller is (from its connection), whether the policy
//! grants the permission the call needs, and the entry that records a refusal.

use std::sync::Mutex;
use std::time::Instant;

use audit_identity::Peer;
use audit_proto::pb::{self, AuditEntry, Level, Outcome};
use tonic::{Code, Request, Status};

use crate::policy::{self, Decision, Permission, Policy};

/// The policy in force, and the budget for recording refusals.
pub struct Access {
    policy: Option<Policy>,
    denied_budget: Mutex<Budget>,
    max_denied_per_second: u32,
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

struct Budget {
    second: Instant,
    used: u32,
    skipped: u64,
}

impl Access {
    /// Access under `policy` (or the development default), recording at most
    /// `max_denied_per_second` refusals per second.
    pub fn new(policy: Option<Policy>, max_denied_per_second: u32) -> Self {
        Self {
            policy,
            denied_budget: Mutex::new(Budget {
                second: Instant::now(),
                used: 0,
                skipped: 0,
            }),
            max_denied_per_second,
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
        tracing::warn!(
            caller = %peer.describe(),
            method,
            permission = permission.name(),
            reason = refusal.message(),
            "call refused"
        );
        let entry = self
            .within_budget()
            .then(|| denied_entry(&peer, method, permission, &refusal));
        Err(Box::new(Refusal {
            peer,
            status: refusal,
            entry,
        }))
    }

    /// Whether another refusal may be recorded this second.
    fn within_budget(&self) -> bool {
        let mut budget = self.denied_budget.lock().expect("budget lock");
        if budget.second.elapsed().as_secs() >= 1 {
            if budget.skipped > 0 {
                tracing::warn!(
                    skipped = budget.skipped,
                    "refused calls not recorded: over --max-denied-per-second"
                );
            }
            *budget = Budget {
                second: Instant::now(),
                used: 0,
                skipped: 0,
            };
        }
        if budget.used < self.max_denied_per_second {
            budget.used += 1;
            true
        } else {
            budget.skipped += 1;
            false
        }
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
