//! `GET /api/tail`: the live tail as Server-Sent Events, bridged to a log cursor of the hub (the
//! one Subscribe uses). Each entry is an `entry` event whose `id:` is its sequence; heartbeats
//! are `heartbeat` events whose `id:` is the sequence every matching entry up to which has been
//! sent. A browser that reconnects sends the last id as `Last-Event-ID` and resumes after it:
//! no gap and no duplicate.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::response::Response;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::Console;
use super::api::{ApiError, entry_json};
use super::params::{Params, as_parameters};
use crate::error::Violation;
use crate::store::Store;
use crate::validate;
use audit_proto::pb::subscribe_response::Message;

/// How long a browser waits before reconnecting after the stream drops, in milliseconds.
const RETRY_MS: u32 = 1000;

/// Starts a tail of the entries matching the filter parameters after `Last-Event-ID`, else
/// after the `after` parameter, else from now.
pub async fn tail<S: Store + Clone>(
    State(console): State<Arc<Console<S>>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    match start(&console, query.as_deref(), &headers) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn start<S: Store + Clone>(
    console: &Console<S>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(query)?;
    let filter = params.filter(&["after"])?;
    validate::filter(&filter, "filter", &console.limits).map_err(as_parameters)?;
    let resume = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    vec![Violation::new(
                        "Last-Event-ID",
                        "not a sequence sent by this tail",
                    )]
                })?,
        ),
        None => params.number("after")?,
    };
    // Read the head before subscribing: every entry committed later is above it.
    let after = resume.unwrap_or_else(|| *console.store.head().borrow());
    let messages = console
        .hub
        .subscribe(filter, after)
        .map_err(ApiError::from)?;
    let opening = futures::stream::once(async move {
        Ok::<_, Infallible>(Bytes::from(format!("retry: {RETRY_MS}\n\n")))
    });
    // A failed read ends the stream after one `failure` event saying why; the browser then
    // reconnects from its last event id.
    let mut failed = false;
    let events = messages
        .take_while(move |message| {
            let go_on = !failed;
            failed |= message.is_err();
            futures::future::ready(go_on)
        })
        .filter_map(|message| {
            futures::future::ready(match message {
                Ok(message) => match message.message {
                    Some(Message::Entry(entry)) => Some(format!(
                        "id: {}\nevent: entry\ndata: {}\n\n",
                        entry.sequence,
                        entry_json(&entry)
                    )),
                    Some(Message::Heartbeat(beat)) => Some(format!(
                        "id: {0}\nevent: heartbeat\ndata: {{\"sequence\":\"{0}\"}}\n\n",
                        beat.sequence
                    )),
                    None => None,
                },
                Err(status) => Some(format!(
                    "event: failure\ndata: {}\n\n",
                    serde_json::json!({"error": status.message()})
                )),
            })
        })
        .map(|event| Ok::<_, Infallible>(Bytes::from(event)));
    let mut response = Response::new(Body::from_stream(opening.chain(events)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    // Proxies must pass events on as they come.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
