//! Time layouts in Go's reference-time notation (`2006-01-02T15:04:05Z07:00`), as KrakenD and
//! other Go tools write them, with their named layouts. Entries are rendered in UTC.

use std::fmt::Write as _;

use time::OffsetDateTime;

/// A compiled time layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeLayout(Vec<Token>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Year4,
    Year2,
    MonthName,
    MonthAbbrev,
    Month2,
    Month1,
    WeekdayName,
    WeekdayAbbrev,
    Day2,
    DaySpace,
    Day1,
    Hour24,
    Hour12Padded,
    Hour12,
    Minute2,
    Minute1,
    Second2,
    Second1,
    /// `.000` (exactly this many digits) or `.999` (trailing zeros dropped).
    Fraction {
        digits: usize,
        trim: bool,
    },
    AmPmUpper,
    AmPmLower,
    ZoneName,
    /// `-0700`, `-07:00`, `-07`; with `z`, UTC is written `Z`.
    Offset {
        colon: bool,
        hours_only: bool,
        z: bool,
    },
}

/// RFC 3339 with milliseconds, in UTC (`2026-11-22T15:04:05.120Z`): how times are written when no
/// layout is asked for.
pub fn rfc3339_millis() -> &'static TimeLayout {
    static LAYOUT: std::sync::LazyLock<TimeLayout> = std::sync::LazyLock::new(|| {
        TimeLayout::parse("2006-01-02T15:04:05.000Z07:00").expect("a valid layout")
    });
    &LAYOUT
}

/// The named layouts and the Go layout each stands for.
pub const NAMED: &[(&str, &str)] = &[
    ("rfc3339", "2006-01-02T15:04:05Z07:00"),
    ("rfc3339nano", "2006-01-02T15:04:05.999999999Z07:00"),
    ("ansic", "Mon Jan _2 15:04:05 2006"),
    ("unixdate", "Mon Jan _2 15:04:05 MST 2006"),
    ("rfc822", "02 Jan 06 15:04 MST"),
    ("rfc822z", "02 Jan 06 15:04 -0700"),
    ("rfc850", "Monday, 02-Jan-06 15:04:05 MST"),
    ("rfc1123", "Mon, 02 Jan 2006 15:04:05 MST"),
    ("rfc1123z", "Mon, 02 Jan 2006 15:04:05 -0700"),
    ("kitchen", "3:04PM"),
];

/// Tokens of the reference time, longest first where one is a prefix of another.
const TOKENS: &[(&str, Token)] = &[
    ("January", Token::MonthName),
    ("Jan", Token::MonthAbbrev),
    ("Monday", Token::WeekdayName),
    ("Mon", Token::WeekdayAbbrev),
    ("MST", Token::ZoneName),
    ("2006", Token::Year4),
    (
        "Z07:00",
        Token::Offset {
            colon: true,
            hours_only: false,
            z: true,
        },
    ),
    (
        "Z0700",
        Token::Offset {
            colon: false,
            hours_only: false,
            z: true,
        },
    ),
    (
        "Z07",
        Token::Offset {
            colon: false,
            hours_only: true,
            z: true,
        },
    ),
    (
        "-07:00",
        Token::Offset {
            colon: true,
            hours_only: false,
            z: false,
        },
    ),
    (
        "-0700",
        Token::Offset {
            colon: false,
            hours_only: false,
            z: false,
        },
    ),
    (
        "-07",
        Token::Offset {
            colon: false,
            hours_only: true,
            z: false,
        },
    ),
    ("01", Token::Month2),
    ("02", Token::Day2),
    ("_2", Token::DaySpace),
    ("03", Token::Hour12Padded),
    ("04", Token::Minute2),
    ("05", Token::Second2),
    ("06", Token::Year2),
    ("15", Token::Hour24),
    ("PM", Token::AmPmUpper),
    ("pm", Token::AmPmLower),
    ("1", Token::Month1),
    ("2", Token::Day1),
    ("3", Token::Hour12),
    ("4", Token::Minute1),
    ("5", Token::Second1),
];

