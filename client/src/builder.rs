//! [`EntryBuilder`]: audit entries without assembling protobuf by hand.

use std::time::{Duration, SystemTime};

use audit_proto::pb;
use pb::{Level, Outcome};

/// Builds a [`pb::AuditEntry`].
///
/// Only `source`, `method` and the outcome are required by the server; everything else is
/// optional. Fields the builder leaves empty (`id`, `request_id`, `time`, `level`) are filled in
/// by the server.
///
/// ```
/// use audit_client::{EntryBuilder, pb::Outcome};
///
/// let entry = EntryBuilder::new("billing-api", "/billing.v1.Billing/Charge")
///     .outcome(Outcome::Success)
///     .status(tonic::Code::Ok, "")
///     .principal("alice")
///     .resource("invoices/42")
///     .label("region", "eu-west-1")
///     .detail("amount_cents", 1250.0)
///     .build();
/// assert_eq!(entry.caller.unwrap().principal, "alice");
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct EntryBuilder {
    entry: pb::AuditEntry,
}

impl EntryBuilder {
    /// Starts an entry for a call to `method` (`/package.Service/Method`) audited by the
    /// application `source` (for example `billing-api`). The outcome defaults to success.
    pub fn new(source: impl Into<String>, method: impl Into<String>) -> Self {
        let entry = pb::AuditEntry {
            source: source.into(),
            method: method.into(),
            outcome: Outcome::Success.into(),
            ..Default::default()
        };
        EntryBuilder { entry }
    }

    /// Sets the entry's id (a UUID). A client-chosen id makes retries idempotent: the server
    /// stores an id once.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.entry.id = id.into();
        self
    }

    /// Sets a fresh UUIDv7 as the entry's id, so that retrying the same entry cannot store it
    /// twice.
    pub fn random_id(self) -> Self {
        self.id(uuid::Uuid::now_v7().to_string())
    }

    /// Sets the id shared by all entries of one audited call.
    pub fn request_id(mut self, request_id: impl Into<String>) -> Self {
        self.entry.request_id = request_id.into();
        self
    }

    /// Sets when the audited action happened (the server uses its receive time otherwise).
    pub fn time(mut self, time: SystemTime) -> Self {
        self.entry.time = Some(time.into());
        self
    }

    /// Sets what happened, for example `KEY_DELETED`.
    pub fn event(mut self, event: impl Into<String>) -> Self {
        self.entry.event = event.into();
        self
    }

    /// Sets the family of the event, for example `KEY_MANAGEMENT`.
    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.entry.category = category.into();
        self
    }

    /// Sets what the action touched, for example `keys/my-key`.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.entry.resource = resource.into();
        self
    }

    /// Sets the severity (the server stores `LEVEL_INFO` when unset).
    pub fn level(mut self, level: Level) -> Self {
        self.entry.level = level.into();
        self
    }

    /// Sets how the audited call ended.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.entry.outcome = outcome.into();
        self
    }

    /// Sets the gRPC status of the audited call: a code (a [`tonic::Code`] or its number) and a
    /// message (may be empty).
    pub fn status(mut self, code: impl Into<i32>, message: impl Into<String>) -> Self {
        self.entry.status_code = code.into();
        self.entry.status_message = message.into();
        self
    }

    /// Sets the outcome, status code and message from the result of the audited call: `OK` is a
    /// success, `UNAUTHENTICATED` and `PERMISSION_DENIED` are denials, anything else an error.
    pub fn status_of(self, status: &tonic::Status) -> Self {
        let outcome = match status.code() {
            tonic::Code::Ok => Outcome::Success,
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Outcome::Denied,
            _ => Outcome::Error,
        };
        self.outcome(outcome)
            .status(status.code(), status.message())
    }

    /// Sets the authenticated user or service account of the caller.
    pub fn principal(mut self, principal: impl Into<String>) -> Self {
        self.caller().principal = principal.into();
        self
    }

    /// Sets the role the caller acted in.
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.caller().role = role.into();
        self
    }

    /// Sets the session the call belongs to.
    pub fn session_id(mut self, session_id: impl Into<String>) -> Self {
        self.caller().session_id = session_id.into();
        self
    }

    /// Sets the caller's user agent.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.caller().user_agent = user_agent.into();
        self
    }

    /// Sets the caller's network address (`ip:port`). Replaces a Unix peer.
    pub fn peer_address(mut self, address: impl Into<String>) -> Self {
        self.network_peer().address = address.into();
        self
    }

    /// Sets the SPIFFE ID of the caller's client certificate. Replaces a Unix peer.
    pub fn spiffe_id(mut self, spiffe_id: impl Into<String>) -> Self {
        self.network_peer().spiffe_id = spiffe_id.into();
        self
    }

    /// Sets the caller as a local process connected over a Unix socket. Replaces a network peer.
    pub fn unix_peer(mut self, peer: pb::UnixPeer) -> Self {
        self.caller().peer = Some(pb::caller::Peer::Unix(peer));
        self
    }

    /// Sets how long the audited call took. Durations beyond the protobuf range are clamped.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.entry.latency = Some(prost_types::Duration {
            seconds: i64::try_from(latency.as_secs()).unwrap_or(i64::MAX),
            // Below one billion, so it always fits.
            nanos: i32::try_from(latency.subsec_nanos()).unwrap_or(0),
        });
        self
    }

    /// Adds one key of the free-form details (a string, number, bool, list or map value).
    pub fn detail(mut self, key: impl Into<String>, value: impl Into<prost_types::Value>) -> Self {
        self.entry
            .details
            .get_or_insert_with(Default::default)
            .fields
            .insert(key.into(), value.into());
        self
    }

    /// Replaces all the free-form details.
    pub fn details(mut self, details: prost_types::Struct) -> Self {
        self.entry.details = Some(details);
        self
    }

    /// Adds a label (searchable with `Filter.labels`).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.entry.labels.insert(key.into(), value.into());
        self
    }

    /// Finishes the entry.
    pub fn build(self) -> pb::AuditEntry {
        self.entry
    }

    fn caller(&mut self) -> &mut pb::Caller {
        self.entry.caller.get_or_insert_with(Default::default)
    }

    fn network_peer(&mut self) -> &mut pb::NetworkPeer {
        let caller = self.caller();
        if !matches!(caller.peer, Some(pb::caller::Peer::Network(_))) {
            caller.peer = Some(pb::caller::Peer::Network(Default::default()));
        }
        match &mut caller.peer {
            Some(pb::caller::Peer::Network(peer)) => peer,
            _ => unreachable!("the network peer was set just above"),
        }
    }
}

