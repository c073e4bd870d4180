//! Which fields are redacted: rules written with the field registry's names
//! (`audit_format::field`), where label keys and details path segments may hold `*`.
//!
//! - a text field: `source`, `method`, `event`, `category`, `resource`, `status_message`,
//!   `caller.principal`, `caller.role`, `caller.session_id`, `caller.user_agent`,
//!   `caller.unix.binary_path`, `caller.address`, `caller.spiffe_id`,
//!   `caller.certificate_subject`;
//! - `labels.KEY`: the label's value (`labels.secret_*`: every label whose key starts so);
//! - `details.A.B`: the value at that path (`details.*.token`: `token` under any top-level
//!   key). A leaf is hashed as its text (numbers and booleans by their canonical text), a
//!   struct or list as its JSON.
//!
//! Never the id, sequence, request id, times, enums, numbers or hashes: the log needs them to
//! order, find and verify entries, and they hold no secret. Nor the recorder, which the
//! server fills from the connection.

use audit_format::field::{Field, PeerField, Variable};

use crate::glob;

/// The parsed redaction rules.
#[derive(Debug, Clone, Default)]
pub struct RedactionRules {
    pub(crate) rules: Vec<Rule>,
}

/// A rule refused, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redaction rule `{rule}`: {reason}")]
pub struct RuleError {
    /// The rule as written.
    pub rule: String,
    /// Why it was refused.
    pub reason: String,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rule {
    /// A text field of the entry.
    Text(Field),
    /// Label values whose key matches the pattern.
    Label(String),
    /// Details values whose path matches the patterns, one per segment.
    Detail(Vec<String>),
}

impl RedactionRules {
    /// Parses `rules` (field names, see the module); the first bad one is refused, named.
    pub fn parse(rules: &[String]) -> Result<Self, RuleError> {
        let rules = rules
            .iter()
            .map(|rule| {
                parse_rule(rule.trim()).map_err(|reason| RuleError {
                    rule: rule.clone(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// Whether there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub(crate) fn label_matches(&self, key: &str) -> bool {
        self.rules
            .iter()
            .any(|rule| matches!(rule, Rule::Label(pattern) if glob::matches(pattern, key)))
    }

    pub(crate) fn detail_rules(&self) -> impl Iterator<Item = &[String]> {
        self.rules.iter().filter_map(|rule| match rule {
            Rule::Detail(path) => Some(path.as_slice()),
            _ => None,
        })
    }

    pub(crate) fn text_fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.rules.iter().filter_map(|rule| match rule {
            Rule::Text(field) => Some(*field),
            _ => None,
        })
    }
}

fn parse_rule(rule: &str) -> Result<Rule, String> {
    if rule.is_empty() {
        return Err("empty".into());
    }
    let known = || {
        format!(
            "not a field that can be redacted; expected one of {}, labels.KEY or details.PATH \
             (`*` allowed in KEY and in PATH segments)",
            TEXT_NAMES.join(", ")
        )
    };
    match Variable::parse(rule) {
        Some(Variable::Label(key)) => Ok(Rule::Label(key)),
        Some(Variable::Detail(path)) => Ok(Rule::Detail(path)),
        Some(Variable::Field(field)) if is_text(field) => Ok(Rule::Text(field)),
        Some(Variable::Field(field)) => Err(refusal(field)),
        Some(Variable::Prefix) => Err(known()),
        None if rule == "labels." || rule.starts_with("details.") || rule == "details" => {
            Err("needs a key or path after the dot, with no empty segment".into())
        }
        None => Err(known()),
    }
}

/// The text fields that can be redacted, by their registry names.
const TEXT_NAMES: &[&str] = &[
    "source",
    "method",
    "event",
    "category",
    "resource",
    "status_message",
    "caller.principal",
    "caller.role",
    "caller.session_id",
    "caller.user_agent",
    "caller.unix.binary_path",
    "caller.address",
    "caller.spiffe_id",
    "caller.certificate_subject",
];

fn is_text(field: Field) -> bool {
    matches!(
        field,
        Field::Source
            | Field::Method
            | Field::Event
            | Field::Category
            | Field::Resource
            | Field::StatusMessage
            | Field::Principal
            | Field::Role
            | Field::SessionId
            | Field::UserAgent
            | Field::Caller(
                PeerField::BinaryPath
                    | PeerField::Address
                    | PeerField::SpiffeId
                    | PeerField::CertificateSubject
            )
    )
}

fn refusal(field: Field) -> String {
    match field {
        Field::Recorder(_) => "the recorder is filled by the server from the connection".into(),
        Field::Caller(_) => "a number; only text can be redacted".into(),
        _ => "the log needs this field to order, find or verify entries, and it holds no \
              secret"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(rule: &str) -> Result<Vec<Rule>, RuleError> {
        RedactionRules::parse(&[rule.to_string()]).map(|r| r.rules)
    }

    #[test]
    fn every_text_name_parses_and_names_its_field() {
        for name in TEXT_NAMES {
            assert!(
                matches!(parse(name).unwrap()[..], [Rule::Text(_)]),
                "{name}"
            );
        }
        assert_eq!(
            parse("labels.secret_*").unwrap(),
            [Rule::Label("secret_*".into())]
        );
        assert_eq!(
            parse("details.*.token").unwrap(),
            [Rule::Detail(vec!["*".into(), "token".into()])]
        );
    }

    #[test]
    fn bad_rules_are_named_with_the_reason() {
        for (rule, reason) in [
            ("sequence", "the log needs this field"),
            ("id", "the log needs this field"),
            ("entry_hash", "the log needs this field"),
            ("time", "the log needs this field"),
            ("caller.unix.uid", "a number"),
            ("recorder.spiffe_id", "filled by the server"),
            ("details..x", "no empty segment"),
            ("labels.", "needs a key"),
            ("caller.password", "not a field that can be redacted"),
            ("prefix", "not a field that can be redacted"),
            ("", "empty"),
        ] {
            let error = parse(rule).unwrap_err();
            assert_eq!(error.rule, rule);
            assert!(error.reason.contains(reason), "{rule}: {error}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("redaction rule `{rule}`"))
            );
        }
    }
}
