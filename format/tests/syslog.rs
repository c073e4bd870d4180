//! RFC 5424 messages: byte for byte for a sample entry, and on hostile entries read back by a
//! strict RFC 5424 parser: one line, one structured-data element, every value intact, every
//! message within its size limit.

mod common;

use audit_format::escape::{escape, is_unsafe_char};
use audit_format::syslog::{self, Facility, SyslogOptions};
use audit_format::{Format, Template, TemplateOptions};
use audit_proto::pb;
use proptest::prelude::*;

/// A message as RFC 5424 reads it.
#[derive(Debug)]
struct Parsed {
    pri: u32,
    header: Vec<String>,
    elements: Vec<(String, Vec<(String, String)>)>,
    msg: Option<String>,
}

/// A strict RFC 5424 parser: fails on anything the grammar does not allow.
fn parse(message: &str) -> Result<Parsed, String> {
    let rest = message.strip_prefix('<').ok_or("no PRI")?;
    let (pri, rest) = rest.split_once('>').ok_or("PRI not closed")?;
    let pri: u32 = pri.parse().map_err(|_| "PRI not a number")?;
    let rest = rest.strip_prefix("1 ").ok_or("no VERSION")?;
    let mut fields = rest.splitn(6, ' ');
    let mut header = Vec::new();
    for (name, limit) in [
        ("TIMESTAMP", 32),
        ("HOSTNAME", 255),
        ("APP-NAME", 48),
        ("PROCID", 128),
        ("MSGID", 32),
    ] {
        let field = fields.next().ok_or(format!("no {name}"))?;
        if field.is_empty()
            || field.len() > limit
            || !field.bytes().all(|b| (33..=126).contains(&b))
        {
            return Err(format!("bad {name} {field:?}"));
        }
        header.push(field.to_string());
    }
    let sd = fields.next().ok_or("no STRUCTURED-DATA")?;
    let chars: Vec<char> = sd.chars().collect();
    let mut i = 0;
    let mut elements = Vec::new();
    if chars.first() == Some(&'-') {
        i = 1;
    } else {
        while chars.get(i) == Some(&'[') {
            i += 1;
            let start = i;
            while i < chars.len() && !matches!(chars[i], ' ' | ']') {
                i += 1;
            }
            let id: String = chars[start..i].iter().collect();
            if !syslog::is_sd_name(&id) && !id.contains('@') {
                return Err(format!("bad SD-ID {id}"));
            }
            let mut params = Vec::new();
            while chars.get(i) == Some(&' ') {
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != '=' {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                if !syslog::is_sd_name(&name) {
                    return Err(format!("bad PARAM-NAME {name:?}"));
                }
                if chars.get(i + 1) != Some(&'"') {
                    return Err(format!("{name}: value not quoted"));
                }
                i += 2;
                let mut value = String::new();
                loop {
                    match chars.get(i) {
                        None => return Err(format!("{name}: value not closed")),
                        Some('"') => break,
                        Some(']') => return Err(format!("{name}: raw ] in value")),
                        Some('\\') if matches!(chars.get(i + 1), Some('"' | '\\' | ']')) => {
                            value.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(c) => {
                            value.push(*c);
                            i += 1;
                        }
                    }
                }
                i += 1;
                params.push((name, value));
            }
            if chars.get(i) != Some(&']') {
                return Err(format!("element {id} not closed"));
            }
            i += 1;
            elements.push((id, params));
        }
        if elements.is_empty() {
            return Err("no SD element".into());
        }
    }
    let msg = match chars.get(i) {
        None => None,
        Some(' ') => Some(chars[i + 1..].iter().collect()),
        Some(c) => return Err(format!("{c:?} after STRUCTURED-DATA")),
    };
    Ok(Parsed {
        pri,
        header,
        elements,
        msg,
    })
}

fn options() -> SyslogOptions {
    SyslogOptions {
        hostname: "host-1".into(),
        procid: "77".into(),
        ..SyslogOptions::default()
    }
}

#[test]
fn a_sample_entry_is_written_byte_for_byte() {
    let message = syslog::entry_message(
        &common::sample(),
        &SyslogOptions {
            max_bytes: 4096,
            ..options()
        },
    );
    let expected = concat!(
        "<84>1 2026-11-22T15:04:05.120000Z host-1 audit-server 77 KEY_DELETED ",
        "[audit@32473 id=\"0193a5f0-7c2e-7000-8000-000000000001\" sequence=\"42\" ",
        "request_id=\"req-1\" time=\"2026-11-22T15:04:05.120000Z\" ",
        "received_time=\"2026-11-22T15:04:05.130000Z\" source=\"kms\" ",
        "method=\"/kms.v1.Keys/DeleteKey\" event=\"KEY_DELETED\" category=\"KEY_MANAGEMENT\" ",
        "resource=\"keys/k1\" level=\"WARNING\" outcome=\"DENIED\" status_code=\"7\" ",
        "status_name=\"PERMISSION_DENIED\" status_message=\"not allowed\" ",
        "caller.principal=\"alice\" caller.role=\"admin\" caller.session_id=\"s-9\" ",
        "caller.user_agent=\"grpc-go/1.60\" latency=\"0.0125s\" latencyMs=\"12\" ",
        "entry_hash=\"abababab\" chain_hash=\"cdcdcdcd\" caller.address=\"10.0.0.7:5555\" ",
        "caller.spiffe_id=\"spiffe://prod/billing\" caller.certificate_subject=\"CN=billing\" ",
        "recorder.unix.uid=\"1000\" recorder.unix.gid=\"1000\" recorder.unix.pid=\"4242\" ",
        "recorder.unix.binary_path=\"/usr/bin/kms\" labels=\"{\\\"region\\\":\\\"eu\\\"}\" ",
        "details=\"{\\\"count\\\":3.0,\\\"key\\\":{\\\"sub\\\":\\\"k1\\\"}}\"] ",
        "#42 DENIED PERMISSION_DENIED alice /kms.v1.Keys/DeleteKey keys/k1"
    );
    assert_eq!(message, expected);
    // authpriv (10) * 8 + warning (4)
    assert_eq!(parse(&message).unwrap().pri, 84);
}

#[test]
fn severity_follows_the_level() {
    let levels = [
        (pb::Level::Debug, 7),
        (pb::Level::Info, 6),
        (pb::Level::Warning, 4),
        (pb::Level::Error, 3),
        (pb::Level::Critical, 2),
        (pb::Level::Unspecified, 5),
    ];
    for (level, severity) in levels {
        assert_eq!(syslog::severity(level as i32), severity, "{level:?}");
        let mut entry = common::sample();
        entry.level = level as i32;
        let options = SyslogOptions {
            facility: Facility::parse("local3").unwrap(),
            ..options()
        };
        let parsed = parse(&syslog::entry_message(&entry, &options)).unwrap();
        assert_eq!(parsed.pri, 19 * 8 + u32::from(severity));
    }
}

#[test]
fn msg_takes_any_format_and_a_bom_before_utf8() {
    let mut entry = common::sample();
    entry.resource = "clés/k1".into();
    let options = SyslogOptions {
        msg: Format::Template(
            Template::parse(
                "%{resource} by %{caller.principal}",
                TemplateOptions::default(),
            )
            .unwrap(),
        ),
        ..options()
    };
    let parsed = parse(&syslog::entry_message(&entry, &options)).unwrap();
    assert_eq!(parsed.msg.as_deref(), Some("\u{feff}clés/k1 by alice"));
    let cef = SyslogOptions {
        msg: Format::named("cef").unwrap(),
        ..self::options()
    };
    let parsed = parse(&syslog::entry_message(&common::sample(), &cef)).unwrap();
    assert!(parsed.msg.unwrap().starts_with("CEF:0|"));
}

#[test]
fn a_checkpoint_is_a_message_of_its_own() {
    let note = "audit-log\n42\nroot=\nchain abc=\ntime 1795359845\n\n\u{2014} audit-log AbC+/=\n";
    let message = syslog::checkpoint_message(3, note, None, &options());
    let parsed = parse(&message).unwrap();
    assert_eq!(parsed.header[0], "-");
    assert_eq!(parsed.header[4], "CHECKPOINT");
    assert_eq!(parsed.pri, 10 * 8 + 5);
    let (id, params) = &parsed.elements[0];
    assert_eq!(id, "checkpoint@32473");
    assert_eq!(params[0], ("index".into(), "3".into()));
    assert_eq!(params[1], ("size".into(), "42".into()));
    assert_eq!(params[2].1, escape(note));
    assert_eq!(params[2].1.replace("\\n", "\n"), note);
    assert_eq!(parsed.msg.as_deref(), Some("checkpoint audit-log 42"));
}

#[test]
fn a_long_message_is_cut_and_marked_never_split() {
    let mut entry = common::sample();
    entry.status_message = "x".repeat(3000);
    let options = SyslogOptions {
        msg: Format::Template(
            Template::parse("%{status_message}", TemplateOptions::default()).unwrap(),
        ),
        max_bytes: 2048,
        ..options()
    };
    let message = syslog::entry_message(&entry, &options);
    assert!(message.len() <= 2048, "{}", message.len());
    // The status message does not fit even in the structured data: only the minimal element.
    let parsed = parse(&message).unwrap();
    let params = &parsed.elements[0].1;
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["id", "sequence", "truncated"]);
    assert!(params[2].1.parse::<usize>().unwrap() > 6000);
    assert_eq!(parsed.msg, None);

    // A long MSG with room for the structured data: MSG is cut, the element kept whole.
    entry.status_message = "y".repeat(900);
    let message = syslog::entry_message(&entry, &options);
    assert_eq!(message.len(), 2048);
    let parsed = parse(&message).unwrap();
    let params = &parsed.elements[0].1;
    assert_eq!(params.last().unwrap().0, "truncated");
    assert!(
        params
            .iter()
            .any(|(n, v)| n == "status_message" && v.len() == 900)
    );
    assert!(parsed.msg.unwrap().chars().all(|c| c == 'y'));
}

/// Text made to break syslog messages.
fn hostile() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "\n",
        "\r\n",
        "\t",
        "\u{1b}[31m",
        "\u{0}",
        "\u{85}",
        "\u{2028}",
        "\u{202e}",
        "\u{feff}",
        "\"",
        "\\",
        "]",
        "[",
        "=",
        " ",
        "  ",
        "a",
        "é",
        "日本",
        "😀",
        "\\n",
        "\\]",
        "\"]",
        "[x@1 a=\"b\"]",
        "<13>1 - - - - - -",
        " - ",
    ]);
    prop::collection::vec(pieces, 0..10).prop_map(|parts| parts.concat())
}

