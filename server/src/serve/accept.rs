//! Accepting connections on one listener: at most `max_connections` open at once, and accept
//! failures (such as running out of file descriptors) met with a pause that grows, logged once
//! and then counted, never a busy loop.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A bound listener and how its connections are secured.
pub enum Listener {
    /// Plaintext TCP.
    Tcp(TcpListener),
    /// TLS over TCP.
    Tls(TcpListener, TlsAcceptor),
    /// A Unix domain socket.
    Unix(UnixListener),
}

/// An accepted connection, before any handshake.
pub enum Accepted {
    /// A TCP connection (plaintext or TLS, as its listener says).
    Tcp(TcpStream),
    /// A Unix socket connection.
    Unix(UnixStream),
}

impl Listener {
    /// A short name for logs: `tcp 127.0.0.1:50051`, `tls …`, `unix /run/audit.sock`.
    pub fn describe(&self) -> String {
        let tcp = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        match self {
            Listener::Tcp(l) => format!("tcp {}", tcp(l)),
            Listener::Tls(l, _) => format!("tls {}", tcp(l)),
            Listener::Unix(l) => format!(
                "unix {}",
                l.local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                    .unwrap_or_default()
            ),
        }
    }

    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(l) | Listener::Tls(l, _) => l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Accepted::Tcp(s)
            }),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        }
    }
}

/// Accepts connections until `stop`, handing each to `serve` with a permit that holds its place
/// under the cap until the connection ends.
pub async fn accept_loop<F>(
    listener: Listener,
    max_connections: usize,
    stop: CancellationToken,
    mut serve: F,
) where
    F: FnMut(&Listener, Accepted, tokio::sync::OwnedSemaphorePermit),
{
    let name = listener.describe();
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut failures = Throttled::new("accepting connections failed; pausing");
    let mut refused = Throttled::new("connection refused: --max-connections reached");
    let mut pause = MIN_PAUSE;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(connection) => {
                pause = MIN_PAUSE;
                failures.recovered(&name);
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        refused.recovered(&name);
                        serve(&listener, connection, permit);
                    }
                    // Dropping it closes it: the client learns at once instead of waiting.
                    Err(_) => refused.happened(&name, None),
                }
            }
            // The peer gave up before we accepted: nothing is wrong with the listener.
            Err(error) if is_per_connection(&error) => {}
            Err(error) => {
                failures.happened(&name, Some(&error));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

const MIN_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);

fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// A recurring operational event logged the first time, then counted and summarised at most
/// every [`SUMMARY_EVERY`], so that a flood cannot flood the log.
struct Throttled {
    what: &'static str,
    /// Occurrences not yet reported, and when the last report was made.
    unreported: u64,
    last_report: Option<Instant>,
}

const SUMMARY_EVERY: Duration = Duration::from_secs(10);

impl Throttled {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            unreported: 0,
            last_report: None,
        }
    }

    fn happened(&mut self, listener: &str, error: Option<&io::Error>) {
        let due = self
            .last_report
            .is_none_or(|last| last.elapsed() >= SUMMARY_EVERY);
        if !due {
            self.unreported += 1;
            return;
        }
        let count = self.unreported + 1;
        match error {
            Some(error) => tracing::warn!(listener, %error, count, "{}", self.what),
            None => tracing::warn!(listener, count, "{}", self.what),
        }
        self.unreported = 0;
        self.last_report = Some(Instant::now());
    }

    /// Reports what was counted since the last report, once the event has stopped for now.
    fn recovered(&mut self, listener: &str) {
        let due = self
            .last_report
            .is_some_and(|last| last.elapsed() >= SUMMARY_EVERY);
        if due && self.unreported > 0 {
            tracing::warn!(
                listener,
                count = self.unreported,
                "{} (since the last report)",
                self.what
            );
            self.unreported = 0;
            self.last_report = Some(Instant::now());
        }
    }
}
