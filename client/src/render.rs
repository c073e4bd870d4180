//! One readable line per entry, safe to print on a terminal.
//!
//! ```text
//! 2026-11-22T10:00:00.123Z  #42       SUCCESS  OK                   alice@127.0.0.1:5555   /pkg.Svc/Method               keys/k1
//! ```
//!
//! Columns: time (caller time, else receive time), sequence, outcome, status code, caller,
//! method, resource. Empty fields show as `-`. Every field goes through [`escape_column`], so no
//! entry can forge a line, send escape sequences to the terminal, hide text in invisible
//! characters or pad itself to imitate other columns.

use std::borrow::Cow;
use std::io::IsTerminal as _;

use audit_proto::pb;

use crate::code::code_name;

pub use audit_format::escape::{escape, escape_column, is_unsafe_char};

/// Whether output to stdout should be coloured: stdout is a terminal and `NO_COLOR` is unset or
/// empty (<https://no-color.org>).
pub fn stdout_wants_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";

/// Renders `entry` as one line (no trailing newline), with ANSI colours when `color` is true.
pub fn render_line(entry: &pb::AuditEntry, color: bool) -> String {
    let outcome = pb::Outcome::try_from(entry.outcome).unwrap_or(pb::Outcome::Unspecified);
    let outcome_color = match outcome {
        pb::Outcome::Success => GREEN,
        pb::Outcome::Denied => YELLOW,
        pb::Outcome::Error => RED,
        pb::Outcome::Unspecified => "",
    };
    let status_color = if entry.status_code == 0 {
        ""
    } else {
        outcome_color
    };

    let mut line = String::with_capacity(160);
    let mut column = |text: &str, width: usize, style: &str| {
        if !line.is_empty() {
            line.push_str("  ");
        }
        let text = escape_column(if text.is_empty() { "-" } else { text });
        let pad = width.saturating_sub(text.chars().count());
        if color && !style.is_empty() {
            line.push_str(style);
            line.push_str(&text);
            line.push_str(RESET);
        } else {
            line.push_str(&text);
        }
        line.extend(std::iter::repeat_n(' ', pad));
    };

    column(&render_time(entry), 24, DIM);
    column(&format!("#{}", entry.sequence), 8, DIM);
    column(outcome_name(outcome), 7, outcome_color);
    column(&status_name(entry.status_code), 19, status_color);
    column(&render_caller(entry.caller.as_ref()), 21, CYAN);
    column(&entry.method, 28, BOLD);
    column(&entry.resource, 0, "");
    line.truncate(line.trim_end_matches(' ').len());
    line
}

/// The entry's time (else its receive time) in RFC 3339 with milliseconds, always 24 characters
/// wide for years 0–9999.
fn render_time(entry: &pb::AuditEntry) -> String {
    let Some(time) = entry.time.or(entry.received_time) else {
        return String::new();
    };
    let mut time = time;
    time.normalize();
    let millis = time.nanos / 1_000_000;
    let whole = prost_types::Timestamp {
        seconds: time.seconds,
        nanos: 0,
    }
    .to_string();
    // `whole` ends in `Z`; put the milliseconds before it.
    match whole.strip_suffix('Z') {
        Some(prefix) => format!("{prefix}.{millis:03}Z"),
        None => whole,
    }
}

fn outcome_name(outcome: pb::Outcome) -> &'static str {
    match outcome {
        pb::Outcome::Success => "SUCCESS",
        pb::Outcome::Denied => "DENIED",
        pb::Outcome::Error => "ERROR",
        pb::Outcome::Unspecified => "",
    }
}

fn status_name(code: i32) -> Cow<'static, str> {
    match code_name(code) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(code.to_string()),
    }
}

