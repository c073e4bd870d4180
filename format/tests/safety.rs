//! Properties of every format on hostile entries: no raw line break, control, bidi or invisible
//! character reaches the output; JSON formats parse and keep every value; CEF splits into
//! exactly the fields it wrote; templates never panic and never let a value close a quote.

mod common;

use audit_format::escape::is_unsafe_char;
use audit_format::{Format, NAMES, Template, TemplateOptions};
use audit_proto::pb;
use proptest::prelude::*;

/// Text made to break formats: controls, quotes, delimiters of every format, bidi controls,
/// invisible characters, escapes, and ordinary text.
fn hostile() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "\n",
        "\r\n",
        "\t",
        "\u{1b}[31m",
        "\u{0}",
        "\u{7f}",
        "\u{85}",
        "\u{2028}",
        "\u{2029}",
        "\u{202e}",
        "\u{2066}",
        "\u{200b}",
        "\u{feff}",
        "\u{ad}",
        "\u{3164}",
        "\u{e0041}",
        "\"",
        "\\",
        "|",
        "=",
        "]",
        "}",
        "%{method}",
        "{",
        ",",
        " ",
        "  ",
        "a",
        "é",
        "日本",
        "😀",
        "\\n",
        "cs1=forged",
        "CEF:0|",
        "\",\"x\":\"",
    ]);
    prop::collection::vec(pieces, 0..8).prop_map(|parts| parts.concat())
}

fn hostile_entry() -> impl Strategy<Value = pb::AuditEntry> {
    (
        hostile(),
        hostile(),
        hostile(),
        hostile(),
        hostile(),
        hostile(),
        hostile(),
    )
        .prop_map(
            |(source, method, resource, principal, message, label, detail)| {
                let mut entry = common::sample();
                entry.source = source;
                entry.method = method;
                entry.resource = resource;
                entry.status_message = message;
                let caller = entry.caller.as_mut().unwrap();
                caller.principal = principal.clone();
                caller.user_agent = principal;
                entry.labels.insert("region".into(), label.clone());
                entry.labels.insert(label, "v".into());
                entry.details.as_mut().unwrap().fields.insert(
                    "note".into(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(detail)),
                    },
                );
                entry
            },
        )
}

/// Splits a CEF line as the CEF rules read it: seven unescaped `|` end the header fields; in
/// the extension, each unescaped `=` ends a key (the word before it).
fn parse_cef(line: &str) -> (Vec<String>, Vec<(String, String)>) {
    let mut header = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars();
    while header.len() < 7 {
        match chars.next().expect("seven header fields") {
            '\\' => field.push(chars.next().expect("escaped character")),
            '|' => header.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    let extension: Vec<char> = chars.collect();
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut value = String::new();
    let mut i = 0;
    while i < extension.len() {
        match extension[i] {
            '\\' => {
                i += 1;
                value.push(match extension[i] {
                    'n' => '\n',
                    'r' => '\r',
                    c => c,
                });
            }
            '=' => {
                // The key is the last word of what came before.
                let key_start = value.rfind(' ').map_or(0, |at| at + 1);
                let key = value[key_start..].to_string();
                if let Some(last) = pairs.last_mut() {
                    last.1 = value[..key_start.saturating_sub(1)].to_string();
                }
                pairs.push((key, String::new()));
                value.clear();
            }
            c => value.push(c),
        }
        i += 1;
    }
    if let Some(last) = pairs.last_mut() {
        last.1 = value;
    }
    (header, pairs)
}

/// What CEF keeps of a value: characters it cannot escape become U+FFFD.
fn cef_view(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\r' => c,
            c if is_unsafe_char(c) => '\u{fffd}',
            c => c,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn no_format_lets_an_unsafe_character_through(entry in hostile_entry()) {
        for name in NAMES {
            let line = Format::named(name).unwrap().render_to_string(&entry);
            let bad = line.chars().find(|c| is_unsafe_char(*c));
            prop_assert!(bad.is_none(), "{name} wrote {bad:?}: {line:?}");
        }
    }

    #[test]
    fn json_formats_parse_and_keep_every_value(entry in hostile_entry()) {
        for name in ["logstash", "ecs", "ocsf", "json"] {
            let line = Format::named(name).unwrap().render_to_string(&entry);
            let json: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| TestCaseError::fail(format!("{name}: {e}: {line}")))?;
            let method = match name {
                "logstash" | "json" => &json["method"],
                "ecs" => &json["audit"]["method"],
                _ => &json["api"]["operation"],
            };
            if !entry.method.is_empty() {
                prop_assert_eq!(method.as_str(), Some(entry.method.as_str()), "{}", name);
            }
            let labels = match name {
                "ocsf" => &json["unmapped"]["labels"],
                _ => &json["labels"],
            };
            if !entry.labels["region"].is_empty() {
                prop_assert_eq!(labels["region"].as_str(), Some(entry.labels["region"].as_str()));
            }
        }
    }

    #[test]
    fn cef_fields_split_exactly_as_written(entry in hostile_entry()) {
        let line = Format::named("cef").unwrap().render_to_string(&entry);
        let (header, pairs) = parse_cef(&line);
        prop_assert_eq!(&header[0], "CEF:0");
        let name = if entry.method.is_empty() { &entry.event } else { &entry.method };
        let header_view: String = name
            .chars()
            .map(|c| if is_unsafe_char(c) { '\u{fffd}' } else { c })
            .collect();
        prop_assert_eq!(&header[5], &header_view);
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        prop_assert!(keys.iter().all(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric())),
            "keys {:?} in {:?}", keys, line);
        let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let expect = |text: &str| (!text.is_empty()).then(|| cef_view(text));
        prop_assert_eq!(get("cs2"), expect(&entry.method));
        prop_assert_eq!(get("cs3"), expect(&entry.resource));
        prop_assert_eq!(get("msg"), expect(&entry.status_message));
        prop_assert_eq!(get("sourceServiceName"), expect(&entry.source));
        prop_assert_eq!(get("externalId"), expect(&entry.id));
    }

    #[test]
    fn templates_compile_or_fail_cleanly(text in "\\PC{0,40}", name in "[a-z_.%{}:0-9]{0,20}") {
        let _ = Template::parse(&text, TemplateOptions::default());
        let _ = Template::parse(&format!("%{{{name}}}"), TemplateOptions::default());
    }

    #[test]
    fn template_values_cannot_close_a_quote_or_break_a_line(entry in hostile_entry()) {
        let template = Template::parse(
            r#""%{method}" "%{resource}" %{caller.principal:q} %{labels.region:-8.5s} %{details.note}"#,
            TemplateOptions::default(),
        ).unwrap();
        let line = template.render_to_string(&entry);
        prop_assert!(!line.chars().any(is_unsafe_char), "{:?}", line);
        let mut unescaped_quotes = 0;
        let mut escaped = false;
        for c in line.chars() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => unescaped_quotes += 1,
                _ => {}
            }
        }
        // Four from the template's text, two around the quoted principal when it is set.
        let quoted = if entry.caller.as_ref().unwrap().principal.is_empty() { 0 } else { 2 };
        prop_assert_eq!(unescaped_quotes, 4 + quoted, "{:?}", line);
    }
}
