//! Validation of requests against the contract and the configured limits, and normalisation of
//! entries (the fields the server fills in).

use audit_proto::pb::{self, AuditEntry, Filter, Level, Outcome};
use prost::Message;
use prost_types::Timestamp;
use uuid::Uuid;

use crate::config::Limits;
use crate::error::Violation;

/// Highest gRPC status code (`UNAUTHENTICATED`).
const MAX_STATUS_CODE: i32 = 16;

/// An entry that passed validation, normalised and ready to append.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// The entry as it will be stored (sequence still 0).
    pub entry: AuditEntry,
    /// Digest of the entry as the client sent it (server-filled fields excluded): a retry with the
    /// same id must carry the same content.
    pub digest: [u8; 32],
    /// Path of the entry in the request (`entry`, `entries[3]`), for error messages.
    pub path: String,
    /// Whether the client chose the id (and so may be retrying); server ids are fresh UUIDv7s.
    pub client_id: bool,
}

/// What the server knows about a request, applied to each of its entries.
#[derive(Debug, Clone)]
pub struct Context {
    /// When the server received the request.
    pub received_time: Timestamp,
    /// Who submitted the request, from the connection.
    pub recorder: Option<pb::Recorder>,
}

/// Validates one entry at `path` (e.g. `entry`, `entries[2]`) and fills the server's fields,
/// except `request_id` when neither the entry nor `shared_request_id` (the client's id for the
/// whole batch) gives one: the caller generates it.
pub fn entry(
    mut entry: AuditEntry,
    path: &str,
    shared_request_id: Option<&str>,
    context: &Context,
    limits: &Limits,
) -> Result<NewEntry, Vec<Violation>> {
    let mut v = Checker {
        path,
        violations: Vec::new(),
        limits,
    };

    let size = entry.encoded_len();
    if size > limits.max_entry_bytes {
        v.fail(
            "",
            format!(
                "entry is {size} bytes, more than the limit of {} bytes",
                limits.max_entry_bytes
            ),
        );
        return Err(v.violations);
    }

    let id = if entry.id.is_empty() {
        None
    } else {
        match Uuid::parse_str(&entry.id) {
            Ok(id) if !id.is_nil() => Some(id),
            _ => {
                v.fail("id", "must be a UUID (or empty for a server-generated one)");
                None
            }
        }
    };
    v.text("request_id", &entry.request_id, false);
    if let Some(shared) = shared_request_id {
        if entry.request_id.is_empty() {
            entry.request_id = shared.to_string();
        } else if entry.request_id != shared {
            v.fail(
                "request_id",
                format!("must be empty or equal to the batch's request_id `{shared}`"),
            );
        }
    }
    v.text("source", &entry.source, true);
    if v.text("method", &entry.method, true) && !is_full_method(&entry.method) {
        v.fail(
            "method",
            "must be a full gRPC method, `/package.Service/Method`",
        );
    }
    v.text("event", &entry.event, false);
    v.text("category", &entry.category, false);
    v.text("resource", &entry.resource, false);
    if entry.status_message.len() > limits.max_status_message_bytes {
        v.fail(
            "status_message",
            format!(
                "is {} bytes, more than the limit of {}",
                entry.status_message.len(),
                limits.max_status_message_bytes
            ),
        );
    }
    match Level::try_from(entry.level) {
        Ok(_) => {}
        Err(_) => v.fail("level", format!("unknown level {}", entry.level)),
    }
    match Outcome::try_from(entry.outcome) {
        Ok(Outcome::Unspecified) => v.fail(
            "outcome",
            "required: OUTCOME_SUCCESS, OUTCOME_DENIED or OUTCOME_ERROR",
        ),
        Ok(_) => {}
        Err(_) => v.fail("outcome", format!("unknown outcome {}", entry.outcome)),
    }
    if !(0..=MAX_STATUS_CODE).contains(&entry.status_code) {
        v.fail(
            "status_code",
            format!(
                "{} is not a gRPC status code (0 to {MAX_STATUS_CODE})",
                entry.status_code
            ),
        );
    }
    if let Some(time) = &entry.time
        && timestamp_nanos(time).is_none()
    {
        v.fail("time", "not a valid timestamp between 1678 and 2261");
    }
    if let Some(latency) = &entry.latency {
        let valid = latency.seconds >= 0
            && (0..1_000_000_000).contains(&latency.nanos)
            && latency.seconds <= 315_576_000_000;
        if !valid {
            v.fail("latency", "must be a valid non-negative duration");
        }
    }
    if let Some(caller) = &entry.caller {
        v.text("caller.principal", &caller.principal, false);
        v.text("caller.role", &caller.role, false);
        v.text("caller.session_id", &caller.session_id, false);
        v.text("caller.user_agent", &caller.user_agent, false);
        match &caller.peer {
            Some(pb::caller::Peer::Unix(unix)) => {
                v.text("caller.unix.binary_path", &unix.binary_path, false);
            }
            Some(pb::caller::Peer::Network(network)) => {
                v.text("caller.network.address", &network.address, false);
                v.text("caller.network.spiffe_id", &network.spiffe_id, false);
                v.text(
                    "caller.network.certificate_subject",
                    &network.certificate_subject,
                    false,
                );
            }
            None => {}
        }
    }
    v.labels("labels", &entry.labels);
    if let Some(details) = &entry.details {
        v.details("details", details, 1);
    }

    if !v.violations.is_empty() {
        return Err(v.violations);
    }
    // Before the retry digest and the entry hash: neither may ever see a secret.
    limits.redaction.redact(&mut entry);
    Ok(finish(entry, id, path, context))
}

