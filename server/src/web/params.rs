//! Query strings of the console's API as `Filter`s and page requests. Every `Filter` field has
//! a parameter of the same name (`outcome`, `status_code` and `label` may repeat); a parameter
//! that is not known, or a value that does not parse, is refused naming the parameter.

use std::collections::BTreeMap;

use audit_proto::pb::{Filter, Level, Order, Outcome};
use percent_encoding::percent_decode_str;

use crate::error::Violation;

/// The parameters of one request, decoded, in order.
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Decodes `query` (`a=1&b=x%20y`, `+` for space).
    pub fn parse(query: Option<&str>) -> Result<Self, Vec<Violation>> {
        let mut pairs = Vec::new();
        for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let decode = |text: &str| {
                percent_decode_str(&text.replace('+', " "))
                    .decode_utf8()
                    .map(|t| t.into_owned())
            };
            match (decode(key), decode(value)) {
                (Ok(key), Ok(value)) => pairs.push((key, value)),
                (Ok(key), Err(_)) => {
                    return Err(vec![Violation::new(key, "not percent-encoded UTF-8")]);
                }
                _ => return Err(vec![Violation::new("query", "not percent-encoded UTF-8")]),
            }
        }
        Ok(Self(pairs))
    }

    /// The last value of `name`, if given and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.as_str())
    }

    /// The filter these parameters describe, and every parameter besides the filter's and
    /// `extra` refused.
    pub fn filter(&self, extra: &[&str]) -> Result<Filter, Vec<Violation>> {
        let mut filter = Filter::default();
        let mut violations = Vec::new();
        let mut labels = BTreeMap::new();
        for (key, value) in &self.0 {
            if value.is_empty() && key != "label" {
                continue;
            }
            let mut bad = |why: String| violations.push(Violation::new(key.clone(), why));
            match key.as_str() {
                "request_id" => filter.request_id.clone_from(value),
                "source" => filter.source.clone_from(value),
                "method" => filter.method.clone_from(value),
                "principal" => filter.principal.clone_from(value),
                "spiffe_id" => filter.spiffe_id.clone_from(value),
                "event" => filter.event.clone_from(value),
                "category" => filter.category.clone_from(value),
                "resource" => filter.resource.clone_from(value),
                "outcome" => match parse_outcome(value) {
                    Some(outcome) => filter.outcomes.push(outcome),
                    None => bad(format!("`{value}` is not SUCCESS, DENIED or ERROR")),
                },
                "status_code" => match audit_client::parse_code(value) {
                    Some(code) => filter.status_codes.push(code),
                    None => bad(format!(
                        "`{value}` is not a gRPC status code (0 to 16, or a name such as \
                         PERMISSION_DENIED)"
                    )),
                },
                "min_level" => match parse_level(value) {
                    Some(level) => filter.min_level = level,
                    None => bad(format!(
                        "`{value}` is not a level (DEBUG, INFO, WARNING, ERROR, CRITICAL)"
                    )),
                },
                "start_time" | "end_time" => match value.parse::<prost_types::Timestamp>() {
                    Ok(time) if key == "start_time" => filter.start_time = Some(time),
                    Ok(time) => filter.end_time = Some(time),
                    Err(_) => bad(format!(
                        "`{value}` is not an RFC 3339 time such as 2026-01-31T12:00:00Z"
                    )),
                },
                "label" => match value.split_once('=') {
                    Some((k, v)) if !k.is_empty() => {
                        labels.insert(k.to_string(), v.to_string());
                    }
                    _ => bad(format!("`{value}` is not KEY=VALUE")),
                },
                known if extra.contains(&known) => {}
                _ => bad("not a parameter of this request".into()),
            }
        }
        filter.labels = labels;
        if violations.is_empty() {
            Ok(filter)
        } else {
            Err(violations)
        }
    }

    /// `order`: `asc` (the default) or `desc`.
    pub fn order(&self) -> Result<Order, Vec<Violation>> {
        match self.get("order") {
            None | Some("asc" | "ascending") => Ok(Order::Ascending),
            Some("desc" | "descending") => Ok(Order::Descending),
            Some(other) => Err(vec![Violation::new(
                "order",
                format!("`{other}` is not asc or desc"),
            )]),
        }
    }

    /// A positive number parameter, `None` when absent.
    pub fn number(&self, name: &str) -> Result<Option<u64>, Vec<Violation>> {
        self.get(name)
            .map(|text| {
                text.parse::<u64>().map_err(|_| {
                    vec![Violation::new(
                        name,
                        format!("`{text}` is not a whole number"),
                    )]
                })
            })
            .transpose()
    }
}

