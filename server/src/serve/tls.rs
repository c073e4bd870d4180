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

/// Builds the acceptor of the TLS listener from PEM files. With `client_ca`, every client must
/// present a certificate that CA signed (mutual TLS).
pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, Error> {
    let fail = |path: &Path, what: &str| Error::Config(format!("TLS {}: {what}", path.display()));
    let certificates = |path: &Path| {
        let chain = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| fail(path, &e.to_string()))?;
        if chain.is_empty() {
            return Err(fail(path, "no certificate in the file"));
        }
        Ok(chain)
    };
    let builder = ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(ca)? {
                roots
                    .add(certificate)
                    .map_err(|e| fail(ca, &e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| fail(ca, &e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| fail(key, &e.to_string()))?;
    let mut config = builder
        .with_single_cert(certificates(cert)?, private_key)
        .map_err(|e| fail(cert, &e.to_string()))?;
    // gRPC runs over HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
