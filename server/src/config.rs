//! Server configuration: command-line flags, each also settable through an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Configuration of the audit server.
#[derive(Debug, Clone, Parser)]
#[command(name = "audit-server", version, about = "Durable gRPC audit service", long_about = None)]
pub struct Config {
    /// Address to listen on for plaintext gRPC, or `none`. Port 0 picks a free port; each bound
    /// address is printed on stdout. Without a policy, plaintext callers are allowed only from
    /// loopback addresses.
    #[arg(long, env = "AUDIT_LISTEN", default_value = "127.0.0.1:50051", value_parser = parse_listen)]
    pub listen: Listen,

    /// TLS listeners, unset by default.
    #[command(flatten)]
    pub tls: TlsConfig,

    /// Unix domain socket to listen on, e.g. `/run/audit/audit.sock`. Created with
    /// `--unix-socket-mode`, replacing a stale socket file left by a crash; removed on shutdown.
    /// Callers are identified by the kernel: uid, gid, pid and executable.
    #[arg(long, env = "AUDIT_UNIX_SOCKET")]
    pub unix_socket: Option<PathBuf>,

    /// Permissions of the Unix socket file, in octal.
    #[arg(long, env = "AUDIT_UNIX_SOCKET_MODE", default_value = "660", value_parser = parse_mode)]
    pub unix_socket_mode: u32,

    /// Policy file (TOML, or YAML when named `*.yaml`/`*.yml`) granting `record`, `read` and
    /// `admin` to identities. Without one, callers on the Unix socket and plaintext loopback may
    /// do everything, and TLS callers need a valid client certificate.
    #[arg(long, env = "AUDIT_POLICY")]
    pub policy: Option<PathBuf>,

    /// Most refused calls recorded as denied entries per second; further refusals are only
    /// counted (one log line a second), so that a flood of refused calls cannot fill the disk.
    #[arg(long, env = "AUDIT_MAX_DENIED_PER_SECOND", default_value_t = 100)]
    pub max_denied_per_second: u32,

    /// Most refused calls of one caller (SPIFFE ID, uid, or IP address) recorded per second, so
    /// that one caller's flood cannot crowd out the refusals of others.
    #[arg(
        long,
        env = "AUDIT_MAX_DENIED_PER_IDENTITY_PER_SECOND",
        default_value_t = 10
    )]
    pub max_denied_per_identity_per_second: u32,

    /// Where the log is kept: `sqlite` (the embedded default, in `--data-dir`), or a
    /// PostgreSQL URL, `postgres://USER@HOST:PORT/DB`, that any number of replicas may share
    /// (they need the same `--signing-key`). URL options: `connect_timeout` (seconds),
    /// `statement_timeout` and `poll_interval` (durations), `pool_size` (read connections).
    #[arg(long, env = "AUDIT_STORE", default_value = "sqlite", value_parser = parse_store)]
    pub store: StoreLocation,

    /// Directory holding the embedded SQLite database (`audit.db`) and, without
    /// `--signing-key`, the signing key; created with mode 0700 if missing. Only one server may
    /// use a data directory at a time.
    #[arg(long, env = "AUDIT_DATA_DIR", default_value = "./audit-data")]
    pub data_dir: PathBuf,

    /// Log filter for the server's own log on stderr (tracing `EnvFilter` syntax, e.g. `info`,
    /// `audit_server=debug`).
    #[arg(long, env = "AUDIT_LOG", default_value = "info")]
    pub log: String,

    /// Format of the server's own log on stderr: `text`, or `json` (one object per line) for log
    /// collectors. The audit trail never goes there.
    #[arg(long, env = "AUDIT_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Signed checkpoints.
    #[command(flatten)]
    pub checkpoints: CheckpointConfig,

    /// The web console, off by default.
    #[command(flatten)]
    pub web: WebConfig,

    /// Address to serve Prometheus metrics on (`GET /metrics`, plain HTTP), e.g.
    /// `127.0.0.1:9464`; off by default. Scrapes are not audited and pass no policy: bind it
    /// where only the monitoring system reaches it.
    #[arg(long, env = "AUDIT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// A forwarder, `NAME=URL` (repeatable): `syslog+udp://HOST:PORT`, `syslog+tcp://…`,
    /// `syslog+tls://…`, `http(s)://HOST:PORT/PATH` or `file:///PATH`, options as query
    /// parameters (`?format=cef&facility=local3`). See the README, "Shipping to a SIEM".
    #[arg(long = "forward", value_name = "NAME=URL", value_parser = crate::forward::parse_flag)]
    pub forward: Vec<crate::forward::ForwardSpec>,

    /// Configuration file (TOML) with `[[forward]]` tables: `name`, `url`, `format`, `filter`
    /// (the fields of `Filter`) and the forwarder's options.
    #[arg(long, env = "AUDIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Retention: how long entries are kept, off by default.
    #[command(flatten)]
    pub retention: crate::retention::Retention,

    /// Redaction of secrets before entries are stored.
    #[command(flatten)]
    pub redaction: crate::redaction::RedactionConfig,

    /// How connections are accepted, kept and closed.
    #[command(flatten)]
    pub connections: ConnectionLimits,

    /// Validation and resource limits.
    #[command(flatten)]
    pub limits: Limits,
}

