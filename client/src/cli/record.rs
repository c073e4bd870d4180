//! `audit record`: store entries, from flags or from proto3 JSON on stdin.

use std::io::{IsTerminal as _, Read as _};
use std::process::ExitCode;

use anyhow::Context as _;
use audit_client::json::{self, JsonEntries};
use audit_client::{Client, EntryBuilder, pb, render};
use clap::Args;
use clap::error::ErrorKind;

use super::filter::{LevelArg, OutcomeArg, parse_label, parse_status_code};
use super::output::write_line;

/// Record one entry described by flags, or entries given as proto3 JSON on stdin.
///
/// With flags, --source, --method and --outcome are required. With JSON, an object is one entry
/// (Record) and an array is one atomic batch (RecordBatch) whose entries share --request-id (or
/// one the server generates); field names follow the proto3 JSON mapping (camelCase or
/// snake_case, enums by name such as OUTCOME_SUCCESS). JSON is read from stdin when --stdin is
/// given, and also when no entry flag is given and stdin is not a terminal.
///
/// Prints the receipt once the server has stored the entries durably: `id=ID sequence=N` for
/// one entry; for a batch `request_id=ID`, then one `id=ID sequence=N` line per entry in order.
/// --json prints the server's response as proto3 JSON instead.
#[derive(Debug, Args)]
#[command(after_long_help = RECORD_EXAMPLES)]
pub struct RecordArgs {
    /// Read the entry (JSON object) or batch (JSON array) from stdin as proto3 JSON.
    #[arg(long, help_heading = "Input")]
    stdin: bool,
    /// The application that emitted the entry, for example billing-api.
    #[arg(
        long,
        value_name = "SOURCE",
        help_heading = "Entry",
        conflicts_with = "stdin"
    )]
    source: Option<String>,
    /// The full gRPC method of the audited call, /package.Service/Method.
    #[arg(
        long,
        value_name = "METHOD",
        help_heading = "Entry",
        conflicts_with = "stdin"
    )]
    method: Option<String>,
    /// How the audited call ended.
    #[arg(
        long,
        value_name = "OUTCOME",
        help_heading = "Entry",
        conflicts_with = "stdin"
    )]
    outcome: Option<OutcomeArg>,
    /// The gRPC status code of the audited call, as a number (7) or a name (permission_denied);
    /// 0 (OK) when not given.
    #[arg(long, value_name = "CODE", value_parser = parse_status_code, help_heading = "Entry", conflicts_with = "stdin")]
    status_code: Option<i32>,
    /// The gRPC status message of the audited call.
    #[arg(
        long,
        value_name = "MESSAGE",
        help_heading = "Entry",
        conflicts_with = "stdin"
    )]
    status_message: Option<String>,
    /// The authenticated user or service account that made the call.
    #[arg(
        long,
        value_name = "PRINCIPAL",
        help_heading = "Entry",
        conflicts_with = "stdin"
    )]
    principal: Option<String>,
    /// What happened, for example KEY_DELETED.
    #[arg(
        long,
        value_name = "EVENT",
        help_heading = "Entry",
        conflicts_with = "stdin"
    )]
    event: Option<String>,
    /// The family of the event, for example KEY_MANAGEMENT.
    #[arg(
        long,
        value_name = "CATEGORY",
        help_heading = "Entry",
        conflicts_with = "stdin"
    )]
    category: Option<String>,
    /// What the call touched, for example keys/my-key.
    #[arg(
        long,
        value_name = "RESOURCE",
        help_heading = "Entry",
        conflicts_with = "stdin"
    )]
    resource: Option<String>,
    /// Severity of the entry (the server stores info when not given).
    #[arg(
        long,
        value_name = "LEVEL",
        help_heading = "Entry",
        conflicts_with = "stdin"
    )]
    level: Option<LevelArg>,
    /// A label; repeat for several.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label, help_heading = "Entry", conflicts_with = "stdin")]
    label: Vec<(String, String)>,
    /// Free-form details as a JSON object, for example '{"amount": 12.5}'.
    #[arg(
        long,
        value_name = "JSON",
        help_heading = "Entry",
        conflicts_with = "stdin"
    )]
    details: Option<String>,
    /// The entry's id, a UUID; recording the same id again stores it once (safe retries).
    #[arg(
        long,
        value_name = "UUID",
        help_heading = "Entry",
        conflicts_with = "stdin"
    )]
    id: Option<String>,
    /// The request id the entry (or every entry of a JSON batch) belongs to; the server
    /// generates one when not given.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
    /// Print the receipt as proto3 JSON.
    #[arg(long)]
    json: bool,
}

