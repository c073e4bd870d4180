//! Who may look at the console: every request needs the `read` permission, decided by the
//! same [`Access`](crate::access::Access) as Query, with refusals recorded through the same
//! budgeted [`RefusalRecorder`](crate::guard::RefusalRecorder).
//!
//! A caller is known by its connection (loopback, or a client certificate on HTTPS), or by a
//! bearer token from the token file, sent as `Authorization: Bearer TOKEN` or, so that a
//! browser can send it with every request of the page (live tail included) without a cookie,
//! as the password of HTTP Basic authentication. A token is accepted over HTTPS, or over plain
//! HTTP only from loopback (a local TLS-terminating proxy); sent from elsewhere over plain HTTP
//! it is refused, since anyone on the path could have read it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use audit_identity::Peer;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use super::Console;
use super::api::error_response;
use crate::error::Error;
use crate::policy::{Permission, is_token_name};
use crate::store::Store;

/// Shortest token accepted in the token file.
const MIN_TOKEN_CHARS: usize = 16;

/// The console's bearer tokens, by the SHA-256 of their text (so a lookup's timing says
/// nothing about how much of a guess matched), with their names.
#[derive(Debug, Default)]
pub struct Tokens {
    names: HashMap<[u8; 32], String>,
}

impl Tokens {
    /// Loads a token file: one `NAME TOKEN` per line, blank lines and `#` comments ignored.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("web token file {}: {e}", path.display())))?;
        Self::parse(&text)
            .map_err(|why| Error::Config(format!("web token file {}: {why}", path.display())))
    }

    /// Parses the text of a token file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut names = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |why: &str| format!("line {}: {why}", number + 1);
            let mut words = line.split_whitespace();
            let (Some(name), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(at("expected `NAME TOKEN`"));
            };
            if !is_token_name(name) {
                return Err(at("a token name is letters, digits, `-`, `_` and `.`"));
            }
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(at(&format!(
                    "the token of `{name}` is shorter than {MIN_TOKEN_CHARS} characters"
                )));
            }
            if names.insert(digest(token), name.to_string()).is_some() {
                return Err(at("the same token is given twice"));
            }
        }
        Ok(Self { names })
    }

    /// Whether any token is configured (then refusals invite the browser to send one).
    pub fn any(&self) -> bool {
        !self.names.is_empty()
    }

    fn name(&self, token: &str) -> Option<&str> {
        self.names.get(&digest(token)).map(String::as_str)
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token a request carries, if any: `Bearer TOKEN`, or the password of `Basic`; `Err` for
/// an `Authorization` header of another form.
fn presented_token(request: &Request) -> Option<Result<String, String>> {
    let value = request.headers().get(header::AUTHORIZATION)?;
    let bad = || "the Authorization header is not `Bearer TOKEN` or Basic".to_string();
    let token = (|| {
        let value = value.to_str().map_err(|_| bad())?;
        let (scheme, rest) = value.split_once(' ').ok_or_else(bad)?;
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => Ok(rest.trim().to_string()),
            "basic" => {
                let decoded = BASE64.decode(rest.trim()).map_err(|_| bad())?;
                let text = String::from_utf8(decoded).map_err(|_| bad())?;
                let (_, password) = text.split_once(':').ok_or_else(bad)?;
                Ok(password.to_string())
            }
            _ => Err(bad()),
        }
    })();
    Some(token)
}

/// The guard in front of every route: the caller needs `read`; a refusal is recorded (within
/// the budget) and answered 401 or 403 with the reason.
pub async fn guard<S: Store + Clone>(
    State(console): State<Arc<Console<S>>>,
    request: Request,
    next: Next,
) -> Response {
    // Refusals name the request as `GET /api/entries`: the path without its query, which may
    // carry what the caller searched for.
    let method = format!("{} {}", request.method(), request.uri().path());
    let verdict = match presented_token(&request) {
        None => {
            let probe =
                tonic::Request::from_parts(MetadataMap::new(), request.extensions().clone(), ());
            console
                .access
                .check(&probe, &method, Permission::Read)
                .map(drop)
        }
        Some(presented) => {
            let peer = Peer::from_extensions(request.extensions())
                .unwrap_or_else(|_| Peer::without_certificate(request.extensions()));
            // Over plain HTTP from elsewhere, anyone on the path could have read the token.
            let readable = !matches!(peer, Peer::Tls { .. }) && !peer.is_plaintext_loopback();
            let token = match &presented {
                Err(why) => Err(why.clone()),
                Ok(_) if readable => Err("a bearer token is accepted only over HTTPS, or over \
                                          plain HTTP from loopback"
                    .to_string()),
                Ok(token) => console
                    .tokens
                    .name(token)
                    .ok_or_else(|| "the bearer token is not one of the console's tokens".into()),
            };
            console
                .access
                .check_token(peer, token, &method, Permission::Read)
        }
    };
    match verdict {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            console.refusals.record(&refusal).await;
            let unauthenticated = refusal.status.code() == tonic::Code::Unauthenticated;
            let status = if unauthenticated {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            };
            let mut response = error_response(status, refusal.status.message(), &[]);
            if unauthenticated && console.tokens.any() {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"audit console\", charset=\"UTF-8\""),
                );
            }
            response.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_name_their_tokens_and_refuse_bad_lines() {
        let tokens =
            Tokens::parse("# desk\nsiem-desk 0123456789abcdef0123\n\nops ffffffffffffffffff\n")
                .unwrap();
        assert_eq!(tokens.name("0123456789abcdef0123"), Some("siem-desk"));
        assert_eq!(tokens.name("ffffffffffffffffff"), Some("ops"));
        assert_eq!(tokens.name("0123456789abcdef012"), None);
        assert!(tokens.any());
        for (bad, why) in [
            ("short 0123", "shorter than 16"),
            ("a b c", "expected `NAME TOKEN`"),
            ("lonely", "expected `NAME TOKEN`"),
            ("bad/name 0123456789abcdef0123", "token name"),
            (
                "a 0123456789abcdef0123\nb 0123456789abcdef0123",
                "line 2: the same token",
            ),
        ] {
            let error = Tokens::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