/// `principal@address`, with the SPIFFE ID standing in for a missing principal and
/// `uid=U,pid=P` for the address of a Unix peer.
fn render_caller(caller: Option<&pb::Caller>) -> String {
    let Some(caller) = caller else {
        return String::new();
    };
    let (who, place) = match &caller.peer {
        Some(pb::caller::Peer::Network(peer)) => {
            let who = if caller.principal.is_empty() {
                peer.spiffe_id.as_str()
            } else {
                caller.principal.as_str()
            };
            (who, peer.address.clone())
        }
        Some(pb::caller::Peer::Unix(peer)) => (
            caller.principal.as_str(),
            format!("uid={},pid={}", peer.uid, peer.pid),
        ),
        None => (caller.principal.as_str(), String::new()),
    };
    match (who.is_empty(), place.is_empty()) {
        (false, false) => format!("{who}@{place}"),
        (false, true) => who.to_string(),
        (true, _) => place,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntryBuilder;
    use std::time::{Duration, SystemTime};

    #[test]
    fn escapes_every_control_character() {
        assert_eq!(escape("plain text ünïcode"), "plain text ünïcode");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb\rc\td\0"), r"a\nb\rc\td\0");
        assert_eq!(escape("\u{1b}[31m"), r"\x1b[31m");
        assert_eq!(escape("\u{7f}\u{1}"), r"\x7f\x01");
        assert_eq!(escape("\u{85}\u{9b}"), r"\u{85}\u{9b}");
        assert_eq!(escape("\u{2028}\u{2029}"), r"\u{2028}\u{2029}");
        assert_eq!(
            escape("\u{202e}evil\u{2066}\u{2069}"),
            r"\u{202e}evil\u{2066}\u{2069}"
        );
        assert_eq!(
            escape("\u{200e}\u{200f}\u{61c}"),
            r"\u{200e}\u{200f}\u{61c}"
        );
        assert_eq!(escape(r"back\slash"), r"back\\slash");
        // A literal `\n` in an entry cannot pass for an escaped newline.
        assert_ne!(escape(r"\n"), escape("\n"));
    }

    #[test]
    fn invisible_characters_are_shown() {
        for (hidden, shown) in [
            ("a\u{200b}b", r"a\u{200b}b"),
            ("\u{feff}bom", r"\u{feff}bom"),
            ("soft\u{ad}hyphen", r"soft\u{ad}hyphen"),
            ("\u{3164}", r"\u{3164}"),
            ("x\u{e0041}\u{e007f}", r"x\u{e0041}\u{e007f}"),
            ("no\u{a0}break\u{3000}", r"no\u{a0}break\u{3000}"),
            ("\u{2060}\u{200d}\u{2800}", r"\u{2060}\u{200d}\u{2800}"),
            ("x\u{e0100}", r"x\u{e0100}"),
            ("\u{e000}", r"\u{e000}"),
        ] {
            assert_eq!(escape(hidden), shown);
        }
        // Visible text in any script stays as it is.
        for visible in ["ünïcode", "日本語", "Ελληνικά", "한국어", "emoji 🦀"] {
            assert_eq!(escape(visible), visible);
        }
    }

    #[test]
    fn column_values_cannot_imitate_columns() {
        assert_eq!(escape_column("alice smith"), "alice smith");
        assert_eq!(escape_column("a  b"), r"a\x20\x20b");
        assert_eq!(escape_column(" lead"), r"\x20lead");
        assert_eq!(escape_column("trail "), r"trail\x20");
        assert_eq!(escape_column(" "), r"\x20");
        let mut entry = sample();
        entry.caller.as_mut().unwrap().principal =
            "eve                    /pkg.Svc/Other                keys/forged  ".into();
        let line = render_line(&entry, false);
        assert!(!line.contains("eve  "), "{line}");
        assert_eq!(
            line.matches("  ").count(),
            render_line(&sample(), false).matches("  ").count()
        );
    }

    #[test]
    fn escape_leaves_no_unsafe_character() {
        let all: String = (0u32..0x11_0000).filter_map(char::from_u32).collect();
        let escaped = escape(&all);
        assert!(!escaped.chars().any(is_unsafe_char));
    }

    fn sample() -> pb::AuditEntry {
        let mut entry = EntryBuilder::new("kms", "/pkg.Svc/Method")
            .time(SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_341_600_123))
            .outcome(pb::Outcome::Success)
            .principal("alice")
            .peer_address("127.0.0.1:5555")
            .resource("keys/k1")
            .build();
        entry.sequence = 42;
        entry
    }

    #[test]
    fn renders_fixed_columns() {
        assert_eq!(
            render_line(&sample(), false),
            "2026-11-22T10:00:00.123Z  #42       SUCCESS  OK                   \
             alice@127.0.0.1:5555   /pkg.Svc/Method               keys/k1"
        );
        let mut denied = sample();
        denied.outcome = pb::Outcome::Denied as i32;
        denied.status_code = 7;
        denied.sequence = 43;
        denied.resource.clear();
        denied.caller = None;
        denied.time = Some(prost_types::Timestamp {
            seconds: 1_795_341_600,
            nanos: 0,
        });
        assert_eq!(
            render_line(&denied, false),
            "2026-11-22T10:00:00.000Z  #43       DENIED   PERMISSION_DENIED    \
             -                      /pkg.Svc/Method               -"
        );
    }

    #[test]
    fn renders_unix_and_spiffe_callers() {
        let unix = EntryBuilder::new("s", "/p.S/M")
            .principal("root")
            .unix_peer(pb::UnixPeer {
                uid: 0,
                pid: 7,
                ..Default::default()
            })
            .build();
        assert!(render_line(&unix, false).contains("root@uid=0,pid=7"));
        let spiffe = EntryBuilder::new("s", "/p.S/M")
            .spiffe_id("spiffe://prod/billing")
            .peer_address("10.0.0.1:443")
            .build();
        assert!(render_line(&spiffe, false).contains("spiffe://prod/billing@10.0.0.1:443"));
    }

    #[test]
    fn hostile_entry_stays_on_one_line() {
        let mut entry = sample();
        entry.method = "/x\n2026-01-01T00:00:00.000Z  #1  SUCCESS".into();
        entry.resource = "\u{1b}[2J\u{2028}\u{202e}".into();
        entry.caller.as_mut().unwrap().principal = "eve\r".into();
        for color in [false, true] {
            let line = render_line(&entry, color);
            assert!(!line.contains('\n') && !line.contains('\r') && !line.contains('\u{2028}'));
            assert!(line.contains(r"\x1b[2J\u{2028}\u{202e}"), "{line}");
            assert!(line.contains(r"eve\r@"), "{line}");
        }
    }

    #[test]
    fn colours_only_when_asked() {
        assert!(!render_line(&sample(), false).contains('\u{1b}'));
        let coloured = render_line(&sample(), true);
        assert!(coloured.contains(GREEN) && coloured.contains(RESET));
    }
}