/// Where the log is kept.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// The embedded SQLite database in the data directory.
    Sqlite,
    /// A PostgreSQL database shared by replicas.
    Postgres(Box<crate::store::postgres::Settings>),
}

fn parse_store(text: &str) -> Result<StoreLocation, String> {
    if text == "sqlite" {
        return Ok(StoreLocation::Sqlite);
    }
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        return crate::store::postgres::Settings::parse(text)
            .map(|settings| StoreLocation::Postgres(Box::new(settings)))
            .map_err(|e| e.to_string());
    }
    Err("expected `sqlite` or a postgres:// URL".into())
}

/// Format of the server's own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// How the server signs checkpoints of its log.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckpointConfig {
    /// Ed25519 key that signs checkpoints, a file holding `PRIVATE+KEY+<name>+<id>+<key>` (the
    /// C2SP note format). Without it the server uses `signing.key` in the data directory,
    /// generating it (mode 0600) on first start. Its public key is written to `signing.pub`.
    #[arg(long, env = "AUDIT_SIGNING_KEY", value_name = "PATH")]
    pub signing_key: Option<PathBuf>,

    /// Name of the log: the first line of every checkpoint, and the name of a generated key.
    /// No spaces and no `+`.
    #[arg(long, env = "AUDIT_LOG_NAME", default_value = "audit-log")]
    pub log_name: String,

    /// Sign a checkpoint once this many entries are not covered by one.
    #[arg(long, env = "AUDIT_CHECKPOINT_EVERY_ENTRIES", default_value_t = 1000)]
    pub checkpoint_every_entries: u64,

    /// Sign a checkpoint at most this long after an entry not covered by one, e.g. `10s`. One
    /// is also signed at shutdown.
    #[arg(long, env = "AUDIT_CHECKPOINT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,

    /// Directory (on another volume than the data directory) that receives a copy of every
    /// checkpoint as it is signed: `<size>.note` and `latest.note`, each written atomically.
    /// At start the store must still contain what `latest.note` signs. Verify with
    /// `audit verify --checkpoint-dir DIR`.
    #[arg(long, env = "AUDIT_CHECKPOINT_COPY", value_name = "DIR")]
    pub checkpoint_copy: Option<PathBuf>,

    /// What the start-up verification checks besides the newest checkpoint and the entries after
    /// it: `full` also runs SQLite's integrity check (indexes agree with their table; reads the
    /// whole database), `schema` only compares the schema. A store that fails opens read-only.
    #[arg(long, env = "AUDIT_STARTUP_CHECK", default_value = "full", value_enum)]
    pub startup_check: crate::store::StartupCheck,
}

impl CheckpointConfig {
    /// The store's options.
    pub fn checkpointing(&self) -> crate::store::Checkpointing {
        crate::store::Checkpointing {
            signing_key: self.signing_key.clone(),
            log_name: self.log_name.clone(),
            every_entries: self.checkpoint_every_entries,
            interval: self.checkpoint_interval,
            copy_dir: self.checkpoint_copy.clone(),
            startup_check: self.startup_check,
        }
    }
}

