//! The server's error type and its one mapping to gRPC status codes.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// A field of a request that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path of the field, e.g. `entry.source` or `entries[3].method`.
    pub field: String,
    /// Why the value was refused.
    pub description: String,
}

impl Violation {
    /// A violation of `field` for `description`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; nothing was changed.
    #[error("{}", describe_violations(.0))]
    InvalidArgument(Vec<Violation>),

    /// An entry with this id is already stored with different content.
    #[error("{field}: an entry with id {id} is already recorded with different content")]
    IdConflict {
        /// Path of the id field.
        field: String,
        /// The conflicting id.
        id: String,
    },

    /// The server is at a configured limit (write queue, subscribers); try again later.
    #[error("{0}")]
    Overloaded(String),

    /// The store cannot accept writes (failed write or fsync, full disk); nothing was stored.
    #[error("store unavailable: {0}")]
    StoreFailed(String),

    /// The store opened read-only: its log did not verify when the server started, so the
    /// server signs nothing and stores nothing until an operator has looked at it.
    #[error("audit store is read-only: {0}; the entry was not recorded")]
    ReadOnly(String),

    /// What was asked for starts inside the range retention removed from the log.
    #[error(
        "entries 1 to {through} were removed by retention; the oldest entry kept is {}",
        through + 1
    )]
    Pruned {
        /// The last pruned sequence.
        through: u64,
    },

    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,

    /// The server's configuration is unusable (a bad policy file, an unreadable certificate).
    #[error("configuration: {0}")]
    Config(String),

    /// The call needs something the server is not configured with (a redaction key).
    #[error("{0}")]
    NotConfigured(String),

    /// An unexpected internal failure; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Self {
        Error::Internal(error.to_string())
    }
}

fn describe_violations(violations: &[Violation]) -> String {
    match violations {
        [] => "invalid request".to_string(),
        [only] => format!(
            "{}: {}",
            cut(&only.field, MAX_REPORTED_FIELD_BYTES),
            cut(&only.description, MAX_REPORTED_DESCRIPTION_BYTES)
        ),
        [first, rest @ ..] => format!(
            "{}: {} (and {} more invalid field{})",
            cut(&first.field, MAX_REPORTED_FIELD_BYTES),
            cut(&first.description, MAX_REPORTED_DESCRIPTION_BYTES),
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        ),
    }
}

/// Most field violations listed in a `BadRequest`; the rest are counted in one more. Status
/// details travel in a trailer, and gRPC's C core (Python, Ruby, C++ clients) turns a response
/// whose metadata exceeds 8 KiB into `RESOURCE_EXHAUSTED`, which clients retry: ten violations
/// of at most [`MAX_REPORTED_DESCRIPTION_BYTES`] stay well below that.
pub const MAX_REPORTED_VIOLATIONS: usize = 10;

/// Longest description of a violation sent to the client, in bytes (longer ones are cut).
pub const MAX_REPORTED_DESCRIPTION_BYTES: usize = 160;

/// Longest field path sent to the client, in bytes (longer ones are cut).
const MAX_REPORTED_FIELD_BYTES: usize = 128;

/// The `BadRequest` violations sent for `violations`: the first [`MAX_REPORTED_VIOLATIONS`],
/// each cut to size, and, when there were more, one saying how many were left out.
fn reported_violations(violations: &[Violation]) -> Vec<FieldViolation> {
    let mut reported: Vec<_> = violations
        .iter()
        .take(MAX_REPORTED_VIOLATIONS)
        .map(|v| {
            FieldViolation::new(
                cut(&v.field, MAX_REPORTED_FIELD_BYTES),
                cut(&v.description, MAX_REPORTED_DESCRIPTION_BYTES),
            )
        })
        .collect();
    if let Some(first_unlisted) = violations.get(MAX_REPORTED_VIOLATIONS) {
        // Name the request field the unlisted violations are under (`entries`), not one of them.
        let field = first_unlisted.field.split(['[', '.']).next().unwrap_or("");
        let unlisted = violations.len() - MAX_REPORTED_VIOLATIONS;
        reported.push(FieldViolation::new(
            cut(field, MAX_REPORTED_FIELD_BYTES),
            format!(
                "{unlisted} more invalid field{} not listed",
                if unlisted == 1 { "" } else { "s" }
            ),
        ));
    }
    reported
}

/// `text` cut to at most `max` bytes on a character boundary, with `...` when it was cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument(ref violations) => {
                let details = ErrorDetails::with_bad_request(reported_violations(violations));
                Status::with_error_details(Code::InvalidArgument, error.to_string(), details)
            }
            Error::IdConflict { .. } => Status::already_exists(error.to_string()),
            Error::Pruned { .. } => Status::out_of_range(error.to_string()),
            Error::Overloaded(message) => Status::resource_exhausted(message),
            Error::StoreFailed(ref cause) => {
                tracing::error!(%cause, "refusing request: store unavailable");
                Status::unavailable("audit store unavailable: the entry was not recorded")
            }
            Error::ReadOnly(_) | Error::ShuttingDown => Status::unavailable(error.to_string()),
            Error::Config(ref cause) => {
                tracing::error!(%cause, "configuration error");
                Status::internal("internal error")
            }
            Error::NotConfigured(message) => Status::failed_precondition(message),
            Error::Internal(ref cause) => {
                tracing::error!(%cause, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field_and_carries_bad_request_details() {
        let status = Status::from(Error::InvalidArgument(vec![
            Violation::new("entries[2].method", "required"),
            Violation::new("entries[4].outcome", "required"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "entries[2].method: required (and 1 more invalid field)"
        );
        let bad_request = status
            .get_details_bad_request()
            .expect("BadRequest details");
        assert_eq!(bad_request.field_violations.len(), 2);
        assert_eq!(bad_request.field_violations[1].field, "entries[4].outcome");
    }

    #[test]
    fn bad_request_details_stay_small_however_many_violations() {
        let long = "\u{fffd}".repeat(1000);
        let violations: Vec<_> = (0..1000)
            .map(|i| Violation::new(format!("entries[{i}].request_id"), long.clone()))
            .collect();
        let status = Status::from(Error::InvalidArgument(violations));
        assert_eq!(status.code(), Code::InvalidArgument);
        let listed = status.get_details_bad_request().unwrap().field_violations;
        assert_eq!(listed.len(), MAX_REPORTED_VIOLATIONS + 1);
        assert_eq!(listed[0].field, "entries[0].request_id");
        assert!(listed[0].description.len() <= MAX_REPORTED_DESCRIPTION_BYTES);
        assert_eq!(listed[10].field, "entries");
        assert_eq!(listed[10].description, "990 more invalid fields not listed");
        // What goes on the wire: well below the 8 KiB gRPC's C core accepts in metadata.
        let mut headers = http::HeaderMap::new();
        status.add_header(&mut headers).unwrap();
        let metadata: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        assert!(metadata < 4096, "{metadata} bytes of metadata");
    }

    #[test]
    fn internal_causes_are_not_sent() {
        let status = Status::from(Error::Internal("disk /secret/path broke".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
