//! Who may do what: a policy file granting `record`, `read` and `admin` to identities, and the
//! development default used without one.
//!
//! ```toml
//! [[grant]]
//! to = ["spiffe://prod/billing/*", "uid:1000"]
//! allow = ["record"]
//!
//! [[grant]]
//! to = ["spiffe://prod/security/siem"]
//! allow = ["read"]
//! ```
//!
//! Identities: `spiffe://…` exactly, `spiffe://…/*` for every ID below a path (a
//! [`Pattern`] whose `*` follows a `/`), `uid:N` and
//! `gid:N` for Unix socket callers, `authenticated` for any caller with a verified identity (Unix
//! socket or client certificate), `loopback` for plaintext callers on a loopback address, and
//! `anyone`.
//!
//! `token:NAME` names a caller of the web console that sent the bearer token called `NAME` in
//! the console's token file (`--web-token-file`); such a caller also counts as `authenticated`.
//! Tokens only reach the web console, never the gRPC listeners.

use std::path::Path;

use audit_format::Pattern;
use audit_identity::{Peer, SpiffeId};
use serde::Deserialize;

use crate::error::Error;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Record and RecordBatch.
    Record,
    /// Query, Subscribe, checkpoints and proofs, and server reflection.
    Read,
    /// gRPC health checks; always granted to the Unix socket and plaintext loopback.
    Health,
    /// Every permission (and administrative calls, when there are any).
    Admin,
}

impl Permission {
    /// The permission's name in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Record => "record",
            Permission::Read => "read",
            Permission::Health => "health",
            Permission::Admin => "admin",
        }
    }
}

/// The answer to "may this peer do this?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused because the caller did not prove who it is (UNAUTHENTICATED).
    Unauthenticated(String),
    /// Refused for this caller (PERMISSION_DENIED).
    Denied(String),
}

/// A set of grants loaded from a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    grants: Vec<Grant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    to: Vec<Identity>,
    allow: Vec<Permission>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    /// One SPIFFE ID, or (a prefix ending in `/*`) every ID below a path.
    Spiffe(Pattern),
    Uid(u32),
    Gid(u32),
    Authenticated,
    Loopback,
    Anyone,
    /// A web console caller with the bearer token of this name.
    Token(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    grant: Vec<GrantFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    to: Vec<String>,
    allow: Vec<Permission>,
}

