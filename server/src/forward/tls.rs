//! TLS for forwarders (syslog over TLS, HTTPS webhooks): the receiver's certificate is verified
//! against a CA file (default: the system's bundle), and a client certificate is presented when
//! one is configured.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use super::options::Options;
use crate::error::Error;

/// The system's CA bundle (Debian's `ca-certificates`), used when no `ca` is given.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Options of a TLS client, as the forwarder options name them.
pub const OPTIONS: &str = "ca, cert, key, server_name";

/// A connector and the name the receiver's certificate must carry.
#[derive(Clone)]
pub struct Tls {
    /// Connects and verifies.
    pub connector: TlsConnector,
    /// The name checked against the receiver's certificate.
    pub server_name: ServerName<'static>,
}

/// Builds the TLS client of a forwarder from its options `ca`, `cert`, `key` and `server_name`
/// (default: the URL's host); `alpn` is offered to the receiver.
pub fn client(options: &mut Options, host: &str, alpn: &[&[u8]]) -> Result<Tls, Error> {
    let ca = options.take("ca")?.map(PathBuf::from);
    let cert = options.take("cert")?.map(PathBuf::from);
    let key = options.take("key")?.map(PathBuf::from);
    let server_name = options
        .take("server_name")?
        .unwrap_or_else(|| host.to_string());
    let fail = |path: &Path, what: String| options.error(format!("TLS {}: {what}", path.display()));
    let ca_path = ca.as_deref().unwrap_or(Path::new(SYSTEM_CAS));
    let mut roots = RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(ca_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| fail(ca_path, e.to_string()))?;
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|e| fail(ca_path, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail(ca_path, "no CA certificate in the file".into()));
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match (cert, key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(&cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| fail(&cert, e.to_string()))?;
            let private_key =
                PrivateKeyDer::from_pem_file(&key).map_err(|e| fail(&key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, private_key)
                .map_err(|e| fail(&cert, e.to_string()))?
        }
        _ => return Err(options.error("options `cert` and `key` go together")),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let server_name = ServerName::try_from(server_name.clone())
        .map_err(|_| options.error(format!("`{server_name}` is not a valid TLS server name")))?;
    Ok(Tls {
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
    })
}
