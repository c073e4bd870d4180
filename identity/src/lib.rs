//! Who is calling: the identity of a gRPC peer, learnt from its connection and never from what it
//! sends. Used by the audit server for the `recorder` of each entry and for permissions, and by
//! the `AuditLayer` for the `caller` of a host service's calls.
//!
//! - Unix socket: uid, gid, pid and executable ([`unix::UnixConnection`]).
//! - TLS with a client certificate: peer address, SPIFFE ID and subject ([`spiffe`]).
//! - Plain TCP: the peer address only.

#![forbid(unsafe_code)]

pub mod spiffe;
pub mod unix;

use std::net::SocketAddr;

use audit_proto::pb;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

pub use spiffe::{CertificateError, CertificateIdentity, SpiffeId};
pub use unix::UnixPeerInfo;

/// What a server that terminates TLS itself (rather than through tonic's transport) knows of a
/// TLS connection; it puts this in the extensions of every request on the connection. The client
/// certificate is read once, when the connection is made, not on every call.
#[derive(Debug, Clone)]
pub struct TlsPeerInfo {
    /// The peer's address, if known.
    pub remote_addr: Option<SocketAddr>,
    /// What the client certificate (already verified by the TLS handshake) proves; `Ok(None)`
    /// without one.
    pub certificate: Result<Option<CertificateIdentity>, CertificateError>,
}

impl TlsPeerInfo {
    /// The facts of a connection from `remote_addr` that presented `leaf_certificate` (DER).
    pub fn new(remote_addr: Option<SocketAddr>, leaf_certificate: Option<&[u8]>) -> Self {
        Self {
            remote_addr,
            certificate: leaf_certificate
                .map(spiffe::certificate_identity)
                .transpose(),
        }
    }
}

/// The identity of the peer of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A local process on a Unix socket.
    Unix(UnixPeerInfo),
    /// A TCP peer without TLS.
    Tcp {
        /// Its address, if known.
        address: Option<SocketAddr>,
    },
    /// A TCP peer over TLS.
    Tls {
        /// Its address, if known.
        address: Option<SocketAddr>,
        /// What its client certificate proves; `None` without a client certificate.
        certificate: Option<CertificateIdentity>,
    },
    /// A connection of a kind this crate does not know (e.g. an in-memory transport).
    Unknown,
}

impl Peer {
    /// The peer of a request, from the connection information tonic puts in its extensions.
    /// Fails when the peer presented a client certificate that is not a valid X509-SVID.
    pub fn from_extensions(extensions: &http::Extensions) -> Result<Self, CertificateError> {
        if let Some(unix) = extensions.get::<UnixPeerInfo>() {
            return Ok(Peer::Unix(unix.clone()));
        }
        if let Some(tls) = extensions.get::<TlsConnectInfo<TcpConnectInfo>>() {
            let certificate = match tls.peer_certs() {
                Some(chain) => match chain.first() {
                    Some(leaf) => Some(spiffe::certificate_identity(leaf)?),
                    None => None,
                },
                None => None,
            };
            return Ok(Peer::Tls {
                address: tls.get_ref().remote_addr(),
                certificate,
            });
        }
        if let Some(tls) = extensions.get::<TlsPeerInfo>() {
            return Ok(Peer::Tls {
                address: tls.remote_addr,
                certificate: tls.certificate.clone()?,
            });
        }
        if let Some(tcp) = extensions.get::<TcpConnectInfo>() {
            return Ok(Peer::Tcp {
                address: tcp.remote_addr(),
            });
        }
        Ok(Peer::Unknown)
    }

