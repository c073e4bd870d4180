//! Harness for the end-to-end tests: starts the real `audit-server` binary on `127.0.0.1:0`
//! with a data directory of its own, and connects the real client to it.
//!
//! The binaries must be built first (`cargo build --workspace --bins`, which the project's test
//! script does); set `AUDIT_BIN_DIR` to use binaries from elsewhere.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use audit_client::{Client, EntryBuilder, pb};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

mod private_postgres;

pub use private_postgres::{PrivatePostgres, Shutdown};

/// How long a server may take to start or stop before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// `audit --server <uri> ARGS…` with stdin from `stdin` (or nothing), run to completion within
/// [`PATIENCE`]. Colour is left at `auto`: stdout is a pipe, so there is none.
pub async fn audit_cli(uri: &str, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(binary("audit"))
        .arg("--server")
        .arg(uri)
        .args(args)
        .env_remove("AUDIT_SERVER")
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start audit");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("audit {args:?} did not finish in time"))
        .expect("run audit")
}

/// Path of a binary built from this workspace (`audit-server`, `audit`).
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("AUDIT_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // Test executables live in target/<profile>/deps; binaries one level up.
            let exe = std::env::current_exe().expect("test executable path");
            let deps = exe.parent().expect("deps dir");
            deps.parent().expect("profile dir").to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (or set AUDIT_BIN_DIR)",
        path.display()
    );
    path
}

/// A running `audit-server` process.
pub struct TestServer {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The address of its TLS listener, if it has one.
    pub tls_addr: Option<SocketAddr>,
    /// The path of its Unix socket, if it has one.
    pub unix_socket: Option<PathBuf>,
    /// The address of its metrics listener (`--metrics-listen`), if it has one.
    pub metrics_addr: Option<SocketAddr>,
    /// Its data directory.
    pub data_dir: PathBuf,
    args: Vec<String>,
    _temp: Option<TempDir>,
}

impl TestServer {
    /// Starts a server with a fresh temporary data directory.
    pub async fn start() -> Self {
        Self::start_with_args(&[]).await
    }