const RECORD_EXAMPLES: &str = "Examples:
  audit record --source billing-api --method /billing.v1.Billing/Charge --outcome success \\
      --principal alice --resource invoices/42 --label env=prod
  audit record --source kms --method /kms.v1.Kms/Delete --outcome denied --status-code permission_denied
  echo '{\"source\":\"kms\",\"method\":\"/kms.v1.Kms/Get\",\"outcome\":\"OUTCOME_SUCCESS\"}' | audit record
  audit record --stdin --request-id req-1 < batch.json";

/// Where the entries come from.
#[derive(Debug, PartialEq)]
enum Input {
    /// One entry built from flags.
    Flags(Box<pb::AuditEntry>),
    /// Proto3 JSON read from stdin.
    Stdin,
}

impl RecordArgs {
    fn has_entry_flags(&self) -> bool {
        self.source.is_some()
            || self.method.is_some()
            || self.outcome.is_some()
            || self.status_code.is_some()
            || self.status_message.is_some()
            || self.principal.is_some()
            || self.event.is_some()
            || self.category.is_some()
            || self.resource.is_some()
            || self.level.is_some()
            || !self.label.is_empty()
            || self.details.is_some()
            || self.id.is_some()
    }

    /// Decides where the entries come from; a usage error when flags are missing.
    fn input(&self, stdin_is_terminal: bool) -> Result<Input, clap::Error> {
        if self.stdin || (!self.has_entry_flags() && !stdin_is_terminal) {
            return Ok(Input::Stdin);
        }
        let missing: Vec<&str> = [
            ("--source", self.source.is_none()),
            ("--method", self.method.is_none()),
            ("--outcome", self.outcome.is_none()),
        ]
        .into_iter()
        .filter_map(|(flag, missing)| missing.then_some(flag))
        .collect();
        let (Some(source), Some(method), Some(outcome)) =
            (&self.source, &self.method, self.outcome)
        else {
            return Err(clap::Error::raw(
                ErrorKind::MissingRequiredArgument,
                format!(
                    "missing {} (or pass --stdin to read JSON entries)\n",
                    missing.join(", ")
                ),
            ));
        };
        let mut entry = EntryBuilder::new(source, method)
            .outcome(outcome.into())
            .status(
                self.status_code.unwrap_or(0),
                self.status_message.clone().unwrap_or_default(),
            );
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        entry = entry
            .id(text(&self.id))
            .request_id(text(&self.request_id))
            .event(text(&self.event))
            .category(text(&self.category))
            .resource(text(&self.resource));
        if let Some(principal) = &self.principal {
            entry = entry.principal(principal);
        }
        if let Some(level) = self.level {
            entry = entry.level(level.into());
        }
        for (key, value) in &self.label {
            entry = entry.label(key, value);
        }
        if let Some(details) = &self.details {
            let details = json::from_json::<prost_types::Struct>(details).map_err(|error| {
                clap::Error::raw(
                    ErrorKind::ValueValidation,
                    format!("invalid --details (expected a JSON object): {error}\n"),
                )
            })?;
            entry = entry.details(details);
        }
        Ok(Input::Flags(Box::new(entry.build())))
    }
}

