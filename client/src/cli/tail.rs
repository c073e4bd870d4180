//! `audit tail`: follow the log live.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use audit_client::{Client, RetryPolicy, Start};
use clap::Args;
use futures::StreamExt as _;

use super::filter::FilterArgs;
use super::output::{OutputArgs, Printed};

/// Print entries as they are recorded, one line each, until interrupted.
///
/// Starts with the next entry recorded, or replays from --from-sequence or --since first. When
/// the connection drops or the server restarts, it reconnects (waiting 100 ms, doubling up to
/// 5 s) and resumes exactly where it stopped: no entry is missed or printed twice. Ctrl-C exits
/// with status 0.
///
/// Lines show: time, #sequence, outcome, status code, caller (principal@address), method and
/// resource. Control characters in entries are shown as escapes (\n, \x1b, \u{2028}), so no
/// entry can forge a line or change the terminal.
#[derive(Debug, Args)]
#[command(after_long_help = TAIL_EXAMPLES)]
pub struct TailArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Start with the entry at this sequence, replaying stored entries before going live (0 or 1:
    /// the whole log). Overrides --since as the start position.
    #[arg(long, value_name = "N")]
    from_sequence: Option<u64>,
    /// Exit (with status 0) after printing this many entries.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Give up after this many consecutive failed reconnection attempts (default: never).
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,
    #[command(flatten)]
    output: OutputArgs,
}

const TAIL_EXAMPLES: &str = "Examples:
  audit tail                                   # new entries from now on
  audit tail --from-sequence 0 --json          # the whole log, then live, as JSON lines
  audit tail --outcome denied --outcome error  # failures only
  audit tail --source billing-api --count 10   # stop after ten entries";

impl TailArgs {
    /// Where the subscription starts: --from-sequence, else the receive time --since, else now.
    fn start(&self) -> Start {
        match (self.from_sequence, self.filter.since) {
            (Some(sequence), _) => Start::AfterSequence(sequence.saturating_sub(1)),
            (None, Some(since)) => Start::ReceivedTime(since),
            (None, None) => Start::Now,
        }
    }
}

pub async fn run(client: Client, args: TailArgs, color: bool) -> anyhow::Result<ExitCode> {
    let policy = RetryPolicy::unlimited().max_consecutive_failures(args.max_retries);
    let mut entries = client.subscribe_with(args.filter.to_filter(), args.start(), policy);
    let mut printer = args.output.printer(color)?;
    let mut printed: u64 = 0;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let entry = tokio::select! {
            result = &mut shutdown => {
                result?;
                return Ok(ExitCode::SUCCESS);
            }
            next = entries.next() => match next {
                Some(entry) => entry.context("subscription failed")?,
                None => bail!("the subscription ended"),
            },
        };
        match printer.print(&entry)? {
            Printed::Ok => {}
            Printed::Skipped => continue,
            Printed::Closed => return Ok(ExitCode::SUCCESS),
        }
        printed += 1;
        if args.count.is_some_and(|count| printed >= count) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C"),
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Test {
        #[command(flatten)]
        tail: TailArgs,
    }

    fn parse(args: &[&str]) -> TailArgs {
        let mut argv = vec!["tail"];
        argv.extend_from_slice(args);
        Test::try_parse_from(argv).unwrap().tail
    }

    #[test]
    fn start_position() {
        assert_eq!(parse(&[]).start(), Start::Now);
        assert_eq!(
            parse(&["--from-sequence", "0"]).start(),
            Start::AfterSequence(0)
        );
        assert_eq!(
            parse(&["--from-sequence", "1"]).start(),
            Start::AfterSequence(0)
        );
        assert_eq!(
            parse(&["--from-sequence", "42"]).start(),
            Start::AfterSequence(41)
        );
        let since = parse(&["--since", "2026-11-22T10:00:00Z"]);
        assert!(matches!(since.start(), Start::ReceivedTime(t) if t.seconds == 1_795_341_600));
        let both = parse(&["--since", "2026-11-22T10:00:00Z", "--from-sequence", "5"]);
        assert_eq!(both.start(), Start::AfterSequence(4));
    }

    #[test]
    fn count_must_be_positive() {
        assert!(Test::try_parse_from(["tail", "--count", "0"]).is_err());
        assert_eq!(parse(&["--count", "3"]).count, Some(3));
    }
}
