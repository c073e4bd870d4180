//! Entries and checkpoints as RFC 5424 syslog messages:
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [audit@32473 id="…" sequence="42" …] MSG
//! ```
//!
//! - **PRI** is `facility * 8 + severity`. The facility is configured ([`Facility`], default
//!   `authpriv`); the severity follows the entry's level: `DEBUG` → 7 (debug), `INFO` → 6
//!   (informational), `WARNING` → 4 (warning), `ERROR` → 3 (error), `CRITICAL` → 2 (critical),
//!   unset → 5 (notice). Checkpoints are 5 (notice).
//! - **TIMESTAMP** is the entry's time (else its receive time) in UTC with microseconds, the most
//!   RFC 5424 allows; `-` when it has none a 4-digit year can hold.
//! - **HOSTNAME**, **APP-NAME** and **PROCID** are configured; **MSGID** is the entry's event
//!   (`CHECKPOINT` for checkpoints). Header fields keep printable ASCII only (every other byte
//!   becomes `_`), are cut to RFC 5424's lengths (255, 48, 128, 32), and are `-` when empty.
//! - **Structured data** is one element, `[audit@ENTERPRISE …]` (ENTERPRISE defaults to the
//!   placeholder 32473, the number RFC 5612 reserves for documentation), with one parameter per
//!   field the entry sets, named as templates name them ([`crate::field`]: `caller.principal`,
//!   `recorder.unix.uid`, …), `labels` and `details` as JSON objects. A parameter's value is the
//!   field as [`crate::escape::escape`] writes it (controls as `\n`, `\x1b`, …, backslashes
//!   doubled), then with `"`, `\` and `]` escaped by a backslash as RFC 5424 asks: a receiver
//!   that undoes RFC 5424's escaping holds the value as `escape` writes it. Checkpoints carry
//!   `[checkpoint@ENTERPRISE index="…" size="…" note="…"]`, the note's line breaks as `\n`.
//! - **MSG** is the entry in a configurable [`Format`] (default [`DEFAULT_MSG`]), with any
//!   unsafe character still in it escaped; it starts with a UTF-8 byte order mark when it is
//!   not pure ASCII, as RFC 5424 asks of UTF-8 text.
//!
//! No part of a message holds a raw line break or control character, so no entry can forge a
//! field, a structured-data element or another message.
//!
//! **Truncation.** A message longer than [`SyslogOptions::max_bytes`] is never split: MSG is cut
//! (at a character boundary) and the parameter `truncated="N"` (N the size in bytes of the
//! whole message before cutting) is added to the structured data. If the header and the full
//! structured data alone are too long, the element keeps only `id`, `sequence` and `truncated`
//! (then only `sequence` and `truncated`) and MSG is left out entirely.

use std::fmt::Write as _;

use audit_proto::pb;
use time::OffsetDateTime;

use crate::Format;
use crate::escape::{escape, is_unsafe_char};
use crate::field::{Value, Variable, instant, level_name};
use crate::template::{Template, TemplateOptions};

/// The MSG of an entry when no format is configured: a readable summary (sequence, outcome,
/// status, caller, method, resource).
pub const DEFAULT_MSG: &str =
    "#%{sequence} %{outcome} %{status_name} %{caller.principal} %{method} %{resource}";

/// The enterprise number of the structured-data IDs when none is configured (RFC 5612's number
/// for documentation, to be replaced by the operator's own).
pub const DEFAULT_ENTERPRISE: u32 = 32473;

/// Smallest accepted [`SyslogOptions::max_bytes`]: large enough for any header and the minimal
/// structured data, so that every entry fits in some form.
pub const MIN_MAX_BYTES: usize = 1024;

/// The UTF-8 byte order mark that starts a non-ASCII MSG.
const BOM: &str = "\u{feff}";

/// A syslog facility, 0 to 23.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facility(u8);

/// Facility names, by number.
const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

impl Facility {
    /// `authpriv` (10): security and authorization messages, private.
    pub const AUTHPRIV: Facility = Facility(10);

    /// The facility called `name` (`kern`, `user`, …, `authpriv`, `audit`, `local0`–`local7`) or
    /// numbered `name` (0–23).
    pub fn parse(name: &str) -> Result<Facility, String> {
        if let Some(number) = FACILITIES.iter().position(|n| *n == name) {
            return Ok(Facility(number as u8));
        }
        match name.parse::<u8>() {
            Ok(number) if number <= 23 => Ok(Facility(number)),
            _ => Err(format!(
                "unknown facility `{name}` (one of {}, or 0-23)",
                FACILITIES.join(", ")
            )),
        }
    }

    /// The facility's number.
    pub fn number(self) -> u8 {
        self.0
    }
}

/// The syslog severity of an entry's level (see the module documentation).
pub fn severity(level: i32) -> u8 {
    match level_name(level) {
        Some("DEBUG") => 7,
        Some("INFO") => 6,
        Some("WARNING") => 4,
        Some("ERROR") => 3,
        Some("CRITICAL") => 2,
        _ => 5,
    }
}

