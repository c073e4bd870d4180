//! Escaping of entry values for text: no value can break a line, hide itself, send a terminal
//! escape, imitate columns, or close a quoted field. The one definition of what is unsafe, shared
//! by the CLI's lines, templates and the JSON writers.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal as it is, because it controls the terminal, breaks
/// the line, or shows nothing (so text can hide in it or pass for other text):
///
/// - the Unicode categories Cc (C0 and C1 controls, DEL), Cf (format characters: the bidi
///   controls that can reorder what a line appears to say, zero-width spaces and joiners,
///   U+FEFF, the soft hyphen U+00AD, tag characters U+E0001–U+E007F), Zl and Zp (U+2028,
///   U+2029), Zs except the ASCII space (no-break, en, em and ideographic spaces), Co (private
///   use), Cs and Cn (not assigned in the Unicode version of `unicode-properties`);
/// - letters and marks that render as nothing: the Hangul fillers (U+115F, U+1160, U+3164,
///   U+FFA0), the braille blank U+2800, the combining grapheme joiner U+034F, the Khmer
///   inherent vowels U+17B4–U+17B5, and the variation selectors (U+180B–U+180F,
///   U+FE00–U+FE0F, U+E0100–U+E01EF), which can carry hidden data after any character.
pub fn is_unsafe_char(c: char) -> bool {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory as _};
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    matches!(
        c.general_category(),
        G::Control
            | G::Format
            | G::LineSeparator
            | G::ParagraphSeparator
            | G::SpaceSeparator
            | G::PrivateUse
            | G::Surrogate
            | G::Unassigned
    ) || matches!(c,
        '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}' | '\u{2800}' | '\u{34f}'
        | '\u{17b4}' | '\u{17b5}' | '\u{180b}'..='\u{180f}' | '\u{fe00}'..='\u{fe0f}'
        | '\u{e0100}'..='\u{e01ef}')
}

/// Whether [`escape`] rewrites `c`: the [unsafe characters](is_unsafe_char) and the backslash
/// (so an escape in the output always comes from [`escape`], never from the entry).
fn needs_escape(c: char) -> bool {
    c == '\\' || is_unsafe_char(c)
}

/// Escapes every [unsafe character](is_unsafe_char) as a visible sequence (`\n`, `\r`, `\t`,
/// `\0`, `\x1b`, `\u{85}`, `\u{200b}`) and a backslash as `\\`. Everything else is kept.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(c, &mut out);
    }
    Cow::Owned(out)
}

/// Appends `c` as [`escape`] writes it.
fn push_escaped(c: char, out: &mut String) {
    match c {
        '\\' => out.push_str("\\\\"),
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

/// [`escape`] for a value in a column of the CLI's readable line: also writes as `\x20` every space
/// that is not a single space between two other characters, so a value cannot pad itself to
/// look like the gap between columns (two spaces) or like more columns.
pub fn escape_column(text: &str) -> Cow<'_, str> {
    let escaped = escape(text);
    let bytes = escaped.as_bytes();
    let lone =
        |i: usize| i > 0 && i + 1 < bytes.len() && bytes[i - 1] != b' ' && bytes[i + 1] != b' ';
    if !(0..bytes.len()).any(|i| bytes[i] == b' ' && !lone(i)) {
        return escaped;
    }
    let mut out = String::with_capacity(escaped.len() + 8);
    for (i, c) in escaped.char_indices() {
        if c == ' ' && !lone(i) {
            out.push_str("\\x20");
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Appends `text` to `out` as [`escape`] writes it, and `"` as `\"`, so that a value inside
/// quotes cannot close them.
pub fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            c => push_escaped(c, out),
        }
    }
}
