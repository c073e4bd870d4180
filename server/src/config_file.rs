//! The configuration file given with `--config` (TOML): `[[forward]]` tables, and `redact`, the
//! fields to redact (`redact = ["details.password", "labels.secret_*"]`).
//!
//! ```toml
//! [[forward]]
//! name = "siem"
//! url = "syslog+tcp://127.0.0.1:6514"
//! format = "cef"
//! facility = "local3"
//! filter = { outcomes = ["DENIED", "ERROR"], method = "/kms.v1.Keys/*" }
//! ```
//!
//! Every key of a table other than `name`, `url` and `filter` is an option of the forwarder, as
//! in its URL's query (an array gives a repeatable option such as `header`). Unknown top-level
//! keys and unknown filter fields are errors, named.

use std::collections::BTreeMap;
use std::path::Path;

use audit_proto::pb;
use serde::Deserialize;

use crate::error::Error;
use crate::forward::ForwardSpec;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    forward: Vec<toml::Table>,
    /// Fields to redact (see [`crate::redaction`]).
    #[serde(default)]
    redact: Vec<String>,
}

/// A filter as written in the file: enum values by name (`DENIED` or `OUTCOME_DENIED`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterConfig {
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    method: String,
    #[serde(default)]
    principal: String,
    #[serde(default)]
    spiffe_id: String,
    #[serde(default)]
    outcomes: Vec<String>,
    #[serde(default)]
    status_codes: Vec<i32>,
    #[serde(default)]
    event: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    min_level: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// The forwarders of the configuration file at `path`.
pub fn load(path: &Path) -> Result<Vec<ForwardSpec>, Error> {
    let fail = |what: String| Error::Config(format!("{}: {what}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    parse(&text).map_err(fail)
}

/// The `redact` list of the configuration file at `path`: the fields to redact.
pub fn load_redact(path: &Path) -> Result<Vec<String>, Error> {
    let fail = |what: String| Error::Config(format!("{}: {what}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let file: ConfigFile = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    Ok(file.redact)
}

fn parse(text: &str) -> Result<Vec<ForwardSpec>, String> {
    let file: ConfigFile = toml::from_str(text).map_err(|e| e.to_string())?;
    file.forward
        .into_iter()
        .enumerate()
        .map(|(i, table)| forwarder(table).map_err(|e| format!("forward[{i}]: {e}")))
        .collect()
}

fn forwarder(mut table: toml::Table) -> Result<ForwardSpec, String> {
    let mut text = |key: &str| match table.remove(key) {
        Some(toml::Value::String(value)) => Ok(value),
        Some(_) => Err(format!("`{key}` must be a string")),
        None => Err(format!("`{key}` is missing")),
    };
    let name = text("name")?;
    let url = text("url")?;
    let mut spec = crate::forward::parse_flag(&format!("{name}={url}"))?;
    if let Some(filter) = table.remove("filter") {
        let filter: FilterConfig = filter.try_into().map_err(|e| format!("filter: {e}"))?;
        spec.filter = to_filter(filter)?;
    }
    for (key, value) in table {
        let values = match value {
            toml::Value::Array(items) => items,
            value => vec![value],
        };
        for value in values {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => return Err(format!("option `{key}`: a string, number or boolean")),
            };
            spec.options.push((key.clone(), text));
        }
    }
    Ok(spec)
}

fn to_filter(config: FilterConfig) -> Result<pb::Filter, String> {
    let outcomes = config
        .outcomes
        .iter()
        .map(|name| {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("OUTCOME_") {
                upper
            } else {
                format!("OUTCOME_{upper}")
            };
            pb::Outcome::from_str_name(&full)
                .map(|o| o as i32)
                .ok_or_else(|| format!("filter.outcomes: unknown outcome `{name}`"))
        })
        .collect::<Result<_, _>>()?;
    let min_level = match config.min_level {
        None => 0,
        Some(name) => {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("LEVEL_") {
                upper
            } else {
                format!("LEVEL_{upper}")
            };
            pb::Level::from_str_name(&full)
                .ok_or_else(|| format!("filter.min_level: unknown level `{name}`"))?
                as i32
        }
    };
    Ok(pb::Filter {
        request_id: config.request_id,
        source: config.source,
        method: config.method,
        principal: config.principal,
        spiffe_id: config.spiffe_id,
        outcomes,
        status_codes: config.status_codes,
        event: config.event,
        category: config.category,
        resource: config.resource,
        min_level,
        labels: config.labels.into_iter().collect(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_tables_become_specs() {
        let specs = parse(
            r#"
            [[forward]]
            name = "siem"
            url = "syslog+tcp://127.0.0.1:6514?facility=local3"
            format = "cef"
            batch = 10
            header = ["X-A: 1", "X-B: 2"]
            filter = { outcomes = ["denied", "OUTCOME_ERROR"], min_level = "warning", labels = { region = "eu" } }
            "#,
        )
        .unwrap();
        assert_eq!(specs.len(), 1);
        let spec = &specs[0];
        assert_eq!(spec.name, "siem");
        assert_eq!(
            spec.options,
            [
                ("batch".to_string(), "10".to_string()),
                ("format".into(), "cef".into()),
                ("header".into(), "X-A: 1".into()),
                ("header".into(), "X-B: 2".into()),
            ]
        );
        assert_eq!(
            spec.filter.outcomes,
            [pb::Outcome::Denied as i32, pb::Outcome::Error as i32]
        );
        assert_eq!(spec.filter.min_level, pb::Level::Warning as i32);
        assert_eq!(spec.filter.labels["region"], "eu");
    }

    #[test]
    fn mistakes_are_named() {
        let error = parse("[[forwarder]]\nname = \"x\"").unwrap_err();
        assert!(error.contains("forwarder"), "{error}");
        let error = parse(
            "[[forward]]\nname = \"x\"\nurl = \"file:///tmp/a\"\nfilter = { colour = \"red\" }",
        )
        .unwrap_err();
        assert!(
            error.contains("forward[0]: filter") && error.contains("colour"),
            "{error}"
        );
        let error = parse("[[forward]]\nname = \"x\"\nurl = \"file:///tmp/a\"\nfilter = { outcomes = [\"FINE\"] }").unwrap_err();
        assert!(error.contains("unknown outcome `FINE`"), "{error}");
        let error = parse("[[forward]]\nurl = \"file:///tmp/a\"").unwrap_err();
        assert!(error.contains("`name` is missing"), "{error}");
    }
}
