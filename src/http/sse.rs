//! Streamed answers over HTTP as server-sent events (contract v2). With
//! `Accept: text/event-stream` a turn is forwarded with `Forge-Stream: 1`, and so is every
//! `GET /sessions/{id}/events` (`forge.session.events` always streams; its `Last-Event-ID`
//! header is read here). The stream is relayed as it comes: each event as `id: <seq>` /
//! `event: <type>` / `data: <Event JSON>`, each heartbeat as the comment `: heartbeat`, then the
//! final `event: turn` (or `event: error`) with the reply's body as data, and the end. A request
//! refused before anything ran (its first message is the final error) answers as it would
//! without streaming: its status and JSON error body.
//!
//! No timer of the request cuts the stream while the worker's messages flow: it is given up only
//! after three heartbeats' time without any, and the turn's own timeout is the worker's to keep.

use std::convert::Infallible;

use axum::http::header::{HeaderValue, ACCEPT};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{self, Stream};

use super::forward::{
    authorization, forward_span, reply_parts, reply_response, retry_no_responders,
    NATS_CONNECT_WAIT, NATS_DOWN,
};
use super::{error_body, error_response, Sidecar};
use crate::client::{Caller, ClientError, Frame, RawReply, ReplyStream};
use crate::domain::Op;
use crate::error::Error;
use crate::telemetry::trace::TraceContext;
use crate::wire;
use tracing::Instrument;

const EVENT_STREAM: &str = "text/event-stream";

/// The header a browser's `EventSource` sends when it reconnects: the `id` of the last event
/// it got, which is that event's `seq`.
const LAST_EVENT_ID: &str = "last-event-id";

/// The `seq` a `Last-Event-ID` header names; none without the header or with an empty one (as a
/// client that got no event yet may send). Anything but a whole number is `bad_request`.
pub(super) fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let Some(value) = headers.get(LAST_EVENT_ID) else {
        return Ok(None);
    };
    let bad = || Error::bad_request("Last-Event-ID must be the seq of an event: a whole number");
    let value = value.to_str().map_err(|_| bad())?.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| bad())
}

/// Whether the request's `Accept` names `text/event-stream`.
pub(super) fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|range| range.split(';').next())
        .any(|mime| mime.trim().eq_ignore_ascii_case(EVENT_STREAM))
}

impl Sidecar {
    /// Sends `body` to `subject` asking for a streamed reply, with the caller's `Authorization`
    /// header, and answers with the stream as server-sent events (`final_kind` names the final
    /// event of a success), or with the error that refused the request before anything ran.
    pub(super) async fn stream(&self, op: Op, headers: &HeaderMap, body: Bytes) -> Response {
        let subject = op.subject();
        let final_kind = if op == Op::Run { "run" } else { "turn" };
        if !self.client.wait_connected(NATS_CONNECT_WAIT).await {
            return error_response(&Error::at_capacity(NATS_DOWN));
        }
        let span = forward_span(op, headers);
        let trace =
            span.in_scope(|| TraceContext::outgoing(TraceContext::from_http(headers).as_ref()));
        let caller = Caller::new(authorization(headers), trace.as_ref());
        let first = self.first_frame(subject, caller, body).instrument(span);
        let response = match first.await {
            Err(err) => error_response(&err),
            Ok((Frame::Reply(reply), _)) if reply.status.is_some() => reply_response(reply),
            Ok((first, rest)) => {
                let relay = Relay {
                    sidecar: self.clone(),
                    subject,
                    final_kind,
                    first: Some(first),
                    rest,
                    ended: false,
                };
                events_response(relay.events())
            }
        };
        tracing::debug!(subject, status = response.status().as_u16(), "streamed");
        response
    }

    /// Opens the stream and reads its first frame, trying again a moment later when no worker
    /// is subscribed (just after a reconnect, as [`Sidecar::forward`] does).
    pub(super) async fn first_frame(
        &self,
        subject: &'static str,
        caller: Caller<'_>,
        body: Bytes,
    ) -> Result<(Frame, ReplyStream), Error> {
        retry_no_responders(|| async {
            let stream = self
                .client
                .stream(subject, caller, body.clone(), self.stall);
            let mut stream = stream.await?;
            let frame = next_frame(&mut stream).await?;
            Ok((frame, stream))
        })
        .await
        .map_err(|err| self.stream_failure(subject, err))
    }

    /// The contract error of a stream that failed: as for a single reply, except that a time
    /// out is the stream's silence.
    pub(super) fn stream_failure(&self, subject: &str, err: ClientError) -> Error {
        match err {
            ClientError::TimedOut if self.nats_connected() => Error::timeout(format!(
                "nothing from a worker for {} s",
                self.stall.as_secs()
            )),
            err => self.failure(subject, err, self.stall),
        }
    }
}