    /// Starts a server with a fresh temporary data directory and extra flags.
    pub async fn start_with_args(args: &[&str]) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        let mut server = Self::start_in(&data_dir, args).await;
        server._temp = Some(temp);
        server
    }

    /// Starts a server on an existing (or new) data directory; the caller keeps it alive.
    pub async fn start_in(data_dir: &Path, args: &[&str]) -> Self {
        Self::launch(data_dir, "127.0.0.1:0", args, &Launch::default()).await
    }

    /// Starts a server on `addr` (e.g. the address of a stopped one, to bring it back).
    pub async fn start_on(addr: SocketAddr, data_dir: &Path, args: &[&str]) -> Self {
        Self::launch(data_dir, &addr.to_string(), args, &Launch::default()).await
    }

    /// Starts a server on `data_dir` with extra environment and process limits. A `restart`
    /// of it starts the plain server again.
    pub async fn start_launched(data_dir: &Path, args: &[&str], launch: &Launch) -> Self {
        Self::launch(data_dir, "127.0.0.1:0", args, launch).await
    }

    /// Starts a server with a fresh temporary data directory and extra flags, its own log
    /// (stderr, at `warn`) written to `log` instead of the test's stderr.
    pub async fn start_logged(args: &[&str], log: &Path) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        let mut server = Self::launch_logged(
            &data_dir,
            "127.0.0.1:0",
            args,
            &Launch::default(),
            Some(log),
        )
        .await;
        server._temp = Some(temp);
        server
    }

    async fn launch(data_dir: &Path, listen: &str, args: &[&str], launch: &Launch) -> Self {
        Self::launch_logged(data_dir, listen, args, launch, None).await
    }

    async fn launch_logged(
        data_dir: &Path,
        listen: &str,
        args: &[&str],
        launch: &Launch,
        log: Option<&Path>,
    ) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut command = match launch.max_file_bytes {
            // prlimit execs the server, so the child's pid is the server's.
            Some(bytes) => {
                let mut command = Command::new("prlimit");
                command
                    .arg(format!("--fsize={bytes}"))
                    .arg("--")
                    .arg(binary("audit-server"));
                command
            }
            None => Command::new(binary("audit-server")),
        };
        let mut child = command
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(&args)
            .env("AUDIT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(match log {
                Some(path) => Stdio::from(std::fs::File::create(path).expect("create log file")),
                None => Stdio::inherit(),
            })
            .kill_on_drop(true)
            .spawn()
            .expect("start audit-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut listening = Vec::new();
        loop {
            let line = tokio::time::timeout(PATIENCE, lines.next_line())
                .await
                .expect("audit-server became ready in time")
                .expect("read audit-server stdout")
                .expect("audit-server exited before it was ready");
            if line == "audit-server ready" {
                break;
            }
            let what = line
                .strip_prefix("audit-server listening on ")
                .unwrap_or_else(|| panic!("unexpected line: {line}"));
            listening.push(what.to_string());
        }
        let find = |prefix: &str| {
            listening
                .iter()
                .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
        };
        let addr = listening
            .iter()
            .find(|l| !l.contains(' '))
            .expect("a plaintext listener")
            .parse()
            .expect("listen address");
        let tls_addr = find("tls ").map(|a| a.parse().expect("tls address"));
        let unix_socket = find("unix ").map(PathBuf::from);
        let metrics_addr = find("metrics http://").map(|a| a.parse().expect("metrics address"));
        Self {
            child,
            addr,
            tls_addr,
            unix_socket,
            metrics_addr,
            data_dir: data_dir.to_path_buf(),
            args,
            _temp: None,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        Client::connect(self.uri())
            .await
            .expect("connect to audit-server")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("server still running")
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn stop(mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait().await
    }

    /// Kills the process with SIGKILL (no chance to clean up) and waits for it.
    pub async fn kill(mut self) {
        self.signal(Signal::SIGKILL);
        self.wait().await;
    }

    /// Stops the server with SIGTERM (it must exit 0) and starts a new one on the same address,
    /// data directory and flags.
    pub async fn restart(mut self) -> Self {
        self.signal(Signal::SIGTERM);
        let status = self.wait().await;
        assert!(status.success(), "server exited with {status}");
        self.relaunch().await
    }

    /// Kills the server with SIGKILL and starts a new one on the same address, data directory
    /// and flags.
    pub async fn crash_and_restart(mut self) -> Self {
        self.signal(Signal::SIGKILL);
        self.wait().await;
        self.relaunch().await
    }

    async fn relaunch(mut self) -> Self {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut server = Self::launch(
            &self.data_dir,
            &self.addr.to_string(),
            &args,
            &Launch::default(),
        )
        .await;
        server._temp = self._temp.take();
        server
    }

    /// Takes the temporary data directory out, so it outlives this server.
    pub fn keep_data_dir(&mut self) -> Option<TempDir> {
        self._temp.take()
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("audit-server exited in time")
            .expect("wait for audit-server")
    }
}

/// How to start a server process beyond its flags.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Environment variables to set.
    pub env: Vec<(String, String)>,
    /// No file may grow beyond this many bytes (`prlimit --fsize`), as on a full disk.
    pub max_file_bytes: Option<u64>,
}

/// The size of a file, 0 if it does not exist.
pub fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// A valid entry from `source` for `method`, with outcome SUCCESS.
pub fn entry(source: &str, method: &str) -> EntryBuilder {
    EntryBuilder::new(source, method).outcome(pb::Outcome::Success)
}

/// Every entry in the log, oldest first.
pub async fn all_entries(client: &Client) -> Vec<pb::AuditEntry> {
    query(client, pb::Filter::default()).await
}

/// Every entry matching `filter`, oldest first.
pub async fn query(client: &Client, filter: pb::Filter) -> Vec<pb::AuditEntry> {
    use futures::TryStreamExt;
    client
        .query(filter, audit_client::QueryOptions::new())
        .try_collect()
        .await
        .expect("query")
}

/// Collects `count` entries from a subscription, failing if they do not arrive in time.
pub async fn take_entries<S, E>(stream: &mut S, count: usize) -> Vec<pb::AuditEntry>
where
    S: futures::Stream<Item = Result<pb::AuditEntry, E>> + Unpin,
    E: std::fmt::Debug,
{
    use futures::StreamExt;
    let mut entries = Vec::with_capacity(count);
    while entries.len() < count {
        let next = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} entries arrived", entries.len()))
            .expect("subscription ended early")
            .expect("subscription entry");
        entries.push(next);
    }
    entries
}

/// Asserts that `entries` have consecutive sequences starting at `first`.
pub fn assert_gapless(entries: &[pb::AuditEntry], first: u64) {
    for (offset, entry) in entries.iter().enumerate() {
        assert_eq!(
            entry.sequence,
            first + offset as u64,
            "entry {offset} is out of order, missing or repeated"
        );
    }
}

