//! Capture of a call's messages for the `request` and `request_response` levels: the gRPC
//! frames of the request body (through [`CaptureBody`]) and of the response body are parsed as
//! they pass, the first message of each direction is kept (at most the byte limit of it), and
//! at the end of the call it becomes JSON in `details`.
//!
//! What lands in `details.request` / `details.response`:
//! - the message as proto3 JSON, decoded with the method's descriptor;
//! - `{"truncated": true, "message_bytes": N, "limit": L}` when that JSON (or the message's
//!   own encoding) is over the limit, so the entry holds valid JSON, never a cut one;
//! - `{"message_bytes": N, "base64": "..."}` when no descriptor knows the method (or the
//!   message does not decode with it), the same marker when that is over the limit;
//! - `{"compressed": true, "message_bytes": N}` for a compressed message.
//!
//! Streams: only the first message of each direction is captured; when a direction carried
//! other than exactly one message, `details.request_messages` / `details.response_messages`
//! count them. Messages still in flight when the status is known are not counted.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use base64::Engine as _;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use prost_types::value::Kind;

/// The messages of one call, shared by the request body, the response body and the call's
/// record.
#[derive(Debug, Clone)]
pub(crate) struct Capture {
    shared: Arc<Mutex<Directions>>,
}

#[derive(Debug)]
struct Directions {
    limit: usize,
    request: Frames,
    response: Frames,
    input: Option<MessageDescriptor>,
    output: Option<MessageDescriptor>,
}

/// Which side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Request,
    Response,
}

impl Capture {
    /// Captures up to `limit` bytes of the first message of each side the call captures;
    /// `messages` are the method's input and output descriptors, when known.
    pub(crate) fn new(
        limit: usize,
        response: bool,
        messages: Option<(MessageDescriptor, MessageDescriptor)>,
    ) -> Self {
        let (input, output) = messages.unzip();
        Capture {
            shared: Arc::new(Mutex::new(Directions {
                limit,
                request: Frames::new(true),
                response: Frames::new(response),
                input,
                output,
            })),
        }
    }

    /// Feeds bytes of one side's body.
    pub(crate) fn feed(&self, side: Side, data: &[u8]) {
        let mut directions = self.lock();
        let limit = directions.limit;
        match side {
            Side::Request => directions.request.feed(data, limit),
            Side::Response => directions.response.feed(data, limit),
        }
    }

