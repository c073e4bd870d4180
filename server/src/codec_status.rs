//! Statuses for requests that tonic's codec refuses before a handler sees them, rewritten to the
//! codes of the contract: a message over the size limit gets `RESOURCE_EXHAUSTED` (the code
//! gRPC's own implementations use) instead of tonic's `OUT_OF_RANGE`, and a message the protobuf
//! decoder cannot read (`details` nested deeper than it allows, bad wire data) gets
//! `INVALID_ARGUMENT` naming the field instead of `INTERNAL` with the decoder's text.
//!
//! tonic percent-encodes `grpc-message`, so the status is read back with
//! [`Status::from_header_map`], which decodes it, before its text is compared.

use tonic::{Code, Status};

use crate::error::{Error, Violation};
use crate::validate::MAX_DETAILS_DEPTH;

/// What tonic's message for an oversized request starts with.
const TOO_LARGE: &str = "message length too large";

/// What prost's `DecodeError` says first.
const DECODE_FAILED: &str = "failed to decode Protobuf message: ";

/// Rewrites the status of a response refusing a request message that is too large
/// (`RESOURCE_EXHAUSTED`) or cannot be decoded (`INVALID_ARGUMENT`); every other response passes
/// unchanged.
pub fn contract_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let code = headers.get("grpc-status").map(|code| code.as_bytes());
    if !matches!(code, Some(b"11" | b"13")) {
        return response;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return response;
    };
    let rewritten = match status.code() {
        Code::OutOfRange if status.message().contains(TOO_LARGE) => {
            Status::resource_exhausted(status.message())
        }
        Code::Internal => match status.message().strip_prefix(DECODE_FAILED) {
            Some(reason) => Status::from(Error::InvalidArgument(vec![undecodable(reason)])),
            None => return response,
        },
        _ => return response,
    };
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    if rewritten.add_header(headers).is_err() {
        tracing::warn!("could not rewrite the status of a refused request");
    }
    response
}

/// The violation for a request prost could not decode, from its error text: `Message.field: `
/// frames, innermost first, then the reason (`recursion limit reached`, `invalid wire type`).
fn undecodable(text: &str) -> Violation {
    let mut frames: Vec<&str> = Vec::new();
    let mut rest = text;
    while let Some((frame, after)) = rest.split_once(": ") {
        let Some((_, field)) = frame.split_once('.') else {
            break;
        };
        if frame.contains(' ') || field.contains('.') {
            break;
        }
        frames.push(frame);
        rest = after;
    }
    let reason = rest;
    // Outermost first; stop at the first field inside google.protobuf.Struct/Value/ListValue,
    // whose internals (`fields`, `kind`) mean nothing to the caller.
    let mut path = Vec::new();
    for frame in frames.iter().rev() {
        let (message, field) = frame.split_once('.').expect("split above");
        if matches!(message, "Struct" | "Value" | "ListValue") {
            break;
        }
        path.push(field);
    }
    let field = if path.is_empty() {
        "request".to_string()
    } else {
        path.join(".")
    };
    let description = if reason.starts_with("recursion limit") {
        if path.last() == Some(&"details") {
            format!("nested more than {MAX_DETAILS_DEPTH} levels deep")
        } else {
            "nested too deeply".to_string()
        }
    } else {
        format!("cannot be decoded: {reason}")
    };
    Violation::new(field, description)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(status: &Status) -> Vec<(String, String)> {
        use tonic_types::StatusExt as _;
        status
            .get_details_bad_request()
            .expect("BadRequest details")
            .field_violations
            .into_iter()
            .map(|v| (v.field, v.description))
            .collect()
    }

    fn refused(status: Status) -> Status {
        let response = contract_status(status.into_http::<()>());
        Status::from_header_map(response.headers()).expect("a status")
    }

    #[test]
    fn oversized_messages_get_resource_exhausted() {
        // The status exactly as tonic makes it, percent-encoded on the way into the header.
        let status = refused(Status::out_of_range(
            "Error, decoded message length too large: found 20000 bytes, the limit is: 10000 bytes",
        ));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("20000 bytes"),
            "{}",
            status.message()
        );
        let other = refused(Status::out_of_range("page 7 of 3"));
        assert_eq!(other.code(), Code::OutOfRange);
    }

    #[test]
    fn undecodable_messages_get_invalid_argument_naming_the_field() {
        let deep = "failed to decode Protobuf message: Value.kind: Struct.fields: Value.kind: \
                    Struct.fields: AuditEntry.details: RecordBatchRequest.entries: \
                    recursion limit reached";
        let status = refused(Status::internal(deep));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            fields(&status),
            [(
                "entries.details".to_string(),
                "nested more than 32 levels deep".to_string()
            )]
        );
        assert_eq!(
            status.message(),
            "entries.details: nested more than 32 levels deep"
        );

        let bad = "failed to decode Protobuf message: AuditEntry.source: RecordRequest.entry: \
                   invalid string value: data is not UTF-8 encoded";
        let status = refused(Status::internal(bad));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "entry.source: cannot be decoded: invalid string value: data is not UTF-8 encoded"
        );

        let whole = refused(Status::internal(
            "failed to decode Protobuf message: invalid varint",
        ));
        assert_eq!(
            whole.message(),
            "request: cannot be decoded: invalid varint"
        );
        let other = refused(Status::internal("internal error"));
        assert_eq!(other.code(), Code::Internal);
    }
}