/// A PostgreSQL database of its own on the server the tests use (`AUDIT_TEST_POSTGRES`, by
/// default `postgres://postgres@127.0.0.1:5432/test`), dropped when this is.
pub struct PostgresDatabase {
    admin: String,
    name: String,
    /// URL of the database, for `--store`.
    pub url: String,
}

impl PostgresDatabase {
    /// Creates a fresh, empty database.
    pub async fn create() -> Self {
        let admin = std::env::var("AUDIT_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("audit_e2e_{}", uuid::Uuid::new_v4().simple());
        Self::admin_sql(&admin, &format!("CREATE DATABASE {name}")).await;
        let base = admin.rsplit_once('/').expect("URL with a database").0;
        let url = format!("{base}/{name}");
        Self { admin, name, url }
    }

    /// Runs SQL statements in this database (to tamper with it).
    pub async fn sql(&self, sql: &str) {
        connect(&self.url)
            .await
            .batch_execute(sql)
            .await
            .expect("SQL");
    }

    /// Runs a query in this database and returns its rows.
    pub async fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        connect(&self.url)
            .await
            .query(sql, &[])
            .await
            .expect("query")
    }

    /// Closes every connection to this database whose application name starts with `prefix`,
    /// as a database restart or a network cut would; returns how many were closed.
    pub async fn terminate(&self, prefix: &str) -> i64 {
        let client = connect(&self.admin).await;
        let rows = client
            .query(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name LIKE $2",
                &[&self.name, &format!("{prefix}%")],
            )
            .await
            .expect("terminate");
        rows[0].get(0)
    }

    async fn admin_sql(admin: &str, sql: &str) {
        connect(admin)
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e} (the tests need PostgreSQL on {admin})"));
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Off the test's runtime, which may be shutting down.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = client.batch_execute(&drop).await;
                }
            });
        })
        .join();
    }
}

/// Runs `audit-server` with `args` (and a fresh data directory), expecting it to refuse to
/// start: returns what it wrote on stderr. Fails if it became ready instead.
pub async fn start_failure(args: &[&str]) -> String {
    let temp = tempfile::tempdir().expect("temp dir");
    let output = tokio::time::timeout(
        PATIENCE,
        Command::new(binary("audit-server"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(temp.path().join("data"))
            .args(args)
            .env("AUDIT_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("audit-server exited in time")
    .expect("run audit-server");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success() && !stdout.contains("audit-server ready"),
        "audit-server started with {args:?}"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Waits until `check` holds, polling every 50 ms for at most [`PATIENCE`]; fails with `what`.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A data directory holding `total` entries (a multiple of 100), written by a server that has
/// stopped since, so that a forwarder started on it has every one still to deliver.
pub async fn prefilled(total: u64) -> (TempDir, PathBuf) {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    for chunk in 0..total / 100 {
        let entries = (0..100).map(|i| {
            entry("app", "/a.B/C")
                .resource(format!("{}", chunk * 100 + i))
                .build()
        });
        client.record_batch("", entries).await.unwrap();
    }
    let temp = server.keep_data_dir().expect("a temporary data directory");
    let data_dir = server.data_dir.clone();
    assert!(server.stop().await.success());
    (temp, data_dir)
}

/// `GET path` over plain HTTP/1.0 from `addr`: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(PATIENCE, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET http://{addr}{path} in time"))
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP response: {response}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line: {head}"));
    (status, body.to_string())
}

/// The position forwarder `name` saved in the store of the server in `data_dir` (its SQLite
/// file, read beside the server or after it stopped).
pub fn forwarder_position(data_dir: &Path, name: &str) -> Option<u64> {
    let db = rusqlite::Connection::open(data_dir.join("audit.db")).ok()?;
    db.busy_timeout(Duration::from_secs(5)).ok()?;
    let position: Option<i64> = db
        .query_row(
            "SELECT position FROM cursors WHERE name = ?",
            [name],
            |row| row.get(0),
        )
        .ok()?;
    position.map(|p| p as u64)
}

/// Until when (milliseconds since the Unix epoch) the lease of forwarder `name` is held in the
/// store of the server in `data_dir`; 0 once released.
pub fn forwarder_lease_until(data_dir: &Path, name: &str) -> Option<i64> {
    let db = rusqlite::Connection::open(data_dir.join("audit.db")).ok()?;
    db.busy_timeout(Duration::from_secs(5)).ok()?;
    db.query_row(
        "SELECT lease_until FROM cursors WHERE name = ?",
        [name],
        |row| row.get(0),
    )
    .ok()
}
