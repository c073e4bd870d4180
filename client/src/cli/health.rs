//! `audit health`: is the server serving?

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use audit_client::{Client, SERVICE_NAME, ServingStatus};
use clap::Args;

use super::output::write_line;

/// Check the server's health (grpc.health.v1) for the whole server ("") and for
/// audit.v1.AuditService, printing SERVING or NOT_SERVING for each.
///
/// Exits with status 0 only when both are SERVING; 1 when one is not, or when the server
/// cannot be reached within the timeout.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Seconds to wait for each answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    timeout: u64,
}

pub async fn run(client: Client, args: HealthArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout);
    let mut all_serving = true;
    let mut out = std::io::stdout().lock();
    for (label, service) in [("(server)", ""), (SERVICE_NAME, SERVICE_NAME)] {
        let status = tokio::time::timeout(timeout, client.health(service))
            .await
            .with_context(|| format!("no health answer for {label} within {timeout:?}"))?
            .with_context(|| format!("health check of {label} failed"))?;
        all_serving &= status == ServingStatus::Serving;
        write_line(&mut out, &format!("{label:<22} {}", status.as_str_name()))?;
    }
    if all_serving {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("audit: the server is not serving");
        Ok(ExitCode::FAILURE)
    }
}
