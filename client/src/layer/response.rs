//! The response side of [`Audit`](super::Audit): [`ResponseFuture`] records trailers-only
//! responses (the gRPC status is in the headers), [`AuditBody`] records the others when their
//! trailers arrive at the end of the stream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Code;

use super::call::{Acknowledgement, CallRecord};

/// The response header (and request metadata) carrying the call's `request_id`.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// The status a fail-closed call gets when its entry could not be stored in time.
fn audit_unavailable() -> tonic::Status {
    tonic::Status::unavailable("audit trail unavailable")
}

pin_project! {
    /// The response future of [`Audit`](super::Audit).
    pub struct ResponseFuture<F, B> {
        // `None` when the call was refused without running it.
        #[pin]
        inner: Option<F>,
        call: Option<CallRecord>,
        request_id: Option<HeaderValue>,
        // Fail-closed: a trailers-only response waiting for its entry to be stored.
        held: Option<(http::Response<B>, Acknowledgement)>,
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn new(inner: F, call: Option<CallRecord>, request_id: Option<HeaderValue>) -> Self {
        ResponseFuture {
            inner: Some(inner),
            call,
            request_id,
            held: None,
        }
    }

    /// A call refused with `UNAVAILABLE` before the service saw it.
    pub(crate) fn refused(request_id: Option<HeaderValue>) -> Self {
        ResponseFuture {
            inner: None,
            call: None,
            request_id,
            held: None,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<AuditBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some((_, ack)) = this.held {
                let stored = ready!(ack.as_mut().poll(cx));
                let (response, _) = this.held.take().expect("held just above");
                let response = if stored {
                    response.map(AuditBody::recorded)
                } else {
                    refusal()
                };
                return Poll::Ready(Ok(with_request_id(response, this.request_id.take())));
            }
            let Some(inner) = this.inner.as_mut().as_pin_mut() else {
                return Poll::Ready(Ok(with_request_id(refusal(), this.request_id.take())));
            };
            let response = match ready!(inner.poll(cx)) {
                Ok(response) => response,
                Err(error) => {
                    // Not a gRPC status: the service itself failed, and the transport resets
                    // the stream.
                    if let Some(call) = this.call {
                        call.finish(Code::Unknown, "the service failed to answer");
                    }
                    return Poll::Ready(Err(error));
                }
            };
            let request_id = this.request_id.take();
            let Some(mut call) = this.call.take() else {
                return Poll::Ready(Ok(response.map(AuditBody::recorded)));
            };
            let Some((code, message)) = status_in(response.headers()) else {
                let response = response.map(|body| AuditBody::new(body, call));
                return Poll::Ready(Ok(with_request_id(response, request_id)));
            };
            // A trailers-only response: the call ended with its headers.
            match call.finish(code, &message) {
                None => {
                    let response = response.map(AuditBody::recorded);
                    return Poll::Ready(Ok(with_request_id(response, request_id)));
                }
                Some(ack) => {
                    *this.held = Some((response, ack));
                    *this.request_id = request_id;
                }
            }
        }
    }
}

pin_project! {
    /// The response body of [`Audit`](super::Audit): the service's body, whose end records the
    /// call's entry with the gRPC status of its trailers.
    pub struct AuditBody<B> {
        // `None` for a refusal, which has no body.
        #[pin]
        inner: Option<B>,
        call: Option<CallRecord>,
        // Fail-closed: the trailers (none if the body ended without them), held until the
        // call's entry is stored.
        held: Option<(Option<HeaderMap>, Acknowledgement)>,
    }
}

impl<B> AuditBody<B> {
    fn new(inner: B, call: CallRecord) -> Self {
        AuditBody {
            inner: Some(inner),
            call: Some(call),
            held: None,
        }
    }

    /// A body whose call is already recorded (or not audited).
    fn recorded(inner: B) -> Self {
        AuditBody {
            inner: Some(inner),
            call: None,
            held: None,
        }
    }

    fn empty() -> Self {
        AuditBody {
            inner: None,
            call: None,
            held: None,
        }
    }
}

impl<B> Body for AuditBody<B>
where
    B: Body,
    B::Data: AsRef<[u8]>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        loop {
            if let Some((_, ack)) = this.held {
                let stored = ready!(ack.as_mut().poll(cx));
                let (trailers, _) = this.held.take().expect("held just above");
                if !stored {
                    return Poll::Ready(Some(Ok(Frame::trailers(unavailable_trailers()))));
                }
                return Poll::Ready(trailers.map(|trailers| Ok(Frame::trailers(trailers))));
            }
            let Some(inner) = this.inner.as_mut().as_pin_mut() else {
                return Poll::Ready(None);
            };
            let frame = ready!(inner.poll_frame(cx));
            let Some(call) = this.call else {
                return Poll::Ready(frame);
            };
            let (code, message, trailers) = match frame {
                Some(Ok(frame)) => match frame.into_trailers() {
                    Ok(trailers) => match status_in(&trailers) {
                        Some((code, message)) => (code, message, Some(trailers)),
                        None => (
                            Code::Unknown,
                            "the response ended without a gRPC status".into(),
                            Some(trailers),
                        ),
                    },
                    Err(data) => {
                        if let Some(bytes) = data.data_ref() {
                            call.response_data(bytes.as_ref());
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                },
                Some(Err(error)) => {
                    call.finish(Code::Unknown, "the response body failed");
                    *this.call = None;
                    return Poll::Ready(Some(Err(error)));
                }
                None => (
                    Code::Unknown,
                    "the response ended without a gRPC status".into(),
                    None,
                ),
            };
            let ack = call.finish(code, &message);
            *this.call = None;
            match ack {
                Some(ack) => *this.held = Some((trailers, ack)),
                None => return Poll::Ready(trailers.map(|trailers| Ok(Frame::trailers(trailers)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Unfinished calls must be polled to the end, where they are recorded.
        self.call.is_none()
            && self.held.is_none()
            && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

/// The gRPC status in `headers` (trailers, or the headers of a trailers-only response).
fn status_in(headers: &HeaderMap) -> Option<(Code, String)> {
    let code = headers.get(tonic::Status::GRPC_STATUS)?;
    // Only the two headers it needs: `from_header_map` panics on malformed status details.
    let mut status = HeaderMap::with_capacity(2);
    status.insert(tonic::Status::GRPC_STATUS, code.clone());
    if let Some(message) = headers.get(tonic::Status::GRPC_MESSAGE) {
        status.insert(tonic::Status::GRPC_MESSAGE, message.clone());
    }
    let status = tonic::Status::from_header_map(&status)?;
    Some((status.code(), status.message().to_string()))
}

fn refusal<B>() -> http::Response<AuditBody<B>> {
    audit_unavailable()
        .into_http::<()>()
        .map(|()| AuditBody::empty())
}

fn unavailable_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    // Adding a status without metadata or details cannot fail.
    let _ = audit_unavailable().add_header(&mut trailers);
    trailers
}

fn with_request_id<B>(
    mut response: http::Response<B>,
    request_id: Option<HeaderValue>,
) -> http::Response<B> {
    if let Some(request_id) = request_id {
        response.headers_mut().insert(REQUEST_ID, request_id);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_comes_from_grpc_status_and_decoded_message() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_in(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("key%20a%20does%20not%20exist"),
        );
        // Malformed details must not matter.
        headers.insert("grpc-status-details-bin", HeaderValue::from_static("!!!"));
        assert_eq!(
            status_in(&headers),
            Some((Code::NotFound, "key a does not exist".to_string()))
        );
    }

    #[test]
    fn refusals_are_unavailable() {
        let trailers = unavailable_trailers();
        assert_eq!(
            status_in(&trailers),
            Some((Code::Unavailable, "audit trail unavailable".to_string()))
        );
        let response = refusal::<tonic::body::Body>();
        assert_eq!(
            status_in(response.headers()),
            Some((Code::Unavailable, "audit trail unavailable".to_string()))
        );
        assert!(response.body().is_end_stream());
    }
}