/// Starts from an existing entry, to change or complete it.
impl From<pb::AuditEntry> for EntryBuilder {
    fn from(entry: pb::AuditEntry) -> Self {
        EntryBuilder { entry }
    }
}

impl From<EntryBuilder> for pb::AuditEntry {
    fn from(builder: EntryBuilder) -> Self {
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_every_field() {
        let entry = EntryBuilder::new("billing-api", "/billing.v1.Billing/Charge")
            .id("0193a1b2-0000-7000-8000-000000000001")
            .request_id("req-1")
            .time(SystemTime::UNIX_EPOCH + Duration::from_secs(10))
            .event("CHARGED")
            .category("BILLING")
            .resource("invoices/42")
            .level(Level::Warning)
            .outcome(Outcome::Denied)
            .status(tonic::Code::PermissionDenied, "no")
            .principal("alice")
            .role("admin")
            .session_id("s1")
            .user_agent("grpc-rust")
            .peer_address("127.0.0.1:5555")
            .spiffe_id("spiffe://example.org/alice")
            .latency(Duration::from_millis(1500))
            .detail("amount", 12.5)
            .detail("currency", "EUR")
            .label("k", "v")
            .build();
        assert_eq!(entry.source, "billing-api");
        assert_eq!(entry.method, "/billing.v1.Billing/Charge");
        assert_eq!(entry.request_id, "req-1");
        assert_eq!(entry.time.unwrap().seconds, 10);
        assert_eq!(entry.level, Level::Warning as i32);
        assert_eq!(entry.outcome, Outcome::Denied as i32);
        assert_eq!(entry.status_code, 7);
        assert_eq!(entry.status_message, "no");
        let caller = entry.caller.unwrap();
        assert_eq!(caller.principal, "alice");
        assert_eq!(caller.role, "admin");
        match caller.peer {
            Some(pb::caller::Peer::Network(peer)) => {
                assert_eq!(peer.address, "127.0.0.1:5555");
                assert_eq!(peer.spiffe_id, "spiffe://example.org/alice");
            }
            other => panic!("unexpected peer {other:?}"),
        }
        let latency = entry.latency.unwrap();
        assert_eq!((latency.seconds, latency.nanos), (1, 500_000_000));
        assert_eq!(entry.details.unwrap().fields.len(), 2);
        assert_eq!(entry.labels.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn defaults_to_success_and_leaves_server_fields_empty() {
        let entry: pb::AuditEntry = EntryBuilder::new("s", "/p.S/M").into();
        assert_eq!(entry.outcome, Outcome::Success as i32);
        assert!(entry.id.is_empty());
        assert!(entry.time.is_none());
        assert!(entry.caller.is_none());
    }

    #[test]
    fn status_of_maps_outcome() {
        let denied = EntryBuilder::new("s", "/p.S/M")
            .status_of(&tonic::Status::permission_denied("nope"))
            .build();
        assert_eq!(denied.outcome, Outcome::Denied as i32);
        assert_eq!(denied.status_code, 7);
        let failed = EntryBuilder::new("s", "/p.S/M")
            .status_of(&tonic::Status::internal("boom"))
            .build();
        assert_eq!(failed.outcome, Outcome::Error as i32);
    }

    #[test]
    fn unix_peer_replaces_network_peer() {
        let entry = EntryBuilder::new("s", "/p.S/M")
            .peer_address("10.0.0.1:1")
            .unix_peer(pb::UnixPeer {
                uid: 1000,
                pid: 42,
                ..Default::default()
            })
            .build();
        assert!(matches!(
            entry.caller.unwrap().peer,
            Some(pb::caller::Peer::Unix(pb::UnixPeer { uid: 1000, .. }))
        ));
    }
}