/// The web console's listener: off unless `--web-listen` is given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WebConfig {
    /// Address to serve the web console on (HTTP, or HTTPS with `--web-tls-cert` and
    /// `--web-tls-key`), e.g. `127.0.0.1:8080`. Callers need the `read` permission, as for Query.
    #[arg(long, env = "AUDIT_WEB_LISTEN")]
    pub web_listen: Option<SocketAddr>,

    /// Server certificate chain (PEM) of the console; with `--web-tls-key`, it serves HTTPS.
    #[arg(long, env = "AUDIT_WEB_TLS_CERT", requires_all = ["web_listen", "web_tls_key"])]
    pub web_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of the console's certificate.
    #[arg(long, env = "AUDIT_WEB_TLS_KEY", requires_all = ["web_listen", "web_tls_cert"])]
    pub web_tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that sign browser client certificates. A browser presenting one
    /// is identified by its SPIFFE ID, as on the gRPC TLS listener; one without may still use a
    /// bearer token.
    #[arg(long, env = "AUDIT_WEB_TLS_CLIENT_CA", requires = "web_tls_cert")]
    pub web_tls_client_ca: Option<PathBuf>,

    /// File of bearer tokens for the console, one `NAME TOKEN` per line (`#` starts a
    /// comment; tokens of at least 16 characters). A caller sending `Authorization: Bearer
    /// TOKEN` (or HTTP Basic with TOKEN as password) is the identity `token:NAME` of the policy.
    #[arg(long, env = "AUDIT_WEB_TOKEN_FILE", requires = "web_listen")]
    pub web_token_file: Option<PathBuf>,
}

/// The plaintext TCP listener: an address, or none.
pub type Listen = Option<SocketAddr>;

/// TLS listener settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsConfig {
    /// Address to listen on for TLS (with `--tls-cert` and `--tls-key`).
    #[arg(long, env = "AUDIT_TLS_LISTEN", requires_all = ["tls_cert", "tls_key"])]
    pub tls_listen: Option<SocketAddr>,

    /// Server certificate chain (PEM) of the TLS listener.
    #[arg(long, env = "AUDIT_TLS_CERT", requires = "tls_listen")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of the TLS listener.
    #[arg(long, env = "AUDIT_TLS_KEY", requires = "tls_listen")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that sign client certificates. When given, every TLS caller must
    /// present a certificate from this CA carrying exactly one URI SAN, its SPIFFE ID (mutual
    /// TLS).
    #[arg(long, env = "AUDIT_TLS_CLIENT_CA", requires = "tls_listen")]
    pub tls_client_ca: Option<PathBuf>,
}

/// How each listener accepts, keeps and closes connections, so that idle, silent or numerous
/// connections cannot exhaust the server or hold up its shutdown.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionLimits {
    /// Most open connections per listener; further ones are closed at once (counted in the log).
    #[arg(long, env = "AUDIT_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// A new connection must complete its TLS handshake and send the HTTP/2 preface within this,
    /// or it is closed, e.g. `10s`.
    #[arg(long, env = "AUDIT_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// A connection without a call in progress for this long is closed with an HTTP/2 GOAWAY;
    /// clients reconnect on their next call, e.g. `5m`.
    #[arg(long, env = "AUDIT_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Interval of HTTP/2 pings on every connection, to keep subscriptions open through proxies
    /// and to find dead peers.
    #[arg(long, env = "AUDIT_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,

    /// A peer that does not answer a ping within this long is disconnected.
    #[arg(long, env = "AUDIT_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// Most concurrent calls (HTTP/2 streams) on one connection; clients queue further calls.
    #[arg(long, env = "AUDIT_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// At shutdown, calls in progress get this long to finish; then every connection is closed.
    /// Subscriptions end at once, and entries already acknowledged are always kept.
    #[arg(long, env = "AUDIT_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        defaults().connections
    }
}

