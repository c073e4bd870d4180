//! The TLS listener's configuration: the server's certificate and key, and for mutual TLS the CA
//! that signs client certificates.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

use crate::error::Error;

/// The certificates in a PEM file (at least one).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())?;
    if chain.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(chain)
}

/// Whether clients must present a certificate from the client CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificates {
    /// Every client must (mutual TLS, the gRPC listener).
    Required,
    /// A client may (the web console, whose browsers may use a token instead).
    Optional,
}

/// Builds a TLS acceptor from PEM files: the server's certificate chain and key, and the CA
/// that signs client certificates, offering `alpn`. `what` names the listener in errors.
pub fn server_acceptor(
    what: &str,
    cert: &Path,
    key: &Path,
    client_ca: Option<(&Path, ClientCertificates)>,
    alpn: &[&[u8]],
) -> Result<TlsAcceptor, Error> {
    let fail = |path: &Path, why: &str| Error::Config(format!("{what} {}: {why}", path.display()));
    let builder = ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some((ca, clients)) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(ca).map_err(|e| fail(ca, &e))? {
                roots
                    .add(certificate)
                    .map_err(|e| fail(ca, &e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = match clients {
                ClientCertificates::Required => verifier,
                ClientCertificates::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| fail(ca, &e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| fail(key, &e.to_string()))?;
    let chain = certificates(cert).map_err(|e| fail(cert, &e))?;
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(|e| fail(cert, &e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Builds the acceptor of the TLS listener from PEM files. With `client_ca`, every client must
/// present a certificate that CA signed (mutual TLS).
pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, Error> {
    let client_ca = client_ca.map(|ca| (ca, ClientCertificates::Required));
    // gRPC runs over HTTP/2 only.
    server_acceptor("TLS", cert, key, client_ca, &[b"h2"])
}
