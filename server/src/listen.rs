//! The server's listeners: plaintext TCP, TLS (optionally mutual) and a Unix domain socket, any
//! combination at once.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::error::Error;

/// Bound listeners, ready to serve.
pub struct Listeners {
    /// Plaintext TCP.
    pub tcp: Option<TcpListener>,
    /// TLS over TCP, with its acceptor.
    pub tls: Option<(TcpListener, TlsAcceptor)>,
    /// The Unix domain socket.
    pub unix: Option<UnixSocket>,
}

/// A bound Unix domain socket; its file is removed when this is dropped.
pub struct UnixSocket {
    /// The listener.
    pub listener: UnixListener,
    /// The socket file, removed on drop if it is still ours.
    pub file: SocketFile,
}

impl Listeners {
    /// Binds every listener the configuration asks for; fails if it asks for none.
    pub async fn bind(config: &Config) -> Result<Self, Error> {
        let tcp = match config.listen {
            Some(address) => Some(bind_tcp(address).await?),
            None => None,
        };
        let tls = match (
            &config.tls.tls_listen,
            &config.tls.tls_cert,
            &config.tls.tls_key,
        ) {
            (Some(address), Some(cert), Some(key)) => {
                let tls =
                    crate::serve::tls::acceptor(cert, key, config.tls.tls_client_ca.as_deref())?;
                Some((bind_tcp(*address).await?, tls))
            }
            _ => None,
        };
        let unix = match &config.unix_socket {
            Some(path) => Some(bind_unix(path, config.unix_socket_mode)?),
            None => None,
        };
        if tcp.is_none() && tls.is_none() && unix.is_none() {
            return Err(Error::Config(
                "no listener: give --listen, --tls-listen or --unix-socket".into(),
            ));
        }
        Ok(Self { tcp, tls, unix })
    }

    /// What each listener listens on: `127.0.0.1:50051`, `tls 127.0.0.1:50052`,
    /// `unix /run/audit.sock`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let address = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        if let Some(tcp) = &self.tcp {
            lines.push(address(tcp));
        }
        if let Some((tls, _)) = &self.tls {
            lines.push(format!("tls {}", address(tls)));
        }
        if let Some(unix) = &self.unix {
            lines.push(format!("unix {}", unix.file.path.display()));
        }
        lines
    }

    /// The listeners to accept on, and the Unix socket file to remove once they are done.
    pub fn into_parts(self) -> (Vec<crate::serve::Listener>, Option<SocketFile>) {
        use crate::serve::Listener;
        let mut listeners = Vec::new();
        listeners.extend(self.tcp.map(Listener::Tcp));
        listeners.extend(self.tls.map(|(l, tls)| Listener::Tls(l, tls)));
        let socket_file = self.unix.map(|unix| {
            listeners.push(Listener::Unix(unix.listener));
            unix.file
        });
        (listeners, socket_file)
    }
}

async fn bind_tcp(address: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(address)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {address}: {e}")))
}

/// Binds a Unix socket at `path` with `mode`, replacing a stale socket file.
///
/// The socket is bound in a private directory, given its mode, and only then renamed into place,
/// so it is never reachable with looser permissions.
fn bind_unix(path: &Path, mode: u32) -> Result<UnixSocket, Error> {
    let fail = |what: &str, e: std::io::Error| {
        Error::Config(format!("unix socket {}: {what}: {e}", path.display()))
    };
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(Error::Config(format!(
                "unix socket {}: the path exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::Config(format!(
                    "unix socket {}: another server is listening on it",
                    path.display()
                )));
            }
            tracing::info!(path = %path.display(), "replacing stale unix socket");
            fs::remove_file(path).map_err(|e| fail("remove stale socket", e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("inspect", e)),
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = parent.join(format!(".audit-socket-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| fail("create staging directory", e))?;
    let staged = staging.join("socket");
    let bound = (|| {
        let listener = UnixListener::bind(&staged)?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(mode))?;
        fs::rename(&staged, path)?;
        Ok::<_, std::io::Error>(listener)
    })();
    let _ = fs::remove_dir_all(&staging);
    let listener = bound.map_err(|e| fail("bind", e))?;
    let meta = fs::symlink_metadata(path).map_err(|e| fail("inspect", e))?;
    Ok(UnixSocket {
        listener,
        file: SocketFile {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        },
    })
}

/// A socket file this server created.
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode, so that a file another process put there since is left alone.
    identity: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unix_sockets_get_their_mode_and_replace_stale_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sock");
        let socket = bind_unix(&path, 0o600).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            bind_unix(&path, 0o600).is_err(),
            "a live socket is not replaced"
        );

        // A stale socket (its listener gone, as after a crash) is replaced.
        std::mem::forget(socket.file);
        drop(socket.listener);
        let again = bind_unix(&path, 0o660).unwrap();
        drop(again);
        assert!(!path.exists(), "removed on drop");

        fs::write(&path, "not a socket").unwrap();
        assert!(bind_unix(&path, 0o600).is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "not a socket");
    }
}
