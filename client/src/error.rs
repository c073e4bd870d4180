//! The one error type of the client library.

use std::fmt;

use tonic::Code;
use tonic_types::StatusExt;

use crate::code::code_name;

/// Everything that can go wrong when talking to the audit service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server address is not a valid URI.
    #[error("invalid server address {uri:?}: {}", root_cause(error))]
    InvalidUri {
        /// The address as given.
        uri: String,
        /// Why it was refused. Not reported as `source()`: the message already names the root
        /// cause, and tonic's chain repeats itself.
        error: tonic::transport::Error,
    },
    /// The server could not be reached.
    #[error("cannot connect to {uri}: {}", root_cause(error))]
    Connect {
        /// The address of the server.
        uri: String,
        /// The transport failure; like [`Error::InvalidUri`]'s, not reported as `source()`.
        error: tonic::transport::Error,
    },
    /// The server answered with a gRPC error. Boxed because `tonic::Status` is large and would
    /// make every `Result` in the crate large with it.
    #[error("{}", StatusDisplay(.0))]
    Status(Box<tonic::Status>),
    /// A subscription ended and could not be resumed within the retry policy.
    #[error("the subscription ended and could not be resumed after {attempts} attempts")]
    SubscriptionEnded {
        /// How many consecutive attempts failed.
        attempts: u32,
    },
    /// Text that should have been proto3 JSON was not, or did not fit the message.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Input that is well-formed but not usable, with the reason.
    #[error("invalid input: {0}")]
    Input(String),
    /// Tamper evidence could not be checked: no key, unreadable data, or a proof that does not
    /// verify.
    #[error("cannot verify: {0}")]
    Unverifiable(String),
    /// A message could not be converted between its generated and its reflected form. This
    /// indicates a mismatch between the generated code and the descriptor set.
    #[error("cannot convert message: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl From<audit_format::proto_json::Error> for Error {
    fn from(error: audit_format::proto_json::Error) -> Self {
        use audit_format::proto_json::Error as Json;
        match error {
            Json::Json(error) => Error::Json(error),
            Json::Input(reason) => Error::Input(reason),
            Json::Decode(error) => Error::Decode(error),
            other => Error::Input(other.to_string()),
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(Box::new(status))
    }
}

impl Error {
    /// The gRPC status the server answered with, if this error is one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Status(status) => Some(status),
            _ => None,
        }
    }

    /// The gRPC code of this error: the server's code for [`Error::Status`], `UNAVAILABLE` for
    /// connection failures, `INVALID_ARGUMENT` for bad local input, `None` otherwise.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(status) => Some(status.code()),
            Error::Connect { .. } | Error::SubscriptionEnded { .. } => Some(Code::Unavailable),
            Error::InvalidUri { .. } | Error::Json(_) | Error::Input(_) => {
                Some(Code::InvalidArgument)
            }
            Error::Decode(_) | Error::Unverifiable(_) => None,
        }
    }

    /// Whether the failure may go away on its own, so that trying again later makes sense:
    /// connection failures and the codes `UNAVAILABLE`, `UNKNOWN`, `INTERNAL`, `CANCELLED`,
    /// `ABORTED`, `DEADLINE_EXCEEDED` and `RESOURCE_EXHAUSTED` (too many subscribers, overload).
    /// Refusals that repeat identically (`INVALID_ARGUMENT`, `PERMISSION_DENIED`,
    /// `UNAUTHENTICATED`, `NOT_FOUND`, `UNIMPLEMENTED`, …) and local errors are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Status(status) => matches!(
                status.code(),
                Code::Unavailable
                    | Code::Unknown
                    | Code::Internal
                    | Code::Cancelled
                    | Code::Aborted
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
            ),
            _ => false,
        }
    }

    /// The fields the server refused, as `(field, description)` pairs from the
    /// `google.rpc.BadRequest` details of an `INVALID_ARGUMENT` answer (for example
    /// `("entries[3].method", "must not be empty")`). Empty when there are none.
    pub fn field_violations(&self) -> Vec<(String, String)> {
        self.status()
            .and_then(|status| status.get_details_bad_request())
            .map(|bad| {
                bad.field_violations
                    .into_iter()
                    .map(|v| (v.field, v.description))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Shows a status as `INVALID_ARGUMENT: message (entry.source: must not be empty)`, instead of
/// `tonic::Status`'s debug-like `Display`.
struct StatusDisplay<'a>(&'a tonic::Status);

impl fmt::Display for StatusDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.0;
        let code = i32::from(status.code());
        f.write_str(code_name(code).unwrap_or("UNKNOWN"))?;
        if !status.message().is_empty() {
            write!(f, ": {}", status.message())?;
        }
        if let Some(bad) = status.get_details_bad_request() {
            // Servers often repeat the violations in the message; show only what it lacks.
            let mut first = true;
            for v in &bad.field_violations {
                let violation = format!("{}: {}", v.field, v.description);
                if status.message().contains(&violation) {
                    continue;
                }
                f.write_str(if first { " (" } else { "; " })?;
                f.write_str(&violation)?;
                first = false;
            }
            if !first {
                f.write_str(")")?;
            }
        }
        Ok(())
    }
}

/// The innermost cause of a transport error (`Connection refused (os error 111)`): the layers
/// above it (`transport error`, `tcp connect error`) say little.
fn root_cause(error: &tonic::transport::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn status_display_names_code_and_fields() {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("entries[3].method", "must not be empty");
        let status =
            tonic::Status::with_error_details(Code::InvalidArgument, "invalid batch", details);
        let error = Error::from(status);
        assert_eq!(
            error.to_string(),
            "INVALID_ARGUMENT: invalid batch (entries[3].method: must not be empty)"
        );
        assert_eq!(error.code(), Some(Code::InvalidArgument));
        assert_eq!(
            error.field_violations(),
            vec![(
                "entries[3].method".to_string(),
                "must not be empty".to_string()
            )]
        );
    }

    #[test]
    fn status_display_does_not_repeat_the_message() {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("entry.source", "required");
        details.add_bad_request_violation("entry.method", "required");
        let status = tonic::Status::with_error_details(
            Code::InvalidArgument,
            "entry.source: required",
            details,
        );
        assert_eq!(
            Error::from(status).to_string(),
            "INVALID_ARGUMENT: entry.source: required (entry.method: required)"
        );
    }

    #[test]
    fn plain_status_display() {
        let error = Error::from(tonic::Status::unavailable("store is failing"));
        assert_eq!(error.to_string(), "UNAVAILABLE: store is failing");
        assert!(error.field_violations().is_empty());
    }
}
