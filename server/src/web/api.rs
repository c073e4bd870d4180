//! The console's JSON API: entries (a page, one entry, or a download), the newest checkpoint,
//! inclusion proofs and chart counts. Handlers are adapters: parameters in, the same functions
//! as the gRPC handlers (`service::query`, `evidence`), JSON out.

use std::sync::Arc;

use audit_proto::pb::{self, AuditEntry};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use super::params::{Params, as_parameters};
use super::{Console, download};
use crate::error::{Error, Violation};
use crate::evidence;
use crate::service;
use crate::store::{Direction, Read, StatsQuery, Store};
use crate::validate::{self, nanos_timestamp, timestamp_nanos};

/// Most buckets one chart asks for.
const MAX_BUCKETS: i64 = 1440;
/// Most principals and methods one chart lists.
const MAX_TOP: u64 = 50;

/// `GET /api/entries`: one page of the entries matching the filter, as
/// `{"entries": [...], "nextPageToken": "..."}`; with `format=jsonl` or `format=csv` every
/// matching entry from that page on, as a download.
pub async fn entries<S: Store + Clone>(
    State(console): State<Arc<Console<S>>>,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let params = Params::parse(query.as_deref())?;
        let filter = params.filter(&["page_token", "page_size", "order", "format"])?;
        let request = pb::QueryRequest {
            filter: Some(filter),
            page_size: params
                .number("page_size")?
                .unwrap_or(0)
                .min(u64::from(u32::MAX)) as u32,
            page_token: params.get("page_token").unwrap_or("").to_string(),
            order: params.order()? as i32,
        };
        let format = params.get("format").unwrap_or("json");
        if !matches!(format, "json" | "jsonl" | "csv") {
            return Err(ApiError::invalid("format", "must be json, jsonl or csv"));
        }
        let page = service::query(&console.store, &console.limits, request.clone())
            .await
            .map_err(ApiError::parameters)?;
        Ok(match format {
            "jsonl" => {
                download::stream(console.clone(), request, page, download::Format::JsonLines)
            }
            "csv" => download::stream(console.clone(), request, page, download::Format::Csv),
            _ => {
                let entries: Vec<String> = page.entries.iter().map(entry_json).collect();
                json_response(format!(
                    "{{\"entries\":[{}],\"nextPageToken\":{}}}",
                    entries.join(","),
                    serde_json::Value::from(page.next_page_token)
                ))
            }
        })
    };
    result.await.unwrap_or_else(ApiError::into_response)
}

/// `GET /api/entries/{sequence}`: one entry, with its hashes.
pub async fn entry<S: Store + Clone>(
    State(console): State<Arc<Console<S>>>,
    Path(sequence): Path<String>,
) -> Response {
    let result = async {
        let sequence = parse_sequence(&sequence)?;
        let head = *console.store.head().borrow();
        if sequence > head {
            return Err(ApiError::status(
                StatusCode::NOT_FOUND,
                format!("no entry {sequence} is stored (the log has {head})"),
            ));
        }
        let read = Read {
            filter: pb::Filter::default(),
            direction: Direction::Ascending {
                after: sequence - 1,
            },
            through: sequence,
            limit: 1,
            max_bytes: console.limits.max_response_bytes,
        };
        let page = console.store.read(read).await.map_err(ApiError::from)?;
        match page.entries.first() {
            Some(entry) => Ok(json_response(entry_json(entry))),
            None => Err(ApiError::status(
                StatusCode::NOT_FOUND,
                format!("no entry {sequence} is stored"),
            )),
        }
    };
    result.await.unwrap_or_else(ApiError::into_response)
}

