//! `audit verify`, `audit checkpoint` and `audit key`: tamper evidence from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use audit_client::Client;
use audit_client::verify::archive::ProofKind;
use audit_client::verify::{self, KeySource, PublicKey, Report, Trust};
use clap::Args;

use super::output::write_line;

/// Exit status when the log is not intact, distinct from 1 (could not verify at all).
const TAMPERED: u8 = 3;

/// Verify that the log is intact: every entry matches its hash, the hash chain is unbroken from
/// the first entry, and every signed checkpoint matches the entries it covers.
///
/// With `--data-dir`, reads a stopped server's data directory directly (read-only); otherwise
/// asks the running server at `--server`. Prints `OK` with counts, or `TAMPERED` with the first
/// bad sequence and what is wrong.
///
/// With `--archive FILE --public-key KEY`, verifies an archive written by `audit export`
/// offline: nothing but the file and the key is needed.
///
/// Exit status: 0 intact, 3 tampered, 1 when verification could not run.
///
/// Give the public key from a trusted copy (`audit key` printed it when the server was set up):
/// without `--public-key`, the key is taken from what is being verified, which an attacker
/// holding the store could replace. Give a checkpoint kept from earlier (`audit checkpoint >
/// FILE`) to catch a store rolled back to an older copy.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// An archive written by `audit export` to verify offline, with `--public-key`, instead of
    /// asking `--server`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["data_dir", "store", "checkpoint", "checkpoint_dir"])]
    archive: Option<PathBuf>,
    /// Data directory of a stopped server to verify offline, instead of asking `--server`.
    #[arg(long, value_name = "DIR", conflicts_with = "store")]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL log (`postgres://USER@HOST:PORT/DB`, as the servers' `--store`) to verify
    /// straight from the database, instead of asking `--server`; needs `--public-key`.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// The log's public key, `<name>+<id>+<base64>`, or a file holding it.
    #[arg(long, value_name = "KEY|FILE")]
    public_key: Option<String>,
    /// A signed checkpoint kept from earlier (a file written by `audit checkpoint`); the log
    /// must contain what it signs. Repeatable.
    #[arg(long, value_name = "FILE")]
    checkpoint: Vec<PathBuf>,
    /// A directory of checkpoints kept from earlier, such as the server's `--checkpoint-copy`
    /// directory: every `*.note` file in it is used as with `--checkpoint`.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
}

/// Print the log's newest signed checkpoint (a C2SP signed note). Keep it to check later that
/// the log still contains what it signs: `audit verify --checkpoint FILE`.
#[derive(Debug, Args)]
pub struct CheckpointArgs {}

/// Print the public key that verifies the log's checkpoints, `<name>+<id>+<base64 key>`.
///
/// With `--data-dir`, reads it from the data directory (`signing.pub`); otherwise asks the
/// server at `--server`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Data directory of the server.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Verifies a stopped server's data directory, or the server `connect` reaches.
pub async fn run(
    connect: impl AsyncFnOnce() -> Result<Client, audit_client::Error>,
    args: VerifyArgs,
) -> anyhow::Result<ExitCode> {
    let public_key = args
        .public_key
        .as_deref()
        .map(read_public_key)
        .transpose()?;
    if let Some(path) = &args.archive {
        let key = public_key.context(
            "--archive needs --public-key: an archive holds no key that could be trusted",
        )?;
        return verify_archive(path, &key);
    }
    let mut paths = args.checkpoint.clone();
    if let Some(dir) = &args.checkpoint_dir {
        let listing = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read checkpoint directory {}", dir.display()))?;
        for item in listing {
            let path = item
                .with_context(|| format!("cannot read checkpoint directory {}", dir.display()))?
                .path();
            if path.extension().is_some_and(|e| e == "note") {
                paths.push(path);
            }
        }
    }
    let checkpoints = paths
        .iter()
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read checkpoint {}", path.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let trust = Trust {
        public_key,
        checkpoints,
    };
    let started = std::time::Instant::now();
    let report = match (&args.data_dir, &args.store) {
        (Some(dir), _) => {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || verify::verify_data_dir(&dir, &trust)).await??
        }
        (None, Some(url)) => verify::verify_postgres(url, &trust).await?,
        (None, None) => verify::verify_server(&connect().await?, &trust).await?,
    };
    print_report(&report, started.elapsed())
}

