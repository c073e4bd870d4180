//! Downloads of search results: every matching entry, as JSON lines or CSV, streamed page by
//! page (the same pages as the API's), at most [`MAX_DOWNLOAD_ENTRIES`].

use std::sync::Arc;

use audit_proto::pb::{self, AuditEntry};
use axum::body::{Body, Bytes};
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};

use super::Console;
use super::api::entry_json;
use crate::service;
use crate::store::Store;

/// Most entries in one download; narrow the filter (a time range) for more.
pub const MAX_DOWNLOAD_ENTRIES: usize = 100_000;

/// What a download holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One proto3 JSON entry a line.
    JsonLines,
    /// A header row, then one row an entry.
    Csv,
}

/// The download of `first` and the pages after it. A read that fails midway aborts the body,
/// so the browser reports a failed download rather than keeping a short file.
pub fn stream<S: Store + Clone>(
    console: Arc<Console<S>>,
    mut request: pb::QueryRequest,
    first: pb::QueryResponse,
    format: Format,
) -> Response {
    let body = async_stream::stream! {
        if format == Format::Csv {
            yield Ok(Bytes::from_static(CSV_HEADER.as_bytes()));
        }
        let mut page = first;
        let mut sent = 0;
        loop {
            sent += page.entries.len();
            yield Ok::<_, std::io::Error>(Bytes::from(render(&page.entries, format)));
            if page.next_page_token.is_empty() || sent >= MAX_DOWNLOAD_ENTRIES {
                break;
            }
            request.page_token = std::mem::take(&mut page.next_page_token);
            match service::query(&console.store, &console.limits, request.clone()).await {
                Ok(next) => page = next,
                Err(error) => {
                    tracing::warn!(%error, "web console: a download failed midway");
                    yield Err(std::io::Error::other("read failed"));
                    break;
                }
            }
        }
    };
    let content_type = match format {
        Format::JsonLines => "application/x-ndjson",
        Format::Csv => "text/csv; charset=utf-8",
    };
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static(match format {
            Format::JsonLines => "attachment; filename=\"audit-entries.jsonl\"",
            Format::Csv => "attachment; filename=\"audit-entries.csv\"",
        }),
    );
    response
}

fn render(entries: &[AuditEntry], format: Format) -> String {
    match format {
        Format::JsonLines => entries.iter().map(|e| entry_json(e) + "\n").collect(),
        Format::Csv => entries.iter().map(csv_row).collect(),
    }
}

/// The columns of `audit tail`, then the fields a spreadsheet needs to find the entry again.
const CSV_HEADER: &str =
    "time,sequence,outcome,status,caller,method,resource,source,event,principal,request_id,id\r\n";

/// An entry as a CSV row: every value quoted, unsafe characters escaped as `audit tail` escapes
/// them, and a value a spreadsheet would run as a formula prefixed with `'`.
fn csv_row(entry: &AuditEntry) -> String {
    let outcome = audit_format::field::outcome_name(entry.outcome).unwrap_or("");
    let status = audit_format::field::status_name(entry.status_code).unwrap_or("");
    let principal = entry.caller.as_ref().map_or("", |c| c.principal.as_str());
    let values = [
        entry
            .time
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        entry.sequence.to_string(),
        outcome.to_string(),
        status.to_string(),
        caller_text(entry),
        entry.method.clone(),
        entry.resource.clone(),
        entry.source.clone(),
        entry.event.clone(),
        principal.to_string(),
        entry.request_id.clone(),
        entry.id.clone(),
    ];
    let cells: Vec<String> = values.iter().map(|v| csv_cell(v)).collect();
    cells.join(",") + "\r\n"
}

fn csv_cell(value: &str) -> String {
    let escaped = audit_format::escape::escape(value);
    let formula = escaped.starts_with(['=', '+', '-', '@']);
    format!(
        "\"{}{}\"",
        if formula { "'" } else { "" },
        escaped.replace('"', "\"\"")
    )
}

/// Who made the audited call, as `audit tail` shows it: the principal, else the SPIFFE ID, the
/// address or the uid.
fn caller_text(entry: &AuditEntry) -> String {
    let Some(caller) = &entry.caller else {
        return String::new();
    };
    if !caller.principal.is_empty() {
        return caller.principal.clone();
    }
    match &caller.peer {
        Some(pb::caller::Peer::Network(network)) if !network.spiffe_id.is_empty() => {
            network.spiffe_id.clone()
        }
        Some(pb::caller::Peer::Network(network)) => network.address.clone(),
        Some(pb::caller::Peer::Unix(unix)) => format!("uid:{}", unix.uid),
        None => String::new(),
    }
}