/// How messages are written.
#[derive(Debug, Clone)]
pub struct SyslogOptions {
    /// The facility of every message.
    pub facility: Facility,
    /// HOSTNAME.
    pub hostname: String,
    /// APP-NAME.
    pub app_name: String,
    /// PROCID.
    pub procid: String,
    /// The enterprise number in the structured-data IDs.
    pub enterprise: u32,
    /// The format of MSG.
    pub msg: Format,
    /// Longest message, in bytes (at least [`MIN_MAX_BYTES`]).
    pub max_bytes: usize,
}

impl Default for SyslogOptions {
    fn default() -> Self {
        Self {
            facility: Facility::AUTHPRIV,
            hostname: String::new(),
            app_name: "audit-server".into(),
            procid: String::new(),
            enterprise: DEFAULT_ENTERPRISE,
            msg: default_msg(),
            max_bytes: 2048,
        }
    }
}

/// [`DEFAULT_MSG`], compiled.
pub fn default_msg() -> Format {
    Format::Template(Template::parse(DEFAULT_MSG, TemplateOptions::default()).expect("valid"))
}

/// The structured-data parameters of an entry: every fixed field it sets, then `labels` and
/// `details` as JSON.
fn entry_params(entry: &pb::AuditEntry) -> Vec<(String, String)> {
    let mut params = Vec::new();
    for name in Variable::names() {
        let Some(variable) = Variable::parse(&name) else {
            // `labels.KEY`, `details.PATH`: placeholders, not fields.
            continue;
        };
        if matches!(
            variable,
            Variable::Prefix | Variable::Label(_) | Variable::Detail(_)
        ) {
            continue;
        }
        let text = match variable.value(entry, "") {
            Value::Missing => continue,
            Value::Text(text) => text.into_owned(),
            Value::Int(n) => n.to_string(),
            Value::Float(n) => n.to_string(),
            Value::Time(time) => rfc3339_micros(time).unwrap_or_default(),
        };
        params.push((name, text));
    }
    if !entry.labels.is_empty() {
        let labels: serde_json::Map<_, _> = entry
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        params.push((
            "labels".into(),
            serde_json::Value::Object(labels).to_string(),
        ));
    }
    if let Some(details) = &entry.details {
        params.push((
            "details".into(),
            crate::json::struct_to_json(details).to_string(),
        ));
    }
    params
}

/// Writes `entry` as one RFC 5424 message (no trailing line break).
pub fn entry_message(entry: &pb::AuditEntry, options: &SyslogOptions) -> String {
    let time = entry
        .time
        .as_ref()
        .or(entry.received_time.as_ref())
        .and_then(instant);
    let header = Header {
        severity: severity(entry.level),
        time,
        msgid: &entry.event,
    };
    let msg = safe_msg(&options.msg.render_to_string(entry));
    let params = entry_params(entry);
    let minimal = |with_id: bool| {
        let mut kept = Vec::new();
        if with_id && !entry.id.is_empty() {
            kept.push(("id".to_string(), entry.id.clone()));
        }
        kept.push(("sequence".to_string(), entry.sequence.to_string()));
        kept
    };
    assemble(options, &header, "audit", &params, &msg, &minimal)
}

/// Writes a signed checkpoint as one RFC 5424 message: MSGID `CHECKPOINT`, the note in
/// `[checkpoint@ENTERPRISE index="…" size="…" note="…"]`, MSG `checkpoint ORIGIN SIZE`.
pub fn checkpoint_message(
    index: u64,
    note: &str,
    time: Option<OffsetDateTime>,
    options: &SyslogOptions,
) -> String {
    let mut lines = note.lines();
    let origin = lines.next().unwrap_or_default();
    let size = lines.next().unwrap_or_default();
    let header = Header {
        severity: 5,
        time,
        msgid: "CHECKPOINT",
    };
    let params = vec![
        ("index".to_string(), index.to_string()),
        ("size".to_string(), size.to_string()),
        ("note".to_string(), note.to_string()),
    ];
    let msg = safe_msg(&format!("checkpoint {origin} {size}"));
    let minimal = |_: bool| vec![("index".to_string(), index.to_string())];
    assemble(options, &header, "checkpoint", &params, &msg, &minimal)
}

struct Header<'a> {
    severity: u8,
    time: Option<OffsetDateTime>,
    msgid: &'a str,
}