fn hostile_entry() -> impl Strategy<Value = pb::AuditEntry> {
    (
        hostile(),
        hostile(),
        hostile(),
        hostile(),
        hostile(),
        hostile(),
        0usize..3000,
    )
        .prop_map(|(event, resource, principal, message, label, id, pad)| {
            let mut entry = common::sample();
            entry.event = event;
            entry.resource = resource;
            entry.id = id;
            entry.status_message = format!("{message}{}", "z".repeat(pad));
            entry.caller.as_mut().unwrap().principal = principal;
            entry.labels.insert(label.clone(), label);
            entry
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn no_entry_forges_a_field_or_a_line(entry in hostile_entry(), max in 1024usize..4096) {
        let options = SyslogOptions { max_bytes: max, ..options() };
        let message = syslog::entry_message(&entry, &options);
        prop_assert!(message.len() <= max, "{} > {max}", message.len());
        let bad = message
            .char_indices()
            .find(|(_, c)| is_unsafe_char(*c) && *c != '\u{feff}');
        prop_assert!(bad.is_none(), "unsafe {bad:?} in {message:?}");
        let parsed = parse(&message).map_err(|e| TestCaseError::fail(format!("{e}: {message:?}")))?;
        prop_assert_eq!(parsed.elements.len(), 1);
        let (id, params) = &parsed.elements[0];
        prop_assert_eq!(id, "audit@32473");
        let get = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        prop_assert_eq!(get("sequence"), Some("42".to_string()));
        let truncated = get("truncated").is_some();
        if !truncated {
            let expect = |text: &str| (!text.is_empty()).then(|| escape(text).into_owned());
            prop_assert_eq!(get("resource"), expect(&entry.resource));
            prop_assert_eq!(get("caller.principal"), expect(&entry.caller.as_ref().unwrap().principal));
            prop_assert_eq!(get("status_message"), expect(&entry.status_message));
            prop_assert_eq!(get("id"), expect(&entry.id));
        }
        // The BOM may only open MSG.
        if let Some(msg) = &parsed.msg {
            let late_bom = msg.chars().skip(1).any(|c| c == '\u{feff}');
            prop_assert!(!late_bom, "a byte order mark inside MSG: {:?}", msg);
        }
    }
}
