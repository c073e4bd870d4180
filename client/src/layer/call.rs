//! [`CallRecord`]: records a call's entry exactly once, when its status is known or when the
//! call is dropped before that, at the level its capture rule decides.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tonic::Code;

use super::FailureMode;
use super::capture::{Capture, Side};
use super::handle::AuditHandle;
use super::policy::{CapturePolicy, Level};

/// Resolves to whether a fail-closed call's entry was stored within the deadline.
pub(crate) type Acknowledgement = Pin<Box<dyn Future<Output = bool> + Send>>;

/// The capture rules that may still decide a call, known before it runs.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) policy: Arc<CapturePolicy>,
    pub(crate) candidates: Vec<usize>,
    /// The layer's failure mode, for rules that set none.
    pub(crate) default: FailureMode,
}

impl Plan {
    /// The level and failure mode of the call if it ends with `code`.
    pub(crate) fn decide(&self, code: Code) -> (Level, FailureMode) {
        self.policy
            .decide(&self.candidates, Some(code as i32), self.default)
    }

    /// The highest level the call may end with.
    pub(crate) fn max_level(&self) -> Level {
        self.policy
            .outcomes(&self.candidates, self.default)
            .map(|(level, _)| level)
            .max()
            .unwrap_or(Level::None)
    }

    /// Whether the call may end under a fail-closed rule that records it.
    pub(crate) fn may_fail_closed(&self) -> bool {
        self.policy
            .outcomes(&self.candidates, self.default)
            .any(|(level, mode)| level != Level::None && mode != FailureMode::Open)
    }
}

/// The pending entry of one call.
#[derive(Debug)]
pub(crate) struct CallRecord {
    handle: AuditHandle,
    start: Instant,
    plan: Plan,
    capture: Option<Capture>,
    finished: bool,
}

impl CallRecord {
    pub(crate) fn new(handle: AuditHandle, plan: Plan, capture: Option<Capture>) -> Self {
        CallRecord {
            handle,
            start: Instant::now(),
            plan,
            capture,
            finished: false,
        }
    }

    /// Passes response bytes to the capture, if the call captures its response.
    pub(crate) fn response_data(&self, data: &[u8]) {
        if let Some(capture) = &self.capture {
            capture.feed(Side::Response, data);
        }
    }

    /// Queues the call's entry with status `code` and `message`, together with its operations.
    /// Fail-closed, returns what the response must wait for before it is released.
    pub(crate) fn finish(&mut self, code: Code, message: &str) -> Option<Acknowledgement> {
        self.finish_with(code, message, true)
    }

    /// Like [`CallRecord::finish`], but never waits, even fail-closed.
    pub(crate) fn finish_open(&mut self, code: Code, message: &str) {
        self.finish_with(code, message, false);
    }

    fn finish_with(&mut self, code: Code, message: &str, wait: bool) -> Option<Acknowledgement> {
        if self.finished {
            return None;
        }
        self.finished = true;
        let latency = self.start.elapsed();
        let (call, operations) = self.handle.finish();
        let (level, mode) = self.plan.decide(code);
        if level == Level::None {
            self.handle.discard();
            return None;
        }
        let mut entry = call
            .status_of(&tonic::Status::new(code, message))
            .latency(latency)
            .build();
        if let Some(capture) = &self.capture
            && level >= Level::Request
        {
            let details = entry.details.get_or_insert_with(Default::default);
            capture.describe(Side::Request, details);
            if level == Level::RequestResponse {
                capture.describe(Side::Response, details);
            }
        }
        let mut entries: Vec<_> = std::iter::once(entry).chain(operations).collect();
        for entry in &mut entries {
            self.handle.redact(entry);
        }
        let request_id = self.handle.request_id().to_string();
        let recorder = self.handle.recorder();
        let deadline = match mode {
            FailureMode::Closed { deadline } if wait => deadline,
            _ => {
                recorder.enqueue(request_id, entries, None);
                return None;
            }
        };
        Some(acknowledgement(recorder, request_id, entries, deadline))
    }
}

fn acknowledgement(
    recorder: &crate::Recorder,
    request_id: String,
    entries: Vec<audit_proto::pb::AuditEntry>,
    deadline: Duration,
) -> Acknowledgement {
    let (ack, stored) = oneshot::channel();
    if !recorder.enqueue(request_id, entries, Some(ack)) {
        return Box::pin(std::future::ready(false));
    }
    Box::pin(async move { matches!(tokio::time::timeout(deadline, stored).await, Ok(Ok(true))) })
}

impl Drop for CallRecord {
    /// A call dropped before its status was known was cancelled: by the client, or because its
    /// connection closed. Its entry is still recorded, without waiting for anything.
    fn drop(&mut self) {
        self.finish_with(
            Code::Cancelled,
            "the call ended before its status was sent",
            false,
        );
    }
}