pub async fn run(client: Client, args: RecordArgs) -> anyhow::Result<ExitCode> {
    let input = match args.input(std::io::stdin().is_terminal()) {
        Ok(input) => input,
        Err(error) => error.exit(),
    };
    let entries = match input {
        Input::Flags(entry) => JsonEntries::One(entry),
        Input::Stdin => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read stdin")?;
            if text.trim().is_empty() {
                anyhow::bail!(
                    "no JSON on stdin: expected an entry (object) or a batch (array); \
                     see `audit record --help`"
                );
            }
            json::entries_from_json(&text).context("cannot read entries from stdin")?
        }
    };
    let request_id = args.request_id.clone().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    match entries {
        JsonEntries::One(mut entry) => {
            if entry.request_id.is_empty() {
                entry.request_id = request_id;
            }
            let receipt = client.record(*entry).await.context("record failed")?;
            let line = if args.json {
                json::to_json(&receipt)?
            } else {
                receipt_line(&receipt.id, receipt.sequence)
            };
            write_line(&mut out, &line)?;
        }
        JsonEntries::Batch(entries) => {
            let receipt = client
                .record_batch(request_id, entries)
                .await
                .context("record batch failed")?;
            if args.json {
                write_line(&mut out, &json::to_json(&receipt)?)?;
            } else {
                write_line(
                    &mut out,
                    &format!("request_id={}", render::escape(&receipt.request_id)),
                )?;
                for (id, sequence) in receipt.ids.iter().zip(&receipt.sequences) {
                    write_line(&mut out, &receipt_line(id, *sequence))?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn receipt_line(id: &str, sequence: u64) -> String {
    format!("id={} sequence={sequence}", render::escape(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Test {
        #[command(flatten)]
        record: RecordArgs,
    }

    fn parse(args: &[&str]) -> Result<RecordArgs, clap::Error> {
        let mut argv = vec!["record"];
        argv.extend_from_slice(args);
        Test::try_parse_from(argv).map(|t| t.record)
    }

    #[test]
    fn flags_build_an_entry() {
        let args = parse(&[
            "--source",
            "billing-api",
            "--method",
            "/billing.v1.Billing/Charge",
            "--outcome",
            "denied",
            "--status-code",
            "permission_denied",
            "--status-message",
            "not yours",
            "--principal",
            "alice",
            "--request-id",
            "r1",
            "--label",
            "env=prod",
            "--event",
            "CHARGE",
            "--category",
            "BILLING",
            "--resource",
            "invoices/42",
            "--level",
            "warning",
            "--details",
            r#"{"amount": 12.5}"#,
        ])
        .unwrap();
        let Input::Flags(entry) = args.input(true).unwrap() else {
            panic!("expected flags");
        };
        assert_eq!(entry.source, "billing-api");
        assert_eq!(entry.method, "/billing.v1.Billing/Charge");
        assert_eq!(entry.outcome, pb::Outcome::Denied as i32);
        assert_eq!(entry.status_code, 7);
        assert_eq!(entry.status_message, "not yours");
        assert_eq!(entry.caller.as_ref().unwrap().principal, "alice");
        assert_eq!(entry.request_id, "r1");
        assert_eq!(entry.labels.get("env").map(String::as_str), Some("prod"));
        assert_eq!(entry.event, "CHARGE");
        assert_eq!(entry.category, "BILLING");
        assert_eq!(entry.resource, "invoices/42");
        assert_eq!(entry.level, pb::Level::Warning as i32);
        assert!(
            entry
                .details
                .as_ref()
                .unwrap()
                .fields
                .contains_key("amount")
        );
        // Flags win over a piped stdin.
        assert!(matches!(args.input(false).unwrap(), Input::Flags(_)));
    }

    #[test]
    fn chooses_stdin_when_asked_or_implied() {
        assert_eq!(
            parse(&["--stdin"]).unwrap().input(true).unwrap(),
            Input::Stdin
        );
        assert_eq!(parse(&[]).unwrap().input(false).unwrap(), Input::Stdin);
        assert_eq!(
            parse(&["--request-id", "r"]).unwrap().input(false).unwrap(),
            Input::Stdin
        );
    }

    #[test]
    fn usage_errors() {
        // Nothing given on a terminal.
        let error = parse(&[]).unwrap().input(true).unwrap_err();
        assert!(
            error.to_string().contains("--source, --method, --outcome"),
            "{error}"
        );
        // Missing outcome.
        let error = parse(&["--source", "s", "--method", "/p.S/M"])
            .unwrap()
            .input(false)
            .unwrap_err();
        assert!(error.to_string().contains("missing --outcome"), "{error}");
        // Entry flags and --stdin do not mix.
        assert!(parse(&["--stdin", "--source", "s"]).is_err());
        // Bad details.
        let error = parse(&[
            "--source",
            "s",
            "--method",
            "/p.S/M",
            "--outcome",
            "success",
            "--details",
            "[1]",
        ])
        .unwrap()
        .input(true)
        .unwrap_err();
        assert!(error.to_string().contains("--details"), "{error}");
    }
}