    /// Adds what was captured of `side` to `details` (`request` / `response`, and the
    /// message count when it is not one).
    pub(crate) fn describe(&self, side: Side, details: &mut prost_types::Struct) {
        let directions = self.lock();
        let (frames, descriptor, name) = match side {
            Side::Request => (&directions.request, &directions.input, "request"),
            Side::Response => (&directions.response, &directions.output, "response"),
        };
        if !frames.enabled {
            return;
        }
        if let Some(value) = frames.first.render(descriptor.as_ref(), directions.limit) {
            details.fields.insert(name.to_string(), value);
        }
        if frames.messages != 1 {
            details
                .fields
                .insert(format!("{name}_messages"), number(frames.messages as f64));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Directions> {
        // Plain data, valid even if a panic interrupted another holder.
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

// === impl Frames ===

/// A reader of gRPC length-prefixed messages (a flag byte, a 4-byte big-endian length, the
/// message) that keeps the first one.
#[derive(Debug)]
struct Frames {
    enabled: bool,
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
    messages: u64,
    first: First,
}

#[derive(Debug)]
enum First {
    /// No message yet.
    None,
    /// The first message is arriving (kept only while within the limit).
    Partial {
        compressed: bool,
        size: usize,
        bytes: Option<Vec<u8>>,
    },
    /// The first message, whole (`bytes` is `None` when over the limit).
    Complete {
        compressed: bool,
        size: usize,
        bytes: Option<Vec<u8>>,
    },
}

impl Frames {
    fn new(enabled: bool) -> Self {
        Frames {
            enabled,
            header: [0; 5],
            header_len: 0,
            remaining: 0,
            messages: 0,
            first: First::None,
        }
    }

    fn feed(&mut self, mut data: &[u8], limit: usize) {
        if !self.enabled {
            return;
        }
        while !data.is_empty() {
            if self.remaining == 0 && self.header_len < 5 {
                let take = (5 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len == 5 {
                    self.start_message(limit);
                }
                continue;
            }
            let take = self.remaining.min(data.len());
            if let First::Partial {
                bytes: Some(bytes), ..
            } = &mut self.first
            {
                bytes.extend_from_slice(&data[..take]);
            }
            self.remaining -= take;
            data = &data[take..];
            if self.remaining == 0 {
                self.end_message();
            }
        }
    }

    fn start_message(&mut self, limit: usize) {
        let compressed = self.header[0] != 0;
        let size = u32::from_be_bytes([
            self.header[1],
            self.header[2],
            self.header[3],
            self.header[4],
        ]) as usize;
        self.remaining = size;
        if matches!(self.first, First::None) {
            // A message whose encoding is over the limit cannot become JSON under it.
            let bytes = (size <= limit).then(|| Vec::with_capacity(size));
            self.first = First::Partial {
                compressed,
                size,
                bytes,
            };
        }
        if size == 0 {
            self.end_message();
        }
    }

    fn end_message(&mut self) {
        self.header_len = 0;
        self.messages += 1;
        if let First::Partial {
            compressed,
            size,
            bytes,
        } = &mut self.first
        {
            self.first = First::Complete {
                compressed: *compressed,
                size: *size,
                bytes: bytes.take(),
            };
        }
    }
}

impl First {
    fn render(
        &self,
        descriptor: Option<&MessageDescriptor>,
        limit: usize,
    ) -> Option<prost_types::Value> {
        let First::Complete {
            compressed,
            size,
            bytes,
        } = self
        else {
            return None;
        };
        let size = *size;
        if *compressed {
            return Some(object([
                ("compressed", boolean(true)),
                ("message_bytes", number(size as f64)),
            ]));
        }
        let Some(bytes) = bytes else {
            return Some(truncated(size, limit));
        };
        let decoded = descriptor.and_then(|descriptor| {
            let message = DynamicMessage::decode(descriptor.clone(), bytes.as_slice()).ok()?;
            serde_json::to_value(&message).ok()
        });
        let value = match decoded {
            Some(json) => {
                let text_len = serde_json::to_vec(&json).map_or(usize::MAX, |text| text.len());
                if text_len > limit {
                    return Some(truncated(size, limit));
                }
                from_json(json)
            }
            None => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                if encoded.len() > limit {
                    return Some(truncated(size, limit));
                }
                object([
                    ("message_bytes", number(size as f64)),
                    ("base64", text(encoded)),
                ])
            }
        };
        Some(value)
    }
}

fn truncated(size: usize, limit: usize) -> prost_types::Value {
    object([
        ("truncated", boolean(true)),
        ("message_bytes", number(size as f64)),
        ("limit", number(limit as f64)),
    ])
}

// === JSON as protobuf values ===

fn object<const N: usize>(fields: [(&str, prost_types::Value); N]) -> prost_types::Value {
    let fields = fields
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    kind(Kind::StructValue(prost_types::Struct { fields }))
}

fn kind(kind: Kind) -> prost_types::Value {
    prost_types::Value { kind: Some(kind) }
}

fn number(n: f64) -> prost_types::Value {
    kind(Kind::NumberValue(n))
}

fn boolean(b: bool) -> prost_types::Value {
    kind(Kind::BoolValue(b))
}

fn text(s: String) -> prost_types::Value {
    kind(Kind::StringValue(s))
}

/// A JSON value as a `google.protobuf.Value` (numbers become doubles; proto3 JSON already
/// writes 64-bit integers as strings).
fn from_json(json: serde_json::Value) -> prost_types::Value {
    use serde_json::Value as Json;
    match json {
        Json::Null => kind(Kind::NullValue(0)),
        Json::Bool(b) => boolean(b),
        Json::Number(n) => number(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => text(s),
        Json::Array(items) => kind(Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(from_json).collect(),
        })),
        Json::Object(fields) => kind(Kind::StructValue(prost_types::Struct {
            fields: fields
                .into_iter()
                .map(|(name, value)| (name, from_json(value)))
                .collect(),
        })),
    }
}

// === impl CaptureBody ===

pin_project! {
    /// The request body as the audited service sees it: the caller's body, whose gRPC
    /// messages are captured on the way when the call's capture rule asks for them.
    pub struct CaptureBody<B> {
        #[pin]
        inner: B,
        capture: Option<Capture>,
    }
}

impl<B> CaptureBody<B> {
    pub(crate) fn new(inner: B, capture: Option<Capture>) -> Self {
        CaptureBody { inner, capture }
    }
}

impl<B> Body for CaptureBody<B>
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
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let (Some(capture), Some(Ok(frame))) = (this.capture.as_ref(), frame.as_ref())
            && let Some(data) = frame.data_ref()
        {
            capture.feed(Side::Request, data.as_ref());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> std::fmt::Debug for CaptureBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureBody")
            .field("capturing", &self.capture.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn details(capture: &Capture, side: Side) -> serde_json::Value {
        let mut details = prost_types::Struct::default();
        capture.describe(side, &mut details);
        audit_format::json::struct_to_json(&details)
    }

    #[test]
    fn frames_split_anywhere_give_the_first_message_and_the_count() {
        let mut stream = frame(b"hello");
        stream.extend(frame(b""));
        stream.extend(frame(b"world!"));
        for split in 0..stream.len() {
            let capture = Capture::new(64, false, None);
            capture.feed(Side::Request, &stream[..split]);
            capture.feed(Side::Request, &stream[split..]);
            assert_eq!(
                details(&capture, Side::Request),
                serde_json::json!({
                    "request": {"message_bytes": 5.0, "base64": "aGVsbG8="},
                    "request_messages": 3.0,
                }),
                "split at {split}"
            );
        }
    }

    #[test]
    fn over_the_limit_is_a_marker() {
        let capture = Capture::new(4, false, None);
        capture.feed(Side::Request, &frame(b"hello"));
        assert_eq!(
            details(&capture, Side::Request),
            serde_json::json!({
                "request": {"truncated": true, "message_bytes": 5.0, "limit": 4.0},
            })
        );
        // Within the limit as bytes, over it as base64.
        let capture = Capture::new(5, false, None);
        capture.feed(Side::Request, &frame(b"hello"));
        assert_eq!(
            details(&capture, Side::Request)["request"]["truncated"],
            true
        );
    }

    #[test]
    fn compressed_and_missing_messages() {
        let capture = Capture::new(64, false, None);
        let mut compressed = frame(b"zz");
        compressed[0] = 1;
        capture.feed(Side::Request, &compressed);
        assert_eq!(
            details(&capture, Side::Request)["request"],
            serde_json::json!({"compressed": true, "message_bytes": 2.0})
        );
        // The response side was not asked for: nothing.
        capture.feed(Side::Response, &frame(b"x"));
        assert_eq!(details(&capture, Side::Response), serde_json::json!({}));
        // Asked for, but the call ended before any message.
        let capture = Capture::new(64, true, None);
        assert_eq!(
            details(&capture, Side::Response),
            serde_json::json!({"response_messages": 0.0})
        );
    }
}
