//! The trace id a service gave with a message (`Trace-Id` or W3C `traceparent` header on a NATS
//! publish), carried with the work that message causes on this node (a task-local, set by the
//! NATS ingest around one message) and onto the fan-out publish that takes the event to the other
//! nodes (header `Trace-Id`), whose logs then show it too.

use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static TRACE_ID: Arc<str>;
}

/// Runs `work` with `trace_id` as the current trace id (none: runs it as is).
pub async fn with_trace_id<F: Future>(trace_id: Option<Arc<str>>, work: F) -> F::Output {
    match trace_id {
        Some(trace_id) => TRACE_ID.scope(trace_id, work).await,
        None => work.await,
    }
}

/// The trace id of the message being handled, if its sender gave one.
pub fn current() -> Option<Arc<str>> {
    TRACE_ID.try_with(Arc::clone).ok()
}

/// The header a trace id travels in between nodes.
pub const TRACE_ID_HEADER: &str = "Trace-Id";