/// `GET /api/checkpoint`: the newest signed checkpoint, the key that signs them, and the
/// committed head.
pub async fn checkpoint<S: Store + Clone>(State(console): State<Arc<Console<S>>>) -> Response {
    let head = *console.store.head().borrow();
    match evidence::get_checkpoint(&console.store, pb::GetCheckpointRequest { size: 0 }).await {
        Ok(response) => json_response(
            serde_json::json!({
                "checkpoint": response.checkpoint.as_ref().map(checkpoint_json),
                "publicKey": response.public_key,
                "head": head.to_string(),
            })
            .to_string(),
        ),
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// `GET /api/proof/{sequence}`: the inclusion proof of an entry in the newest checkpoint, with
/// that checkpoint's signed note, for the page to check itself.
pub async fn proof<S: Store + Clone>(
    State(console): State<Arc<Console<S>>>,
    Path(sequence): Path<String>,
) -> Response {
    let result = async {
        let sequence = parse_sequence(&sequence)?;
        let newest = evidence::get_checkpoint(&console.store, pb::GetCheckpointRequest { size: 0 })
            .await
            .map_err(ApiError::from)?;
        let Some(checkpoint) = newest.checkpoint else {
            return Err(ApiError::status(
                StatusCode::CONFLICT,
                "no checkpoint is signed yet; try again in a few seconds".into(),
            ));
        };
        if sequence > checkpoint.size {
            return Err(ApiError::status(
                StatusCode::CONFLICT,
                format!(
                    "entry {sequence} is not yet covered by a checkpoint (the newest covers {}); \
                     try again in a few seconds",
                    checkpoint.size
                ),
            ));
        }
        let request = pb::GetInclusionProofRequest {
            sequence,
            tree_size: checkpoint.size,
        };
        let proof = evidence::inclusion_proof(&console.store, request)
            .await
            .map_err(ApiError::from)?;
        Ok(json_response(
            serde_json::json!({
                "sequence": proof.sequence.to_string(),
                "treeSize": proof.tree_size.to_string(),
                "entryHash": hex(&proof.entry_hash),
                "hashes": proof.hashes.iter().map(|h| hex(h)).collect::<Vec<_>>(),
                "checkpoint": checkpoint_json(&checkpoint),
                "publicKey": newest.public_key,
            })
            .to_string(),
        ))
    };
    result.await.unwrap_or_else(ApiError::into_response)
}

/// `GET /api/stats`: entries per bucket (`bucket=minute|hour|day`) by outcome over the
/// filter's time range (the last hour, or day, or 30 days when it has none), and the most
/// frequent principals and methods (`top`, 10 unless given).
pub async fn stats<S: Store + Clone>(
    State(console): State<Arc<Console<S>>>,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let params = Params::parse(query.as_deref())?;
        let mut filter = params.filter(&["bucket", "top"])?;
        let (bucket_seconds, default_span) = match params.get("bucket").unwrap_or("minute") {
            "minute" => (60, 3600),
            "hour" => (3600, 86_400),
            "day" => (86_400, 30 * 86_400),
            other => {
                return Err(ApiError::invalid(
                    "bucket",
                    &format!("`{other}` is not minute, hour or day"),
                ));
            }
        };
        let top = params.number("top")?.unwrap_or(10).clamp(1, MAX_TOP) as usize;
        validate::filter(&filter, "filter", &console.limits)
            .map_err(|v| ApiError::from(as_parameters(v)))?;
        const SECOND: i64 = 1_000_000_000;
        let bucket_ns = bucket_seconds * SECOND;
        let end_ns = match filter.end_time.as_ref().and_then(timestamp_nanos) {
            Some(end) => end,
            // The end of the current bucket, so that the newest entries are counted.
            None => {
                let now = timestamp_nanos(&validate::now()).unwrap_or(0);
                now - now.rem_euclid(bucket_ns) + bucket_ns
            }
        };
        let start_ns = match filter.start_time.as_ref().and_then(timestamp_nanos) {
            Some(start) => start,
            None => end_ns - default_span * SECOND,
        };
        let buckets = (end_ns - start_ns + bucket_ns - 1) / bucket_ns;
        if buckets > MAX_BUCKETS {
            return Err(ApiError::invalid(
                "bucket",
                &format!(
                    "{buckets} buckets for this time range, more than {MAX_BUCKETS}: choose a \
                     wider bucket or a shorter range"
                ),
            ));
        }
        filter.start_time = Some(nanos_timestamp(start_ns));
        filter.end_time = Some(nanos_timestamp(end_ns));
        let query = StatsQuery {
            filter,
            start_ns,
            bucket_ns,
            through: *console.store.head().borrow(),
            top,
        };
        let stats = console.store.stats(query).await.map_err(ApiError::from)?;
        let mut rows = vec![[0u64; 3]; buckets.max(0) as usize];
        for cell in &stats.buckets {
            let column = match pb::Outcome::try_from(cell.outcome) {
                Ok(pb::Outcome::Success) => 0,
                Ok(pb::Outcome::Denied) => 1,
                _ => 2,
            };
            if let Some(row) = rows.get_mut(cell.index as usize) {
                row[column] += cell.count;
            }
        }
        let counts = |values: &[crate::store::aggregate::ValueCount]| {
            values
                .iter()
                .map(|v| serde_json::json!({"value": v.value, "count": v.count}))
                .collect::<Vec<_>>()
        };
        Ok(json_response(
            serde_json::json!({
                "bucketSeconds": bucket_seconds,
                "start": nanos_timestamp(start_ns).to_string(),
                "end": nanos_timestamp(end_ns).to_string(),
                "buckets": rows.iter().enumerate().map(|(i, [success, denied, error])| {
                    serde_json::json!({
                        "start": nanos_timestamp(start_ns + i as i64 * bucket_ns).to_string(),
                        "success": success,
                        "denied": denied,
                        "error": error,
                    })
                }).collect::<Vec<_>>(),
                "principals": counts(&stats.principals),
                "methods": counts(&stats.methods),
                "total": stats.total,
            })
            .to_string(),
        ))
    };
    result.await.unwrap_or_else(ApiError::into_response)
}

/// Anything else: 404, as JSON.
pub async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such page", &[])
}

