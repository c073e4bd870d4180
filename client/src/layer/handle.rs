//! [`AuditHandle`]: what a handler uses to add to the audit trail of its own call.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use audit_proto::pb;

use super::RedactHook;
use crate::{EntryBuilder, Recorder};

/// The audit trail of one call in progress, put in the request's extensions by
/// [`AuditLayer`](crate::AuditLayer). A handler uses it to add one entry per operation of a
/// batch call (all sharing the call's `request_id`, as in SPIRE's audit log) and to describe the
/// call's own entry (event, resource, the principal once authenticated).
///
/// The call's entry and its operations are delivered together, in one atomic `RecordBatch`,
/// when the call ends.
///
/// ```
/// use audit_client::{AuditHandle, pb::Outcome};
///
/// fn delete_keys(request: &tonic::Request<Vec<String>>) {
///     let Some(audit) = AuditHandle::of(request) else { return }; // not behind an AuditLayer
///     audit.annotate(|entry| entry.event("KEYS_DELETED").category("KEY_MANAGEMENT"));
///     for name in request.get_ref() {
///         audit.record(
///             audit.operation()
///                 .event("KEY_DELETED")
///                 .resource(format!("keys/{name}"))
///                 .outcome(Outcome::Success),
///         );
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct AuditHandle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The facts of the call (source, method, request id, caller, time): the start of every
    /// entry of this call.
    template: pb::AuditEntry,
    recorder: Recorder,
    redactor: Option<RedactHook>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The call's own entry, before its status and latency are known.
    call: EntryBuilder,
    operations: Vec<pb::AuditEntry>,
    /// Set once the call's entry is queued; later operations are queued on their own.
    finished: bool,
    /// Set when the call's capture rule is `none`: later operations are not recorded either.
    discarded: bool,
}

impl AuditHandle {
    pub(crate) fn new(
        template: pb::AuditEntry,
        recorder: Recorder,
        redactor: Option<RedactHook>,
    ) -> Self {
        let call = EntryBuilder::from(template.clone());
        AuditHandle {
            shared: Arc::new(Shared {
                template,
                recorder,
                redactor,
                state: Mutex::new(State {
                    call,
                    ..Default::default()
                }),
            }),
        }
    }

    /// The handle of a request served behind an [`AuditLayer`](crate::AuditLayer).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&AuditHandle> {
        request.extensions().get()
    }

    /// The handle in an HTTP request's extensions (for tower middleware inside the layer).
    pub fn from_extensions(extensions: &http::Extensions) -> Option<&AuditHandle> {
        extensions.get()
    }

    /// The call's `request_id`: the caller's `x-request-id`, or the one generated for the call
    /// (returned to the caller in the `x-request-id` response header).
    pub fn request_id(&self) -> &str {
        &self.shared.template.request_id
    }

    /// The call's method, `/package.Service/Method`.
    pub fn method(&self) -> &str {
        &self.shared.template.method
    }

    /// The caller as the layer saw it: peer identity, principal and user agent.
    pub fn caller(&self) -> Option<&pb::Caller> {
        self.shared.template.caller.as_ref()
    }

    /// A new operation entry with the call's facts filled in (source, method, request id,
    /// caller, time now); add what the operation did and pass it to [`AuditHandle::record`].
    pub fn operation(&self) -> EntryBuilder {
        EntryBuilder::from(self.shared.template.clone()).time(SystemTime::now())
    }

    /// Adds one operation's entry. Its `request_id` becomes the call's; an empty `source`,
    /// `method` or `caller` is taken from the call. Recorded with the call's own entry when
    /// the call ends (or at once, if it has already ended).
    pub fn record(&self, entry: impl Into<pb::AuditEntry>) {
        let mut entry = entry.into();
        let template = &self.shared.template;
        if entry.method.is_empty() {
            entry.method.clone_from(&template.method);
        }
        if entry.caller.is_none() {
            entry.caller.clone_from(&template.caller);
        }
        entry.request_id.clone_from(&template.request_id);
        let mut state = self.state();
        if state.discarded {
            return;
        }
        if state.finished {
            drop(state);
            self.redact(&mut entry);
            self.shared
                .recorder
                .record(template.request_id.clone(), [entry]);
        } else {
            state.operations.push(entry);
        }
    }

    /// Changes the call's own entry, for example to name the event and resource, or the
    /// principal the handler authenticated. The layer sets status, outcome and latency when the
    /// call ends, over whatever is set here.
    pub fn annotate(&self, change: impl FnOnce(EntryBuilder) -> EntryBuilder) {
        let mut state = self.state();
        let call = std::mem::take(&mut state.call);
        state.call = change(call);
    }

    /// Takes the call's entry and the operations recorded so far; later operations are
    /// queued on their own.
    pub(crate) fn finish(&self) -> (EntryBuilder, Vec<pb::AuditEntry>) {
        let mut state = self.state();
        state.finished = true;
        (
            std::mem::take(&mut state.call),
            std::mem::take(&mut state.operations),
        )
    }

    /// Drops the operations recorded from now on (the call's level is `none`).
    pub(crate) fn discard(&self) {
        self.state().discarded = true;
    }

    /// Applies the layer's redaction hook to `entry`.
    pub(crate) fn redact(&self, entry: &mut pb::AuditEntry) {
        if let Some(redactor) = &self.shared.redactor {
            redactor.0.redact(entry);
        }
    }

    pub(crate) fn recorder(&self) -> &Recorder {
        &self.shared.recorder
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain data, valid even if a panic interrupted another holder.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
