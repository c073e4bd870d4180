//! Command-line parsing and dispatch of `audit`.

mod export;
mod filter;
mod forwarders;
mod hash;
mod health;
mod output;
mod query;
mod record;
mod tail;
mod verify;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use audit_client::{Client, render};
use clap::{Parser, Subcommand, ValueEnum};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Tail, query and record entries of an audit service, and check its health.
///
/// Audit output goes to stdout (one line per entry); errors go to stderr. The exit status is 0
/// on success, 1 on any error (including an unhealthy or unreachable server), 2 on bad usage.
#[derive(Debug, Parser)]
#[command(name = "audit", version, propagate_version = true)]
pub struct Cli {
    /// Address of the audit server: `http://host:port`, or `unix:/path/to/socket` for its Unix
    /// socket.
    #[arg(
        long,
        global = true,
        env = "AUDIT_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URI"
    )]
    server: String,
    /// Connection security, for an `https://` server.
    #[command(flatten)]
    tls: TlsArgs,
    /// When to colour human-readable output: `auto` colours only when stdout is a terminal and
    /// NO_COLOR is unset.
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto")]
    color: ColorChoice,
    #[command(subcommand)]
    command: Command,
}

/// TLS settings for `https://` servers. Their variables are `AUDIT_CLI_TLS_*`, not the
/// server's `AUDIT_TLS_*`, so that both can be set on one host.
#[derive(Debug, clap::Args)]
struct TlsArgs {
    /// CA certificate (PEM) that signs the server's certificate; the system's roots are not
    /// used.
    #[arg(long, global = true, env = "AUDIT_CLI_TLS_CA", value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; its one URI SAN is the SPIFFE ID the server sees.
    #[arg(
        long,
        global = true,
        env = "AUDIT_CLI_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(
        long,
        global = true,
        env = "AUDIT_CLI_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Name to expect in the server's certificate, when it differs from the URI's host.
    #[arg(long, global = true, env = "AUDIT_CLI_TLS_DOMAIN", value_name = "NAME")]
    tls_domain: Option<String>,
}

impl TlsArgs {
    /// The TLS configuration these flags describe, or `None` when none is given.
    fn config(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        if self.tls_ca.is_none() && self.tls_cert.is_none() && self.tls_domain.is_none() {
            return Ok(None);
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &self.tls_ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(domain) = &self.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        Ok(Some(tls))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    Tail(tail::TailArgs),
    Query(query::QueryArgs),
    Record(record::RecordArgs),
    Health(health::HealthArgs),
    Hash(hash::HashArgs),
    Export(export::ExportArgs),
    Verify(verify::VerifyArgs),
    Checkpoint(verify::CheckpointArgs),
    Key(verify::KeyArgs),
    Forwarders(forwarders::ForwardersArgs),
}

/// When to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ColorChoice {
    /// Colour when stdout is a terminal and NO_COLOR is unset.
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

impl ColorChoice {
    fn enabled(self) -> bool {
        match self {
            ColorChoice::Auto => render::stdout_wants_color(),
            ColorChoice::Always => true,
            ColorChoice::Never => false,
        }
    }
}

/// Parses the command line, runs the command, and turns its result into an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("audit: error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            // Messages may quote the server; escape them like any other untrusted text.
            eprintln!("audit: error: {}", render::escape(&error_message(&error)));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let color = cli.color.enabled();
    let tls = cli.tls.config()?;
    let connect = || async {
        match tls.clone() {
            Some(tls) => Client::connect_tls(cli.server.clone(), tls).await,
            None => Client::connect(cli.server.clone()).await,
        }
    };
    match cli.command {
        Command::Tail(args) => tail::run(connect().await?, args, color).await,
        Command::Query(args) => query::run(connect().await?, args, color).await,
        Command::Record(args) => record::run(connect().await?, args).await,
        Command::Health(args) => health::run(connect().await?, args).await,
        Command::Hash(args) => hash::run(connect().await?, args).await,
        Command::Export(args) => export::run(connect().await?, args).await,
        Command::Verify(args) => verify::run(connect, args).await,
        Command::Checkpoint(args) => verify::checkpoint(connect().await?, args).await,
        Command::Key(args) => verify::key(connect, args).await,
        Command::Forwarders(args) => forwarders::run(connect().await?, args).await,
    }
}

/// The error and its causes, joined by `: `, leaving out causes the text already says (error
/// types that show their source in their own message).
fn error_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// Library logs (reconnections of `audit tail`) go to stderr, at `warn` unless `RUST_LOG` says
/// otherwise.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn error_message_skips_repeated_causes() {
        let json = serde_json::from_str::<serde_json::Value>("nope").unwrap_err();
        let error = anyhow::Error::new(audit_client::Error::from(json)).context("cannot read");
        assert_eq!(
            error_message(&error),
            "cannot read: invalid JSON: expected ident at line 1 column 2"
        );
    }

    #[test]
    fn server_defaults_to_localhost() {
        let cli = Cli::try_parse_from(["audit", "health"]).unwrap();
        // AUDIT_SERVER may be set in the environment running the tests.
        if std::env::var_os("AUDIT_SERVER").is_none() {
            assert_eq!(cli.server, "http://127.0.0.1:50051");
        }
        let cli = Cli::try_parse_from(["audit", "health", "--server", "http://h:1"]).unwrap();
        assert_eq!(cli.server, "http://h:1");
    }
}
