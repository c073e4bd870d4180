//! `audit query`: search stored entries.

use std::process::ExitCode;

use anyhow::Context as _;
use audit_client::{Client, QueryOptions, pb};
use clap::{Args, ValueEnum};
use futures::StreamExt as _;

use super::filter::FilterArgs;
use super::output::{OutputArgs, Printed};

/// Print stored entries matching the filters, one line each, oldest first unless --order desc.
///
/// Follows the server's pages until the last one or --limit. --since and --until select by the
/// entries' time. Lines look like those of `audit tail`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Print at most this many entries.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Order by sequence: asc (oldest first) or desc (newest first).
    #[arg(long, value_name = "ORDER", default_value = "asc")]
    order: OrderArg,
    /// Entries per request to the server (0: the server's default).
    #[arg(long, value_name = "N", default_value_t = 0)]
    page_size: u32,
    #[command(flatten)]
    output: OutputArgs,
}

/// Order of query results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OrderArg {
    /// Oldest first.
    Asc,
    /// Newest first.
    Desc,
}

impl QueryArgs {
    fn options(&self) -> QueryOptions {
        let order = match self.order {
            OrderArg::Asc => pb::Order::Ascending,
            OrderArg::Desc => pb::Order::Descending,
        };
        let options = QueryOptions::new().order(order).page_size(self.page_size);
        match self.limit {
            Some(limit) => options.limit(limit),
            None => options,
        }
    }
}

pub async fn run(client: Client, args: QueryArgs, color: bool) -> anyhow::Result<ExitCode> {
    let mut entries = client.query(args.filter.to_filter(), args.options());
    let mut printer = args.output.printer(color)?;
    let mut skipped: u64 = 0;
    while let Some(entry) = entries.next().await {
        let entry = entry.context("query failed")?;
        match printer.print(&entry)? {
            Printed::Ok => {}
            Printed::Skipped => skipped += 1,
            Printed::Closed => break,
        }
    }
    if skipped > 0 {
        // Every other entry was printed; the exit status says that the export is incomplete.
        eprintln!("audit: {skipped} entries could not be printed (see above)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Test {
        #[command(flatten)]
        query: QueryArgs,
    }

    #[test]
    fn options_from_flags() {
        let args = Test::try_parse_from(["query"]).unwrap().query;
        assert_eq!(
            args.options(),
            QueryOptions::new().order(pb::Order::Ascending)
        );
        let args = Test::try_parse_from(["query", "--order", "desc", "--limit", "5"])
            .unwrap()
            .query;
        assert_eq!(
            args.options(),
            QueryOptions::new().order(pb::Order::Descending).limit(5)
        );
        assert!(Test::try_parse_from(["query", "--order", "sideways"]).is_err());
    }
}
