//! [`CapturePolicy`]: what [`AuditLayer`](super::AuditLayer) records of each call, in the
//! manner of the Kubernetes audit policy: ordered [`Rule`]s, the first that matches decides the
//! call's [`Level`] and its [`FailureMode`].
//!
//! ```toml
//! max_message_bytes = 4096   # per captured message, as JSON (default 4096)
//! default_level = "metadata" # calls no rule matches (default)
//!
//! [[rule]]
//! methods = ["/grpc.health.v1.Health/*"]
//! level = "none"
//!
//! [[rule]]
//! methods = ["/keystore.v1.KeyStore/DeleteKey", "/keystore.v1.KeyStore/BatchDeleteKeys"]
//! principals = ["admin-*"]           # and/or spiffe_ids = [...], uids = [...]
//! codes = ["OK"]                     # gRPC status names or numbers
//! level = "request_response"
//! failure = "closed"                 # "open" (the layer's default mode when unset)
//! deadline_ms = 2000                 # required with "closed"
//! ```
//!
//! A rule matches a call when each condition it sets holds: the method matches one of
//! `methods`, the caller's principal one of `principals`, its SPIFFE ID one of `spiffe_ids`,
//! its Unix uid is one of `uids`, and the call's status is one of `codes`. Patterns are
//! [`Pattern`]s (exact, or a prefix with a trailing `*`). The principal is the one the layer's
//! extractor took from the request head (not one a handler sets later).

use std::path::Path;
use std::time::Duration;

use audit_format::Pattern;
use serde::Deserialize;

use super::FailureMode;

mod file;

/// How much of a call is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Nothing: neither the call's entry nor the operations its handler adds.
    None,
    /// The call's entry: method, caller, status, latency, what the handler annotated.
    Metadata,
    /// The entry and the request message, as JSON in `details.request`.
    Request,
    /// The entry, `details.request` and the response message in `details.response`.
    RequestResponse,
}

/// One rule of a [`CapturePolicy`]; a condition left unset matches every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    methods: Vec<Pattern>,
    principals: Vec<Pattern>,
    spiffe_ids: Vec<Pattern>,
    uids: Vec<u32>,
    codes: Vec<i32>,
    level: Level,
    failure: Option<FailureMode>,
}

/// The facts a rule can test before the call runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallFacts<'a> {
    pub(crate) method: &'a str,
    pub(crate) principal: &'a str,
    pub(crate) spiffe_id: Option<&'a str>,
    pub(crate) uid: Option<u32>,
}

impl Rule {
    /// A rule recording matching calls at `level`.
    pub fn new(level: Level) -> Self {
        Rule {
            methods: Vec::new(),
            principals: Vec::new(),
            spiffe_ids: Vec::new(),
            uids: Vec::new(),
            codes: Vec::new(),
            level,
            failure: None,
        }
    }

    /// Also matches calls of methods matching `pattern` (`/pkg.Service/*`).
    pub fn method(mut self, pattern: Pattern) -> Self {
        self.methods.push(pattern);
        self
    }

    /// Also matches callers whose principal matches `pattern`.
    pub fn principal(mut self, pattern: Pattern) -> Self {
        self.principals.push(pattern);
        self
    }

    /// Also matches callers whose SPIFFE ID matches `pattern` (`spiffe://prod/billing/*`).
    pub fn spiffe_id(mut self, pattern: Pattern) -> Self {
        self.spiffe_ids.push(pattern);
        self
    }

    /// Also matches Unix socket callers running as `uid`.
    pub fn uid(mut self, uid: u32) -> Self {
        self.uids.push(uid);
        self
    }

    /// Also matches calls that end with `code`.
    pub fn code(mut self, code: tonic::Code) -> Self {
        self.codes.push(code as i32);
        self
    }

    /// The failure mode of the calls this rule decides (the layer's default when unset).
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure = Some(mode);
        self
    }

    /// Fail-closed for the calls this rule decides.
    pub fn fail_closed(self, deadline: Duration) -> Self {
        self.failure_mode(FailureMode::Closed { deadline })
    }

    /// Fail-open for the calls this rule decides.
    pub fn fail_open(self) -> Self {
        self.failure_mode(FailureMode::Open)
    }

    fn matches_before_status(&self, call: &CallFacts<'_>) -> bool {
        let any = |patterns: &[Pattern], value: Option<&str>| {
            patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| p.matches(v)))
        };
        any(&self.methods, Some(call.method))
            && any(&self.principals, Some(call.principal))
            && any(&self.spiffe_ids, call.spiffe_id)
            && (self.uids.is_empty() || call.uid.is_some_and(|uid| self.uids.contains(&uid)))
    }

    fn matches_status(&self, code: i32) -> bool {
        self.codes.is_empty() || self.codes.contains(&code)
    }
}

