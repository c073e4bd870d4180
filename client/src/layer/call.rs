//! [`CallRecord`]: records a call's entry exactly once, when its status is known or when the
//! call is dropped before that.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tonic::Code;

use super::handle::AuditHandle;

/// Resolves to whether a fail-closed call's entry was stored within the deadline.
pub(crate) type Acknowledgement = Pin<Box<dyn Future<Output = bool> + Send>>;

/// The pending entry of one call.
#[derive(Debug)]
pub(crate) struct CallRecord {
    handle: AuditHandle,
    start: Instant,
    /// Fail-closed: how long the call may wait for its entry to be stored.
    deadline: Option<Duration>,
    finished: bool,
}

impl CallRecord {
    pub(crate) fn new(handle: AuditHandle, deadline: Option<Duration>) -> Self {
        CallRecord {
            handle,
            start: Instant::now(),
            deadline,
            finished: false,
        }
    }

    /// Queues the call's entry with status `code` and `message`, together with its operations.
    /// Fail-closed, returns what the response must wait for before it is released.
    pub(crate) fn finish(&mut self, code: Code, message: &str) -> Option<Acknowledgement> {
        self.finish_with(code, message, self.deadline)
    }

    /// Like [`CallRecord::finish`], but never waits, even fail-closed.
    pub(crate) fn finish_open(&mut self, code: Code, message: &str) {
        self.finish_with(code, message, None);
    }

    fn finish_with(
        &mut self,
        code: Code,
        message: &str,
        deadline: Option<Duration>,
    ) -> Option<Acknowledgement> {
        if self.finished {
            return None;
        }
        self.finished = true;
        let latency = self.start.elapsed();
        let (call, operations) = self.handle.finish();
        let entry = call
            .status_of(&tonic::Status::new(code, message))
            .latency(latency)
            .build();
        let entries = std::iter::once(entry).chain(operations).collect();
        let request_id = self.handle.request_id().to_string();
        let recorder = self.handle.recorder();
        let Some(deadline) = deadline else {
            recorder.enqueue(request_id, entries, None);
            return None;
        };
        let (ack, stored) = oneshot::channel();
        if !recorder.enqueue(request_id, entries, Some(ack)) {
            return Some(Box::pin(std::future::ready(false)));
        }
        Some(Box::pin(async move {
            matches!(tokio::time::timeout(deadline, stored).await, Ok(Ok(true)))
        }))
    }
}

impl Drop for CallRecord {
    /// A call dropped before its status was known was cancelled: by the client, or because its
    /// connection closed. Its entry is still recorded, without waiting for anything.
    fn drop(&mut self) {
        self.finish_with(
            Code::Cancelled,
            "the call ended before its status was sent",
            None,
        );
    }
}
