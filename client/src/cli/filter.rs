//! The filter flags shared by `audit tail` and `audit query`, and the parsers of flag values.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use audit_client::{parse_code, pb};
use clap::{Args, ValueEnum};

/// Which entries to show. Every flag given must match; repeated flags match any of their values.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Filters")]
pub struct FilterArgs {
    /// Only entries of this request id.
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
    /// Only entries from this source application.
    #[arg(long, value_name = "SOURCE")]
    pub source: Option<String>,
    /// Only this method, exactly (`/pkg.Svc/Method`), or by prefix with a trailing `*`
    /// (`/pkg.Svc/*`).
    #[arg(long, value_name = "METHOD")]
    pub method: Option<String>,
    /// Only entries whose caller has this principal.
    #[arg(long, value_name = "PRINCIPAL")]
    pub principal: Option<String>,
    /// Only entries whose caller has this SPIFFE ID, exactly or by prefix with a trailing `*`.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub spiffe_id: Option<String>,
    /// Only entries with this outcome; repeat for several.
    #[arg(long, value_name = "OUTCOME")]
    pub outcome: Vec<OutcomeArg>,
    /// Only entries with this gRPC status code, as a number (7) or a name (permission_denied);
    /// repeat for several.
    #[arg(long, value_name = "CODE", value_parser = parse_status_code)]
    pub status_code: Vec<i32>,
    /// Only entries with this event (for example KEY_DELETED).
    #[arg(long, value_name = "EVENT")]
    pub event: Option<String>,
    /// Only entries with this category (for example KEY_MANAGEMENT).
    #[arg(long, value_name = "CATEGORY")]
    pub category: Option<String>,
    /// Only entries touching this resource, exactly or by prefix with a trailing `*` (`keys/*`).
    #[arg(long, value_name = "RESOURCE")]
    pub resource: Option<String>,
    /// Only entries at this level or above.
    #[arg(long, value_name = "LEVEL")]
    pub min_level: Option<LevelArg>,
    /// Only entries whose time is at or after this instant: RFC 3339
    /// (2026-11-22T10:00:00Z) or an age such as 90s, 15m, 2h, 7d.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<prost_types::Timestamp>,
    /// Only entries whose time is before this instant: RFC 3339 or an age (see --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<prost_types::Timestamp>,
    /// Only entries carrying this label with this value; repeat for several (all must match).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
}

impl FilterArgs {
    /// The filter these flags select.
    pub fn to_filter(&self) -> pb::Filter {
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        pb::Filter {
            request_id: text(&self.request_id),
            source: text(&self.source),
            method: text(&self.method),
            principal: text(&self.principal),
            spiffe_id: text(&self.spiffe_id),
            outcomes: self
                .outcome
                .iter()
                .map(|o| pb::Outcome::from(*o).into())
                .collect(),
            status_codes: self.status_code.clone(),
            event: text(&self.event),
            category: text(&self.category),
            resource: text(&self.resource),
            min_level: self
                .min_level
                .map_or(pb::Level::Unspecified, pb::Level::from)
                .into(),
            start_time: self.since,
            end_time: self.until,
            labels: self.label.iter().cloned().collect(),
        }
    }
}

/// How an audited call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutcomeArg {
    /// The call did what was asked.
    Success,
    /// The call was refused (not authenticated or not permitted).
    Denied,
    /// The call failed.
    Error,
}

impl From<OutcomeArg> for pb::Outcome {
    fn from(outcome: OutcomeArg) -> Self {
        match outcome {
            OutcomeArg::Success => pb::Outcome::Success,
            OutcomeArg::Denied => pb::Outcome::Denied,
            OutcomeArg::Error => pb::Outcome::Error,
        }
    }
}

/// Severity of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LevelArg {
    /// Detail useful only when debugging.
    Debug,
    /// A normal event.
    Info,
    /// Something unusual that deserves attention.
    Warning,
    /// A failure.
    Error,
    /// Something that needs immediate action.
    Critical,
}

impl From<LevelArg> for pb::Level {
    fn from(level: LevelArg) -> Self {
        match level {
            LevelArg::Debug => pb::Level::Debug,
            LevelArg::Info => pb::Level::Info,
            LevelArg::Warning => pb::Level::Warning,
            LevelArg::Error => pb::Level::Error,
            LevelArg::Critical => pb::Level::Critical,
        }
    }
}

