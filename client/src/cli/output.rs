//! Writing entries to stdout, as readable lines or JSON lines.

use std::io::{self, Write};

use audit_client::{json, pb, render};

/// Writes entries to stdout, one line each, flushed at once so `tail` output is live in pipes.
pub struct EntryPrinter {
    json: bool,
    color: bool,
    out: io::StdoutLock<'static>,
}

impl EntryPrinter {
    /// Prints proto3 JSON lines when `json`, otherwise readable lines coloured when `color`.
    pub fn new(json: bool, color: bool) -> Self {
        EntryPrinter {
            json,
            color,
            out: io::stdout().lock(),
        }
    }

    /// Prints one entry. A closed stdout (`audit tail | head`) is [`Printed::Closed`], not an
    /// error. An entry that has no JSON form (a number JSON cannot hold, stored before the
    /// server refused those) is reported on stderr and [`Printed::Skipped`], so one entry does
    /// not end an export.
    pub fn print(&mut self, entry: &pb::AuditEntry) -> anyhow::Result<Printed> {
        let line = if self.json {
            match json::to_json(entry) {
                Ok(line) => line,
                Err(error) => {
                    eprintln!(
                        "audit: skipped entry #{} (id {}): cannot write it as JSON: {error}",
                        entry.sequence,
                        render::escape(&entry.id)
                    );
                    return Ok(Printed::Skipped);
                }
            }
        } else {
            render::render_line(entry, self.color)
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
