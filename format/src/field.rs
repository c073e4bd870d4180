//! The entry's fields by name, as templates and layouts read them: one list, so that every
//! format names a field the same way.
//!
//! Names are the proto field names, nested ones joined with dots: `caller.principal`,
//! `caller.unix.uid`, `caller.address`, `recorder.spiffe_id`, `labels.region`,
//! `details.key.sub`. `latencyMs` is the latency in milliseconds; `prefix` is the configured
//! prefix of a template.

use std::borrow::Cow;

use audit_proto::pb;
use time::OffsetDateTime;

/// A field of an entry that a template or layout can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Variable {
    /// A field with a fixed name.
    Field(Field),
    /// `labels.KEY`.
    Label(String),
    /// `details.A.B`: a path into the details struct.
    Detail(Vec<String>),
    /// The template's configured prefix.
    Prefix,
}

/// The fields with fixed names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Field {
    Id,
    Sequence,
    RequestId,
    Time,
    ReceivedTime,
    Source,
    Method,
    Event,
    Category,
    Resource,
    Level,
    Outcome,
    StatusCode,
    StatusName,
    StatusMessage,
    Principal,
    Role,
    SessionId,
    UserAgent,
    Caller(PeerField),
    Recorder(PeerField),
    Latency,
    LatencyMs,
    EntryHash,
    ChainHash,
}

/// A field of a caller's or recorder's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum PeerField {
    Uid,
    Gid,
    Pid,
    BinaryPath,
    Address,
    SpiffeId,
    CertificateSubject,
}

/// What kind of value a variable has, so that a format that does not apply to it is refused
/// when the template is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text.
    Text,
    /// A whole number.
    Number,
    /// An instant.
    Time,
    /// Text or a number, known only per entry (labels, details).
    Any,
}

const PEER_FIELDS: &[(&str, PeerField)] = &[
    ("unix.uid", PeerField::Uid),
    ("unix.gid", PeerField::Gid),
    ("unix.pid", PeerField::Pid),
    ("unix.binary_path", PeerField::BinaryPath),
    ("address", PeerField::Address),
    ("spiffe_id", PeerField::SpiffeId),
    ("certificate_subject", PeerField::CertificateSubject),
];

const FIELDS: &[(&str, Field)] = &[
    ("id", Field::Id),
    ("sequence", Field::Sequence),
    ("request_id", Field::RequestId),
    ("time", Field::Time),
    ("received_time", Field::ReceivedTime),
    ("source", Field::Source),
    ("method", Field::Method),
    ("event", Field::Event),
    ("category", Field::Category),
    ("resource", Field::Resource),
    ("level", Field::Level),
    ("outcome", Field::Outcome),
    ("status_code", Field::StatusCode),
    ("status_name", Field::StatusName),
    ("status_message", Field::StatusMessage),
    ("caller.principal", Field::Principal),
    ("caller.role", Field::Role),
    ("caller.session_id", Field::SessionId),
    ("caller.user_agent", Field::UserAgent),
    ("latency", Field::Latency),
    ("latencyMs", Field::LatencyMs),
    ("entry_hash", Field::EntryHash),
    ("chain_hash", Field::ChainHash),
];

impl Variable {
    /// The variable called `name`, or `None` if no field has that name.
    pub fn parse(name: &str) -> Option<Variable> {
        if name == "prefix" {
            return Some(Variable::Prefix);
        }
        if let Some(key) = name.strip_prefix("labels.") {
            return (!key.is_empty()).then(|| Variable::Label(key.to_string()));
        }
        if let Some(path) = name.strip_prefix("details.") {
            let path: Vec<String> = path.split('.').map(str::to_string).collect();
            return (!path.iter().any(String::is_empty)).then_some(Variable::Detail(path));
        }
        if let Some(field) = FIELDS.iter().find(|(n, _)| *n == name) {
            return Some(Variable::Field(field.1));
        }
        let peer = |prefix: &str| {
            let rest = name.strip_prefix(prefix)?;
            PEER_FIELDS.iter().find(|(n, _)| *n == rest).map(|f| f.1)
        };
        if let Some(field) = peer("caller.") {
            return Some(Variable::Field(Field::Caller(field)));
        }
        peer("recorder.").map(|field| Variable::Field(Field::Recorder(field)))
    }

    /// Every fixed name, for error messages and documentation.
    pub fn names() -> impl Iterator<Item = String> {
        let fixed = FIELDS.iter().map(|(n, _)| n.to_string());
        let peers = ["caller.", "recorder."]
            .into_iter()
            .flat_map(|who| PEER_FIELDS.iter().map(move |(n, _)| format!("{who}{n}")));
        fixed
            .chain(peers)
            .chain(["labels.KEY", "details.PATH", "prefix"].map(String::from))
    }