/// Parses `KEY=VALUE` (the value may contain `=` and may be empty; the key may not be empty).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// Parses a gRPC status code by number or name.
pub fn parse_status_code(text: &str) -> Result<i32, String> {
    parse_code(text).ok_or_else(|| {
        format!("expected a gRPC status code 0-16 or its name (permission_denied), got {text:?}")
    })
}

/// Parses an RFC 3339 instant, or an age before now (`90s`, `15m`, `2h`, `7d`).
pub fn parse_time(text: &str) -> Result<prost_types::Timestamp, String> {
    let error = || {
        format!(
            "expected an RFC 3339 time (2026-11-22T10:00:00Z) or an age (15m, 2h, 7d), got {text:?}"
        )
    };
    if let Ok(time) = prost_types::Timestamp::from_str(text) {
        return Ok(time);
    }
    let unit_at = text.len().saturating_sub(1);
    let (number, unit) = (text.get(..unit_at), text.get(unit_at..));
    let seconds_per_unit = match unit {
        Some("s") => 1,
        Some("m") => 60,
        Some("h") => 3600,
        Some("d") => 86_400,
        _ => return Err(error()),
    };
    let count: u64 = number.and_then(|n| n.parse().ok()).ok_or_else(error)?;
    let age = count
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(error)?;
    let instant = SystemTime::now().checked_sub(age).ok_or_else(error)?;
    Ok(instant.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Test {
        #[command(flatten)]
        filter: FilterArgs,
    }

    fn filter(args: &[&str]) -> pb::Filter {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        Test::try_parse_from(argv).unwrap().filter.to_filter()
    }

    #[test]
    fn no_flags_match_everything() {
        assert_eq!(filter(&[]), pb::Filter::default());
    }

    #[test]
    fn every_flag_maps_to_its_field() {
        let f = filter(&[
            "--request-id",
            "r1",
            "--source",
            "billing-api",
            "--method",
            "/billing.v1.Billing/*",
            "--principal",
            "alice",
            "--spiffe-id",
            "spiffe://prod/*",
            "--outcome",
            "denied",
            "--outcome",
            "error",
            "--status-code",
            "7",
            "--status-code",
            "unauthenticated",
            "--event",
            "KEY_DELETED",
            "--category",
            "KEY_MANAGEMENT",
            "--resource",
            "keys/*",
            "--min-level",
            "warning",
            "--since",
            "2026-11-22T10:00:00Z",
            "--until",
            "2026-11-23T10:00:00.5Z",
            "--label",
            "env=prod",
            "--label",
            "query=a=b",
        ]);
        assert_eq!(f.request_id, "r1");
        assert_eq!(f.source, "billing-api");
        assert_eq!(f.method, "/billing.v1.Billing/*");
        assert_eq!(f.principal, "alice");
        assert_eq!(f.spiffe_id, "spiffe://prod/*");
        assert_eq!(
            f.outcomes,
            vec![pb::Outcome::Denied as i32, pb::Outcome::Error as i32]
        );
        assert_eq!(f.status_codes, vec![7, 16]);
        assert_eq!(f.event, "KEY_DELETED");
        assert_eq!(f.category, "KEY_MANAGEMENT");
        assert_eq!(f.resource, "keys/*");
        assert_eq!(f.min_level, pb::Level::Warning as i32);
        assert_eq!(f.start_time.unwrap().seconds, 1_795_341_600);
        let until = f.end_time.unwrap();
        assert_eq!((until.seconds, until.nanos), (1_795_428_000, 500_000_000));
        assert_eq!(f.labels.get("env").map(String::as_str), Some("prod"));
        assert_eq!(f.labels.get("query").map(String::as_str), Some("a=b"));
    }

    #[test]
    fn refuses_bad_values() {
        for args in [
            &["--outcome", "maybe"][..],
            &["--status-code", "99"],
            &["--status-code", "nope"],
            &["--label", "novalue"],
            &["--label", "=v"],
            &["--since", "yesterday"],
            &["--since", "15x"],
            &["--min-level", "loud"],
        ] {
            let mut argv = vec!["test"];
            argv.extend_from_slice(args);
            assert!(Test::try_parse_from(argv).is_err(), "{args:?} accepted");
        }
    }

    #[test]
    fn ages_are_before_now() {
        let now = prost_types::Timestamp::from(SystemTime::now());
        let ago = parse_time("15m").unwrap();
        let diff = now.seconds - ago.seconds;
        assert!((899..=901).contains(&diff), "{diff}");
        assert!(parse_time("2d").is_ok());
        assert!(parse_time("m").is_err());
    }
}
