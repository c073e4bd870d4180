//! Audit entries as text for people and for the SIEMs and log pipelines they use: KrakenD-style
//! templates, httpd-like lines, CEF, OCSF, ECS and logstash JSON, and RFC 5424 syslog messages. One module shared by the CLI
//! and the server's forwarders, so that a format means the same everywhere.
//!
//! Every format escapes for its own context (see each module): no entry can make any format
//! emit a raw line break, a forged field or a terminal escape sequence.

#![forbid(unsafe_code)]

pub mod cef;
pub mod escape;
pub mod field;
pub mod json;
pub mod json_layouts;
pub mod pattern;
pub mod proto_json;
pub mod syslog;
pub mod template;
pub mod timefmt;

use audit_proto::pb;

pub use pattern::{Pattern, PatternError};
pub use template::{Template, TemplateError, TemplateOptions};

/// A compiled output format.
#[derive(Debug, Clone)]
pub enum Format {
    /// A template (also the httpd-like layouts).
    Template(Template),
    /// ArcSight CEF.
    Cef,
    /// OCSF API Activity JSON.
    Ocsf,
    /// Elastic Common Schema JSON.
    Ecs,
    /// logstash JSON.
    Logstash,
    /// Proto3 JSON of the entry (what `audit query --json` prints).
    Json,
}

/// The predefined layouts of this crate, by name.
pub const NAMES: &[&str] = &[
    "json",
    "httpd-common",
    "httpd-combined",
    "logstash",
    "cef",
    "ocsf",
    "ecs",
];

/// The httpd "common" log line, with the gRPC method and resource as the request.
pub const HTTPD_COMMON: &str = r#"%{caller.address} - %{caller.principal} [%{time:02/Jan/2006:15:04:05 -0700}] "%{method} %{resource}" %{status_code} -"#;

/// The httpd "combined" line: the common line, then referer and user agent.
pub const HTTPD_COMBINED: &str = r#"%{caller.address} - %{caller.principal} [%{time:02/Jan/2006:15:04:05 -0700}] "%{method} %{resource}" %{status_code} - "-" "%{caller.user_agent}""#;

impl Format {
    /// The predefined layout called `name` (one of [`NAMES`]), or `None`.
    pub fn named(name: &str) -> Option<Format> {
        let template = |text| {
            Template::parse(text, TemplateOptions::default())
                .map(Format::Template)
                .ok()
        };
        match name {
            "httpd-common" => template(HTTPD_COMMON),
            "httpd-combined" => template(HTTPD_COMBINED),
            "logstash" => Some(Format::Logstash),
            "cef" => Some(Format::Cef),
            "ocsf" => Some(Format::Ocsf),
            "ecs" => Some(Format::Ecs),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    /// Renders `entry` as one line, without a line break, into `out`.
    pub fn render(&self, entry: &pb::AuditEntry, out: &mut String) {
        match self {
            Format::Template(template) => template.render(entry, out),
            Format::Cef => cef::render(entry, out),
            Format::Ocsf => out.push_str(&json_layouts::to_line(&json_layouts::ocsf(entry))),
            Format::Ecs => out.push_str(&json_layouts::to_line(&json_layouts::ecs(entry))),
            Format::Logstash => {
                out.push_str(&json_layouts::to_line(&json_layouts::logstash(entry)))
            }
            Format::Json => match proto_json::to_json(entry) {
                Ok(line) => out.push_str(&line),
                // Only a NaN or infinity in `details`, stored before the server refused them:
                // the entry is still named, and the line still JSON.
                Err(error) => out.push_str(&json_layouts::to_line(&serde_json::json!({
                    "sequence": entry.sequence.to_string(),
                    "id": entry.id,
                    "error": format!("no proto3 JSON form: {error}"),
                }))),
            },
        }
    }

    /// `entry` as one line, without a line break.
    pub fn render_to_string(&self, entry: &pb::AuditEntry) -> String {
        let mut out = String::new();
        self.render(entry, &mut out);
        out
    }
}
