//! Templates in KrakenD's notation: text with `%{variable}` and `%{variable:format}`, compiled
//! once (every unknown name or format is reported with its position) and rendered per entry.
//!
//! Formats: a time layout for `time` and `received_time` (`rfc3339`, `rfc3339nano`, `ansic`,
//! `unixdate`, `rfc822`, `rfc822z`, `rfc850`, `rfc1123`, `rfc1123z`, `kitchen`, or a custom
//! layout in Go's notation such as `02/Jan/2006:15:04:05 -0700`); `q` for a quoted, escaped
//! string; printf-like verbs with flags, width and precision: `s`, `-20s`, `.3s`, `d`, `06d`,
//! `x`. `%%{` writes a literal `%{`.
//!
//! Every value is escaped (see [`crate::escape`]): no entry can make a template emit a raw
//! newline, a control character or an unescaped `"`.

use audit_proto::pb;

use crate::escape::escape_into;
use crate::field::{Kind, Value, Variable};
use crate::timefmt::TimeLayout;

/// A compiled template.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
    prefix: String,
    no_value: String,
}

/// What a template writes besides its text.
#[derive(Debug, Clone)]
pub struct TemplateOptions {
    /// The value of `%{prefix}`.
    pub prefix: String,
    /// Written for a variable the entry does not set.
    pub no_value: String,
}

impl Default for TemplateOptions {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            no_value: "-".into(),
        }
    }
}

/// A template that cannot be compiled: what is wrong, and where (a character position,
/// counted from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template, position {position}: {message}")]
pub struct TemplateError {
    /// Position of the offending `%{`, in characters from 1.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Variable(Variable, Spec),
}

#[derive(Debug, Clone)]
enum Spec {
    Plain,
    Time(TimeLayout),
    Verb(Verb),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Verb {
    left: bool,
    zero: bool,
    width: Option<usize>,
    precision: Option<usize>,
    kind: char,
}

impl Template {
    /// Compiles `text`.
    pub fn parse(text: &str, options: TemplateOptions) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let position = |rest: &str| text[..text.len() - rest.len()].chars().count() + 1;
        while let Some(at) = rest.find("%{") {
            if rest[..at].ends_with('%') {
                // `%%{` is a literal `%{`.
                literal.push_str(&rest[..at - 1]);
                literal.push_str("%{");
                rest = &rest[at + 2..];
                continue;
            }
            literal.push_str(&rest[..at]);
            let start = &rest[at..];
            let error = |message: String| TemplateError {
                position: position(start),
                message,
            };
            let Some(end) = start.find('}') else {
                return Err(error("`%{` is not closed by `}`".into()));
            };
            let inner = &start[2..end];
            let (name, format) = match inner.split_once(':') {
                Some((name, format)) => (name, Some(format)),
                None => (inner, None),
            };
            let variable = Variable::parse(name).ok_or_else(|| {
                error(format!(
                    "unknown variable `{name}` (known: {})",
                    Variable::names().collect::<Vec<_>>().join(", ")
                ))
            })?;
            let spec = parse_spec(&variable, format).map_err(error)?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Variable(variable, spec));
            rest = &start[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            parts,
            prefix: options.prefix,
            no_value: options.no_value,
        })
    }

    /// Renders `entry` into `out`.
    pub fn render(&self, entry: &pb::AuditEntry, out: &mut String) {
        for part in &self.parts {
            match part {
                // The template's own text is the operator's, written as given.
                Part::Literal(text) => out.push_str(text),
                Part::Variable(variable, spec) => {
                    let value = variable.value(entry, &self.prefix);
                    self.render_value(value, spec, out);
                }
            }
        }
    }

    /// `entry` rendered as a new string.
    pub fn render_to_string(&self, entry: &pb::AuditEntry) -> String {
        let mut out = String::new();
        self.render(entry, &mut out);
        out
    }

    fn render_value(&self, value: Value<'_>, spec: &Spec, out: &mut String) {
        let text = match value {
            Value::Missing => {
                escape_into(&self.no_value, out);
                return;
            }
            Value::Time(time) => {
                let mut rendered = String::new();
                match spec {
                    Spec::Time(layout) => layout.format(time, &mut rendered),
                    _ => crate::timefmt::rfc3339_millis().format(time, &mut rendered),
                }
                out.push_str(&rendered);
                return;
            }
            Value::Int(n) => match spec {
                Spec::Verb(verb) if verb.kind == 'x' => pad(verb, &format!("{n:x}")),
                Spec::Verb(verb) if verb.kind == 'd' => pad(verb, &n.to_string()),
                _ => n.to_string(),
            },
            Value::Float(n) => n.to_string(),
            Value::Text(text) => text.into_owned(),
        };
        match spec {
            Spec::Verb(verb) if verb.kind == 'q' => {
                out.push('"');
                escape_into(&truncate(&text, verb.precision), out);
                out.push('"');
            }
            Spec::Verb(verb) if verb.kind == 's' => {
                let mut escaped = String::new();
                escape_into(&truncate(&text, verb.precision), &mut escaped);
                out.push_str(&pad(verb, &escaped));
            }
            _ => escape_into(&text, out),
        }
    }
}