/// Puts a message together, truncating it as the module documentation says.
fn assemble(
    options: &SyslogOptions,
    header: &Header<'_>,
    sd_name: &str,
    params: &[(String, String)],
    msg: &str,
    minimal: &dyn Fn(bool) -> Vec<(String, String)>,
) -> String {
    let max = options.max_bytes.max(MIN_MAX_BYTES);
    let mut head = String::with_capacity(256);
    let pri = u32::from(options.facility.0) * 8 + u32::from(header.severity);
    let _ = write!(head, "<{pri}>1 ");
    match header.time.and_then(rfc3339_micros) {
        Some(time) => head.push_str(&time),
        None => head.push('-'),
    }
    for (value, limit) in [
        (options.hostname.as_str(), 255),
        (options.app_name.as_str(), 48),
        (options.procid.as_str(), 128),
        (header.msgid, 32),
    ] {
        head.push(' ');
        push_header_field(value, limit, &mut head);
    }
    head.push(' ');
    let sd_id = format!("{sd_name}@{}", options.enterprise);
    let full = join(&head, &element(&sd_id, params, None), msg);
    if full.len() <= max {
        return full;
    }
    let original = full.len();
    let attempts = [params.to_vec(), minimal(true), minimal(false)];
    for (i, kept) in attempts.iter().enumerate() {
        let sd = element(&sd_id, kept, Some(original));
        let room = max.saturating_sub(head.len() + sd.len());
        if i == 0 {
            // The full structured data fits only with room to spare for some of MSG.
            if room > BOM.len() + 1 {
                return join(&head, &sd, &cut(msg, room - 1));
            }
        } else if head.len() + sd.len() <= max {
            return format!("{head}{sd}");
        }
    }
    // Unreachable with max >= MIN_MAX_BYTES: the header and the last element fit in it.
    let sd = element(&sd_id, &minimal(false), Some(original));
    format!("{head}{sd}")
}

fn join(head: &str, sd: &str, msg: &str) -> String {
    if msg.is_empty() {
        format!("{head}{sd}")
    } else {
        format!("{head}{sd} {msg}")
    }
}

/// MSG cut to at most `room` bytes at a character boundary, its byte order mark kept.
fn cut(msg: &str, room: usize) -> String {
    if msg.len() <= room {
        return msg.to_string();
    }
    let mut end = room;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    let cut = &msg[..end];
    if cut == BOM {
        String::new()
    } else {
        cut.to_string()
    }
}

/// MSG with every unsafe character escaped (a template's own text may hold one), and a byte
/// order mark before text that is not ASCII.
fn safe_msg(rendered: &str) -> String {
    let mut out = String::with_capacity(rendered.len() + 3);
    if !rendered.is_ascii() {
        out.push_str(BOM);
    }
    for c in rendered.chars() {
        if is_unsafe_char(c) {
            out.push_str(&escape(c.encode_utf8(&mut [0; 4])));
        } else {
            out.push(c);
        }
    }
    out
}

/// One structured-data element.
fn element(id: &str, params: &[(String, String)], truncated: Option<usize>) -> String {
    let mut out = String::with_capacity(64 + params.len() * 32);
    out.push('[');
    out.push_str(id);
    for (name, value) in params {
        push_param(name, value, &mut out);
    }
    if let Some(bytes) = truncated {
        push_param("truncated", &bytes.to_string(), &mut out);
    }
    out.push(']');
    out
}

fn push_param(name: &str, value: &str, out: &mut String) {
    debug_assert!(is_sd_name(name), "invalid SD-NAME {name}");
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    for c in escape(value).chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Whether `name` is a valid RFC 5424 SD-NAME: 1 to 32 printable ASCII characters other than
/// `=`, space, `]` and `"`.
pub fn is_sd_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| (33..=126).contains(&b) && !matches!(b, b'=' | b']' | b'"'))
}

fn push_header_field(value: &str, limit: usize, out: &mut String) {
    if value.is_empty() {
        out.push('-');
        return;
    }
    for c in value.chars().take(limit) {
        out.push(if (33..=126).contains(&u32::from(c)) {
            c
        } else {
            '_'
        });
    }
}

/// `time` in UTC as RFC 3339 with microseconds, or `None` outside years 0–9999.
fn rfc3339_micros(time: OffsetDateTime) -> Option<String> {
    let utc = time.to_offset(time::UtcOffset::UTC);
    if !(0..=9999).contains(&utc.year()) {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.microsecond()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_name_is_a_valid_sd_name() {
        for name in Variable::names() {
            if !name.contains("KEY") && !name.contains("PATH") {
                assert!(is_sd_name(&name), "{name}");
            }
        }
        assert!(!is_sd_name("a b") && !is_sd_name("a=b") && !is_sd_name(""));
    }

    #[test]
    fn facilities_parse_by_name_and_number() {
        assert_eq!(Facility::parse("local7").unwrap().number(), 23);
        assert_eq!(Facility::parse("authpriv").unwrap().number(), 10);
        assert_eq!(Facility::parse("4").unwrap().number(), 4);
        let error = Facility::parse("24").unwrap_err();
        assert!(error.contains("unknown facility `24`"), "{error}");
    }

    #[test]
    fn header_fields_keep_printable_ascii_within_their_length() {
        let mut out = String::new();
        push_header_field("a b\nc\u{e9}", 255, &mut out);
        assert_eq!(out, "a_b_c_");
        out.clear();
        push_header_field(&"x".repeat(40), 32, &mut out);
        assert_eq!(out.len(), 32);
    }
}