impl Policy {
    /// Loads a policy file: YAML when its name ends in `.yaml` or `.yml`, TOML otherwise.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let fail = |why: String| Error::Config(format!("policy {}: {why}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        Self::parse(&text, yaml).map_err(fail)
    }

    /// Parses a policy from TOML, or YAML when `yaml` is true.
    pub fn parse(text: &str, yaml: bool) -> Result<Self, String> {
        let file: PolicyFile = if yaml {
            serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?
        } else {
            toml::from_str(text).map_err(|e| e.to_string())?
        };
        let grants = file
            .grant
            .into_iter()
            .enumerate()
            .map(|(index, grant)| {
                let to = grant
                    .to
                    .iter()
                    .map(|text| {
                        parse_identity(text)
                            .map_err(|why| format!("grant {index}: `{text}`: {why}"))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Grant {
                    to,
                    allow: grant.allow,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Policy { grants })
    }

    /// Decides whether the web caller with the token `name` has `permission` under this policy.
    fn decide_token(&self, name: &str, permission: Permission) -> Decision {
        let granted = self.grants.iter().any(|grant| {
            (grant.allow.contains(&permission) || grant.allow.contains(&Permission::Admin))
                && grant.to.iter().any(|identity| match identity {
                    Identity::Token(granted) => granted == name,
                    Identity::Authenticated | Identity::Anyone => true,
                    _ => false,
                })
        });
        if granted {
            Decision::Allow
        } else {
            Decision::Denied(format!(
                "token:{name} does not have the `{}` permission",
                permission.name()
            ))
        }
    }

    /// Decides whether `peer` has `permission` under this policy.
    fn decide(&self, peer: &Peer, permission: Permission) -> Decision {
        let granted = self.grants.iter().any(|grant| {
            (grant.allow.contains(&permission) || grant.allow.contains(&Permission::Admin))
                && grant.to.iter().any(|identity| identity.matches(peer))
        });
        if granted {
            Decision::Allow
        } else if peer.is_authenticated() {
            Decision::Denied(format!(
                "{} does not have the `{}` permission",
                peer.describe(),
                permission.name()
            ))
        } else {
            Decision::Unauthenticated(format!(
                "the `{}` permission is not granted to unauthenticated callers ({}); connect \
                 with a client certificate or over the Unix socket",
                permission.name(),
                peer.describe()
            ))
        }
    }
}

/// Decides whether `peer` has `permission`, under `policy` or, without one, the development
/// default: the Unix socket and plaintext loopback may do everything, TLS callers need a client
/// certificate, other plaintext callers are refused.
///
/// Health checks are always allowed on the Unix socket and plaintext loopback, where local
/// probes run; elsewhere they need the `health` permission.
pub fn decide(policy: Option<&Policy>, peer: &Peer, permission: Permission) -> Decision {
    let local = matches!(peer, Peer::Unix(_)) || peer.is_plaintext_loopback();
    if permission == Permission::Health && local {
        return Decision::Allow;
    }
    if let Some(policy) = policy {
        return policy.decide(peer, permission);
    }
    match peer {
        Peer::Unix(_) => Decision::Allow,
        Peer::Tls {
            certificate: Some(_),
            ..
        } => Decision::Allow,
        Peer::Tls {
            certificate: None, ..
        } => Decision::Unauthenticated("a client certificate is required".into()),
        _ if peer.is_plaintext_loopback() => Decision::Allow,
        _ => Decision::Denied(format!(
            "without a policy, plaintext callers are allowed only from loopback ({})",
            peer.describe()
        )),
    }
}

/// Decides whether a web console caller that sent the bearer token called `name` has
/// `permission`: under `policy`, grants to `token:NAME`, `authenticated` or `anyone`; without
/// one, every known token is allowed, as every valid client certificate is.
pub fn decide_token(policy: Option<&Policy>, name: &str, permission: Permission) -> Decision {
    match policy {
        Some(policy) => policy.decide_token(name, permission),
        None => Decision::Allow,
    }
}

fn parse_identity(text: &str) -> Result<Identity, String> {
    let number = |n: &str| {
        n.parse::<u32>()
            .map_err(|_| "expected a number".to_string())
    };
    match text {
        "authenticated" => Ok(Identity::Authenticated),
        "loopback" => Ok(Identity::Loopback),
        "anyone" => Ok(Identity::Anyone),
        _ if text.starts_with("uid:") => Ok(Identity::Uid(number(&text[4..])?)),
        _ if text.starts_with("gid:") => Ok(Identity::Gid(number(&text[4..])?)),
        _ if text.starts_with("token:") => match &text[6..] {
            name if is_token_name(name) => Ok(Identity::Token(name.to_string())),
            _ => Err("a token name is letters, digits, `-`, `_` and `.`".into()),
        },
        _ if text.starts_with("spiffe://") => {
            let pattern = Pattern::parse(text).map_err(|e| e.to_string())?;
            if pattern.is_prefix() {
                // A prefix is a subtree: `spiffe://prod/bill*` would also grant `billing-x`.
                let base = pattern
                    .literal()
                    .strip_suffix('/')
                    .ok_or("a SPIFFE ID pattern ends in `/*` (every ID below a path)")?;
                SpiffeId::parse(base).map_err(|e| e.to_string())?;
            } else {
                SpiffeId::parse(text).map_err(|e| e.to_string())?;
            }
            Ok(Identity::Spiffe(pattern))
        }
        _ => Err(
            "expected spiffe://…, spiffe://…/*, uid:N, gid:N, token:NAME, authenticated, \
             loopback or anyone"
                .into(),
        ),
    }
}

/// Whether `name` may name a token: non-empty, at most 64 of `[A-Za-z0-9._-]`.
pub fn is_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Identity {
    fn matches(&self, peer: &Peer) -> bool {
        match self {
            Identity::Spiffe(pattern) => peer
                .spiffe_id()
                .is_some_and(|p| pattern.matches(p.as_str())),
            Identity::Uid(uid) => matches!(peer, Peer::Unix(unix) if unix.uid == *uid),
            Identity::Gid(gid) => matches!(peer, Peer::Unix(unix) if unix.gid == *gid),
            Identity::Authenticated => peer.is_authenticated(),
            Identity::Loopback => peer.is_plaintext_loopback(),
            Identity::Anyone => true,
            // Tokens are decided by `decide_token`; a connection alone never carries one.
            Identity::Token(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use audit_identity::{CertificateIdentity, UnixPeerInfo};

    use super::*;

    fn spiffe(id: &str) -> Peer {
        Peer::Tls {
            address: None,
            certificate: Some(CertificateIdentity {
                spiffe_id: SpiffeId::parse(id).unwrap(),
                subject: String::new(),
            }),
        }
    }

    fn unix(uid: u32, gid: u32) -> Peer {
        Peer::Unix(UnixPeerInfo {
            uid,
            gid,
            pid: None,
            binary_path: None,
        })
    }

    fn tcp(address: &str) -> Peer {
        Peer::Tcp {
            address: Some(address.parse().unwrap()),
        }
    }

    const POLICY: &str = r#"
[[grant]]
to = ["spiffe://prod/billing/*", "uid:1000"]
allow = ["record"]

[[grant]]
to = ["spiffe://prod/siem", "gid:50"]
allow = ["read"]
"#;

    #[test]
    fn grants_apply_per_identity_and_permission() {
        let policy = Policy::parse(POLICY, false).unwrap();
        let allowed = |peer: &Peer, p| decide(Some(&policy), peer, p) == Decision::Allow;
        assert!(allowed(
            &spiffe("spiffe://prod/billing/api"),
            Permission::Record
        ));
        assert!(allowed(
            &spiffe("spiffe://prod/billing/a/b"),
            Permission::Record
        ));
        assert!(!allowed(
            &spiffe("spiffe://prod/billing"),
            Permission::Record
        ));
        assert!(!allowed(
            &spiffe("spiffe://prod/billing2/x"),
            Permission::Record
        ));
        assert!(!allowed(
            &spiffe("spiffe://prod/billing/api"),
            Permission::Read
        ));
        assert!(allowed(&spiffe("spiffe://prod/siem"), Permission::Read));
        assert!(allowed(&unix(1000, 1), Permission::Record));
        assert!(allowed(&unix(7, 50), Permission::Read));
        assert!(!allowed(&unix(7, 50), Permission::Admin));
        assert!(matches!(
            decide(Some(&policy), &unix(7, 7), Permission::Record),
            Decision::Denied(_)
        ));
        assert!(matches!(
            decide(Some(&policy), &tcp("127.0.0.1:1"), Permission::Record),
            Decision::Unauthenticated(_)
        ));
    }

    #[test]
    fn health_is_local_or_granted_and_admin_grants_everything() {
        let policy = Policy::parse(
            r#"
[[grant]]
to = ["spiffe://prod/probe"]
allow = ["health"]

[[grant]]
to = ["spiffe://prod/operator"]
allow = ["admin"]
"#,
            false,
        )
        .unwrap();
        let allowed = |peer: &Peer, p| decide(Some(&policy), peer, p) == Decision::Allow;
        assert!(allowed(&unix(7, 7), Permission::Health));
        assert!(allowed(&tcp("127.0.0.1:1"), Permission::Health));
        assert!(!allowed(&tcp("10.0.0.1:1"), Permission::Health));
        assert!(allowed(&spiffe("spiffe://prod/probe"), Permission::Health));
        assert!(!allowed(&spiffe("spiffe://prod/probe"), Permission::Read));
        assert!(!allowed(&spiffe("spiffe://prod/other"), Permission::Health));
        for permission in [
            Permission::Record,
            Permission::Read,
            Permission::Health,
            Permission::Admin,
        ] {
            assert!(allowed(&spiffe("spiffe://prod/operator"), permission));
        }
    }

    #[test]
    fn tokens_are_granted_by_name_and_never_by_connection() {
        let policy = Policy::parse(
            "[[grant]]\nto = [\"token:siem-desk\"]\nallow = [\"read\"]\n",
            false,
        )
        .unwrap();
        let token = |name, p| decide_token(Some(&policy), name, p);
        assert_eq!(token("siem-desk", Permission::Read), Decision::Allow);
        assert!(matches!(
            token("siem-desk", Permission::Record),
            Decision::Denied(_)
        ));
        assert!(matches!(
            token("other", Permission::Read),
            Decision::Denied(_)
        ));
        assert_eq!(decide_token(None, "any", Permission::Read), Decision::Allow);
        assert!(matches!(
            decide(Some(&policy), &tcp("127.0.0.1:1"), Permission::Read),
            Decision::Unauthenticated(_)
        ));
        assert!(
            Policy::parse("[[grant]]\nto = [\"token:\"]\nallow = [\"read\"]\n", false).is_err()
        );
        assert!(
            Policy::parse(
                "[[grant]]\nto = [\"token:a b\"]\nallow = [\"read\"]\n",
                false
            )
            .is_err()
        );
    }

    #[test]
    fn yaml_policies_read_the_same() {
        let yaml = "grant:\n  - to: [\"spiffe://prod/billing/*\", \"uid:1000\"]\n    allow: [record]\n  - to: [\"spiffe://prod/siem\", \"gid:50\"]\n    allow: [read]\n";
        assert_eq!(
            Policy::parse(yaml, true).unwrap(),
            Policy::parse(POLICY, false).unwrap()
        );
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        let bad = "[[grant]]\nto = [\"spiffe://Prod/x\"]\nallow = [\"record\"]\n";
        assert!(Policy::parse(bad, false).unwrap_err().contains("grant 0"));
        let bad = "[[grant]]\nto = [\"root\"]\nallow = [\"record\"]\n";
        assert!(
            Policy::parse(bad, false)
                .unwrap_err()
                .contains("expected spiffe://")
        );
        let bad = "[[grant]]\nto = [\"anyone\"]\nallow = [\"write\"]\n";
        assert!(Policy::parse(bad, false).is_err());
        let bad = "[[grant]]\nto = [\"spiffe://prod/*/api\"]\nallow = [\"record\"]\n";
        let why = Policy::parse(bad, false).unwrap_err();
        assert!(why.contains("only allowed as the last character"), "{why}");
        let bad = "[[grant]]\nto = [\"spiffe://prod/bill*\"]\nallow = [\"record\"]\n";
        let why = Policy::parse(bad, false).unwrap_err();
        assert!(why.contains("ends in `/*`"), "{why}");
    }

    #[test]
    fn default_allows_development_transports_only() {
        assert_eq!(
            decide(None, &unix(5, 5), Permission::Admin),
            Decision::Allow
        );
        assert_eq!(
            decide(None, &tcp("127.0.0.1:9"), Permission::Record),
            Decision::Allow
        );
        assert_eq!(
            decide(None, &tcp("[::1]:9"), Permission::Read),
            Decision::Allow
        );
        assert!(matches!(
            decide(None, &tcp("10.0.0.1:9"), Permission::Read),
            Decision::Denied(_)
        ));
        assert_eq!(
            decide(None, &spiffe("spiffe://x/y"), Permission::Read),
            Decision::Allow
        );
        let anonymous_tls = Peer::Tls {
            address: None,
            certificate: None,
        };
        assert!(matches!(
            decide(None, &anonymous_tls, Permission::Read),
            Decision::Unauthenticated(_)
        ));
    }

    /// The policy parser never panics; a bad identity is refused naming its grant and text,
    /// and whatever parses decides without a panic.
    mod props {
        use super::*;
        use proptest::prelude::*;

        fn identity() -> impl Strategy<Value = String> {
            prop_oneof![
                "spiffe://[a-z.]{1,8}(/[a-z*]{1,5}){0,3}",
                "(uid|gid):[0-9]{1,6}",
                Just("authenticated".to_string()),
                Just("loopback".to_string()),
                Just("anyone".to_string()),
                "[a-z:/*0-9]{0,16}",
                "\\PC{0,16}",
            ]
        }

        fn permission() -> impl Strategy<Value = &'static str> {
            prop_oneof![Just("record"), Just("read"), Just("admin"), Just("write")]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,200}", yaml in any::<bool>()) {
                let _ = Policy::parse(&text, yaml);
            }

            #[test]
            fn grants_parse_or_name_the_bad_identity(
                to in prop::collection::vec(identity(), 1..4),
                allow in prop::collection::vec(permission(), 0..3),
                uid in any::<u32>(),
            ) {
                let quote = |items: Vec<String>| {
                    items
                        .iter()
                        .map(|t| toml::Value::String(t.clone()).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let allow: Vec<String> = allow.iter().map(|p| p.to_string()).collect();
                let text = format!(
                    "[[grant]]\nto = [{}]\nallow = [{}]\n",
                    quote(to.clone()),
                    quote(allow.clone())
                );
                match Policy::parse(&text, false) {
                    Ok(policy) => {
                        for permission in [Permission::Record, Permission::Read, Permission::Admin] {
                            let _ = decide(Some(&policy), &unix(uid, uid), permission);
                            let _ = decide(Some(&policy), &tcp("192.0.2.1:1"), permission);
                        }
                    }
                    Err(why) => {
                        let names_identity = why.starts_with("grant 0: `")
                            && to.iter().any(|t| why.contains(t.as_str()));
                        let bad_permission = allow.iter().any(|p| p == "write");
                        prop_assert!(names_identity || bad_permission, "{why}");
                    }
                }
            }
        }
    }
}
