//! The JSON layouts SIEMs and log pipelines parse: logstash, Elastic Common Schema (ECS) and the
//! Open Cybersecurity Schema Framework's API Activity class (OCSF 6003). JSON escaping (by
//! `serde_json`) keeps every value inside its string: no entry can add a field or a line.

use audit_proto::pb;
use serde_json::{Map, Value as Json, json};

use crate::cef;
use crate::field::{instant, latency_ms, level_name, outcome_name, status_name};
use crate::json::struct_to_json;

/// `value` as one line of JSON, with every [unsafe character](crate::escape::is_unsafe_char)
/// that JSON allows raw (line and paragraph separators, bidi and invisible characters) written
/// as a `\u` escape, so that the line reads the same on a terminal as in a parser.
pub fn to_line(value: &Json) -> String {
    escape_unsafe(value.to_string())
}

/// `text` (serialized JSON) with every [unsafe character](crate::escape::is_unsafe_char) that
/// JSON allows raw written as a `\u` escape (as UTF-16 code units, as JSON spells characters).
/// They can only occur inside JSON strings, where the escape means the same.
pub fn escape_unsafe(text: String) -> String {
    if !text.chars().any(crate::escape::is_unsafe_char) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if crate::escape::is_unsafe_char(c) {
            // Raw controls never reach here (serde_json escapes them).
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The ECS version the `ecs` layout follows.
pub const ECS_VERSION: &str = "8.11.0";
/// The OCSF schema version the `ocsf` layout follows.
pub const OCSF_VERSION: &str = "1.1.0";

/// Inserts `value` under `key` unless it is empty (an empty string, object or array, or null).
fn put(object: &mut Map<String, Json>, key: &str, value: Json) {
    let empty = match &value {
        Json::Null => true,
        Json::String(s) => s.is_empty(),
        Json::Object(o) => o.is_empty(),
        Json::Array(a) => a.is_empty(),
        _ => false,
    };
    if !empty {
        object.insert(key.to_string(), value);
    }
}

fn object(pairs: impl IntoIterator<Item = (&'static str, Json)>) -> Json {
    let mut map = Map::new();
    for (key, value) in pairs {
        put(&mut map, key, value);
    }
    Json::Object(map)
}

fn time_ms(timestamp: Option<&prost_types::Timestamp>) -> Json {
    timestamp.and_then(instant).map_or(Json::Null, |t| {
        json!((t.unix_timestamp_nanos() / 1_000_000) as i64)
    })
}

fn rfc3339(timestamp: Option<&prost_types::Timestamp>) -> Json {
    let Some(time) = timestamp.and_then(instant) else {
        return Json::Null;
    };
    let mut out = String::new();
    crate::timefmt::rfc3339_millis().format(time, &mut out);
    Json::String(out)
}

fn labels(entry: &pb::AuditEntry) -> Json {
    Json::Object(
        entry
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Json::String(v.clone())))
            .collect(),
    )
}

fn details(entry: &pb::AuditEntry) -> Json {
    entry.details.as_ref().map_or(Json::Null, struct_to_json)
}

fn hex(bytes: &[u8]) -> Json {
    if bytes.is_empty() {
        Json::Null
    } else {
        Json::String(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// A peer as JSON, with the proto field names.
fn peer(unix: Option<&pb::UnixPeer>, network: Option<&pb::NetworkPeer>) -> Json {
    match (unix, network) {
        (Some(unix), _) => json!({"unix": object([
            ("uid", json!(unix.uid)),
            ("gid", json!(unix.gid)),
            ("pid", if unix.pid == 0 { Json::Null } else { json!(unix.pid) }),
            ("binary_path", json!(unix.binary_path)),
        ])}),
        (_, Some(network)) => object([
            ("address", json!(network.address)),
            ("spiffe_id", json!(network.spiffe_id)),
            ("certificate_subject", json!(network.certificate_subject)),
        ]),
        _ => Json::Null,
    }
}

fn caller_peer(entry: &pb::AuditEntry) -> (Option<&pb::UnixPeer>, Option<&pb::NetworkPeer>) {
    match entry.caller.as_ref().and_then(|c| c.peer.as_ref()) {
        Some(pb::caller::Peer::Unix(unix)) => (Some(unix), None),
        Some(pb::caller::Peer::Network(network)) => (None, Some(network)),
        None => (None, None),
    }
}

fn recorder_peer(entry: &pb::AuditEntry) -> (Option<&pb::UnixPeer>, Option<&pb::NetworkPeer>) {
    match entry.recorder.as_ref().and_then(|r| r.peer.as_ref()) {
        Some(pb::recorder::Peer::Unix(unix)) => (Some(unix), None),
        Some(pb::recorder::Peer::Network(network)) => (None, Some(network)),
        None => (None, None),
    }
}

/// A one-line summary for `message` fields: `SUCCESS OK /pkg.Svc/Method keys/k1`.
fn summary(entry: &pb::AuditEntry) -> String {
    [
        outcome_name(entry.outcome).unwrap_or("-"),
        status_name(entry.status_code).unwrap_or("-"),
        if entry.method.is_empty() {
            "-"
        } else {
            &entry.method
        },
        &entry.resource,
    ]
    .join(" ")
    .trim_end()
    .to_string()
}

/// The entry's own fields, with their proto names, as in `logstash`.
fn fields(entry: &pb::AuditEntry) -> Map<String, Json> {
    let caller = entry.caller.as_ref();
    let (unix, network) = caller_peer(entry);
    let mut caller_json = match peer(unix, network) {
        Json::Object(map) => map,
        _ => Map::new(),
    };
    if let Some(caller) = caller {
        put(&mut caller_json, "principal", json!(caller.principal));
        put(&mut caller_json, "role", json!(caller.role));
        put(&mut caller_json, "session_id", json!(caller.session_id));
        put(&mut caller_json, "user_agent", json!(caller.user_agent));
    }
    let (r_unix, r_network) = recorder_peer(entry);
    let mut map = Map::new();
    put(&mut map, "id", json!(entry.id));
    put(&mut map, "sequence", json!(entry.sequence));
    put(&mut map, "request_id", json!(entry.request_id));
    put(&mut map, "time", rfc3339(entry.time.as_ref()));
    put(
        &mut map,
        "received_time",
        rfc3339(entry.received_time.as_ref()),
    );
    put(&mut map, "source", json!(entry.source));
    put(&mut map, "method", json!(entry.method));
    put(&mut map, "event", json!(entry.event));
    put(&mut map, "category", json!(entry.category));
    put(&mut map, "resource", json!(entry.resource));
    put(&mut map, "outcome", json!(outcome_name(entry.outcome)));
    put(&mut map, "status_code", json!(entry.status_code));
    put(
        &mut map,
        "status_name",
        json!(status_name(entry.status_code)),
    );
    put(&mut map, "status_message", json!(entry.status_message));
    put(&mut map, "caller", Json::Object(caller_json));
    put(&mut map, "recorder", peer(r_unix, r_network));
    put(
        &mut map,
        "latency_ms",
        latency_ms(entry).map_or(Json::Null, |ms| json!(ms)),
    );
    put(&mut map, "labels", labels(entry));
    put(&mut map, "details", details(entry));
    put(&mut map, "entry_hash", hex(&entry.entry_hash));
    put(&mut map, "chain_hash", hex(&entry.chain_hash));
    map
}

/// logstash's JSON event: `@timestamp`, `@version`, `level` and `message`, then the fields.
pub fn logstash(entry: &pb::AuditEntry) -> Json {
    let mut map = Map::new();
    put(
        &mut map,
        "@timestamp",
        rfc3339(entry.time.as_ref().or(entry.received_time.as_ref())),
    );
    map.insert("@version".into(), json!(1));
    map.insert(
        "level".into(),
        json!(level_name(entry.level).unwrap_or("INFO")),
    );
    map.insert("message".into(), json!(summary(entry)));
    for (key, value) in fields(entry) {
        map.entry(key).or_insert(value);
    }
    Json::Object(map)
}

fn ecs_outcome(entry: &pb::AuditEntry) -> &'static str {
    match pb::Outcome::try_from(entry.outcome) {
        Ok(pb::Outcome::Success) => "success",
        Ok(pb::Outcome::Denied | pb::Outcome::Error) => "failure",
        _ => "unknown",
    }
}

/// An Elastic Common Schema document. Fields ECS has no place for are under `audit.*`.
pub fn ecs(entry: &pb::AuditEntry) -> Json {
    let caller = entry.caller.as_ref();
    let (unix, network) = caller_peer(entry);
    let address = network.and_then(|n| n.address.parse::<std::net::SocketAddr>().ok());
    let latency_ns = entry
        .latency
        .as_ref()
        .map(|d| d.seconds.saturating_mul(1_000_000_000) + i64::from(d.nanos));
    object([
        (
            "@timestamp",
            rfc3339(entry.time.as_ref().or(entry.received_time.as_ref())),
        ),
        ("ecs", json!({"version": ECS_VERSION})),
        ("message", json!(summary(entry))),
        (
            "event",
            object([
                ("kind", json!("event")),
                ("id", json!(entry.id)),
                (
                    "action",
                    json!(if entry.event.is_empty() {
                        &entry.method
                    } else {
                        &entry.event
                    }),
                ),
                ("outcome", json!(ecs_outcome(entry))),
                ("sequence", json!(entry.sequence)),
                ("created", rfc3339(entry.received_time.as_ref())),
                ("duration", latency_ns.map_or(Json::Null, |ns| json!(ns))),
                ("provider", json!(entry.source)),
                ("dataset", json!("audit.entries")),
                ("reason", json!(entry.status_message)),
                ("severity", json!(cef::severity(entry))),
            ]),
        ),
        (
            "log",
            json!({"level": level_name(entry.level).unwrap_or("INFO").to_lowercase()}),
        ),
        ("service", object([("name", json!(entry.source))])),
        (
            "user",
            object([
                ("name", json!(caller.map(|c| c.principal.as_str()))),
                (
                    "roles",
                    caller
                        .filter(|c| !c.role.is_empty())
                        .map_or(Json::Null, |c| json!([c.role])),
                ),
                ("id", unix.map_or(Json::Null, |u| json!(u.uid.to_string()))),
            ]),
        ),
        (
            "source",
            object([
                ("address", json!(network.map(|n| n.address.as_str()))),
                (
                    "ip",
                    address.map_or(Json::Null, |a| json!(a.ip().to_string())),
                ),
                ("port", address.map_or(Json::Null, |a| json!(a.port()))),
            ]),
        ),
        (
            "process",
            unix.map_or(Json::Null, |u| {
                object([
                    ("pid", if u.pid == 0 { Json::Null } else { json!(u.pid) }),
                    ("executable", json!(u.binary_path)),
                ])
            }),
        ),
        (
            "user_agent",
            object([("original", json!(caller.map(|c| c.user_agent.as_str())))]),
        ),
        ("labels", labels(entry)),
        (
            "audit",
            object([
                ("request_id", json!(entry.request_id)),
                ("method", json!(entry.method)),
                ("resource", json!(entry.resource)),
                ("category", json!(entry.category)),
                ("status_code", json!(entry.status_code)),
                ("status_name", json!(status_name(entry.status_code))),
                ("spiffe_id", json!(network.map(|n| n.spiffe_id.as_str()))),
                ("session_id", json!(caller.map(|c| c.session_id.as_str()))),
                ("details", details(entry)),
                ("entry_hash", hex(&entry.entry_hash)),
                ("chain_hash", hex(&entry.chain_hash)),
            ]),
        ),
    ])
}

/// OCSF's activity of a method: Create (1), Read (2), Update (3), Delete (4) or Other (99),
/// from the verb that starts the method's name (`/pkg.Keys/DeleteKey` is a Delete).
pub fn ocsf_activity(method: &str) -> (u32, &'static str) {
    let name = method.rsplit('/').next().unwrap_or(method);
    let starts = |verbs: &[&str]| verbs.iter().any(|v| name.starts_with(v));
    if starts(&["Create", "Add", "Insert", "Record", "Register", "Issue"]) {
        (1, "Create")
    } else if starts(&[
        "Get",
        "List",
        "Read",
        "Query",
        "Search",
        "Watch",
        "Subscribe",
        "Describe",
    ]) {
        (2, "Read")
    } else if starts(&[
        "Update", "Set", "Patch", "Put", "Modify", "Rotate", "Replace",
    ]) {
        (3, "Update")
    } else if starts(&["Delete", "Remove", "Destroy", "Revoke", "Purge"]) {
        (4, "Delete")
    } else {
        (99, "Other")
    }
}

/// OCSF severity: Informational (1), Medium (3), High (4), Critical (5), from the level, else
/// from the outcome.
fn ocsf_severity(entry: &pb::AuditEntry) -> (u32, &'static str) {
    match pb::Level::try_from(entry.level).unwrap_or(pb::Level::Unspecified) {
        pb::Level::Debug | pb::Level::Info => (1, "Informational"),
        pb::Level::Warning => (3, "Medium"),
        pb::Level::Error => (4, "High"),
        pb::Level::Critical => (5, "Critical"),
        pb::Level::Unspecified => match pb::Outcome::try_from(entry.outcome) {
            Ok(pb::Outcome::Denied | pb::Outcome::Error) => (3, "Medium"),
            _ => (1, "Informational"),
        },
    }
}

/// An OCSF API Activity event (class 6003, category Application Activity).
pub fn ocsf(entry: &pb::AuditEntry) -> Json {
    let caller = entry.caller.as_ref();
    let (unix, network) = caller_peer(entry);
    let address = network.and_then(|n| n.address.parse::<std::net::SocketAddr>().ok());
    let (activity_id, activity_name) = ocsf_activity(&entry.method);
    let (severity_id, severity) = ocsf_severity(entry);
    let (status_id, status) = match pb::Outcome::try_from(entry.outcome) {
        Ok(pb::Outcome::Success) => (1, "Success"),
        Ok(pb::Outcome::Denied | pb::Outcome::Error) => (2, "Failure"),
        _ => (0, "Unknown"),
    };
    let time = time_ms(entry.time.as_ref().or(entry.received_time.as_ref()));
    object([
        ("class_uid", json!(6003)),
        ("class_name", json!("API Activity")),
        ("category_uid", json!(6)),
        ("category_name", json!("Application Activity")),
        ("activity_id", json!(activity_id)),
        ("activity_name", json!(activity_name)),
        ("type_uid", json!(6003 * 100 + activity_id)),
        ("type_name", json!(format!("API Activity: {activity_name}"))),
        ("time", time),
        ("severity_id", json!(severity_id)),
        ("severity", json!(severity)),
        ("status_id", json!(status_id)),
        ("status", json!(status)),
        ("status_code", json!(status_name(entry.status_code))),
        ("status_detail", json!(entry.status_message)),
        ("message", json!(summary(entry))),
        (
            "metadata",
            object([
                ("version", json!(OCSF_VERSION)),
                (
                    "product",
                    json!({"name": cef::PRODUCT, "vendor_name": cef::VENDOR, "version": cef::VERSION}),
                ),
                ("uid", json!(entry.id)),
                ("correlation_uid", json!(entry.request_id)),
                ("sequence", json!(entry.sequence)),
                ("logged_time", time_ms(entry.received_time.as_ref())),
            ]),
        ),
        (
            "api",
            object([
                ("operation", json!(entry.method)),
                ("service", object([("name", json!(entry.source))])),
                ("request", object([("uid", json!(entry.request_id))])),
                (
                    "response",
                    object([
                        ("code", json!(entry.status_code)),
                        ("message", json!(entry.status_message)),
                    ]),
                ),
            ]),
        ),
        (
            "actor",
            object([
                (
                    "user",
                    object([
                        ("name", json!(caller.map(|c| c.principal.as_str()))),
                        ("uid", unix.map_or(Json::Null, |u| json!(u.uid.to_string()))),
                    ]),
                ),
                (
                    "session",
                    object([("uid", json!(caller.map(|c| c.session_id.as_str())))]),
                ),
                (
                    "process",
                    unix.map_or(Json::Null, |u| {
                        object([
                            ("pid", if u.pid == 0 { Json::Null } else { json!(u.pid) }),
                            ("file", object([("path", json!(u.binary_path))])),
                        ])
                    }),
                ),
            ]),
        ),
        (
            "src_endpoint",
            object([
                (
                    "ip",
                    address.map_or(Json::Null, |a| json!(a.ip().to_string())),
                ),
                ("port", address.map_or(Json::Null, |a| json!(a.port()))),
                ("name", json!(network.map(|n| n.spiffe_id.as_str()))),
                ("uid", json!(network.map(|n| n.address.as_str()))),
            ]),
        ),
        (
            "http_request",
            object([("user_agent", json!(caller.map(|c| c.user_agent.as_str())))]),
        ),
        (
            "resources",
            if entry.resource.is_empty() {
                Json::Null
            } else {
                json!([object([
                    ("name", json!(entry.resource)),
                    ("type", json!(entry.category))
                ])])
            },
        ),
        ("cloud", json!({"provider": "self-hosted"})),
        (
            "unmapped",
            object([
                ("event", json!(entry.event)),
                ("category", json!(entry.category)),
                ("labels", labels(entry)),
                ("details", details(entry)),
                ("entry_hash", hex(&entry.entry_hash)),
                ("chain_hash", hex(&entry.chain_hash)),
            ]),
        ),
    ])
}
