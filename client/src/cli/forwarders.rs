//! `audit forwarders`: what each of the server's forwarders is doing.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use audit_client::{Client, json, pb, render};
use clap::Args;

use super::output::{Printed, write_line};

/// List the server's forwarders: state (RUNNING, RETRYING, HALTED, STANDBY), position, lag in
/// entries and in time (the age of the oldest entry not yet delivered), format, destination and
/// last error. Needs the Read permission.
#[derive(Debug, Args)]
pub struct ForwardersArgs {
    /// Print each forwarder as one line of proto3 JSON (`audit.v1.ForwarderStatus`).
    #[arg(long)]
    json: bool,
}

const HEADER: [&str; 8] = [
    "NAME",
    "STATE",
    "POSITION",
    "LAG",
    "LAG_TIME",
    "FORMAT",
    "DESTINATION",
    "LAST_ERROR",
];

pub async fn run(client: Client, args: ForwardersArgs) -> anyhow::Result<ExitCode> {
    let forwarders = client.forwarders().await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for forwarder in &forwarders {
            if write_line(&mut out, &json::to_json(forwarder)?)? == Printed::Closed {
                break;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if forwarders.is_empty() {
        eprintln!("audit: the server has no forwarders");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 8]> = forwarders.iter().map(row).collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = HEADER.map(String::from);
    for row in std::iter::once(&header).chain(&rows) {
        if write_line(&mut out, &line(row, &widths))? == Printed::Closed {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The columns, aligned; the last one (the error) is not padded.
fn line(row: &[String; 8], widths: &[usize; 8]) -> String {
    let mut line = String::new();
    for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
        if i + 1 == row.len() {
            line.push_str(cell);
        } else {
            line.push_str(&format!("{cell:<width$}  "));
        }
    }
    line.trim_end().to_string()
}

/// One forwarder's cells, each escaped (names, addresses and errors may come from anywhere).
fn row(forwarder: &pb::ForwarderStatus) -> [String; 8] {
    let state = pb::ForwarderState::try_from(forwarder.state)
        .map(|s| {
            let name = s.as_str_name();
            name.strip_prefix("FORWARDER_STATE_")
                .unwrap_or(name)
                .to_string()
        })
        .unwrap_or_else(|_| forwarder.state.to_string());
    let lag_time = forwarder
        .lag
        .and_then(|lag| Duration::try_from(lag).ok())
        .map_or("-".to_string(), |lag| format!("{:.1}s", lag.as_secs_f64()));
    let last_error = match (&forwarder.last_error, forwarder.last_error_time) {
        (error, _) if error.is_empty() => "-".to_string(),
        (error, Some(time)) => match SystemTime::try_from(time) {
            Ok(time) => format!("{} ({})", error, ago(time)),
            Err(_) => error.clone(),
        },
        (error, None) => error.clone(),
    };
    [
        forwarder.name.clone(),
        state,
        forwarder.position.to_string(),
        forwarder.lag_entries.to_string(),
        lag_time,
        forwarder.format.clone(),
        forwarder.destination.clone(),
        last_error,
    ]
    .map(|cell| render::escape_column(&cell).into_owned())
}

/// `12s ago`, or `just now`.
fn ago(time: SystemTime) -> String {
    match SystemTime::now().duration_since(time) {
        Ok(age) if age.as_secs() > 0 => format!("{}s ago", age.as_secs()),
        _ => "just now".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_escaped_and_states_short() {
        let forwarder = pb::ForwarderStatus {
            name: "hook".into(),
            destination: "http://127.0.0.1:9/x".into(),
            format: "logstash".into(),
            state: pb::ForwarderState::Retrying as i32,
            position: 3,
            lag_entries: 2,
            lag: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            last_error: "HTTP 503\n\u{1b}[31mforged".into(),
            last_error_time: None,
        };
        let row = row(&forwarder);
        assert_eq!(row[1], "RETRYING");
        assert_eq!(row[4], "1.5s");
        assert!(
            !row[7].contains('\n') && !row[7].contains('\u{1b}'),
            "{}",
            row[7]
        );
    }
}
