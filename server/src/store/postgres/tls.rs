//! TLS to PostgreSQL, as libpq's `sslmode` names it: `require` encrypts without checking the
//! server's certificate; `verify-ca` checks it against `sslrootcert`; `verify-full` checks the
//! host name too. `sslcert` and `sslkey` present a client certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::error::Error;

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Encrypted, the certificate not checked.
    Require,
    /// The certificate must chain to `sslrootcert`.
    VerifyCa,
    /// The certificate must chain to `sslrootcert` and name the host.
    VerifyFull,
}

impl Mode {
    /// The mode `sslmode` names, `None` for `disable`.
    pub fn parse(value: &str) -> Result<Option<Self>, String> {
        match value {
            "disable" => Ok(None),
            "require" => Ok(Some(Mode::Require)),
            "verify-ca" => Ok(Some(Mode::VerifyCa)),
            "verify-full" => Ok(Some(Mode::VerifyFull)),
            other => Err(format!(
                "sslmode={other}: expected disable, require, verify-ca or verify-full"
            )),
        }
    }
}

/// What the URL says about TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// `sslmode`.
    pub mode: Option<Mode>,
    /// `sslrootcert`.
    pub root_cert: Option<PathBuf>,
    /// `sslcert`.
    pub cert: Option<PathBuf>,
    /// `sslkey`.
    pub key: Option<PathBuf>,
}

/// The connector for `options`, or `None` without TLS.
pub fn connector(options: &TlsOptions) -> Result<Option<MakeRustlsConnect>, Error> {
    let Some(mode) = options.mode else {
        if options.root_cert.is_some() || options.cert.is_some() {
            return Err(bad(
                "sslrootcert and sslcert need an sslmode other than disable",
            ));
        }
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, &options.root_cert) {
        (Mode::Require, _) => Arc::new(Unchecked(provider)),
        (_, None) => {
            return Err(bad(
                "sslmode=verify-ca and verify-full need sslrootcert=FILE",
            ));
        }
        (mode, Some(path)) => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|e| file_error(path, &e.to_string()))?;
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error(path, &e.to_string()))?;
            match mode {
                Mode::VerifyCa => Arc::new(AnyName(webpki)),
                _ => webpki,
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&options.cert, &options.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = read_certificates(cert)?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, &e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| file_error(cert, &e.to_string()))?
        }
        _ => return Err(bad("sslcert and sslkey go together")),
    };
    Ok(Some(MakeRustlsConnect::new(config)))
}

fn bad(what: &str) -> Error {
    Error::Config(format!("--store: {what}"))
}

fn file_error(path: &Path, what: &str) -> Error {
    bad(&format!("{}: {what}", path.display()))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    crate::serve::tls::certificates(path).map_err(|e| file_error(path, &e))
}

/// `sslmode=require`: encrypts, and checks only that the handshake is signed by the key of the
/// certificate presented (as libpq does without a root certificate).
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must be trusted; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
