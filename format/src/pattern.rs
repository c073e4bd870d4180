//! [`Pattern`]: the one `*` rule of the project, used wherever a method, a SPIFFE ID, a
//! principal or a resource is matched (query and subscribe filters, the server's access
//! policy, the exclusions and capture rules of `AuditLayer`).
//!
//! A pattern is either exact (`/billing.v1.Billing/Charge`: that value only) or a prefix,
//! written with one `*` as its last character (`/billing.v1.Billing/*`: every value starting
//! with `/billing.v1.Billing/`; `*` alone matches every value). A `*` anywhere else is refused
//! rather than taken literally: no gRPC method name or SPIFFE ID can contain one, and
//! `/pkg.*/Get` is far more likely a mistaken glob than a literal. There is no escape, so a
//! value containing `*` can only be matched by a prefix that stops before it. Matching is
//! byte-wise and case-sensitive.

use std::fmt;
use std::str::FromStr;

/// A parsed pattern: exact, or a prefix when written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    /// The value (exact) or the prefix, without the `*`.
    literal: String,
    prefix: bool,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The empty string matches nothing useful; write `*` to match everything.
    #[error("a pattern cannot be empty (write `*` to match everything)")]
    Empty,
    /// A `*` before the last character.
    #[error("`{pattern}`: `*` is only allowed as the last character (a prefix match)")]
    InnerStar {
        /// The pattern as written.
        pattern: String,
    },
}

impl Pattern {
    /// Parses `text`: exact, or a prefix when it ends with `*`.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let (literal, prefix) = split(text)?;
        Ok(Pattern {
            literal: literal.to_string(),
            prefix,
        })
    }

    /// Whether `value` matches the pattern written `text`, without building a [`Pattern`]
    /// (for filters evaluated once per entry).
    pub fn test(text: &str, value: &str) -> Result<bool, PatternError> {
        let (literal, prefix) = split(text)?;
        Ok(if prefix {
            value.starts_with(literal)
        } else {
            value == literal
        })
    }

    /// Whether `value` is this pattern's value, or starts with its prefix.
    pub fn matches(&self, value: &str) -> bool {
        if self.prefix {
            value.starts_with(&self.literal)
        } else {
            value == self.literal
        }
    }

    /// Whether this is a prefix pattern (written with a trailing `*`).
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }

    /// Whether it matches every value (`*`).
    pub fn matches_everything(&self) -> bool {
        self.prefix && self.literal.is_empty()
    }

    /// The exact value, or the prefix without its `*`.
    pub fn literal(&self) -> &str {
        &self.literal
    }

    /// The pattern as an SQL `LIKE` pattern for `ESCAPE '\'`: `\`, `%` and `_` in the value
    /// are escaped, and a prefix ends with `%`.
    pub fn to_sql_like(&self) -> String {
        let mut like = String::with_capacity(self.literal.len() + 2);
        for c in self.literal.chars() {
            if matches!(c, '\\' | '%' | '_') {
                like.push('\\');
            }
            like.push(c);
        }
        if self.prefix {
            like.push('%');
        }
        like
    }
}

/// The literal part of `text` and whether it is a prefix.
fn split(text: &str) -> Result<(&str, bool), PatternError> {
    if text.is_empty() {
        return Err(PatternError::Empty);
    }
    let (literal, prefix) = match text.strip_suffix('*') {
        Some(prefix) => (prefix, true),
        None => (text, false),
    };
    if literal.contains('*') {
        return Err(PatternError::InnerStar {
            pattern: text.to_string(),
        });
    }
    Ok((literal, prefix))
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.literal)?;
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Pattern::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_and_prefix() {
        let exact = Pattern::parse("/a.B/C").unwrap();
        assert!(exact.matches("/a.B/C"));
        assert!(!exact.matches("/a.B/CD"));
        assert!(!exact.matches("/a.b/C"), "case-sensitive");
        let prefix = Pattern::parse("/grpc.health.v1.Health/*").unwrap();
        assert!(prefix.matches("/grpc.health.v1.Health/Check"));
        assert!(prefix.matches("/grpc.health.v1.Health/"));
        assert!(!prefix.matches("/grpc.health.v1.Health"));
        assert!(!prefix.matches("/a.B/C"));
        let all = Pattern::parse("*").unwrap();
        assert!(all.matches_everything());
        assert!(all.matches(""));
        assert!(!prefix.matches_everything());
    }

    #[test]
    fn bad_patterns_say_why() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        let error = Pattern::parse("/pkg.*/Get").unwrap_err();
        assert_eq!(
            error.to_string(),
            "`/pkg.*/Get`: `*` is only allowed as the last character (a prefix match)"
        );
        assert!(Pattern::parse("**").is_err());
    }

    #[test]
    fn display_gives_back_the_text() {
        for text in ["*", "/a.B/*", "/a.B/C", "spiffe://x/y/*"] {
            assert_eq!(Pattern::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn sql_like_escapes_wildcards() {
        let like = |text: &str| Pattern::parse(text).unwrap().to_sql_like();
        assert_eq!(like("a_b%c\\d"), "a\\_b\\%c\\\\d");
        assert_eq!(like("100%_*"), "100\\%\\_%");
        assert_eq!(like("*"), "%");
        assert_eq!(like("plain"), "plain");
    }

    /// A `LIKE` matcher over the escaped pattern (the SQL standard's rules, case-sensitive),
    /// to check that the translation means what `matches` means.
    fn like_matches(like: &str, value: &str) -> bool {
        fn go(pattern: &[char], value: &[char]) -> bool {
            match pattern.split_first() {
                None => value.is_empty(),
                Some(('%', rest)) => (0..=value.len()).any(|skip| go(rest, &value[skip..])),
                Some(('_', rest)) => !value.is_empty() && go(rest, &value[1..]),
                Some(('\\', rest)) => match rest.split_first() {
                    Some((c, rest)) => value.first() == Some(c) && go(rest, &value[1..]),
                    None => false,
                },
                Some((c, rest)) => value.first() == Some(c) && go(rest, &value[1..]),
            }
        }
        let pattern: Vec<char> = like.chars().collect();
        let value: Vec<char> = value.chars().collect();
        go(&pattern, &value)
    }

    proptest! {
        #[test]
        fn like_translation_agrees_with_matches(
            literal in "[a_%\\\\b]{0,6}",
            prefix in any::<bool>(),
            value in "[a_%\\\\b]{0,8}",
        ) {
            let text = if prefix { format!("{literal}*") } else { literal.clone() };
            prop_assume!(!text.is_empty());
            let pattern = Pattern::parse(&text).unwrap();
            prop_assert_eq!(pattern.matches(&value), like_matches(&pattern.to_sql_like(), &value));
            prop_assert_eq!(Pattern::test(&text, &value), Ok(pattern.matches(&value)));
            // A value built from the literal always matches its own pattern.
            let own = format!("{literal}{}", if prefix { "tail" } else { "" });
            prop_assert!(pattern.matches(&own));
        }

        #[test]
        fn parse_never_panics_and_round_trips(text in "\\PC{0,20}") {
            if let Ok(pattern) = Pattern::parse(&text) {
                prop_assert_eq!(pattern.to_string(), text);
            }
        }
    }
}
