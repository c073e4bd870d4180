//! The console over HTTPS (HTTP/2 by ALPN), with curl as the browser: a client certificate is
//! the caller's SPIFFE ID under the policy, a bearer token works without one, and refusals
//! record who was refused.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use serde_json::Value;

use super::harness::Console;

/// A CA, the console's certificate for `localhost`, and client certificates.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "console test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let pki = Self { dir, ca };
        pki.leaf("server", None, ExtendedKeyUsagePurpose::ServerAuth);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `<name>.pem` and `<name>.key`: a certificate for `localhost`, with `uri` as its
    /// URI SAN when given.
    fn leaf(&self, name: &str, uri: Option<&str>, usage: ExtendedKeyUsagePurpose) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
        }
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// `curl` over HTTPS to the console: the status and the body.
async fn curl(console: &Console, pki: &Pki, path: &str, args: &[&str]) -> (u16, String) {
    let port = console.web.port();
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--http2", "--max-time", "20"])
        .arg("--cacert")
        .arg(pki.path("ca.pem"))
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["--write-out", "\n%{http_code} %{http_version}"])
        .args(args)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .await
        .expect("curl runs (apt-get install curl)");
    assert!(output.status.success(), "curl: {output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, last) = text.rsplit_once('\n').unwrap();
    let (status, version) = last.split_once(' ').unwrap();
    assert_eq!(version, "2", "HTTP/2 through ALPN");
    (status.parse().unwrap(), body.to_string())
}

fn cert_args(pki: &Pki, name: &str) -> Vec<String> {
    let path = |ext: &str| pki.path(&format!("{name}.{ext}")).display().to_string();
    vec!["--cert".into(), path("pem"), "--key".into(), path("key")]
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test]
async fn client_certificates_and_tokens_over_https_follow_the_policy() {
    let pki = Pki::new();
    pki.leaf(
        "desk",
        Some("spiffe://test/desk"),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    pki.leaf(
        "other",
        Some("spiffe://test/other"),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let token = "ops-token-0123456789abcdef";
    std::fs::write(pki.path("tokens"), format!("ops {token}\n")).unwrap();
    std::fs::write(
        pki.path("policy.toml"),
        "[[grant]]\nto = [\"spiffe://test/desk\", \"token:ops\"]\nallow = [\"read\"]\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let console = Console::start_in(
        dir,
        &[
            "--web-tls-cert",
            &text(&pki.path("server.pem")),
            "--web-tls-key",
            &text(&pki.path("server.key")),
            "--web-tls-client-ca",
            &text(&pki.path("ca.pem")),
            "--web-token-file",
            &text(&pki.path("tokens")),
            "--policy",
            &text(&pki.path("policy.toml")),
        ],
    )
    .await;

    let (status, _) = curl(&console, &pki, "/api/entries", &[]).await;
    assert_eq!(status, 401, "no certificate, no token");
    let other = cert_args(&pki, "other");
    let other: Vec<&str> = other.iter().map(String::as_str).collect();
    let (status, body) = curl(&console, &pki, "/api/checkpoint", &other).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("spiffe://test/other does not have the `read` permission"));

    let desk = cert_args(&pki, "desk");
    let desk: Vec<&str> = desk.iter().map(String::as_str).collect();
    let (status, page) = curl(&console, &pki, "/", &desk).await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Audit console</title>"));
    let bearer = format!("Authorization: Bearer {token}");
    let (status, body) = curl(
        &console,
        &pki,
        "/api/entries?outcome=DENIED",
        &["--header", &bearer],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let refusals: Value = serde_json::from_str(&body).unwrap();
    let entries = refusals["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{refusals}");
    assert_eq!(entries[0]["method"], "GET /api/entries");
    assert_eq!(entries[0]["statusCode"], 16);
    assert_eq!(entries[1]["method"], "GET /api/checkpoint");
    assert_eq!(
        entries[1]["caller"]["network"]["spiffeId"], "spiffe://test/other",
        "the refused caller's certificate identity is recorded"
    );
}
