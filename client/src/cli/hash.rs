//! `audit hash`: the hash redaction stores for a known value, to search for it.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::Context as _;
use audit_client::Client;
use clap::Args;

use super::output::write_line;

/// Print the hash that redaction stores for VALUE (`hmac-sha256:KEYID:HEX`), computed by the
/// server with its redaction key, to search for a known secret, e.g.
/// `audit query --principal "$(audit hash alice@example.com)"`.
///
/// Needs the `admin` permission. The server records who asked and with which key, never the
/// value.
#[derive(Debug, Args)]
pub struct HashArgs {
    /// The value in clear; `-` reads it from stdin (one trailing line break removed), which
    /// keeps it out of the shell's history and the process list.
    value: String,
    /// Id of the redaction key to hash with, for entries redacted before a key rotation; the
    /// server's current key by default.
    #[arg(long, value_name = "ID")]
    key_id: Option<String>,
}

pub async fn run(client: Client, args: HashArgs) -> anyhow::Result<ExitCode> {
    let value = if args.value == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the value from stdin")?;
        let trimmed = text.strip_suffix('\n').unwrap_or(&text);
        trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string()
    } else {
        args.value
    };
    let response = client
        .hash_value(&value, args.key_id.as_deref().unwrap_or_default())
        .await
        .context("HashValue failed")?;
    write_line(&mut std::io::stdout().lock(), &response.hash)?;
    Ok(ExitCode::SUCCESS)
}
