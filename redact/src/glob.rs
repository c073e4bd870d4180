//! `*` patterns: `*` stands for any run of characters (none included); everything else is
//! literal.

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn stars_match_any_run() {
        assert!(matches("secret_*", "secret_"));
        assert!(matches("secret_*", "secret_api"));
        assert!(!matches("secret_*", "my_secret_api"));
        assert!(matches("*", ""));
        assert!(matches("*token", "api_token"));
        assert!(matches("a*b*c", "abbbc"));
        assert!(!matches("a*b*c", "acb"));
        assert!(!matches("ab*ba", "aba"), "the ends must not overlap");
        assert!(matches("token", "token"));
        assert!(!matches("token", "tokens"));
    }
}