/// `SUCCESS`, `OUTCOME_SUCCESS` (any case) or the enum's number.
fn parse_outcome(text: &str) -> Option<i32> {
    let upper = text.trim().to_ascii_uppercase();
    let outcome = match upper.parse::<i32>() {
        Ok(number) => Outcome::try_from(number).ok()?,
        Err(_) => Outcome::from_str_name(&upper)
            .or_else(|| Outcome::from_str_name(&format!("OUTCOME_{upper}")))?,
    };
    (outcome != Outcome::Unspecified).then_some(outcome as i32)
}

/// `WARNING`, `LEVEL_WARNING` (any case) or the enum's number.
fn parse_level(text: &str) -> Option<i32> {
    let upper = text.trim().to_ascii_uppercase();
    match upper.parse::<i32>() {
        Ok(number) => Level::try_from(number).ok().map(|l| l as i32),
        Err(_) => Level::from_str_name(&upper)
            .or_else(|| Level::from_str_name(&format!("LEVEL_{upper}")))
            .map(|l| l as i32),
    }
}

/// The violations of `validate::filter` named by their query parameter (`filter.source` →
/// `source`, `filter.outcomes[0]` → `outcome`).
pub fn as_parameters(violations: Vec<Violation>) -> Vec<Violation> {
    violations
        .into_iter()
        .map(|v| {
            let field = v.field.strip_prefix("filter.").unwrap_or(&v.field);
            let field = match field.split(['[', '.']).next().unwrap_or(field) {
                "outcomes" => "outcome",
                "status_codes" => "status_code",
                "labels" => "label",
                other => other,
            };
            Violation::new(field, v.description)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(query: &str) -> Result<Filter, Vec<Violation>> {
        Params::parse(Some(query))?.filter(&["page_token"])
    }

    #[test]
    fn every_filter_field_has_a_parameter() {
        let f = filter(
            "request_id=r&source=billing+api&method=%2Fa.B%2F*&principal=alice&spiffe_id=spiffe%3A%2F%2Fx%2F*\
             &outcome=denied&outcome=OUTCOME_ERROR&status_code=7&status_code=unavailable\
             &event=E&category=C&resource=keys%2F*&min_level=warning\
             &start_time=2026-01-01T00:00:00Z&end_time=2026-01-02T00:00:00Z&label=env%3Dprod&page_token=x",
        )
        .unwrap();
        assert_eq!(f.request_id, "r");
        assert_eq!(f.source, "billing api");
        assert_eq!(f.method, "/a.B/*");
        assert_eq!(f.principal, "alice");
        assert_eq!(f.spiffe_id, "spiffe://x/*");
        assert_eq!(
            f.outcomes,
            vec![Outcome::Denied as i32, Outcome::Error as i32]
        );
        assert_eq!(f.status_codes, vec![7, 14]);
        assert_eq!((f.event.as_str(), f.category.as_str()), ("E", "C"));
        assert_eq!(f.resource, "keys/*");
        assert_eq!(f.min_level, Level::Warning as i32);
        assert_eq!(f.start_time.unwrap().seconds, 1_767_225_600);
        assert_eq!(f.end_time.unwrap().seconds, 1_767_312_000);
        assert_eq!(f.labels.get("env").map(String::as_str), Some("prod"));
    }

    #[test]
    fn bad_parameters_are_named() {
        let fields = |query| {
            filter(query)
                .unwrap_err()
                .into_iter()
                .map(|v| v.field)
                .collect::<Vec<_>>()
        };
        assert_eq!(fields("outcome=maybe"), ["outcome"]);
        assert_eq!(fields("status_code=99"), ["status_code"]);
        assert_eq!(fields("start_time=yesterday"), ["start_time"]);
        assert_eq!(fields("label=novalue"), ["label"]);
        assert_eq!(fields("colour=red"), ["colour"]);
        assert_eq!(fields("min_level=LOUD"), ["min_level"]);
        assert_eq!(fields("source=%FF"), ["source"]);
    }
}
