//! Unix domain socket connections that carry their peer's identity: uid, gid and pid from the
//! kernel's peer credentials, and the executable from `/proc/<pid>/exe`, read when the
//! connection is accepted and guarded against pid reuse.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::Connected;

/// The identity of a process connected over a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixPeerInfo {
    /// User id, from the kernel.
    pub uid: u32,
    /// Group id, from the kernel.
    pub gid: u32,
    /// Process id, from the kernel (absent on systems that do not report it).
    pub pid: Option<i32>,
    /// The process's executable, when it could be read for that very process.
    pub binary_path: Option<PathBuf>,
}

/// An accepted Unix socket connection and its peer; tonic exposes the peer as the request
/// extension [`UnixPeerInfo`].
#[derive(Debug)]
pub struct UnixConnection {
    stream: UnixStream,
    peer: UnixPeerInfo,
}

impl UnixConnection {
    /// Reads the peer of an accepted stream.
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        let credentials = stream.peer_cred()?;
        let pid = credentials.pid();
        let peer = UnixPeerInfo {
            uid: credentials.uid(),
            gid: credentials.gid(),
            pid,
            binary_path: pid.and_then(binary_of),
        };
        Ok(Self { stream, peer })
    }

    /// The peer of this connection.
    pub fn peer(&self) -> &UnixPeerInfo {
        &self.peer
    }
}

/// Accepted connections of `listener`, each with its peer. Accept errors (such as running out of
/// file descriptors) are logged and retried after a pause rather than ending the stream.
pub fn incoming(listener: UnixListener) -> impl Stream<Item = io::Result<UnixConnection>> {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => match UnixConnection::new(stream) {
                    Ok(connection) => return Some((Ok(connection), listener)),
                    Err(error) => tracing::warn!(%error, "unix socket peer credentials unreadable"),
                },
                Err(error) => {
                    tracing::warn!(%error, "unix socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// The executable of `pid`, if the process now holding that pid is the one that connected:
/// it must have started before now (a process started later reuses the pid), and its start
/// time must not change while the link is read.
fn binary_of(pid: i32) -> Option<PathBuf> {
    let now = uptime_ticks()?;
    let started = start_ticks(pid)?;
    if started > now {
        return None;
    }
    let path = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    (start_ticks(pid)? == started).then_some(path)
}

/// When `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field 22).
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its last `)`.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Time since boot, in clock ticks.
fn uptime_ticks() -> Option<u64> {
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let seconds: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    // Round up: the start time of a process that began this very tick must not look later.
    Some((seconds * ticks_per_second as f64).ceil() as u64 + 1)
}

impl Connected for UnixConnection {
    type ConnectInfo = UnixPeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for UnixConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for UnixConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_binary_is_found() {
        let me = std::process::id() as i32;
        assert_eq!(binary_of(me), std::env::current_exe().ok());
        assert!(start_ticks(me).unwrap() <= uptime_ticks().unwrap());
    }

    #[tokio::test]
    async fn a_connection_knows_its_peer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let _client = UnixStream::connect(&path).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let connection = UnixConnection::new(stream).unwrap();
        let peer = connection.peer();
        assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
        assert_eq!(peer.gid, nix::unistd::getgid().as_raw());
        assert_eq!(peer.pid, Some(std::process::id() as i32));
        assert_eq!(peer.binary_path, std::env::current_exe().ok());
    }
}
