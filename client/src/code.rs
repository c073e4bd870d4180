//! Names of gRPC status codes (`OK`, `PERMISSION_DENIED`, …), both ways.
//!
//! `AuditEntry.status_code` is a plain `int32`; these names are how people read and type it.

use audit_format::field::STATUS_NAMES as NAMES;

/// The canonical name of a gRPC status code (`7` → `PERMISSION_DENIED`), or `None` outside 0–16.
pub use audit_format::field::status_name as code_name;

/// Parses a gRPC status code from its number (`7`) or its name in any case (`permission_denied`,
/// `PERMISSION_DENIED`, `permission-denied`).
pub fn parse_code(text: &str) -> Option<i32> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        return code_name(n).map(|_| n);
    }
    let wanted = text.to_ascii_uppercase().replace('-', "_");
    NAMES
        .iter()
        .position(|name| *name == wanted)
        .and_then(|i| i32::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_tonic_codes() {
        for (i, name) in NAMES.iter().enumerate() {
            let code = tonic::Code::from(i as i32);
            assert_eq!(i32::from(code), i as i32, "{name}");
        }
        assert_eq!(code_name(0), Some("OK"));
        assert_eq!(code_name(16), Some("UNAUTHENTICATED"));
        assert_eq!(code_name(17), None);
        assert_eq!(code_name(-1), None);
    }

    #[test]
    fn parses_numbers_and_names() {
        assert_eq!(parse_code("7"), Some(7));
        assert_eq!(parse_code("permission_denied"), Some(7));
        assert_eq!(parse_code("Permission-Denied"), Some(7));
        assert_eq!(parse_code("OK"), Some(0));
        assert_eq!(parse_code("17"), None);
        assert_eq!(parse_code("nope"), None);
    }
}