/// Normalises an entry the server writes itself (a refused call): never refused by the limits
/// on what clients send. Text longer than the limits (a caller's 2 KiB SPIFFE ID, a long
/// executable path) is cut to fit them and ends with a [marker](TRUNCATED_MARKER), so the entry
/// is recorded and says that it was shortened.
pub fn own_entry(mut entry: AuditEntry, context: &Context, limits: &Limits) -> NewEntry {
    let field = limits.max_field_bytes;
    for text in [
        &mut entry.request_id,
        &mut entry.source,
        &mut entry.method,
        &mut entry.event,
        &mut entry.category,
        &mut entry.resource,
    ] {
        fit(text, field);
    }
    fit(&mut entry.status_message, limits.max_status_message_bytes);
    if let Some(caller) = &mut entry.caller {
        for text in [
            &mut caller.principal,
            &mut caller.role,
            &mut caller.session_id,
            &mut caller.user_agent,
        ] {
            fit(text, field);
        }
        match &mut caller.peer {
            Some(pb::caller::Peer::Unix(unix)) => fit(&mut unix.binary_path, field),
            Some(pb::caller::Peer::Network(network)) => {
                fit(&mut network.address, field);
                fit(&mut network.spiffe_id, field);
                fit(&mut network.certificate_subject, field);
            }
            None => {}
        }
    }
    entry.labels = std::mem::take(&mut entry.labels)
        .into_iter()
        .take(limits.max_labels)
        .map(|(mut key, mut value)| {
            fit(&mut key, field);
            fit(&mut value, field);
            (key, value)
        })
        .collect();
    limits.redaction.redact(&mut entry);
    finish(entry, None, "entry", context)
}

/// How text cut to fit a limit ends: `...[cut N bytes]`.
pub const TRUNCATED_MARKER: &str = "...[cut ";

/// Cuts `text` to at most `max` bytes, ending with `...[cut N bytes]` when there is room for it.
fn fit(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    // The marker's length depends on the number it carries; the largest possible number (all
    // of `text`) makes room for any smaller one.
    let marker = format!("{TRUNCATED_MARKER}{} bytes]", text.len()).len();
    if max <= marker {
        let end = truncate(text, max).len();
        text.truncate(end);
        return;
    }
    let keep = truncate(text, max - marker).len();
    let cut = text.len() - keep;
    text.truncate(keep);
    text.push_str(&format!("{TRUNCATED_MARKER}{cut} bytes]"));
}

/// Fills the server's fields of a valid entry: the id (`id`, else a fresh UUIDv7), receive time,
/// time and level defaults, and the recorder.
fn finish(mut entry: AuditEntry, id: Option<Uuid>, path: &str, context: &Context) -> NewEntry {
    // What the client sent, minus what the server owns, decides whether a retry is the same entry.
    let client_id = id.is_some();
    let id = id.unwrap_or_else(Uuid::now_v7);
    entry.id = id.hyphenated().to_string();
    entry.sequence = 0;
    entry.received_time = None;
    entry.recorder = None;
    entry.entry_hash.clear();
    entry.chain_hash.clear();
    let digest = audit_ledger::retry_digest(&entry);

    entry.received_time = Some(context.received_time);
    if entry.time.is_none() {
        entry.time = Some(context.received_time);
    }
    if entry.level == Level::Unspecified as i32 {
        entry.level = Level::Info as i32;
    }
    entry.recorder = context.recorder.clone();

    NewEntry {
        entry,
        digest,
        path: path.to_string(),
        client_id,
    }
}