/// The next frame of `stream`; an event that cannot be read is logged and skipped, and the end
/// without a final message is an error.
pub(super) async fn next_frame(stream: &mut ReplyStream) -> Result<Frame, ClientError> {
    loop {
        match stream.next().await {
            Some(Err(ClientError::Decode(e))) => {
                tracing::warn!(error = %e, "an event of a stream could not be read; skipped");
            }
            Some(result) => return result,
            None => {
                return Err(ClientError::Decode(
                    "the stream ended without its final message".into(),
                ))
            }
        }
    }
}

/// What is left to relay of a stream whose first frame has been read.
struct Relay {
    sidecar: Sidecar,
    subject: &'static str,
    final_kind: &'static str,
    first: Option<Frame>,
    rest: ReplyStream,
    ended: bool,
}

impl Relay {
    /// Each frame as an SSE event, as it comes, up to the final one.
    fn events(self) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
        stream::unfold(self, |mut relay| async move {
            if relay.ended {
                return None;
            }
            let frame = match relay.first.take() {
                Some(frame) => Ok(frame),
                None => next_frame(&mut relay.rest).await,
            };
            let event = match frame {
                Ok(Frame::Event(event)) => event_of(&event),
                Ok(Frame::Heartbeat) => SseEvent::default().comment("heartbeat"),
                Ok(Frame::Reply(reply)) => {
                    relay.ended = true;
                    final_event(relay.final_kind, reply)
                }
                Err(err) => {
                    relay.ended = true;
                    let err = relay.sidecar.stream_failure(relay.subject, err);
                    tracing::debug!(subject = relay.subject, error = %err, "a stream failed");
                    data_event("error", &error_body(&err))
                }
            };
            Some((Ok(event), relay))
        })
    }
}

fn event_of(event: &wire::Event) -> SseEvent {
    let data = serde_json::to_string(event).expect("an event serializes");
    SseEvent::default()
        .id(event.seq.to_string())
        .event(event.body.kind())
        .data(data)
}

/// The final message: `final_kind` with the reply, or `error` with the error body.
fn final_event(final_kind: &str, reply: RawReply) -> SseEvent {
    let (status, body) = reply_parts(reply);
    let kind = if status == StatusCode::OK {
        final_kind
    } else {
        "error"
    };
    data_event(kind, &body)
}

fn data_event(kind: &str, data: &[u8]) -> SseEvent {
    SseEvent::default()
        .event(kind)
        .data(String::from_utf8_lossy(data))
}

/// 200 `text/event-stream`, each event written out as it comes. Proxies are asked not to hold
/// it back (`X-Accel-Buffering: no`).
fn events_response(
    events: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
) -> Response {
    let mut response = Sse::new(events).into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn accept(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(ACCEPT, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn last_event_id_is_a_seq() {
        let with = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(LAST_EVENT_ID, HeaderValue::from_str(v).unwrap());
            last_event_id(&headers)
        };
        assert_eq!(last_event_id(&HeaderMap::new()).unwrap(), None);
        assert_eq!(with("").unwrap(), None);
        assert_eq!(with("2").unwrap(), Some(2));
        assert_eq!(with(" 17 ").unwrap(), Some(17));
        for bad in ["-1", "two", "2.0", "1 2"] {
            assert_eq!(with(bad).unwrap_err().kind, ErrorKind::BadRequest, "{bad}");
        }
    }

    #[test]
    fn the_accept_header_asks_for_events() {
        assert!(wanted(&accept(&["text/event-stream"])));
        assert!(wanted(&accept(&[
            "application/json, Text/Event-Stream;q=0.9"
        ])));
        assert!(wanted(&accept(&["application/json", "text/event-stream"])));
        assert!(!wanted(&accept(&["application/json"])));
        assert!(!wanted(&accept(&["*/*"])));
        assert!(!wanted(&accept(&[])));
    }

    /// The bytes an event goes out as.
    async fn text(event: SseEvent) -> String {
        let events = stream::iter([Ok::<_, Infallible>(event)]);
        let body = events_response(events).into_body();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_final_reply_is_the_turn_or_the_error() {
        let reply = |status, body: &'static [u8]| RawReply {
            status,
            body: Bytes::from_static(body),
        };
        assert_eq!(
            text(final_event("turn", reply(None, br#"{"turn":1}"#))).await,
            "event: turn\ndata: {\"turn\":1}\n\n"
        );
        assert_eq!(
            text(final_event("turn", reply(Some(409), br#"{"error":{}}"#))).await,
            "event: error\ndata: {\"error\":{}}\n\n"
        );
        let made_up = text(final_event("turn", reply(Some(504), b""))).await;
        assert!(
            made_up.starts_with("event: error\ndata: {\"error\":{\"code\":\"timeout\""),
            "{made_up}"
        );
        assert_eq!(
            text(SseEvent::default().comment("heartbeat")).await,
            ": heartbeat\n\n"
        );
    }
}
