//! A PostgreSQL cluster of a test's own, in a temporary directory on a port of its own, that the
//! test can stop, crash and start again under load (which the shared PostgreSQL must not be).
//!
//! The server binaries are found in `AUDIT_TEST_PG_BINDIR`, else in the newest
//! `/usr/lib/postgresql/*/bin`. PostgreSQL refuses to run as root, so when the tests run as root
//! the cluster runs as the `postgres` user (through `runuser`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::os::unix::fs::chown;

use nix::unistd::{Uid, User};
use tempfile::TempDir;

/// How a cluster goes down.
#[derive(Debug, Clone, Copy)]
pub enum Shutdown {
    /// `pg_ctl stop -m fast`: sessions are ended, and the cluster checkpoints before it exits.
    Fast,
    /// `pg_ctl stop -m immediate`: every process quits at once, as in a crash or power loss; the
    /// next start replays the write-ahead log.
    Immediate,
}

/// A running PostgreSQL cluster owned by one test; stopped when dropped.
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<String>,
    _dir: TempDir,
}

impl PrivatePostgres {
    /// Creates a cluster (trust authentication, user `postgres`) and starts it.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        let run_as = Uid::effective().is_root().then(|| "postgres".to_string());
        if let Some(user) = &run_as {
            let user = User::from_name(user)
                .expect("user lookup")
                .expect("the `postgres` user (PostgreSQL does not run as root)");
            chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .expect("chown cluster dir");
        }
        let data = dir.path().join("data");
        let cluster = Self {
            bin,
            data,
            port: free_port(),
            run_as,
            _dir: dir,
        };
        cluster.run(
            "initdb",
            &[
                "--auth=trust",
                "--username=postgres",
                "--no-sync",
                "-D",
                &cluster.data.display().to_string(),
            ],
        );
        cluster.up();
        cluster
    }

    /// URL of database `postgres` on this cluster, for `--store`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the cluster the given way (waiting until it is down).
    pub fn stop(&self, how: Shutdown) {
        let mode = match how {
            Shutdown::Fast => "fast",
            Shutdown::Immediate => "immediate",
        };
        let data = self.data.display().to_string();
        self.run("pg_ctl", &["stop", "-w", "-m", mode, "-D", &data]);
    }

    /// Starts the stopped cluster again on the same port (waiting until it accepts connections).
    pub fn up(&self) {
        let data = self.data.display().to_string();
        let log = self
            .data
            .with_file_name("postgres.log")
            .display()
            .to_string();
        // Sockets in the cluster's own directory, TCP on loopback only; fsync stays on so that
        // an immediate stop is a true crash for what the audit servers acknowledged.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on",
            self.port,
            self.data.parent().expect("cluster dir").display()
        );
        self.run(
            "pg_ctl",
            &[
                "start", "-w", "-t", "60", "-D", &data, "-l", &log, "-o", &options,
            ],
        );
    }

    /// Runs one of PostgreSQL's tools as the cluster's owner; fails the test if it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .output()
            .expect("run a PostgreSQL tool");
        assert!(
            output.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-D", &data])
            .output();
    }
}

/// The directory of PostgreSQL's server binaries.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AUDIT_TEST_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql (or set AUDIT_TEST_PG_BINDIR)")
        .filter_map(|dir| Some(dir.ok()?.path().join("bin")))
        .filter(|bin| Path::new(bin).join("initdb").exists())
        .collect();
    versions.sort_by_key(|bin| {
        bin.parent()
            .and_then(|version| version.file_name()?.to_str()?.parse::<u32>().ok())
    });
    versions
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port()
}