/// Validates a filter of a Query or Subscribe request; `path` is `filter`.
pub fn filter(filter: &Filter, path: &str, limits: &Limits) -> Result<(), Vec<Violation>> {
    let mut v = Checker {
        path,
        violations: Vec::new(),
        limits,
    };
    v.text("request_id", &filter.request_id, false);
    v.text("source", &filter.source, false);
    v.text("method", &filter.method, false);
    v.text("principal", &filter.principal, false);
    v.text("spiffe_id", &filter.spiffe_id, false);
    v.text("event", &filter.event, false);
    v.text("category", &filter.category, false);
    v.text("resource", &filter.resource, false);
    // The fields matched by pattern: a `*` before the end is a mistake, not a match for nothing.
    for (field, value) in [
        ("method", &filter.method),
        ("spiffe_id", &filter.spiffe_id),
        ("resource", &filter.resource),
    ] {
        if !value.is_empty()
            && let Err(error) = audit_format::Pattern::parse(value)
        {
            v.fail(field, error.to_string());
        }
    }
    for (i, outcome) in filter.outcomes.iter().enumerate() {
        if !matches!(
            Outcome::try_from(*outcome),
            Ok(Outcome::Success | Outcome::Denied | Outcome::Error)
        ) {
            v.fail(
                &format!("outcomes[{i}]"),
                format!("unknown outcome {outcome}"),
            );
        }
    }
    for (i, code) in filter.status_codes.iter().enumerate() {
        if !(0..=MAX_STATUS_CODE).contains(code) {
            v.fail(
                &format!("status_codes[{i}]"),
                format!("{code} is not a gRPC status code (0 to {MAX_STATUS_CODE})"),
            );
        }
    }
    if Level::try_from(filter.min_level).is_err() {
        v.fail("min_level", format!("unknown level {}", filter.min_level));
    }
    let start = filter.start_time.as_ref().map(timestamp_nanos);
    let end = filter.end_time.as_ref().map(timestamp_nanos);
    if let Some(None) = start {
        v.fail("start_time", "not a valid timestamp between 1678 and 2261");
    }
    if let Some(None) = end {
        v.fail("end_time", "not a valid timestamp between 1678 and 2261");
    }
    if let (Some(Some(start)), Some(Some(end))) = (start, end)
        && start >= end
    {
        v.fail("end_time", "must be after start_time");
    }
    v.labels("labels", &filter.labels);
    if v.violations.is_empty() {
        Ok(())
    } else {
        Err(v.violations)
    }
}

/// Nanoseconds since the Unix epoch, if the timestamp is valid and fits in an `i64`.
pub fn timestamp_nanos(time: &Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&time.nanos) {
        return None;
    }
    time.seconds
        .checked_mul(1_000_000_000)?
        .checked_add(i64::from(time.nanos))
}

/// The timestamp of `nanos` since the Unix epoch.
pub fn nanos_timestamp(nanos: i64) -> Timestamp {
    Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    }
}

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    nanos_timestamp(nanos)
}

/// `/package.Service/Method`: a leading slash and two non-empty parts without further slashes.
fn is_full_method(method: &str) -> bool {
    let Some(rest) = method.strip_prefix('/') else {
        return false;
    };
    let mut parts = rest.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(service), Some(name), None) if !service.is_empty() && !name.is_empty()
    )
}

/// Collects violations under one path.
struct Checker<'a> {
    path: &'a str,
    violations: Vec<Violation>,
    limits: &'a Limits,
}

