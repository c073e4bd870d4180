//! Escaping of entry values for text formats: no value can break a line, hide itself, send a
//! terminal escape, or close a quoted field.

use std::fmt::Write as _;

/// Whether `c` must not appear as it is in a line of text: C0 and C1 controls, DEL, the line
/// and paragraph separators, the bidi controls that can reorder a line, and invisible
/// characters (format characters such as U+200B and U+FEFF, the soft hyphen, Hangul fillers and
/// tag characters) that can make two different values look the same.
pub fn is_unsafe_char(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{ad}'
        | '\u{61c}'
        | '\u{115f}' | '\u{1160}'
        | '\u{180e}'
        | '\u{200b}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206f}'
        | '\u{3164}'
        | '\u{feff}'
        | '\u{ffa0}'
        | '\u{fff9}'..='\u{fffb}'
        | '\u{e0000}'..='\u{e007f}')
}

/// Appends `text` to `out` with every [unsafe character](is_unsafe_char) written as a visible
/// sequence (`\n`, `\t`, `\x1b`, `\u{200b}`), and `\` and `"` as `\\` and `\"`.
pub fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if is_unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// `text` escaped as [`escape_into`] does.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(text, &mut out);
    out
}