/// Verifies an archive offline and prints the verdict.
fn verify_archive(path: &std::path::Path, key: &PublicKey) -> anyhow::Result<ExitCode> {
    let report = verify::archive::verify_archive(path, key)?;
    let mut out = std::io::stdout().lock();
    let name = path.display();
    match report {
        Ok(summary) => {
            let proof = match summary.manifest.proof {
                ProofKind::Range => "one range proof",
                ProofKind::Inclusion => "an inclusion proof each",
            };
            let trailer = &summary.trailer;
            write_line(
                &mut out,
                &format!(
                    "OK: archive {name}: {} entries ({} to {}) verified with {proof} against the \
                     checkpoint of size {} of log {} signed by {}; filter {}",
                    trailer.entries,
                    trailer.first_sequence,
                    trailer.last_sequence,
                    summary.checkpoint.size,
                    summary.checkpoint.origin,
                    key.name(),
                    summary.manifest.filter
                ),
            )?;
            if summary.manifest.proof == ProofKind::Inclusion {
                write_line(
                    &mut out,
                    "note: a filtered archive proves that each entry it holds is in the log; \
                     that it holds every matching entry rests on its trailer",
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(problem) => {
            write_line(&mut out, &format!("TAMPERED: archive {name}: {problem}"))?;
            Ok(ExitCode::from(TAMPERED))
        }
    }
}

fn print_report(report: &Report, elapsed: std::time::Duration) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match report.key_source {
        KeySource::Trusted => {}
        KeySource::DataDir | KeySource::Server => eprintln!(
            "audit: warning: no --public-key given; trusting the key {} presented by what is \
             being verified",
            report.public_key.to_text()
        ),
    }
    match &report.problem {
        None => {
            let covered = match &report.newest_checkpoint {
                Some(checkpoint) => format!(
                    "; newest checkpoint signs {} entries (signed by {})",
                    checkpoint.size,
                    report.public_key.name()
                ),
                None => "; no checkpoint yet".to_string(),
            };
            write_line(
                &mut out,
                &format!(
                    "OK: {} entries and {} checkpoints verified in {:.2}s{covered}",
                    report.entries,
                    report.checkpoints,
                    elapsed.as_secs_f64()
                ),
            )?;
            if report.pruned > 0 {
                write_line(
                    &mut out,
                    &format!(
                        "pruned: entries 1 to {} were removed by retention, as a signed \
                         checkpoint states; their hashes verified, their content is gone",
                        report.pruned
                    ),
                )?;
            }
            if report.uncovered() > 0 {
                write_line(
                    &mut out,
                    &format!(
                        "note: the last {} entries are chained but not yet covered by a signed \
                         checkpoint",
                        report.uncovered()
                    ),
                )?;
            }
            if report
                .newest_checkpoint
                .as_ref()
                .is_some_and(|c| c.max_unsigned.is_none())
            {
                write_line(
                    &mut out,
                    "note: the newest checkpoint is a legacy one (no max-unsigned line): it does \
                     not bound how many entries may follow it unsigned",
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(problem) => {
            write_line(
                &mut out,
                &format!(
                    "TAMPERED: first bad sequence {}: {}",
                    problem.sequence, problem.reason
                ),
            )?;
            write_line(
                &mut out,
                &format!(
                    "{} entries before it and {} checkpoints verified",
                    report.entries, report.checkpoints
                ),
            )?;
            Ok(ExitCode::from(TAMPERED))
        }
    }
}

pub async fn checkpoint(client: Client, _args: CheckpointArgs) -> anyhow::Result<ExitCode> {
    let response = client.checkpoint_response(0).await?;
    let checkpoint = response
        .checkpoint
        .context("the server has not signed a checkpoint yet")?;
    print!("{}", checkpoint.note);
    Ok(ExitCode::SUCCESS)
}

/// Prints the log's public key, from a data directory or from the server `connect` reaches.
pub async fn key(
    connect: impl AsyncFnOnce() -> Result<Client, audit_client::Error>,
    args: KeyArgs,
) -> anyhow::Result<ExitCode> {
    let text = match &args.data_dir {
        Some(dir) => {
            let path = dir.join("signing.pub");
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
        }
        None => connect().await?.checkpoint_response(0).await?.public_key,
    };
    let key = PublicKey::from_text(&text).context("not a public key")?;
    println!("{}", key.to_text());
    Ok(ExitCode::SUCCESS)
}

/// A public key given inline, or the path of a file holding one.
pub(super) fn read_public_key(text: &str) -> anyhow::Result<PublicKey> {
    if let Ok(key) = PublicKey::from_text(text) {
        return Ok(key);
    }
    let contents =
        std::fs::read_to_string(text).with_context(|| format!("`{text}` is not a public key"))?;
    PublicKey::from_text(&contents).with_context(|| format!("{text} holds no public key"))
}
