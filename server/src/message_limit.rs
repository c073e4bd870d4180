//! Reports a request message over the configured size limit as `RESOURCE_EXHAUSTED`, the code
//! gRPC's own implementations use, instead of tonic's `OUT_OF_RANGE`.

use http::HeaderValue;

/// Rewrites the status of a response refusing an oversized request message.
pub fn over_limit_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|code| code == "11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|message| message.to_str().ok())
        .is_some_and(|message| message.contains("message length too large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
    }
    response
}
