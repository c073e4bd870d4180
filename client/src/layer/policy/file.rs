//! The TOML form of a [`CapturePolicy`](super::CapturePolicy), checked into [`Rule`]s.

use std::time::Duration;

use audit_format::{Pattern, PatternError};
use serde::Deserialize;

use super::{CapturePolicyError, FailureMode, Level, Rule};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    pub(super) default_level: Option<Level>,
    pub(super) max_message_bytes: Option<usize>,
    #[serde(default)]
    pub(super) rule: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleFile {
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    spiffe_ids: Vec<String>,
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    codes: Vec<String>,
    level: Level,
    failure: Option<Failure>,
    deadline_ms: Option<u64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Failure {
    Open,
    Closed,
}

impl RuleFile {
    pub(super) fn build(self, rule: usize) -> Result<Rule, CapturePolicyError> {
        let fail = |field, reason: String| CapturePolicyError::Rule {
            rule,
            field,
            reason,
        };
        let patterns = |field, texts: Vec<String>| {
            texts
                .iter()
                .map(|text| Pattern::parse(text))
                .collect::<Result<Vec<_>, PatternError>>()
                .map_err(|e| fail(field, e.to_string()))
        };
        let codes = self
            .codes
            .iter()
            .map(|text| {
                crate::code::parse_code(text)
                    .ok_or_else(|| fail("codes", format!("`{text}` is not a gRPC status code")))
            })
            .collect::<Result<_, _>>()?;
        let failure = match (self.failure, self.deadline_ms) {
            (None, None) => None,
            (Some(Failure::Open), None) => Some(FailureMode::Open),
            (Some(Failure::Closed), Some(ms)) if ms > 0 => Some(FailureMode::Closed {
                deadline: Duration::from_millis(ms),
            }),
            (Some(Failure::Closed), _) => {
                return Err(fail(
                    "deadline_ms",
                    "`failure = \"closed\"` needs a deadline_ms above 0".into(),
                ));
            }
            (_, Some(_)) => {
                return Err(fail(
                    "deadline_ms",
                    "only meaningful with `failure = \"closed\"`".into(),
                ));
            }
        };
        Ok(Rule {
            methods: patterns("methods", self.methods)?,
            principals: patterns("principals", self.principals)?,
            spiffe_ids: patterns("spiffe_ids", self.spiffe_ids)?,
            uids: self.uids,
            codes,
            level: self.level,
            failure,
        })
    }
}
