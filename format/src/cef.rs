//! ArcSight Common Event Format (CEF 0):
//! `CEF:0|Vendor|Product|Version|Event Class ID|Name|Severity|key=value key=value ...`.
//!
//! Escaping follows the CEF rules for each part: in the header, `\` and `|` are escaped with a
//! backslash; in extension values, `\`, `=` and line breaks (`\n`, `\r`). Characters that CEF
//! has no escape for (other controls, bidi and invisible characters) are replaced by U+FFFD, so
//! that no entry can forge a field, a header or a line.

use std::fmt::Write as _;

use audit_proto::pb;

use crate::escape::is_unsafe_char;
use crate::field;

/// Device vendor, product and version in the CEF header.
pub const VENDOR: &str = "audit";
/// See [`VENDOR`].
pub const PRODUCT: &str = "audit-server";
/// See [`VENDOR`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `entry` as one CEF line (no line break).
pub fn render(entry: &pb::AuditEntry, out: &mut String) {
    let class_id = non_empty(&entry.event).unwrap_or(&entry.method);
    let name = non_empty(&entry.method).unwrap_or(&entry.event);
    out.push_str("CEF:0|");
    for part in [VENDOR, PRODUCT, VERSION, class_id, name] {
        header(part, out);
        out.push('|');
    }
    let _ = write!(out, "{}|", severity(entry));

    let mut extension = Extension { out, first: true };
    let time = entry.time.as_ref().or(entry.received_time.as_ref());
    if let Some(instant) = time.and_then(field::instant) {
        extension.number("rt", (instant.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    extension.text("externalId", &entry.id);
    extension.number("cn1", entry.sequence as i64);
    extension.text("cn1Label", "sequence");
    extension.labeled("cs1", "requestId", &entry.request_id);
    extension.labeled("cs2", "method", &entry.method);
    extension.labeled("cs3", "resource", &entry.resource);
    extension.labeled(
        "cs4",
        "status",
        field::status_name(entry.status_code).unwrap_or_default(),
    );
    extension.text("sourceServiceName", &entry.source);
    extension.text("act", &entry.event);
    extension.text("cat", &entry.category);
    extension.text(
        "outcome",
        field::outcome_name(entry.outcome).unwrap_or_default(),
    );
    extension.text("msg", &entry.status_message);
    if let Some(caller) = &entry.caller {
        extension.text("suser", &caller.principal);
        extension.text("requestClientApplication", &caller.user_agent);
        match &caller.peer {
            Some(pb::caller::Peer::Network(network)) => {
                match network.address.parse::<std::net::SocketAddr>() {
                    Ok(address) => {
                        extension.text("src", &address.ip().to_string());
                        extension.number("spt", address.port().into());
                    }
                    Err(_) => extension.text("shost", &network.address),
                }
                extension.labeled("cs5", "spiffeId", &network.spiffe_id);
            }
            Some(pb::caller::Peer::Unix(unix)) => {
                extension.number("suid", unix.uid.into());
                if unix.pid != 0 {
                    extension.number("spid", unix.pid.into());
                }
                extension.text("sproc", &unix.binary_path);
            }
            None => {}
        }
    }
    if let Some(ms) = field::latency_ms(entry) {
        extension.number("cn2", ms);
        extension.text("cn2Label", "latencyMs");
    }
    if !entry.labels.is_empty() {
        let labels: serde_json::Map<_, _> = entry
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        extension.labeled(
            "cs6",
            "labels",
            &serde_json::Value::Object(labels).to_string(),
        );
    }
}

/// CEF severity, 0 (lowest) to 10, from the level, else from the outcome.
pub fn severity(entry: &pb::AuditEntry) -> u8 {
    match pb::Level::try_from(entry.level).unwrap_or(pb::Level::Unspecified) {
        pb::Level::Debug => 1,
        pb::Level::Info => 3,
        pb::Level::Warning => 5,
        pb::Level::Error => 7,
        pb::Level::Critical => 10,
        pb::Level::Unspecified => match pb::Outcome::try_from(entry.outcome) {
            Ok(pb::Outcome::Denied) => 5,
            Ok(pb::Outcome::Error) => 7,
            _ => 3,
        },
    }
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn header(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            c if is_unsafe_char(c) => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

/// The extension: `key=value` pairs separated by spaces; empty values are left out.
struct Extension<'a> {
    out: &'a mut String,
    first: bool,
}

impl Extension<'_> {
    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(' ');
        }
        self.first = false;
        self.out.push_str(key);
        self.out.push('=');
    }

    fn number(&mut self, key: &str, value: i64) {
        self.key(key);
        let _ = write!(self.out, "{value}");
    }

    /// A custom string field (`cs1`…) and its `cs1Label`, both left out when `value` is empty.
    fn labeled(&mut self, key: &str, label: &str, value: &str) {
        if !value.is_empty() {
            self.text(key, value);
            self.text(&format!("{key}Label"), label);
        }
    }

    fn text(&mut self, key: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        self.key(key);
        for c in value.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '=' => self.out.push_str("\\="),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                c if is_unsafe_char(c) => self.out.push('\u{fffd}'),
                c => self.out.push(c),
            }
        }
    }
}