impl TimeLayout {
    /// A named layout (`rfc3339`, `kitchen`, ...) or a custom one in Go's notation. A custom
    /// layout must contain at least one element of the reference time.
    pub fn parse(spec: &str) -> Option<TimeLayout> {
        let layout = NAMED
            .iter()
            .find(|(name, _)| *name == spec)
            .map_or(spec, |(_, layout)| layout);
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut rest = layout;
        'scan: while !rest.is_empty() {
            if let Some(fraction) = fraction(rest) {
                flush(&mut literal, &mut tokens);
                tokens.push(fraction.0);
                rest = &rest[fraction.1..];
                continue;
            }
            for (text, token) in TOKENS {
                if let Some(after) = rest.strip_prefix(text) {
                    flush(&mut literal, &mut tokens);
                    tokens.push(token.clone());
                    rest = after;
                    continue 'scan;
                }
            }
            let c = rest.chars().next().expect("not empty");
            literal.push(c);
            rest = &rest[c.len_utf8()..];
        }
        flush(&mut literal, &mut tokens);
        let has_element = tokens.iter().any(|t| !matches!(t, Token::Literal(_)));
        has_element.then_some(TimeLayout(tokens))
    }

    /// `time`, in UTC, in this layout.
    pub fn format(&self, time: OffsetDateTime, out: &mut String) {
        let t = time.to_offset(time::UtcOffset::UTC);
        let hour12 = match t.hour() % 12 {
            0 => 12,
            h => h,
        };
        for token in &self.0 {
            let _ = match token {
                Token::Literal(text) => {
                    out.push_str(text);
                    Ok(())
                }
                Token::Year4 => write!(out, "{:04}", t.year()),
                Token::Year2 => write!(out, "{:02}", t.year().rem_euclid(100)),
                Token::MonthName => write!(out, "{}", t.month()),
                Token::MonthAbbrev => write!(out, "{}", &t.month().to_string()[..3]),
                Token::Month2 => write!(out, "{:02}", u8::from(t.month())),
                Token::Month1 => write!(out, "{}", u8::from(t.month())),
                Token::WeekdayName => write!(out, "{}", t.weekday()),
                Token::WeekdayAbbrev => write!(out, "{}", &t.weekday().to_string()[..3]),
                Token::Day2 => write!(out, "{:02}", t.day()),
                Token::DaySpace => write!(out, "{:>2}", t.day()),
                Token::Day1 => write!(out, "{}", t.day()),
                Token::Hour24 => write!(out, "{:02}", t.hour()),
                Token::Hour12Padded => write!(out, "{hour12:02}"),
                Token::Hour12 => write!(out, "{hour12}"),
                Token::Minute2 => write!(out, "{:02}", t.minute()),
                Token::Minute1 => write!(out, "{}", t.minute()),
                Token::Second2 => write!(out, "{:02}", t.second()),
                Token::Second1 => write!(out, "{}", t.second()),
                Token::Fraction { digits, trim } => {
                    let nanos = format!("{:09}", t.nanosecond());
                    let mut digits = nanos[..*digits].to_string();
                    if *trim {
                        digits.truncate(digits.trim_end_matches('0').len());
                    }
                    if !digits.is_empty() {
                        out.push('.');
                        out.push_str(&digits);
                    }
                    Ok(())
                }
                Token::AmPmUpper => write!(out, "{}", if t.hour() < 12 { "AM" } else { "PM" }),
                Token::AmPmLower => write!(out, "{}", if t.hour() < 12 { "am" } else { "pm" }),
                Token::ZoneName => write!(out, "UTC"),
                Token::Offset {
                    colon,
                    hours_only,
                    z,
                } => {
                    if *z {
                        write!(out, "Z")
                    } else if *hours_only {
                        write!(out, "+00")
                    } else if *colon {
                        write!(out, "+00:00")
                    } else {
                        write!(out, "+0000")
                    }
                }
            };
        }
    }
}

/// A fraction of a second at the start of `text`: `.000…` or `.999…` (also with `,`) directly
/// after a seconds element, as Go reads them; with the number of bytes it takes.
fn fraction(text: &str) -> Option<(Token, usize)> {
    let mut chars = text.chars();
    if !matches!(chars.next(), Some('.' | ',')) {
        return None;
    }
    let digit = chars.next().filter(|c| *c == '0' || *c == '9')?;
    let count = 1 + chars.take_while(|c| *c == digit).count();
    let digits = count.min(9);
    Some((
        Token::Fraction {
            digits,
            trim: digit == '9',
        },
        1 + count,
    ))
}

fn flush(literal: &mut String, tokens: &mut Vec<Token>) {
    if !literal.is_empty() {
        tokens.push(Token::Literal(std::mem::take(literal)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(nanos: i128) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap()
    }

    fn render(spec: &str, nanos: i128) -> String {
        let mut out = String::new();
        TimeLayout::parse(spec).unwrap().format(at(nanos), &mut out);
        out
    }

    #[test]
    fn named_layouts_render_as_go_renders_them() {
        // 2026-11-22T15:04:05.120000000Z, a Sunday.
        let t = 1_795_359_845_120_000_000;
        assert_eq!(render("rfc3339", t), "2026-11-22T15:04:05Z");
        assert_eq!(render("rfc3339nano", t), "2026-11-22T15:04:05.12Z");
        assert_eq!(render("ansic", t), "Sun Nov 22 15:04:05 2026");
        assert_eq!(render("unixdate", t), "Sun Nov 22 15:04:05 UTC 2026");
        assert_eq!(render("rfc822", t), "22 Nov 26 15:04 UTC");
        assert_eq!(render("rfc822z", t), "22 Nov 26 15:04 +0000");
        assert_eq!(render("rfc850", t), "Sunday, 22-Nov-26 15:04:05 UTC");
        assert_eq!(render("rfc1123", t), "Sun, 22 Nov 2026 15:04:05 UTC");
        assert_eq!(render("rfc1123z", t), "Sun, 22 Nov 2026 15:04:05 +0000");
        assert_eq!(render("kitchen", t), "3:04PM");
    }

    #[test]
    fn custom_layouts_pad_trim_and_keep_literals() {
        // 2026-03-05T07:08:09.000456789Z.
        let t = 1_772_694_489_000_456_789;
        assert_eq!(
            render("2006-01-02 15:04:05.000", t),
            "2026-03-05 07:08:09.000"
        );
        assert_eq!(
            render("2006-01-02 15:04:05.999999", t),
            "2026-03-05 07:08:09.000456"
        );
        assert_eq!(
            render("02/Jan/2006:15:04:05 -0700", t),
            "05/Mar/2026:07:08:09 +0000"
        );
        assert_eq!(render("Jan _2 3:4:5 pm", t), "Mar  5 7:8:9 am");
        assert_eq!(render("January 2, 06", t), "March 5, 26");
        // Whole seconds: a trimmed fraction disappears with its dot.
        assert_eq!(
            render("15:04:05.999", 1_772_694_489_000_000_000),
            "07:08:09"
        );
        assert!(TimeLayout::parse("no time here").is_none());
    }
}
