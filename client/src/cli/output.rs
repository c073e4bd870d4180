//! Writing entries to stdout: readable lines, proto3 JSON lines, or any format of
//! `audit-format` (templates, CEF, OCSF, ECS, logstash, httpd-like lines).

use std::io::{self, Write};

use audit_client::{json, pb, render};
use audit_format::{Format, Template, TemplateOptions};
use clap::Args;

/// How `tail` and `query` print entries.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print each entry as one line of proto3 JSON (the same as --format json).
    /// An entry with no JSON form (NaN stored by an older server) is reported on stderr and
    /// skipped.
    #[arg(long, conflicts_with_all = ["format", "template"])]
    json: bool,
    /// Output format: default (a readable line), json (proto3 JSON), httpd-common,
    /// httpd-combined, logstash, cef (ArcSight), ocsf (API Activity), ecs (Elastic).
    #[arg(long, value_name = "NAME", value_parser = format_name, conflicts_with = "template")]
    format: Option<String>,
    /// Print each entry with a template: `%{field}` or `%{field:format}`, e.g.
    /// '%{time:rfc3339} %{caller.principal} %{method} %{status_name}'. Fields: id, sequence,
    /// time, method, caller.principal, caller.spiffe_id, recorder.unix.uid, labels.KEY,
    /// details.PATH, latencyMs, ...; formats: time layouts (rfc3339, kitchen, Go layouts), q,
    /// widths and precision (6s, .3s, 05d, x).
    #[arg(long, value_name = "TEMPLATE")]
    template: Option<String>,
    /// What --template writes for a field the entry does not set.
    #[arg(long, value_name = "TEXT", default_value = "-", requires = "template")]
    no_value: String,
}

/// Formats of this crate beside those of `audit-format`.
const OWN_FORMATS: [&str; 1] = ["default"];

fn format_name(name: &str) -> Result<String, String> {
    if OWN_FORMATS.contains(&name) || audit_format::NAMES.contains(&name) {
        Ok(name.to_string())
    } else {
        let names: Vec<&str> = OWN_FORMATS
            .iter()
            .chain(audit_format::NAMES)
            .copied()
            .collect();
        Err(format!(
            "unknown format `{name}`; one of: {}",
            names.join(", ")
        ))
    }
}

impl OutputArgs {
    /// The printer these flags ask for; `color` applies to the default line only. Fails when
    /// the template does not compile, naming what is wrong and where.
    pub fn printer(&self, color: bool) -> anyhow::Result<EntryPrinter> {
        let style = if let Some(text) = &self.template {
            let options = TemplateOptions {
                prefix: String::new(),
                no_value: self.no_value.clone(),
            };
            Style::Format(Format::Template(Template::parse(text, options)?))
        } else {
            match self.format.as_deref() {
                _ if self.json => Style::Json,
                None | Some("default") => Style::Line { color },
                Some("json") => Style::Json,
                Some(name) => Style::Format(
                    Format::named(name)
                        .ok_or_else(|| anyhow::anyhow!("unknown format `{name}`"))?,
                ),
            }
        };
        Ok(EntryPrinter {
            style,
            out: io::stdout().lock(),
        })
    }
}

enum Style {
    Line { color: bool },
    Json,
    Format(Format),
}

/// Writes entries to stdout, one line each, flushed at once so `tail` output is live in pipes.
pub struct EntryPrinter {
    style: Style,
    out: io::StdoutLock<'static>,
}

impl EntryPrinter {
    /// Prints one entry. A closed stdout (`audit tail | head`) is [`Printed::Closed`], not an
    /// error. An entry that has no JSON form (a number JSON cannot hold, stored before the
    /// server refused those) is reported on stderr and [`Printed::Skipped`], so one entry does
    /// not end an export.
    pub fn print(&mut self, entry: &pb::AuditEntry) -> anyhow::Result<Printed> {
        let line = match &self.style {
            Style::Json => match json::to_json(entry) {
                Ok(line) => line,
                Err(error) => {
                    eprintln!(
                        "audit: skipped entry #{} (id {}): cannot write it as JSON: {error}",
                        entry.sequence,
                        render::escape(&entry.id)
                    );
                    return Ok(Printed::Skipped);
                }
            },
            Style::Line { color } => render::render_line(entry, *color),
            Style::Format(format) => format.render_to_string(entry),
        };
        write_line(&mut self.out, &line)
    }
}

/// Whether stdout still takes output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Printed {
    /// The line was written.
    Ok,
    /// The entry could not be written and was reported on stderr; the output goes on.
    Skipped,
    /// The reader went away; stop quietly.
    Closed,
}

/// Writes `line` and a newline to `out` and flushes it.
pub fn write_line(out: &mut impl Write, line: &str) -> anyhow::Result<Printed> {
    let result = writeln!(out, "{line}").and_then(|()| out.flush());
    match result {
        Ok(()) => Ok(Printed::Ok),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(Printed::Closed),
        Err(error) => Err(anyhow::Error::new(error).context("cannot write to stdout")),
    }
}
