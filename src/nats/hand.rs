//! Passing a request on to the worker that serves it: to one of that worker's own subjects,
//! as a request it acknowledges at once; it then answers the caller.

use std::time::Duration;

use async_nats::{Message, RequestErrorKind, Subject};

use crate::domain::Handed;
use crate::telemetry::trace::TraceContext;
use crate::wire;

/// How long a worker waits for another to acknowledge a request passed on before it takes
/// the request (and a turn's session) itself. A worker that died has no subscription left:
/// the server answers "no responders" at once. This is for one still connected that does not
/// answer, and it must outlast a busy machine's pauses: an owner that acknowledges late has
/// been passed the turn, and runs it as well.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Passes `message` on to `target`, a subject of `worker_id`'s own, with the caller's headers
/// and its reply subject in `Forge-Reply-To`, as a request that worker acknowledges at once. Its
/// `traceparent` names the request's span here, so the trace goes on there.
pub(super) async fn hand_over(
    client: &async_nats::Client,
    message: &Message,
    reply: &Subject,
    target: String,
    worker_id: &str,
) -> Handed {
    let mut headers = message.headers.clone().unwrap_or_default();
    headers.insert(wire::REPLY_TO_HEADER, reply.as_str());
    let received = TraceContext::from_nats(message.headers.as_ref());
    if let Some(trace) = TraceContext::outgoing(received.as_ref()) {
        trace.write_nats(&mut headers);
    }
    let sent = client.request_with_headers(target, headers, message.payload.clone());
    match tokio::time::timeout(ACK_TIMEOUT, sent).await {
        Ok(Ok(_)) => Handed::Taken,
        Err(_) => Handed::Gone,
        Ok(Err(e))
            if matches!(
                e.kind(),
                RequestErrorKind::NoResponders | RequestErrorKind::TimedOut
            ) =>
        {
            Handed::Gone
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, worker = %worker_id, "passing a request on");
            Handed::Failed
        }
    }
}