    /// The kind of value this variable has.
    pub fn kind(&self) -> Kind {
        match self {
            Variable::Field(field) => match field {
                Field::Sequence | Field::StatusCode | Field::LatencyMs => Kind::Number,
                Field::Caller(PeerField::Uid | PeerField::Gid | PeerField::Pid)
                | Field::Recorder(PeerField::Uid | PeerField::Gid | PeerField::Pid) => Kind::Number,
                Field::Time | Field::ReceivedTime => Kind::Time,
                _ => Kind::Text,
            },
            Variable::Label(_) | Variable::Prefix => Kind::Text,
            Variable::Detail(_) => Kind::Any,
        }
    }

    /// The value of this variable in `entry`.
    pub fn value<'a>(&self, entry: &'a pb::AuditEntry, prefix: &'a str) -> Value<'a> {
        match self {
            Variable::Field(field) => field_value(entry, *field),
            Variable::Label(key) => entry.labels.get(key).map_or(Value::Missing, |v| text(v)),
            Variable::Detail(path) => detail_value(entry.details.as_ref(), path),
            Variable::Prefix => text(prefix),
        }
    }
}

/// A value read from an entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// Text (never empty: empty text is [`Value::Missing`]).
    Text(Cow<'a, str>),
    /// A whole number.
    Int(i64),
    /// A number with a fraction (from `details`).
    Float(f64),
    /// An instant.
    Time(OffsetDateTime),
    /// Not set in this entry.
    Missing,
}

fn text(value: &str) -> Value<'_> {
    if value.is_empty() {
        Value::Missing
    } else {
        Value::Text(Cow::Borrowed(value))
    }
}

fn number(value: impl Into<i64>, set: bool) -> Value<'static> {
    if set {
        Value::Int(value.into())
    } else {
        Value::Missing
    }
}

/// The instant of a protobuf timestamp, if it is one `time` can represent.
pub fn instant(timestamp: &prost_types::Timestamp) -> Option<OffsetDateTime> {
    let nanos = i128::from(timestamp.seconds) * 1_000_000_000 + i128::from(timestamp.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// The canonical names of the gRPC status codes, indexed by code.
pub const STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The name of a gRPC status code (`7` → `PERMISSION_DENIED`), or `None` outside 0–16.
pub fn status_name(code: i32) -> Option<&'static str> {
    usize::try_from(code)
        .ok()
        .and_then(|i| STATUS_NAMES.get(i).copied())
}

/// The level's name without its prefix: `INFO`, `WARNING`, ...
pub fn level_name(level: i32) -> Option<&'static str> {
    match pb::Level::try_from(level).ok()? {
        pb::Level::Unspecified => None,
        pb::Level::Debug => Some("DEBUG"),
        pb::Level::Info => Some("INFO"),
        pb::Level::Warning => Some("WARNING"),
        pb::Level::Error => Some("ERROR"),
        pb::Level::Critical => Some("CRITICAL"),
    }
}

/// The outcome's name without its prefix: `SUCCESS`, `DENIED`, `ERROR`.
pub fn outcome_name(outcome: i32) -> Option<&'static str> {
    match pb::Outcome::try_from(outcome).ok()? {
        pb::Outcome::Unspecified => None,
        pb::Outcome::Success => Some("SUCCESS"),
        pb::Outcome::Denied => Some("DENIED"),
        pb::Outcome::Error => Some("ERROR"),
    }
}

/// The entry's latency in whole milliseconds, if it has one.
pub fn latency_ms(entry: &pb::AuditEntry) -> Option<i64> {
    entry
        .latency
        .as_ref()
        .map(|d| d.seconds.saturating_mul(1000) + i64::from(d.nanos) / 1_000_000)
}

fn hex(bytes: &[u8]) -> Value<'static> {
    if bytes.is_empty() {
        return Value::Missing;
    }
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push_str(&format!("{byte:02x}"));
    }
    Value::Text(Cow::Owned(out))
}

