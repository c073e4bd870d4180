//! `audit-server`: parses its configuration, sets up logging on stderr, binds, prints the bound
//! address on stdout, and serves until SIGINT or SIGTERM.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use audit_server::Config;
use audit_server::config::LogFormat;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => log.json().init(),
    }
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("audit-server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    // A file-size limit must fail a write (and poison the store), not kill the process.
    let _ignore_file_size_signal = signal(SignalKind::from_raw(libc_sigxfsz()))?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;

    raise_open_files_limit();
    let data_dir = config.data_dir.clone();
    let listeners = audit_server::Listeners::bind(&config).await?;
    let server = audit_server::AuditServer::open(config)?;
    {
        // Scripts and tests read these lines to find the bound addresses.
        let mut stdout = std::io::stdout().lock();
        for listener in listeners
            .describe()
            .into_iter()
            .chain(server.describe_web())
            .chain(server.describe_metrics())
        {
            writeln!(stdout, "audit-server listening on {listener}")?;
            tracing::info!(%listener, data_dir = %data_dir.display(), "listening");
        }
        writeln!(stdout, "audit-server ready")?;
        stdout.flush()?;
    }
    let shutdown = async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    };
    server.serve(listeners, shutdown).await?;
    Ok(())
}

/// Raises the soft limit on open files to the hard limit, as a server holding many connections
/// needs (the soft limit is often 1024); connections beyond it are refused by the accept loop's
/// back-off, not by a busy loop.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "cannot raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the open files limit"),
    }
}

/// SIGXFSZ, "file size limit exceeded" (25 on Linux).
const fn libc_sigxfsz() -> i32 {
    25
}