impl Checker<'_> {
    fn fail(&mut self, field: &str, description: impl Into<String>) {
        let field = match (self.path, field) {
            (path, "") => path.to_string(),
            ("", field) => field.to_string(),
            (path, field) => format!("{path}.{field}"),
        };
        self.violations.push(Violation::new(field, description));
    }

    /// Checks a string's presence and length; returns whether it is present and within limits.
    fn text(&mut self, field: &str, value: &str, required: bool) -> bool {
        if value.is_empty() {
            if required {
                self.fail(field, "required");
            }
            return false;
        }
        if value.len() > self.limits.max_field_bytes {
            self.fail(
                field,
                format!(
                    "is {} bytes, more than the limit of {}",
                    value.len(),
                    self.limits.max_field_bytes
                ),
            );
            return false;
        }
        true
    }

    fn labels(&mut self, field: &str, labels: &std::collections::BTreeMap<String, String>) {
        if labels.len() > self.limits.max_labels {
            self.fail(
                field,
                format!(
                    "{} labels, more than the limit of {}",
                    labels.len(),
                    self.limits.max_labels
                ),
            );
            return;
        }
        for (key, value) in labels {
            if key.is_empty() {
                self.fail(field, "label keys must not be empty");
            } else if key.len() > self.limits.max_field_bytes
                || value.len() > self.limits.max_field_bytes
            {
                self.fail(
                    &format!("{field}[{}]", truncate(key, 64)),
                    format!(
                        "label key or value longer than the limit of {} bytes",
                        self.limits.max_field_bytes
                    ),
                );
            }
        }
    }
}

/// Deepest nesting of `details` (a `Struct` in a `Struct` is two levels). The protobuf decoder
/// refuses a request a few levels deeper; this names the field before JSON encoders choke.
pub const MAX_DETAILS_DEPTH: usize = 32;