/// Ordered capture rules, the level of calls none matches, and the byte limit of captured
/// messages; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturePolicy {
    rules: Vec<Rule>,
    default_level: Level,
    max_message_bytes: usize,
}

impl Default for CapturePolicy {
    fn default() -> Self {
        CapturePolicy {
            rules: Vec::new(),
            default_level: Level::Metadata,
            max_message_bytes: 4096,
        }
    }
}

/// Why a capture policy was refused; names the rule and the field.
#[derive(Debug, thiserror::Error)]
pub enum CapturePolicyError {
    /// The file could not be read.
    #[error("capture policy {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or a field is unknown or of the wrong type.
    #[error("capture policy: {0}")]
    Syntax(String),
    /// A field of a rule is wrong.
    #[error("capture policy: rule {rule}: {field}: {reason}")]
    Rule {
        /// Index of the rule, from 0.
        rule: usize,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl CapturePolicy {
    /// Every call at `metadata` (today's entry), messages limited to 4096 bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `rule`: rules are tried in the order they were added.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// The level of calls no rule matches (`metadata` by default).
    pub fn default_level(mut self, level: Level) -> Self {
        self.default_level = level;
        self
    }

    /// The most bytes of JSON one captured message may take (default 4096); a larger one is
    /// recorded as a truncation marker.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The byte limit of captured messages.
    pub fn message_limit(&self) -> usize {
        self.max_message_bytes
    }

    /// Reads a TOML policy file.
    pub fn load(path: &Path) -> Result<Self, CapturePolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| CapturePolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parses a TOML policy (see the [module docs](self)).
    pub fn from_toml(text: &str) -> Result<Self, CapturePolicyError> {
        let file: file::PolicyFile =
            toml::from_str(text).map_err(|e| CapturePolicyError::Syntax(e.to_string()))?;
        let mut policy = CapturePolicy::new();
        if let Some(level) = file.default_level {
            policy.default_level = level;
        }
        if let Some(bytes) = file.max_message_bytes {
            policy.max_message_bytes = bytes;
        }
        for (index, rule) in file.rule.into_iter().enumerate() {
            policy.rules.push(rule.build(index)?);
        }
        Ok(policy)
    }

    /// The rules that may decide a call with these facts, whatever its status: the matching
    /// rules up to the first one without a status condition.
    pub(crate) fn plan(&self, call: &CallFacts<'_>) -> Vec<usize> {
        let mut candidates = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.matches_before_status(call) {
                candidates.push(index);
                if rule.codes.is_empty() {
                    break;
                }
            }
        }
        candidates
    }

    /// The level and failure mode of a call planned as `candidates` that ended with `code`;
    /// `default` is the layer's failure mode.
    pub(crate) fn decide(
        &self,
        candidates: &[usize],
        code: Option<i32>,
        default: FailureMode,
    ) -> (Level, FailureMode) {
        let rule = candidates
            .iter()
            .map(|&index| &self.rules[index])
            .find(|rule| code.is_none_or(|code| rule.matches_status(code)));
        match rule {
            Some(rule) => (rule.level, rule.failure.unwrap_or(default)),
            None => (self.default_level, default),
        }
    }

    /// Every (level, failure mode) a call planned as `candidates` may end with.
    pub(crate) fn outcomes<'a>(
        &'a self,
        candidates: &'a [usize],
        default: FailureMode,
    ) -> impl Iterator<Item = (Level, FailureMode)> + 'a {
        let rules = candidates.iter().map(|&index| &self.rules[index]);
        let decided = rules.clone().any(|rule| rule.codes.is_empty());
        rules
            .map(move |rule| (rule.level, rule.failure.unwrap_or(default)))
            .chain((!decided).then_some((self.default_level, default)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(method: &'a str, principal: &'a str) -> CallFacts<'a> {
        CallFacts {
            method,
            principal,
            spiffe_id: None,
            uid: None,
        }
    }

    const OPEN: FailureMode = FailureMode::Open;

    #[test]
    fn first_match_wins_and_status_refines() {
        let policy = CapturePolicy::from_toml(
            r#"
            default_level = "none"
            [[rule]]
            methods = ["/a.S/*"]
            codes = ["NOT_FOUND"]
            level = "metadata"
            [[rule]]
            methods = ["/a.S/*"]
            principals = ["admin-*"]
            level = "request_response"
            failure = "closed"
            deadline_ms = 500
            [[rule]]
            methods = ["/a.S/*"]
            level = "request"
            "#,
        )
        .unwrap();
        let admin = policy.plan(&call("/a.S/Get", "admin-1"));
        assert_eq!(admin, [0, 1]);
        let closed = FailureMode::Closed {
            deadline: Duration::from_millis(500),
        };
        assert_eq!(
            policy.decide(&admin, Some(0), OPEN),
            (Level::RequestResponse, closed)
        );
        assert_eq!(
            policy.decide(&admin, Some(5), OPEN),
            (Level::Metadata, OPEN)
        );
        let user = policy.plan(&call("/a.S/Get", "bob"));
        assert_eq!(policy.decide(&user, Some(0), OPEN), (Level::Request, OPEN));
        let other = policy.plan(&call("/b.S/Get", "admin-1"));
        assert!(other.is_empty());
        assert_eq!(policy.decide(&other, Some(0), OPEN), (Level::None, OPEN));
        let outcomes: Vec<_> = policy.outcomes(&admin, OPEN).collect();
        assert_eq!(
            outcomes,
            [(Level::Metadata, OPEN), (Level::RequestResponse, closed)]
        );
        let outcomes: Vec<_> = policy.outcomes(&other, OPEN).collect();
        assert_eq!(outcomes, [(Level::None, OPEN)]);
    }

    #[test]
    fn callers_by_spiffe_id_and_uid() {
        let policy = CapturePolicy::new()
            .rule(Rule::new(Level::None).spiffe_id("spiffe://prod/batch/*".parse().unwrap()))
            .rule(Rule::new(Level::Request).uid(0));
        let mut facts = call("/a.S/Get", "");
        assert_eq!(
            policy.decide(&policy.plan(&facts), None, OPEN).0,
            Level::Metadata
        );
        facts.spiffe_id = Some("spiffe://prod/batch/nightly");
        assert_eq!(
            policy.decide(&policy.plan(&facts), None, OPEN).0,
            Level::None
        );
        facts.spiffe_id = None;
        facts.uid = Some(0);
        assert_eq!(
            policy.decide(&policy.plan(&facts), None, OPEN).0,
            Level::Request
        );
    }

    #[test]
    fn bad_files_name_the_rule_and_field() {
        let error = |text: &str| CapturePolicy::from_toml(text).unwrap_err().to_string();
        assert_eq!(
            error(
                "[[rule]]\nlevel = \"none\"\n[[rule]]\nmethods = [\"/a.*/B\"]\nlevel = \"none\"\n"
            ),
            "capture policy: rule 1: methods: `/a.*/B`: `*` is only allowed as the last character (a prefix match)"
        );
        assert_eq!(
            error("[[rule]]\ncodes = [\"NOPE\"]\nlevel = \"none\"\n"),
            "capture policy: rule 0: codes: `NOPE` is not a gRPC status code"
        );
        assert!(error("[[rule]]\nlevel = \"everything\"\n").contains("unknown variant"));
        assert!(
            error("[[rule]]\nlevel = \"none\"\nfailure = \"closed\"\n").contains("deadline_ms")
        );
        assert!(error("[[rule]]\nlevel = \"none\"\nmethod = [\"/a\"]\n").contains("unknown field"));
        assert!(
            error("[[rule]]\nmethods = [\"\"]\nlevel = \"none\"\n").contains("cannot be empty")
        );
    }

    #[test]
    fn file_and_builder_agree() {
        let file = CapturePolicy::from_toml(
            "max_message_bytes = 100\n[[rule]]\nmethods = [\"/a.S/Put\"]\ncodes = [\"ok\", \"5\"]\nlevel = \"request\"\nfailure = \"open\"\n",
        )
        .unwrap();
        let built = CapturePolicy::new().max_message_bytes(100).rule(
            Rule::new(Level::Request)
                .method("/a.S/Put".parse().unwrap())
                .code(tonic::Code::Ok)
                .code(tonic::Code::NotFound)
                .fail_open(),
        );
        assert_eq!(file, built);
    }
}
