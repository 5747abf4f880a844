//! The forward-to-NATS layer of the sidecar: a request's body sent as the operation's NATS
//! request with the caller's `Authorization` header, and the worker's reply given back with the
//! status of its error kind.

use std::future::Future;
use std::time::Duration;

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;

use super::{error_body, error_response, json_response, retry_after, Sidecar};
use crate::client::{Caller, ClientError, RawReply};
use crate::domain::Op;
use crate::error::{Error, ErrorKind};
use crate::telemetry::trace::TraceContext;
use crate::wire;
use tracing::Instrument;

/// Waits before trying again after "no responders": just after a reconnect the workers'
/// subscriptions may not be back yet.
pub(super) const NO_RESPONDERS_RETRIES: [Duration; 2] =
    [Duration::from_millis(50), Duration::from_millis(200)];
/// How long a request waits for NATS when the sidecar is not connected (just started, or
/// reconnecting) before it answers that NATS is not reachable.
pub(super) const NATS_CONNECT_WAIT: Duration = Duration::from_secs(3);

pub(super) const NATS_DOWN: &str = "NATS is not reachable";

impl Sidecar {
    pub(super) fn nats_connected(&self) -> bool {
        self.client.connected()
    }

    /// Sends `body` as a request of `op` with the caller's `Authorization` header and trace,
    /// and maps the reply.
    pub(super) async fn forward(
        &self,
        op: Op,
        headers: &HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Response {
        let span = forward_span(op, headers);
        self.forward_in(op, headers, body, timeout)
            .instrument(span)
            .await
    }

    async fn forward_in(
        &self,
        op: Op,
        headers: &HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Response {
        let subject = op.subject();
        let trace = TraceContext::outgoing(TraceContext::from_http(headers).as_ref());
        let caller = Caller::new(authorization(headers), trace.as_ref());
        let response = match self.request(op, caller, body, timeout).await {
            Ok(reply) => reply_response(reply),
            Err(err) => error_response(&err),
        };
        tracing::debug!(subject, status = response.status().as_u16(), "forwarded");
        response
    }

    /// Sends `body` as a request of `op` for `caller` and returns the worker's reply as it came:
    /// what every route and the console send through. A request that arrives a moment after
    /// start or during a reconnect waits for NATS rather than failing at once, and "no
    /// responders" is tried again (see [`retry_no_responders`]).
    pub(super) async fn request(
        &self,
        op: Op,
        caller: Caller<'_>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<RawReply, Error> {
        let subject = op.subject();
        if !self.client.wait_connected(NATS_CONNECT_WAIT).await {
            return Err(Error::at_capacity(NATS_DOWN));
        }
        retry_no_responders(|| self.client.forward(subject, caller, body.clone(), timeout))
            .await
            .map_err(|err| self.failure(subject, err, timeout))
    }

    pub(super) fn failure(&self, subject: &str, err: ClientError, timeout: Duration) -> Error {
        match err {
            ClientError::Api(e) => e,
            ClientError::NoResponders => Error::at_capacity("no worker available"),
            ClientError::TimedOut if !self.nats_connected() => Error::at_capacity(NATS_DOWN),
            ClientError::TimedOut => Error::timeout(format!(
                "no reply from a worker within {} s",
                timeout.as_secs()
            )),
            ClientError::Transport(e) => {
                tracing::warn!(subject, error = %e, "NATS request failed");
                Error::at_capacity(NATS_DOWN)
            }
            ClientError::Decode(e) => Error::internal(e),
        }
    }
}

/// A worker's reply as HTTP: its body as it is, with 200 or the status of its error (and the
/// `Retry-After` of a `quota_exceeded` that says when).
pub(super) fn reply_response(reply: RawReply) -> Response {
    let (status, body) = reply_parts(reply);
    let retry = if status == StatusCode::TOO_MANY_REQUESTS {
        serde_json::from_slice::<wire::ErrorBody>(&body)
            .ok()
            .and_then(|b| b.error.retry_after_secs)
    } else {
        None
    };
    retry_after(json_response(status, body), retry)
}

/// A worker's reply's HTTP status and body: 200 and the body as it is, or the status of its
/// error (500 for one that is not an error status) and the error body (made from the status
/// when the reply has none).
pub(super) fn reply_parts(reply: RawReply) -> (StatusCode, Bytes) {
    let Some(code) = reply.status else {
        return (StatusCode::OK, reply.body);
    };
    if reply.body.is_empty() {
        let kind = ErrorKind::from_status(code).unwrap_or(ErrorKind::Internal);
        let err = Error::new(kind, format!("the worker answered {code}"));
        let status = StatusCode::from_u16(kind.status()).expect("the table holds valid statuses");
        return (status, error_body(&err).into());
    }
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, reply.body)
}

/// The span of a request the sidecar forwards: exported, the HTTP server's span, in the trace
/// of the caller's `traceparent` if it sent one.
pub(super) fn forward_span(op: Op, headers: &HeaderMap) -> tracing::Span {
    if !crate::telemetry::trace::exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "forward",
        otel.name = %format!("HTTP {}", op.subject()),
        otel.kind = "server",
        op = op.name(),
    );
    TraceContext::continue_in(TraceContext::from_http(headers).as_ref(), &span);
    span
}

/// The caller's `Authorization` header, passed on as it came.
pub(super) fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// Sends with `send`, again after a pause while NATS answers "no responders" (just after a
/// reconnect the workers' subscriptions may not be back yet), at most
/// [`NO_RESPONDERS_RETRIES`] more times.
pub(super) async fn retry_no_responders<T, F, Fut>(mut send: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut retries = NO_RESPONDERS_RETRIES.iter();
    loop {
        match send().await {
            Err(ClientError::NoResponders) => match retries.next() {
                Some(wait) => tokio::time::sleep(*wait).await,
                None => return Err(ClientError::NoResponders),
            },
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_keep_their_status_and_body() {
        let body = br#"{"error":{"code":"conflict","message":"closed"}}"#;
        let r = reply_response(RawReply {
            status: Some(409),
            body: Bytes::from_static(body),
        });
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let r = reply_response(RawReply {
            status: Some(200),
            body: Bytes::from_static(body),
        });
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let r = reply_response(RawReply {
            status: Some(504),
            body: Bytes::new(),
        });
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        let r = reply_response(RawReply {
            status: None,
            body: Bytes::from_static(b"{}"),
        });
        assert_eq!(r.status(), StatusCode::OK);
        let quota = br#"{"error":{"code":"quota_exceeded","message":"m","limit":"turns_per_day","retry_after_secs":42}}"#;
        let r = reply_response(RawReply {
            status: Some(429),
            body: Bytes::from_static(quota),
        });
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "42");
    }
}
