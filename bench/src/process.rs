//! Servers under test as child processes: started on a free loopback port, measured through
//! /proc (peak and current RSS, CPU time), stopped with SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Kernel clock ticks per second for /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// A server child process.
pub struct ServerProcess {
    child: Child,
    pid: i32,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `program` with `args`, waits for its `... listening on ADDR` line on stdout.
    pub async fn start(program: &Path, args: &[String], log: PathBuf) -> anyhow::Result<Self> {
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        let pid = child.id().context("child has no pid")? as i32;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("server did not print its address within 30 s")??;
        let Some(line) = line else {
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("{} exited before listening:\n{log_text}", program.display());
        };
        let addr: SocketAddr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected first line {line:?}"))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            pid,
            addr,
            log,
        })
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        self.status_kib("VmHWM:").map(|k| k / 1024.0)
    }

    /// Current resident memory (VmRSS), in MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        self.status_kib("VmRSS:").map(|k| k / 1024.0)
    }

    fn status_kib(&self, field: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line[field.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// CPU time (user + system, all threads) used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some(Duration::from_secs_f64((utime + stime) / TICKS_PER_SEC))
    }

    /// Stops the server with SIGTERM and waits for it; kills it after 20 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                    bail!("server exited with {status}; its log:\n{log}");
                }
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("server did not stop within 20 s of SIGTERM")
            }
        }
    }
}

/// Measures a server's CPU time across a case.
pub struct CpuMeter<'a> {
    server: &'a ServerProcess,
    start: Option<Duration>,
}

impl<'a> CpuMeter<'a> {
    pub fn start(server: &'a ServerProcess) -> Self {
        CpuMeter {
            server,
            start: server.cpu_time(),
        }
    }

    /// Microseconds of server CPU per entry since `start`.
    pub fn per_entry_us(&self, entries: u64) -> Option<f64> {
        let used = self.server.cpu_time()?.checked_sub(self.start?)?;
        (entries > 0).then(|| used.as_secs_f64() * 1e6 / entries as f64)
    }
}
