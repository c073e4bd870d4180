//! SPIFFE IDs: parsing by the rules of the SPIFFE ID specification, and extraction from an X.509
//! client certificate (an X509-SVID carries exactly one URI SAN, its SPIFFE ID).

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Longest SPIFFE ID accepted, in bytes.
pub const MAX_LENGTH: usize = 2048;

/// A valid SPIFFE ID, `spiffe://trust-domain/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId(String);

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Longer than [`MAX_LENGTH`].
    #[error("longer than {MAX_LENGTH} bytes")]
    TooLong,
    /// Does not start with `spiffe://`.
    #[error("scheme must be `spiffe://`")]
    Scheme,
    /// The trust domain is empty.
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain has a character outside `[a-z0-9.-_]`.
    #[error("trust domain may only contain a-z, 0-9, `.`, `-` and `_`")]
    TrustDomainCharacter,
    /// A path segment is empty (`//` or a trailing `/`).
    #[error("path has an empty segment")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("path has a `.` or `..` segment")]
    DotSegment,
    /// A path segment has a character outside `[a-zA-Z0-9.-_]` (this includes `?` and `#`:
    /// no query or fragment).
    #[error("path may only contain a-z, A-Z, 0-9, `.`, `-` and `_` (no query or fragment)")]
    PathCharacter,
}

impl SpiffeId {
    /// Parses `text` as a SPIFFE ID.
    pub fn parse(text: &str) -> Result<Self, SpiffeIdError> {
        if text.len() > MAX_LENGTH {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = text
            .strip_prefix("spiffe://")
            .ok_or(SpiffeIdError::Scheme)?;
        let (trust_domain, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        if trust_domain.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        let domain_char = |c: char| matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_');
        if !trust_domain.chars().all(domain_char) {
            return Err(SpiffeIdError::TrustDomainCharacter);
        }
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                match segment {
                    "" => return Err(SpiffeIdError::EmptySegment),
                    "." | ".." => return Err(SpiffeIdError::DotSegment),
                    _ => {}
                }
                let path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
                if !segment.chars().all(path_char) {
                    return Err(SpiffeIdError::PathCharacter);
                }
            }
        }
        Ok(SpiffeId(text.to_string()))
    }

    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// The SPIFFE ID of the only URI SAN.
    pub spiffe_id: SpiffeId,
    /// The certificate's subject, e.g. `CN=billing, O=Example`.
    pub subject: String,
}

/// Why a client certificate does not identify a SPIFFE workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The certificate does not parse as X.509.
    #[error("client certificate does not parse: {0}")]
    Malformed(String),
    /// The certificate has no URI SAN.
    #[error("client certificate has no URI SAN; it must carry exactly one SPIFFE ID")]
    NoUriSan,
    /// The certificate has more than one URI SAN.
    #[error("client certificate has {0} URI SANs; it must carry exactly one SPIFFE ID")]
    SeveralUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("client certificate's URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(SpiffeIdError),
}

/// Reads the SPIFFE ID and subject of a DER-encoded (leaf) certificate.
pub fn certificate_identity(der: &[u8]) -> Result<CertificateIdentity, CertificateError> {
    let (_, certificate) =
        X509Certificate::from_der(der).map_err(|e| CertificateError::Malformed(e.to_string()))?;
    let san = certificate
        .subject_alternative_name()
        .map_err(|e| CertificateError::Malformed(e.to_string()))?;
    let uris: Vec<&str> = san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let uri = match uris.as_slice() {
        [] => return Err(CertificateError::NoUriSan),
        [one] => *one,
        several => return Err(CertificateError::SeveralUriSans(several.len())),
    };
    Ok(CertificateIdentity {
        spiffe_id: SpiffeId::parse(uri).map_err(CertificateError::InvalidSpiffeId)?,
        subject: certificate.subject().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_parse() {
        for id in [
            "spiffe://example.org",
            "spiffe://prod/billing/api",
            "spiffe://a-b_c.d/Path_with-Caps.v1",
        ] {
            assert_eq!(SpiffeId::parse(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn invalid_ids_are_refused_with_the_rule_they_break() {
        use SpiffeIdError::*;
        let long = format!("spiffe://example.org/{}", "a".repeat(MAX_LENGTH));
        let cases = [
            ("http://example.org/x", Scheme),
            ("SPIFFE://example.org/x", Scheme),
            ("spiffe://", EmptyTrustDomain),
            ("spiffe:///path", EmptyTrustDomain),
            ("spiffe://Example.org/x", TrustDomainCharacter),
            ("spiffe://example.org:8080/x", TrustDomainCharacter),
            ("spiffe://user@example.org/x", TrustDomainCharacter),
            ("spiffe://example.org/", EmptySegment),
            ("spiffe://example.org//x", EmptySegment),
            ("spiffe://example.org/x/", EmptySegment),
            ("spiffe://example.org/./x", DotSegment),
            ("spiffe://example.org/x/..", DotSegment),
            ("spiffe://example.org/x?query", PathCharacter),
            ("spiffe://example.org/x#fragment", PathCharacter),
            ("spiffe://example.org/x%20y", PathCharacter),
            (long.as_str(), TooLong),
        ];
        for (text, error) in cases {
            assert_eq!(SpiffeId::parse(text), Err(error), "{text}");
        }
    }

    /// The SPIFFE ID parser never panics, accepts exactly what the rules allow, and keeps the
    /// text it accepts.
    mod props {
        use super::*;
        use proptest::prelude::*;

        /// The rules, written independently of [`SpiffeId::parse`].
        fn follows_the_rules(text: &str) -> bool {
            let Some(rest) = text.strip_prefix("spiffe://") else {
                return false;
            };
            let mut parts = rest.split('/');
            let domain = parts.next().unwrap_or("");
            text.len() <= MAX_LENGTH
                && !domain.is_empty()
                && domain
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_'))
                && parts.all(|segment| {
                    !segment.is_empty()
                        && segment != "."
                        && segment != ".."
                        && segment
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                })
        }

        fn near_valid() -> impl Strategy<Value = String> {
            prop_oneof![
                "spiffe://[a-z0-9._-]{1,12}(/[A-Za-z0-9._-]{0,6}){0,4}",
                "spiffe://[a-zA-Z0-9.:@_-]{0,12}(/[A-Za-z0-9.?#%/_-]{0,6}){0,4}",
                "(spiffe|SPIFFE|http)://\\PC{0,20}",
                "\\PC{0,40}",
                "spiffe://a/[a-z]{2030,2060}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn accepts_exactly_what_the_rules_allow(text in near_valid()) {
                match SpiffeId::parse(&text) {
                    Ok(id) => {
                        prop_assert!(follows_the_rules(&text), "accepted {text:?}");
                        prop_assert_eq!(id.as_str(), text.as_str());
                    }
                    Err(_) => prop_assert!(!follows_the_rules(&text), "refused {text:?}"),
                }
            }
        }
    }
}