fn truncate(text: &str, precision: Option<usize>) -> std::borrow::Cow<'_, str> {
    match precision {
        Some(max) if text.chars().count() > max => text.chars().take(max).collect(),
        _ => text.into(),
    }
}

/// `text` padded to the verb's width.
fn pad(verb: &Verb, text: &str) -> String {
    let width = verb.width.unwrap_or(0);
    let length = text.chars().count();
    if length >= width {
        return text.to_string();
    }
    let fill = width - length;
    let mut out = String::with_capacity(text.len() + fill);
    if verb.left {
        out.push_str(text);
        out.extend(std::iter::repeat_n(' ', fill));
    } else if verb.zero && verb.kind != 's' {
        let (sign, digits) = match text.strip_prefix('-') {
            Some(digits) => ("-", digits),
            None => ("", text),
        };
        out.push_str(sign);
        out.extend(std::iter::repeat_n('0', fill));
        out.push_str(digits);
    } else {
        out.extend(std::iter::repeat_n(' ', fill));
        out.push_str(text);
    }
    out
}

fn parse_spec(variable: &Variable, format: Option<&str>) -> Result<Spec, String> {
    let Some(format) = format else {
        return Ok(Spec::Plain);
    };
    let kind = variable.kind();
    if let Some(verb) = parse_verb(format) {
        let applies = match verb.kind {
            's' | 'q' => kind != Kind::Time,
            _ => matches!(kind, Kind::Number | Kind::Any),
        };
        if !applies {
            return Err(format!(
                "format `{format}` does not apply to this variable (a {})",
                kind_name(kind)
            ));
        }
        return Ok(Spec::Verb(verb));
    }
    if kind == Kind::Time {
        return TimeLayout::parse(format)
            .map(Spec::Time)
            .ok_or_else(|| format!("unknown time layout `{format}`"));
    }
    Err(format!("unknown format `{format}`"))
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "text",
        Kind::Number => "number",
        Kind::Time => "time",
        Kind::Any => "value",
    }
}

/// `[-][0][width][.precision](s|d|x|q)`.
fn parse_verb(format: &str) -> Option<Verb> {
    let kind = format.chars().last().filter(|c| "sdxq".contains(*c))?;
    let mut body = &format[..format.len() - 1];
    let left = body.starts_with('-');
    if left {
        body = &body[1..];
    }
    let zero = body.starts_with('0');
    if zero {
        body = &body[1..];
    }
    let (width, precision) = match body.split_once('.') {
        Some((width, precision)) => (width, Some(precision)),
        None => (body, None),
    };
    let number = |text: &str| -> Option<Option<usize>> {
        if text.is_empty() {
            Some(None)
        } else if text.chars().all(|c| c.is_ascii_digit()) && text.len() <= 4 {
            text.parse().ok().map(Some)
        } else {
            None
        }
    };
    let width = number(width)?;
    let precision = match precision {
        Some(p) => Some(number(p)?.unwrap_or(0)),
        None => None,
    };
    Some(Verb {
        left,
        zero,
        width,
        precision,
        kind,
    })
}