/// Limits on what a client may send and on the resources the server spends. Every limit has a
/// flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// What validation redacts in every entry before it is hashed and stored: built at start
    /// from [`Config::redaction`]; nothing by default.
    #[arg(skip)]
    pub redaction: std::sync::Arc<audit_redact::Redactor>,

    /// Largest encoded entry accepted, in bytes; larger entries get INVALID_ARGUMENT.
    #[arg(long, env = "AUDIT_MAX_ENTRY_BYTES", default_value_t = 64 * 1024)]
    pub max_entry_bytes: usize,

    /// Most entries in one RecordBatch; more get INVALID_ARGUMENT.
    #[arg(long, env = "AUDIT_MAX_BATCH_ENTRIES", default_value_t = 1000)]
    pub max_batch_entries: usize,

    /// Largest gRPC request message accepted, in bytes; larger messages are refused before they
    /// are decoded.
    #[arg(long, env = "AUDIT_MAX_MESSAGE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Longest string field (ids, source, method, event, resource, principal, label keys and
    /// values, ...), in bytes.
    #[arg(long, env = "AUDIT_MAX_FIELD_BYTES", default_value_t = 1024)]
    pub max_field_bytes: usize,

    /// Longest `status_message`, in bytes.
    #[arg(long, env = "AUDIT_MAX_STATUS_MESSAGE_BYTES", default_value_t = 4096)]
    pub max_status_message_bytes: usize,

    /// Most labels on one entry or in one filter.
    #[arg(long, env = "AUDIT_MAX_LABELS", default_value_t = 64)]
    pub max_labels: usize,

    /// Most concurrent Subscribe streams; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "AUDIT_MAX_SUBSCRIBERS", default_value_t = 1024)]
    pub max_subscribers: usize,

    /// Most bytes of entries waiting to be committed; writes beyond it get RESOURCE_EXHAUSTED at
    /// once, so a burst cannot grow memory without bound.
    #[arg(long, env = "AUDIT_MAX_PENDING_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_pending_bytes: usize,

    /// Most entries committed in one group transaction (one fsync).
    #[arg(long, env = "AUDIT_MAX_GROUP_ENTRIES", default_value_t = 8192)]
    pub max_group_entries: usize,

    /// Largest the write-ahead log (`audit.db-wal`) should grow, in bytes: beyond it the writer
    /// checkpoints the log into the database before the next commit, and writers wait
    /// meanwhile. SQLite also cuts the file back to this size when it reuses it.
    #[arg(long, env = "AUDIT_MAX_WAL_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_wal_bytes: u64,

    /// Query page size when the request gives none.
    #[arg(long, env = "AUDIT_DEFAULT_PAGE_SIZE", default_value_t = 100)]
    pub default_page_size: u32,

    /// Largest query page size; larger requests are capped to it.
    #[arg(long, env = "AUDIT_MAX_PAGE_SIZE", default_value_t = 1000)]
    pub max_page_size: u32,

    /// Largest query page or subscription read, in encoded bytes; a page stops early (with a
    /// next page token) rather than exceed it.
    #[arg(long, env = "AUDIT_MAX_RESPONSE_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_response_bytes: usize,

    /// Read connections to the database shared by queries and subscriptions.
    #[arg(long, env = "AUDIT_READ_CONNECTIONS", default_value_t = 4)]
    pub read_connections: usize,

    /// A subscription sends a heartbeat after this long without an entry, e.g. `15s`.
    #[arg(long, env = "AUDIT_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        defaults().limits
    }
}

/// Every setting at its default: what `audit-server` does with no flags and no `AUDIT_*`
/// variables. Library users and tests get these whatever the process environment says.
fn defaults() -> Config {
    use clap::{CommandFactory, FromArgMatches};
    let command = Config::command().mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(["audit-server"])
        .expect("the defaults parse");
    Config::from_arg_matches(&matches).expect("the defaults parse")
}

/// Parses a socket address, or `none` for no listener.
fn parse_listen(text: &str) -> Result<Listen, String> {
    match text.trim() {
        "none" | "" => Ok(None),
        address => address
            .parse()
            .map(Some)
            .map_err(|e| format!("`{address}`: {e} (expected ip:port or `none`)")),
    }
}

/// Parses an octal file mode such as `660` or `0600`.
fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| format!("`{text}` is not an octal file mode like 660"))
}

/// Parses `1500ms`, `15s`, `2m`, `6h`, `7d` or a plain number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 15s, 2m, 12h or 90d"))?;
    let seconds = |per: u64| {
        number
            .checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{text}` is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        _ => Err(format!("`{text}`: unit must be ms, s, m, h or d")),
    }
    .and_then(|d| {
        if d.is_zero() {
            Err("must be greater than zero".to_string())
        } else {
            Ok(d)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("999999999999999999d").is_err(), "overflow");
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn defaults_ignore_the_environment() {
        const NAME: &str = "config::tests::defaults_ignore_the_environment";
        if std::env::var_os("AUDIT_MAX_BATCH_ENTRIES").is_some() {
            // In the child below: a bad variable would make the command line fail.
            assert!(Config::try_parse_from(["audit-server"]).is_err());
            assert_eq!(Limits::default().max_batch_entries, 1000);
            assert_eq!(ConnectionLimits::default().max_connections, 1024);
            return;
        }
        // This test again, in a process of its own with the variable set.
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture"])
            .env("AUDIT_MAX_BATCH_ENTRIES", "not a number")
            .env("AUDIT_MAX_CONNECTIONS", "3")
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn defaults_listen_on_loopback() {
        let config = Config::parse_from(["audit-server"]);
        assert_eq!(config.listen, Some("127.0.0.1:50051".parse().unwrap()));
        assert_eq!(parse_listen("none"), Ok(None));
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert!(parse_mode("999").is_err());
        assert_eq!(config.data_dir, PathBuf::from("./audit-data"));
        assert_eq!(config.limits.max_batch_entries, 1000);
    }
}
