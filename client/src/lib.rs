//! Rust client for the audit service (`audit.v1.AuditService`).
//!
//! - [`Client`]: `record`, `record_batch`, `subscribe` (a [`Subscription`] that resumes after
//!   dropped connections), `query` (a stream that follows page tokens) and `health`.
//! - [`EntryBuilder`]: entries without assembling protobuf by hand.
//! - [`AuditLayer`]: a tower layer that audits every call of a tonic server through a
//!   background [`Recorder`] (see [`layer`]).
//! - [`json`]: proto3 JSON in both directions; [`render`]: safe one-line rendering.
//! - [`verify`]: tamper evidence: verify a whole log (running or stopped) and check receipts
//!   and checkpoints with Merkle proofs.
//!
//! Filters are the generated [`pb::Filter`]; set the fields you need and leave the rest:
//!
//! ```
//! use audit_client::pb::{Filter, Outcome};
//! let denied_billing = Filter {
//!     source: "billing-api".into(),
//!     method: "/billing.v1.Billing/*".into(),
//!     outcomes: vec![Outcome::Denied.into()],
//!     ..Default::default()
//! };
//! ```

#![forbid(unsafe_code)]

mod builder;
mod client;
mod code;
mod error;
pub mod json;
pub mod layer;
mod query;
pub mod render;
mod subscribe;
pub mod verify;

pub use audit_format::{Pattern, PatternError};
pub use audit_proto::{SERVICE_NAME, pb};
pub use builder::EntryBuilder;
pub use client::{Client, ServingStatus};
pub use code::{code_name, parse_code};
pub use error::Error;
pub use layer::{
    AuditHandle, AuditLayer, CapturePolicy, CapturePolicyError, FailureMode, Level, Recorder,
    RecorderConfig, RecorderStats, Redact, Rule,
};
pub use query::{EntryStream, QueryOptions};
pub use subscribe::{RetryPolicy, Start, Subscription};