impl Checker<'_> {
    /// Checks a `details` struct at nesting `depth`: only finite numbers (JSON, and so every
    /// proto3 JSON reader, has no NaN or Infinity), at most [`MAX_DETAILS_DEPTH`] levels.
    fn details(&mut self, field: &str, details: &prost_types::Struct, depth: usize) {
        if depth > MAX_DETAILS_DEPTH {
            self.fail(
                field,
                format!("nested more than {MAX_DETAILS_DEPTH} levels deep"),
            );
            return;
        }
        for (key, value) in &details.fields {
            self.value(&format!("{field}.{}", truncate(key, 64)), value, depth);
        }
    }

    fn value(&mut self, field: &str, value: &prost_types::Value, depth: usize) {
        use prost_types::value::Kind;
        match &value.kind {
            Some(Kind::NumberValue(number)) if !number.is_finite() => self.fail(
                field,
                format!("{number} is not a finite number (JSON has no NaN or Infinity)"),
            ),
            Some(Kind::StructValue(inner)) => self.details(field, inner, depth + 1),
            Some(Kind::ListValue(list)) => {
                if depth + 1 > MAX_DETAILS_DEPTH {
                    self.fail(
                        field,
                        format!("nested more than {MAX_DETAILS_DEPTH} levels deep"),
                    );
                    return;
                }
                for (i, item) in list.values.iter().enumerate() {
                    self.value(&format!("{field}[{i}]"), item, depth + 1);
                }
            }
            _ => {}
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Context {
        Context {
            received_time: Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            },
            recorder: None,
        }
    }

    fn valid() -> AuditEntry {
        AuditEntry {
            source: "billing-api".into(),
            method: "/billing.v1.Billing/Charge".into(),
            outcome: Outcome::Success as i32,
            ..Default::default()
        }
    }

    fn fields(result: Result<NewEntry, Vec<Violation>>) -> Vec<String> {
        result.unwrap_err().into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn fills_server_fields() {
        let new = entry(valid(), "entry", None, &context(), &Limits::default()).unwrap();
        assert_eq!(Uuid::parse_str(&new.entry.id).unwrap().get_version_num(), 7);
        assert_eq!(new.entry.time, Some(context().received_time));
        assert_eq!(new.entry.level, Level::Info as i32);
    }

    #[test]
    fn digest_ignores_server_filled_fields() {
        let mut sent = valid();
        sent.id = "0190b5a8-0000-7000-8000-000000000001".into();
        let first = entry(sent.clone(), "entry", None, &context(), &Limits::default()).unwrap();
        let mut later = context();
        later.received_time.seconds += 10;
        let retry = entry(sent.clone(), "entry", None, &later, &Limits::default()).unwrap();
        assert_eq!(first.digest, retry.digest);
        sent.resource = "other".into();
        let changed = entry(sent, "entry", None, &later, &Limits::default()).unwrap();
        assert_ne!(first.digest, changed.digest);
    }

    #[test]
    fn names_each_bad_field() {
        let bad = AuditEntry {
            id: "not-a-uuid".into(),
            method: "NoSlash".into(),
            status_code: 17,
            level: 42,
            ..Default::default()
        };
        assert_eq!(
            fields(entry(
                bad,
                "entries[3]",
                None,
                &context(),
                &Limits::default()
            )),
            [
                "entries[3].id",
                "entries[3].source",
                "entries[3].method",
                "entries[3].level",
                "entries[3].outcome",
                "entries[3].status_code"
            ]
        );
    }

    #[test]
    fn enforces_limits() {
        let limits = Limits {
            max_field_bytes: 8,
            max_labels: 1,
            ..Limits::default()
        };
        let mut long = valid();
        long.source = "123456789".into();
        long.labels.insert("a".into(), "1".into());
        long.labels.insert("b".into(), "2".into());
        long.method = "/a/b".into();
        assert_eq!(
            fields(entry(long, "entry", None, &context(), &limits)),
            ["entry.source", "entry.labels"]
        );
        let big = AuditEntry {
            resource: "x".repeat(100),
            ..valid()
        };
        let limits = Limits {
            max_entry_bytes: 64,
            ..Limits::default()
        };
        assert_eq!(
            fields(entry(big, "entry", None, &context(), &limits)),
            ["entry"]
        );
    }

    #[test]
    fn batch_entries_share_the_request_id() {
        let mut other = valid();
        other.request_id = "other".into();
        assert_eq!(
            fields(entry(
                other,
                "entries[0]",
                Some("r1"),
                &context(),
                &Limits::default()
            )),
            ["entries[0].request_id"]
        );
        let new = entry(
            valid(),
            "entries[1]",
            Some("r1"),
            &context(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(new.entry.request_id, "r1");
    }

    #[test]
    fn details_must_hold_finite_numbers() {
        use prost_types::{ListValue, Struct, Value, value::Kind};
        let number = |n: f64| Value {
            kind: Some(Kind::NumberValue(n)),
        };
        let mut bad = valid();
        bad.details = Some(Struct {
            fields: [
                ("amount".to_string(), number(12.5)),
                ("nan".to_string(), number(f64::NAN)),
                (
                    "list".to_string(),
                    Value {
                        kind: Some(Kind::ListValue(ListValue {
                            values: vec![number(1.0), number(f64::NEG_INFINITY)],
                        })),
                    },
                ),
            ]
            .into_iter()
            .collect(),
        });
        let violations = entry(bad, "entry", None, &context(), &Limits::default()).unwrap_err();
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["entry.details.list[1]", "entry.details.nan"]);
        assert!(
            violations[1].description.contains("finite"),
            "{violations:?}"
        );
    }

    #[test]
    fn details_nest_at_most_32_levels() {
        use prost_types::{Struct, Value, value::Kind};
        let nested = |depth: usize| {
            let mut details = Struct::default();
            for _ in 1..depth {
                details = Struct {
                    fields: [(
                        "k".to_string(),
                        Value {
                            kind: Some(Kind::StructValue(details)),
                        },
                    )]
                    .into_iter()
                    .collect(),
                };
            }
            AuditEntry {
                details: Some(details),
                ..valid()
            }
        };
        assert!(entry(nested(32), "entry", None, &context(), &Limits::default()).is_ok());
        let violations =
            entry(nested(33), "entry", None, &context(), &Limits::default()).unwrap_err();
        assert_eq!(violations.len(), 1);
        assert!(violations[0].field.starts_with("entry.details.k.k"));
        assert_eq!(violations[0].description, "nested more than 32 levels deep");
    }

    #[test]
    fn own_entries_are_cut_to_the_limits_not_refused() {
        let limits = Limits::default();
        let long = format!("spiffe://example.org/{}", "a".repeat(2000));
        let mut own = valid();
        own.status_message = "x".repeat(5000);
        own.caller = Some(pb::Caller {
            peer: Some(pb::caller::Peer::Network(pb::NetworkPeer {
                address: "127.0.0.1:1".into(),
                spiffe_id: long.clone(),
                certificate_subject: "CN=é".repeat(400),
            })),
            ..Default::default()
        });
        assert!(entry(own.clone(), "entry", None, &context(), &limits).is_err());
        let new = own_entry(own, &context(), &limits);
        let Some(pb::caller::Peer::Network(network)) = new.entry.caller.unwrap().peer else {
            panic!("network peer kept");
        };
        assert!(
            (limits.max_field_bytes - 4..=limits.max_field_bytes)
                .contains(&network.spiffe_id.len())
        );
        assert!(long.starts_with(network.spiffe_id.split(TRUNCATED_MARKER).next().unwrap()));
        assert!(
            network.spiffe_id.ends_with(" bytes]"),
            "{}",
            network.spiffe_id
        );
        assert!(network.certificate_subject.len() <= limits.max_field_bytes);
        assert!(network.certificate_subject.contains(TRUNCATED_MARKER));
        assert_eq!(network.address, "127.0.0.1:1");
        assert!(new.entry.status_message.len() <= limits.max_status_message_bytes);
        assert!(new.entry.status_message.ends_with("...[cut 923 bytes]"));
        // Whatever the limits, the server's entry is kept.
        let tiny = Limits {
            max_field_bytes: 3,
            ..Limits::default()
        };
        assert_eq!(own_entry(valid(), &context(), &tiny).entry.source, "bil");
    }

    #[test]
    fn full_methods() {
        assert!(is_full_method("/a.B/C"));
        assert!(!is_full_method("a.B/C"));
        assert!(!is_full_method("/a.B/"));
        assert!(!is_full_method("//C"));
        assert!(!is_full_method("/a/b/c"));
    }

    #[test]
    fn filter_checks_ranges() {
        let bad = Filter {
            outcomes: vec![0],
            status_codes: vec![-1],
            start_time: Some(Timestamp {
                seconds: 10,
                nanos: 0,
            }),
            end_time: Some(Timestamp {
                seconds: 5,
                nanos: 0,
            }),
            ..Default::default()
        };
        let fields: Vec<_> = filter(&bad, "filter", &Limits::default())
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            [
                "filter.outcomes[0]",
                "filter.status_codes[0]",
                "filter.end_time"
            ]
        );
    }

    #[test]
    fn filter_patterns_are_checked() {
        let bad = Filter {
            method: "/pkg.*/Get".into(),
            spiffe_id: "spiffe://prod/*".into(),
            resource: "keys/*/x".into(),
            ..Default::default()
        };
        let violations = filter(&bad, "filter", &Limits::default()).unwrap_err();
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["filter.method", "filter.resource"]);
        assert!(
            violations[0]
                .description
                .contains("only allowed as the last character")
        );
    }

    /// Properties of the validator over arbitrary entries: it never panics, every violation is
    /// under the entry's path with a reason, what it accepts is within the limits, and the
    /// server's own entries always fit.
    mod props {
        use super::*;
        use proptest::prelude::*;
        use prost_types::{ListValue, Struct, Value, value::Kind};

        /// Short text of any characters, or text around the 1024-byte field limit.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => "\\PC{0,12}",
                1 => "[a-z/.]{1000,1100}",
                1 => "\\PC{300,400}",
            ]
        }

        fn method() -> impl Strategy<Value = String> {
            prop_oneof!["/[a-z.]{1,8}/[A-Z][a-z]{0,8}", text()]
        }

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                any::<f64>().prop_map(Kind::NumberValue),
                prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)]
                    .prop_map(Kind::NumberValue),
                "\\PC{0,8}".prop_map(Kind::StringValue),
                any::<bool>().prop_map(Kind::BoolValue),
                Just(Kind::NullValue(0)),
            ]
            .prop_map(|kind| Value { kind: Some(kind) });
            leaf.prop_recursive(8, 64, 4, |inner| {
                prop_oneof![
                    prop::collection::btree_map("\\PC{0,6}", inner.clone(), 0..4).prop_map(
                        |fields| Value {
                            kind: Some(Kind::StructValue(Struct {
                                fields: fields.into_iter().collect()
                            })),
                        }
                    ),
                    prop::collection::vec(inner, 0..4).prop_map(|values| Value {
                        kind: Some(Kind::ListValue(ListValue { values })),
                    }),
                ]
            })
        }

        /// Details: a random tree, or a chain nested around the depth limit.
        fn details() -> impl Strategy<Value = Option<Struct>> {
            prop_oneof![
                Just(None),
                prop::collection::btree_map("\\PC{0,6}", value(), 0..4).prop_map(|fields| Some(
                    Struct {
                        fields: fields.into_iter().collect()
                    }
                )),
                (28usize..40).prop_map(|depth| {
                    let mut inner = Struct::default();
                    for _ in 1..depth {
                        inner = Struct {
                            fields: [(
                                "k".to_string(),
                                Value {
                                    kind: Some(Kind::StructValue(inner)),
                                },
                            )]
                            .into_iter()
                            .collect(),
                        };
                    }
                    Some(inner)
                }),
            ]
        }

        fn caller() -> impl Strategy<Value = Option<pb::Caller>> {
            let peer = prop_oneof![
                Just(None),
                (text(), text(), text()).prop_map(|(address, spiffe_id, certificate_subject)| {
                    Some(pb::caller::Peer::Network(pb::NetworkPeer {
                        address,
                        spiffe_id,
                        certificate_subject,
                    }))
                }),
                (any::<u32>(), text()).prop_map(|(uid, binary_path)| {
                    Some(pb::caller::Peer::Unix(pb::UnixPeer {
                        uid,
                        binary_path,
                        ..Default::default()
                    }))
                }),
            ];
            proptest::option::of((text(), text(), peer).prop_map(|(principal, role, peer)| {
                pb::Caller {
                    principal,
                    role,
                    peer,
                    ..Default::default()
                }
            }))
        }

        prop_compose! {
            fn any_entry()(
                id in prop_oneof![Just(String::new()), "[0-9a-f-]{36}", text()],
                request_id in text(),
                source in text(),
                method in method(),
                (event, resource) in (text(), text()),
                status_message in prop_oneof![text(), "[a-z]{4090,4100}"],
                level in -1i32..8,
                outcome in -1i32..5,
                status_code in -2i32..20,
                labels in prop::collection::btree_map(text(), text(), 0..3),
                details in details(),
                caller in caller(),
            ) -> AuditEntry {
                AuditEntry {
                    id, request_id, source, method, event, resource, status_message, level,
                    outcome, status_code, labels: labels.into_iter().collect(), details, caller,
                    ..Default::default()
                }
            }
        }

        /// Whether every text field of `entry` is within `limits`.
        fn within_limits(entry: &AuditEntry, limits: &Limits) -> bool {
            let max = limits.max_field_bytes;
            let mut texts = vec![
                &entry.request_id,
                &entry.source,
                &entry.method,
                &entry.event,
                &entry.category,
                &entry.resource,
            ];
            if let Some(caller) = &entry.caller {
                texts.extend([&caller.principal, &caller.role]);
                match &caller.peer {
                    Some(pb::caller::Peer::Network(n)) => {
                        texts.extend([&n.address, &n.spiffe_id, &n.certificate_subject]);
                    }
                    Some(pb::caller::Peer::Unix(u)) => texts.push(&u.binary_path),
                    None => {}
                }
            }
            texts.extend(entry.labels.keys());
            texts.extend(entry.labels.values());
            texts.iter().all(|t| t.len() <= max)
                && entry.status_message.len() <= limits.max_status_message_bytes
                && entry.labels.len() <= limits.max_labels
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn validation_names_fields_or_accepts_within_limits(sent in any_entry()) {
                let limits = Limits::default();
                match entry(sent.clone(), "entries[7]", None, &context(), &limits) {
                    Ok(new) => {
                        prop_assert!(within_limits(&new.entry, &limits));
                        prop_assert!(Uuid::parse_str(&new.entry.id).is_ok());
                        prop_assert!(new.entry.encoded_len() <= limits.max_entry_bytes + 512);
                    }
                    Err(violations) => {
                        prop_assert!(!violations.is_empty());
                        for v in &violations {
                            prop_assert!(v.field.starts_with("entries[7]"), "{v:?}");
                            prop_assert!(!v.description.is_empty(), "{v:?}");
                        }
                    }
                }
            }

            #[test]
            fn own_entries_always_fit(sent in any_entry(), max_field in 0usize..1100) {
                let limits = Limits { max_field_bytes: max_field, ..Limits::default() };
                let new = own_entry(sent, &context(), &limits);
                prop_assert!(within_limits(&new.entry, &limits));
            }

            #[test]
            fn cut_text_is_a_prefix_and_a_marker(text in "\\PC{0,300}", max in 0usize..300) {
                let mut cut = text.clone();
                fit(&mut cut, max);
                prop_assert!(cut.len() <= max);
                if text.len() <= max {
                    prop_assert_eq!(&cut, &text);
                } else if let Some((kept, marker)) = cut.split_once(TRUNCATED_MARKER) {
                    prop_assert!(text.starts_with(kept));
                    prop_assert_eq!(marker, format!("{} bytes]", text.len() - kept.len()));
                } else {
                    prop_assert!(text.starts_with(&cut));
                }
            }
        }
    }
}