fn field_value(entry: &pb::AuditEntry, field: Field) -> Value<'_> {
    let caller = entry.caller.as_ref();
    let optional_time = |t: Option<&prost_types::Timestamp>| {
        t.and_then(instant).map_or(Value::Missing, Value::Time)
    };
    match field {
        Field::Id => text(&entry.id),
        Field::Sequence => number(entry.sequence as i64, entry.sequence != 0),
        Field::RequestId => text(&entry.request_id),
        Field::Time => optional_time(entry.time.as_ref()),
        Field::ReceivedTime => optional_time(entry.received_time.as_ref()),
        Field::Source => text(&entry.source),
        Field::Method => text(&entry.method),
        Field::Event => text(&entry.event),
        Field::Category => text(&entry.category),
        Field::Resource => text(&entry.resource),
        Field::Level => level_name(entry.level).map_or(Value::Missing, text),
        Field::Outcome => outcome_name(entry.outcome).map_or(Value::Missing, text),
        Field::StatusCode => Value::Int(entry.status_code.into()),
        Field::StatusName => status_name(entry.status_code).map_or(Value::Missing, text),
        Field::StatusMessage => text(&entry.status_message),
        Field::Principal => caller.map_or(Value::Missing, |c| text(&c.principal)),
        Field::Role => caller.map_or(Value::Missing, |c| text(&c.role)),
        Field::SessionId => caller.map_or(Value::Missing, |c| text(&c.session_id)),
        Field::UserAgent => caller.map_or(Value::Missing, |c| text(&c.user_agent)),
        Field::Caller(peer_field) => {
            let peer = caller.and_then(|c| c.peer.as_ref()).map(|p| match p {
                pb::caller::Peer::Unix(unix) => Peer::Unix(unix),
                pb::caller::Peer::Network(network) => Peer::Network(network),
            });
            peer_value(peer, peer_field)
        }
        Field::Recorder(peer_field) => {
            let peer = entry
                .recorder
                .as_ref()
                .and_then(|r| r.peer.as_ref())
                .map(|p| match p {
                    pb::recorder::Peer::Unix(unix) => Peer::Unix(unix),
                    pb::recorder::Peer::Network(network) => Peer::Network(network),
                });
            peer_value(peer, peer_field)
        }
        Field::Latency => entry.latency.as_ref().map_or(Value::Missing, |d| {
            let nanos = i128::from(d.seconds) * 1_000_000_000 + i128::from(d.nanos);
            Value::Text(Cow::Owned(format!("{}s", nanos as f64 / 1e9)))
        }),
        Field::LatencyMs => latency_ms(entry).map_or(Value::Missing, Value::Int),
        Field::EntryHash => hex(&entry.entry_hash),
        Field::ChainHash => hex(&entry.chain_hash),
    }
}

/// The peer of a caller or recorder.
#[derive(Clone, Copy)]
pub enum Peer<'a> {
    /// A local process.
    Unix(&'a pb::UnixPeer),
    /// A network peer.
    Network(&'a pb::NetworkPeer),
}

fn peer_value(peer: Option<Peer<'_>>, field: PeerField) -> Value<'_> {
    match (peer, field) {
        (Some(Peer::Unix(unix)), PeerField::Uid) => Value::Int(unix.uid.into()),
        (Some(Peer::Unix(unix)), PeerField::Gid) => Value::Int(unix.gid.into()),
        (Some(Peer::Unix(unix)), PeerField::Pid) => number(unix.pid, unix.pid != 0),
        (Some(Peer::Unix(unix)), PeerField::BinaryPath) => text(&unix.binary_path),
        (Some(Peer::Network(network)), PeerField::Address) => text(&network.address),
        (Some(Peer::Network(network)), PeerField::SpiffeId) => text(&network.spiffe_id),
        (Some(Peer::Network(network)), PeerField::CertificateSubject) => {
            text(&network.certificate_subject)
        }
        _ => Value::Missing,
    }
}

fn detail_value<'a>(details: Option<&'a prost_types::Struct>, path: &[String]) -> Value<'a> {
    use prost_types::value::Kind as K;
    let Some((first, rest)) = path.split_first() else {
        return Value::Missing;
    };
    let mut value = match details.and_then(|d| d.fields.get(first)) {
        Some(value) => value,
        None => return Value::Missing,
    };
    for key in rest {
        value = match &value.kind {
            Some(K::StructValue(inner)) => match inner.fields.get(key) {
                Some(value) => value,
                None => return Value::Missing,
            },
            _ => return Value::Missing,
        };
    }
    match &value.kind {
        Some(K::StringValue(s)) => text(s),
        Some(K::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => Value::Int(*n as i64),
        Some(K::NumberValue(n)) => Value::Float(*n),
        Some(K::BoolValue(b)) => Value::Text(Cow::Borrowed(if *b { "true" } else { "false" })),
        Some(K::StructValue(_) | K::ListValue(_)) => {
            Value::Text(Cow::Owned(crate::json::value_to_json(value).to_string()))
        }
        Some(K::NullValue(_)) | None => Value::Missing,
    }
}