// === output ===

/// An entry as one line of proto3 JSON, unsafe characters escaped.
pub fn entry_json(entry: &AuditEntry) -> String {
    audit_client::json::to_json(entry).unwrap_or_else(|error| {
        tracing::error!(%error, sequence = entry.sequence, "cannot write an entry as JSON");
        serde_json::json!({"sequence": entry.sequence.to_string(), "error": "not renderable"})
            .to_string()
    })
}

fn checkpoint_json(checkpoint: &pb::Checkpoint) -> serde_json::Value {
    serde_json::json!({
        "index": checkpoint.index.to_string(),
        "origin": checkpoint.origin,
        "size": checkpoint.size.to_string(),
        "rootHash": hex(&checkpoint.root_hash),
        "chainHash": hex(&checkpoint.chain_hash),
        "time": checkpoint.time.as_ref().map(ToString::to_string),
        "note": checkpoint.note,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn json_response(body: String) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error as `{"error": "...", "violations": [{"field": ..., "description": ...}]}`.
pub fn error_response(status: StatusCode, message: &str, violations: &[Violation]) -> Response {
    let violations: Vec<_> = violations
        .iter()
        .map(|v| serde_json::json!({"field": v.field, "description": v.description}))
        .collect();
    let mut response =
        json_response(serde_json::json!({"error": message, "violations": violations}).to_string());
    *response.status_mut() = status;
    response
}

fn parse_sequence(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| ApiError::invalid("sequence", "must be a whole number from 1"))
}

// === impl ApiError ===

/// Why a request failed, as the client will read it.
pub struct ApiError {
    status: StatusCode,
    message: String,
    violations: Vec<Violation>,
}

impl ApiError {
    fn invalid(field: &str, description: &str) -> Self {
        Self::from(vec![Violation::new(field, description)])
    }

    fn status(status: StatusCode, message: String) -> Self {
        Self {
            status,
            message,
            violations: Vec::new(),
        }
    }

    /// A store or validation error of a query, its violations named by query parameter.
    fn parameters(error: Error) -> Self {
        match error {
            Error::InvalidArgument(violations) => Self::from(as_parameters(violations)),
            other => Self::from(other),
        }
    }

    /// The response.
    pub fn into_response(self) -> Response {
        error_response(self.status, &self.message, &self.violations)
    }
}

impl From<Vec<Violation>> for ApiError {
    fn from(violations: Vec<Violation>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: Error::InvalidArgument(violations.clone()).to_string(),
            violations,
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = match &error {
            Error::InvalidArgument(violations) => return Self::from(violations.clone()),
            Error::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::StoreFailed(_) | Error::ReadOnly(_) | Error::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::IdConflict { .. } => StatusCode::CONFLICT,
            Error::Pruned { .. } => StatusCode::GONE,
            Error::NotConfigured(_) => StatusCode::PRECONDITION_FAILED,
            Error::Config(_) | Error::Internal(_) => {
                tracing::error!(%error, "web console request failed");
                return Self::status(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into());
            }
        };
        Self::status(status, error.to_string())
    }
}