    /// The peer of a request as far as it can be known when [`Peer::from_extensions`] fails
    /// (its client certificate is not a valid X509-SVID): a TLS peer with its address and no
    /// certificate.
    pub fn without_certificate(extensions: &http::Extensions) -> Self {
        let address = extensions
            .get::<TlsPeerInfo>()
            .and_then(|tls| tls.remote_addr)
            .or_else(|| {
                extensions
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|tls| tls.get_ref().remote_addr())
            })
            .or_else(|| {
                extensions
                    .get::<TcpConnectInfo>()
                    .and_then(|tcp| tcp.remote_addr())
            });
        Peer::Tls {
            address,
            certificate: None,
        }
    }

    /// The peer of a tonic request; see [`Peer::from_extensions`].
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, CertificateError> {
        Self::from_extensions(request.extensions())
    }

    /// The SPIFFE ID proven by the peer's client certificate.
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        match self {
            Peer::Tls {
                certificate: Some(certificate),
                ..
            } => Some(&certificate.spiffe_id),
            _ => None,
        }
    }

    /// Whether the peer proved who it is: a Unix peer (the kernel vouches) or a TLS peer with a
    /// verified client certificate.
    pub fn is_authenticated(&self) -> bool {
        matches!(self, Peer::Unix(_)) || self.spiffe_id().is_some()
    }

    /// Whether the peer is a plain TCP connection from a loopback address.
    pub fn is_plaintext_loopback(&self) -> bool {
        matches!(self, Peer::Tcp { address: Some(address) } if address.ip().is_loopback())
    }

    /// A short description for logs and error messages, e.g. `uid 1000`, `spiffe://prod/x`,
    /// `127.0.0.1:5555`.
    pub fn describe(&self) -> String {
        match self {
            Peer::Unix(unix) => match unix.pid {
                Some(pid) => format!("uid {} pid {pid}", unix.uid),
                None => format!("uid {}", unix.uid),
            },
            Peer::Tls {
                certificate: Some(certificate),
                ..
            } => certificate.spiffe_id.to_string(),
            Peer::Tls { address, .. } | Peer::Tcp { address } => address
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unknown address".into()),
            Peer::Unknown => "unknown peer".into(),
        }
    }

    /// The peer as the `peer` of an entry's `caller`.
    pub fn to_caller_peer(&self) -> Option<pb::caller::Peer> {
        match self.to_recorder().peer? {
            pb::recorder::Peer::Unix(unix) => Some(pb::caller::Peer::Unix(unix)),
            pb::recorder::Peer::Network(network) => Some(pb::caller::Peer::Network(network)),
        }
    }

    /// The peer as an entry's `recorder`.
    pub fn to_recorder(&self) -> pb::Recorder {
        let address =
            |address: &Option<SocketAddr>| address.map(|a| a.to_string()).unwrap_or_default();
        let peer = match self {
            Peer::Unix(unix) => Some(pb::recorder::Peer::Unix(pb::UnixPeer {
                uid: unix.uid,
                gid: unix.gid,
                pid: unix.pid.map_or(0, |pid| pid as u32),
                binary_path: unix
                    .binary_path
                    .as_ref()
                    .map(|path| path.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            })),
            Peer::Tcp { address: a } => Some(pb::recorder::Peer::Network(pb::NetworkPeer {
                address: address(a),
                ..Default::default()
            })),
            Peer::Tls {
                address: a,
                certificate,
            } => Some(pb::recorder::Peer::Network(pb::NetworkPeer {
                address: address(a),
                spiffe_id: certificate
                    .as_ref()
                    .map(|c| c.spiffe_id.to_string())
                    .unwrap_or_default(),
                certificate_subject: certificate
                    .as_ref()
                    .map(|c| c.subject.clone())
                    .unwrap_or_default(),
            })),
            Peer::Unknown => None,
        };
        pb::Recorder { peer }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_with_an_invalid_certificate_keeps_its_address() {
        // A certificate without a URI SAN is not an X509-SVID.
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = rcgen::CertificateParams::new(vec!["client.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let address: SocketAddr = "10.1.2.3:4567".parse().unwrap();
        let mut extensions = http::Extensions::new();
        extensions.insert(TlsPeerInfo::new(Some(address), Some(certificate.der())));
        assert!(Peer::from_extensions(&extensions).is_err());
        assert_eq!(
            Peer::without_certificate(&extensions),
            Peer::Tls {
                address: Some(address),
                certificate: None,
            }
        );
    }
}
