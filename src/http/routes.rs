//! One handler per route: take the path and the body, forward them as a NATS request, and give
//! back the reply's body with the status of its error kind.

use std::time::Duration;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::multipart::{self, RunForm, TurnForm};
use super::{body_too_large, error_body, error_response, json_response, sse, Sidecar};
use crate::client::{ClientError, RawReply, CONTROL_TIMEOUT, CREATE_TIMEOUT};
use crate::error::{Error, ErrorKind};
use crate::wire::{self, subject, ErrorBody};

/// Waits before trying again after "no responders": just after a reconnect the workers'
/// subscriptions may not be back yet.
pub(super) const NO_RESPONDERS_RETRIES: [Duration; 2] =
    [Duration::from_millis(50), Duration::from_millis(200)];
/// How long `/healthz` collects the workers' answers to `$SRV.PING`.
const PING_WAIT: Duration = Duration::from_millis(250);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request waits for NATS when the sidecar is not connected (just started, or
/// reconnecting) before it answers that NATS is not reachable.
pub(super) const NATS_CONNECT_WAIT: Duration = Duration::from_secs(3);

pub(super) const NATS_DOWN: &str = "NATS is not reachable";

type Result<T, E = Error> = std::result::Result<T, E>;

impl Sidecar {
    pub(super) fn nats_connected(&self) -> bool {
        self.client.connected()
    }

    /// Sends `body` to `subject` with the caller's `Authorization` header, and maps the reply.
    async fn forward(
        &self,
        subject: &str,
        headers: &HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Response {
        // A request that arrives a moment after start or during a reconnect waits for NATS
        // rather than failing at once.
        if !self.client.wait_connected(NATS_CONNECT_WAIT).await {
            return error_response(&Error::at_capacity(NATS_DOWN));
        }
        let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let mut retries = NO_RESPONDERS_RETRIES.iter();
        let result = loop {
            match self
                .client
                .forward(subject, authorization, body.clone(), timeout)
                .await
            {
                Err(ClientError::NoResponders) => match retries.next() {
                    Some(wait) => tokio::time::sleep(*wait).await,
                    None => break Err(ClientError::NoResponders),
                },
                other => break other,
            }
        };
        let response = match result {
            Ok(reply) => reply_response(reply),
            Err(err) => error_response(&self.failure(subject, err, timeout)),
        };
        tracing::debug!(subject, status = response.status().as_u16(), "forwarded");
        response
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

/// A worker's reply as HTTP: its body as it is, with 200 or the status of its error.
pub(super) fn reply_response(reply: RawReply) -> Response {
    let (status, body) = reply_parts(reply);
    json_response(status, body)
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

fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String> {
    path.map(|Path(id)| id)
        .map_err(|r| Error::bad_request(format!("invalid path: {}", r.body_text())))
}

fn read_body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            body_too_large(limit)
        } else {
            Error::bad_request(format!(
                "could not read the request body: {}",
                r.body_text()
            ))
        }
    })
}

fn to_body<T: Serialize>(value: &T) -> Bytes {
    serde_json::to_vec(value)
        .expect("request serializes")
        .into()
}

/// A JSON body as it came, or a form read into the same JSON; and the `timeout_secs` it asks for.
async fn body_or_form(sidecar: &Sidecar, headers: &HeaderMap, request: Request) -> Result<Body> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if multipart::is_form(content_type) {
        let form = Multipart::from_request(request, sidecar)
            .await
            .map_err(|r| {
                Error::bad_request(format!("invalid multipart body: {}", r.body_text()))
            })?;
        let fields = multipart::read_form(form, sidecar.max_request_bytes).await?;
        Ok(Body::Form(fields))
    } else {
        let bytes = Bytes::from_request(request, sidecar).await;
        Ok(Body::Json(read_body(bytes, sidecar.max_request_bytes)?))
    }
}

enum Body {
    Json(Bytes),
    Form(Map<String, Value>),
}

/// The `timeout_secs` a request body asks for, read leniently: the worker judges the body.
fn requested_timeout(body: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Timeout {
        timeout_secs: Option<u64>,
    }
    serde_json::from_slice::<Timeout>(body).ok()?.timeout_secs
}

fn session_id_differs() -> Error {
    Error::bad_request("session_id in the body differs from the session in the path")
}

/// Puts the path's session id into a JSON turn body. A body that is not a JSON object goes on
/// unchanged, for the worker to reject as it would over NATS; one that already names the same
/// session goes on unchanged too. Otherwise the field is written in ahead of the others, leaving
/// the rest byte for byte as it came.
fn with_session_id(body: Bytes, id: &str) -> Result<Bytes> {
    let Some(start) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Ok(to_body(&serde_json::json!({ "session_id": id })));
    };
    if body[start] != b'{' {
        return Ok(body);
    }
    let Ok(object) = serde_json::from_slice::<Map<String, Value>>(&body) else {
        return Ok(body);
    };
    match object.get("session_id") {
        Some(Value::String(given)) if given == id => Ok(body),
        Some(_) => Err(session_id_differs()),
        None => {
            let id = serde_json::to_vec(id).expect("a string serializes");
            let mut out = Vec::with_capacity(body.len() + id.len() + 16);
            out.extend_from_slice(&body[..=start]);
            out.extend_from_slice(b"\"session_id\":");
            out.extend_from_slice(&id);
            if !object.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(&body[start + 1..]);
            Ok(out.into())
        }
    }
}

#[utoipa::path(
    post,
    path = "/run",
    tag = "runs",
    description = "A one-shot run of claude (`forge.run`).\n\n\
                   With `Accept: text/event-stream` the run is a live one: 200 `text/event-stream`, \
                   each event as claude prints it (`id: <seq>`, `event: <type>`, `data: <Event \
                   JSON>` with `run_id`), `: heartbeat` comments while it is quiet, then \
                   `event: run` with the Run as data (or `event: error`), and the end. A request \
                   refused before anything ran answers as without the header.",
    params(
        ("Accept" = Option<String>, Header, description = "`text/event-stream` for a live run"),
    ),
    request_body(content(
        (wire::RunRequest = "application/json"),
        (RunForm = "multipart/form-data")
    )),
    responses(
        (status = 200, description = "The run ended; `ok` tells how. With `Accept: text/event-stream` \
                                      its events as they happen, then the Run", content(
            (wire::Run = "application/json"),
            (String = "text/event-stream", example = "id: 1\nevent: thought\ndata: {\"run_id\":\"…\",\"seq\":1,\"at\":\"…\",\"type\":\"thought\",\"text\":\"…\"}\n\nevent: run\ndata: {\"run_id\":\"…\",\"ok\":true,\"result\":\"…\",\"error\":null,\"model\":\"sonnet\",\"exit_code\":0,\"duration_ms\":2150,\"cost_usd\":0.04}\n\n"),
        )),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 502, description = "agent_error", body = ErrorBody),
        (status = 504, description = "timeout", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn run(
    State(s): State<Sidecar>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response> {
    let (body, timeout_secs) = match body_or_form(&s, &headers, request).await? {
        Body::Json(body) => {
            let timeout = requested_timeout(&body);
            (body, timeout)
        }
        Body::Form(fields) => {
            let timeout = fields.get("timeout_secs").and_then(Value::as_u64);
            (to_body(&fields), timeout)
        }
    };
    if sse::wanted(&headers) {
        return Ok(s.stream(subject::RUN, "run", &headers, body).await);
    }
    let timeout = s.client.agent_timeout(timeout_secs);
    Ok(s.forward(subject::RUN, &headers, body, timeout).await)
}

#[utoipa::path(
    post,
    path = "/sessions",
    tag = "sessions",
    description = "Opens a session (`forge.session.create`).",
    request_body = wire::CreateSession,
    responses(
        (status = 200, description = "The new session", body = wire::Session),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 502, description = "agent_error", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_session(
    State(s): State<Sidecar>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = read_body(body, s.max_request_bytes)?;
    Ok(
        s.forward(subject::SESSION_CREATE, &headers, body, CREATE_TIMEOUT)
            .await,
    )
}

#[utoipa::path(
    get,
    path = "/sessions",
    tag = "sessions",
    description = "The caller's sessions (`forge.session.list`).",
    responses((status = 200, description = "The caller's sessions", body = wire::SessionList)),
    security(("bearer" = []))
)]
pub async fn list_sessions(State(s): State<Sidecar>, headers: HeaderMap) -> Response {
    s.forward(
        subject::SESSION_LIST,
        &headers,
        to_body(&wire::Empty {}),
        CONTROL_TIMEOUT,
    )
    .await
}

#[utoipa::path(
    get,
    path = "/sessions/{id}",
    tag = "sessions",
    description = "One session (`forge.session.get`).",
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 200, description = "The session", body = wire::Session),
        (status = 400, description = "bad_request: not a session id", body = ErrorBody),
        (status = 404, description = "not_found: no such session, or another app's", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_session(
    State(s): State<Sidecar>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let body = to_body(&wire::SessionRef {
        session_id: path_id(path)?,
    });
    Ok(
        s.forward(subject::SESSION_GET, &headers, body, CONTROL_TIMEOUT)
            .await,
    )
}

#[utoipa::path(
    delete,
    path = "/sessions/{id}",
    tag = "sessions",
    description = "Closes a session (`forge.session.close`); closing again answers `already_closed: true`.",
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 200, description = "The session is closed", body = wire::SessionClosed),
        (status = 400, description = "bad_request: not a session id", body = ErrorBody),
        (status = 404, description = "not_found: no such session, or another app's", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn close_session(
    State(s): State<Sidecar>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let body = to_body(&wire::SessionRef {
        session_id: path_id(path)?,
    });
    Ok(
        s.forward(subject::SESSION_CLOSE, &headers, body, CREATE_TIMEOUT)
            .await,
    )
}

#[utoipa::path(
    post,
    path = "/sessions/{id}/turn",
    tag = "sessions",
    description = "One turn of a session (`forge.session.turn`). The session comes from the path; \
                   a body that names another `session_id` is `bad_request`.\n\n\
                   With `Accept: text/event-stream` the turn is a live one: 200 `text/event-stream`, \
                   each event of the turn as it happens (`id: <seq>`, `event: <type>`, \
                   `data: <Event JSON>`), a `: heartbeat` comment every `stream_heartbeat_secs` \
                   while the agent is quiet, then `event: turn` with the Turn as data (or \
                   `event: error` with the error body), and the end. A request refused before \
                   anything ran answers as without the header: its status and JSON error.",
    params(
        ("id" = String, Path, description = "The session id"),
        ("Accept" = Option<String>, Header, description = "`text/event-stream` for a live turn"),
    ),
    request_body(content(
        (wire::TurnRequest = "application/json"),
        (TurnForm = "multipart/form-data")
    )),
    responses(
        (status = 200, description = "The agent's answer: the Turn, or with `Accept: text/event-stream` \
                                      the turn's events as they happen, then the Turn", content(
            (wire::Turn = "application/json"),
            (String = "text/event-stream", example = "id: 1\nevent: thought\ndata: {\"session_id\":\"…\",\"turn\":1,\"seq\":1,\"at\":\"…\",\"type\":\"thought\",\"text\":\"…\"}\n\n: heartbeat\n\nid: 2\nevent: message\ndata: {\"session_id\":\"…\",\"turn\":1,\"seq\":2,\"at\":\"…\",\"type\":\"message\",\"text\":\"Hello\"}\n\nevent: turn\ndata: {\"session_id\":\"…\",\"turn\":1,\"output\":\"Hello\",\"stop_reason\":\"end_turn\",\"duration_ms\":812}\n\n"),
        )),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 404, description = "not_found: no such session, or another app's", body = ErrorBody),
        (status = 409, description = "conflict: the session is closed", body = ErrorBody),
        (status = 502, description = "agent_error", body = ErrorBody),
        (status = 504, description = "timeout", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn turn(
    State(s): State<Sidecar>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response> {
    let id = path_id(path)?;
    let (body, timeout_secs) = match body_or_form(&s, &headers, request).await? {
        Body::Json(body) => {
            let body = with_session_id(body, &id)?;
            let timeout = requested_timeout(&body);
            (body, timeout)
        }
        Body::Form(mut fields) => {
            match fields.get("session_id") {
                Some(Value::String(given)) if *given == id => {}
                Some(_) => return Err(session_id_differs()),
                None => {}
            }
            fields.insert("session_id".into(), Value::String(id));
            let timeout = fields.get("timeout_secs").and_then(Value::as_u64);
            (to_body(&fields), timeout)
        }
    };
    if sse::wanted(&headers) {
        return Ok(s
            .stream(subject::SESSION_TURN, "turn", &headers, body)
            .await);
    }
    let timeout = s.client.agent_timeout(timeout_secs);
    Ok(s.forward(subject::SESSION_TURN, &headers, body, timeout)
        .await)
}

#[utoipa::path(
    post,
    path = "/sessions/{id}/cancel",
    tag = "sessions",
    description = "Stops the session's running turn, or the one about to start \
                   (`forge.session.cancel`), whichever worker holds it. `cancelled: true`: it has \
                   been told to stop, and that turn's own answer ends with `stop_reason: \
                   \"cancelled\"` and the output it had. `false`: nothing was running. Turns \
                   queued behind it are not touched. No request body.",
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 200, description = "Whether a turn was told to stop", body = wire::Cancelled),
        (status = 400, description = "bad_request: not a session id", body = ErrorBody),
        (status = 404, description = "not_found: no such session, or another app's", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cancel_turn(
    State(s): State<Sidecar>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let body = to_body(&wire::SessionRef {
        session_id: path_id(path)?,
    });
    Ok(
        s.forward(subject::SESSION_CANCEL, &headers, body, CONTROL_TIMEOUT)
            .await,
    )
}

/// The body of `POST /sessions/{id}/permissions/{request_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PermissionChoice {
    /// One of the `options` of the `permission_request` event.
    option_id: String,
}

#[utoipa::path(
    post,
    path = "/sessions/{id}/permissions/{request_id}",
    tag = "sessions",
    description = "Answers a `permission_request` event of the session's running turn \
                   (`forge.session.permission`; agents with `permissions = \"ask\"`), whichever \
                   worker runs it. `accepted: false`: that request is no longer waiting (answered, \
                   timed out, or its turn was cancelled).",
    params(
        ("id" = String, Path, description = "The session id"),
        ("request_id" = String, Path, description = "The event's `request_id`"),
    ),
    request_body = PermissionChoice,
    responses(
        (status = 200, description = "Whether the request took the answer", body = wire::PermissionAnswered),
        (status = 400, description = "bad_request: not a session id, or an option the request does not offer", body = ErrorBody),
        (status = 404, description = "not_found: no such session, or another app's", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn answer_permission(
    State(s): State<Sidecar>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let (session_id, request_id) = path
        .map(|Path(ids)| ids)
        .map_err(|r| Error::bad_request(format!("invalid path: {}", r.body_text())))?;
    let body = read_body(body, s.max_request_bytes)?;
    let choice: PermissionChoice = wire::decode(&body)?;
    let body = to_body(&wire::PermissionAnswer {
        session_id,
        request_id,
        option_id: choice.option_id,
    });
    Ok(
        s.forward(subject::SESSION_PERMISSION, &headers, body, CONTROL_TIMEOUT)
            .await,
    )
}

/// The query of `GET /sessions/{id}/events`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The turn's number; without it, the session's latest turn.
    turn: Option<u64>,
    /// Only the events with a greater `seq`; without it, from the turn's start. A
    /// `Last-Event-ID` header takes its place.
    after: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/sessions/{id}/events",
    tag = "sessions",
    description = "A turn's events as server-sent events (`forge.session.events`), whatever the \
                   `Accept` header: the events recorded after `after`, then, while the turn \
                   runs, its new ones as they come, then `event: turn` with the Turn (or `event: \
                   error` with the error the turn ended with), and the end. Each event is `id: \
                   <seq>`, `event: <type>`, `data: <Event JSON>`, with the `seq` it had live; a \
                   `: heartbeat` comment goes out every `stream_heartbeat_secs` while nothing else \
                   does. A request refused before anything (no such session or turn, another \
                   app's session, a bad query) answers with its status and JSON error.\n\n\
                   Re-attaching after a lost connection is this request again: the \
                   `Last-Event-ID` header (what a browser's `EventSource` sends when it \
                   reconnects) means `after`, and wins over the query's `after` when both are \
                   given. Name the `turn` so that a reconnect follows the same turn, and close an \
                   `EventSource` at the final event, or it reconnects and is answered that turn's \
                   end again.",
    params(
        ("id" = String, Path, description = "The session id"),
        EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "The `seq` of the last event \
                                                               received: `after`, and it wins \
                                                               over the query's"),
    ),
    responses(
        (status = 200, description = "The turn's events, then the Turn", content(
            (String = "text/event-stream", example = "id: 3\nevent: message\ndata: {\"session_id\":\"…\",\"turn\":1,\"seq\":3,\"at\":\"…\",\"type\":\"message\",\"text\":\"Hello\"}\n\n: heartbeat\n\nevent: turn\ndata: {\"session_id\":\"…\",\"turn\":1,\"output\":\"Hello\",\"stop_reason\":\"end_turn\",\"duration_ms\":812}\n\n"),
        )),
        (status = 400, description = "bad_request: not a session id, a bad query or Last-Event-ID", body = ErrorBody),
        (status = 404, description = "not_found: no such session or turn, or another app's session", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn events(
    State(s): State<Sidecar>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let session_id = path_id(path)?;
    let Query(query) =
        query.map_err(|r| Error::bad_request(format!("invalid query: {}", r.body_text())))?;
    let after = sse::last_event_id(&headers)?.or(query.after);
    let body = to_body(&wire::EventsRequest {
        session_id,
        turn: query.turn,
        after,
    });
    Ok(s.stream(subject::SESSION_EVENTS, "turn", &headers, body)
        .await)
}

#[utoipa::path(
    post,
    path = "/admin/tokens",
    tag = "admin",
    description = "Creates an app token (`forge.admin.token.create`); needs an admin token.",
    request_body = wire::TokenCreate,
    responses(
        (status = 200, description = "The token; its secret is shown only here", body = wire::TokenCreated),
        (status = 400, description = "bad_request", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_token(
    State(s): State<Sidecar>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = read_body(body, s.max_request_bytes)?;
    Ok(
        s.forward(subject::TOKEN_CREATE, &headers, body, CONTROL_TIMEOUT)
            .await,
    )
}

#[utoipa::path(
    get,
    path = "/admin/tokens",
    tag = "admin",
    description = "Every token, revoked ones too (`forge.admin.token.list`); needs an admin token.",
    responses((status = 200, description = "The tokens, without their secrets", body = wire::TokenList)),
    security(("bearer" = []))
)]
pub async fn list_tokens(State(s): State<Sidecar>, headers: HeaderMap) -> Response {
    s.forward(
        subject::TOKEN_LIST,
        &headers,
        to_body(&wire::Empty {}),
        CONTROL_TIMEOUT,
    )
    .await
}

#[utoipa::path(
    delete,
    path = "/admin/tokens/{id}",
    tag = "admin",
    description = "Revokes a token (`forge.admin.token.revoke`); needs an admin token.",
    params(("id" = String, Path, description = "The token id")),
    responses(
        (status = 200, description = "The token is revoked", body = wire::TokenRevoked),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 404, description = "not_found: no such token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_token(
    State(s): State<Sidecar>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let body = to_body(&wire::TokenRevoke {
        token_id: path_id(path)?,
    });
    Ok(
        s.forward(subject::TOKEN_REVOKE, &headers, body, CONTROL_TIMEOUT)
            .await,
    )
}

/// `GET /healthz`: a worker's Health (`forge.health`), plus what the sidecar sees of NATS and the
/// workers. When no worker answers, `ok` is false and the worker's fields are null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SidecarHealth {
    /// A worker answered and is healthy.
    pub ok: bool,
    pub version: Option<String>,
    pub worker_id: Option<String>,
    pub acpx_present: Option<bool>,
    pub acpx_version: Option<String>,
    pub claude_present: Option<bool>,
    pub open_sessions: Option<u64>,
    pub ledger_writable: Option<bool>,
    pub confined: Option<bool>,
    pub landlock_abi: Option<u32>,
    /// The worker's configured agents, as it last checked them.
    pub agents: Option<Vec<wire::AgentHealth>>,
    /// The sidecar's NATS connection is up.
    pub nats_connected: bool,
    /// Worker instances that answered `$SRV.PING`.
    pub workers: u64,
}

impl SidecarHealth {
    pub fn new(health: Option<wire::Health>, nats_connected: bool, workers: u64) -> Self {
        match health {
            Some(h) => SidecarHealth {
                ok: h.ok,
                version: Some(h.version),
                worker_id: Some(h.worker_id),
                acpx_present: Some(h.acpx_present),
                acpx_version: h.acpx_version,
                claude_present: Some(h.claude_present),
                open_sessions: Some(h.open_sessions),
                ledger_writable: Some(h.ledger_writable),
                confined: Some(h.confined),
                landlock_abi: h.landlock_abi,
                agents: Some(h.agents),
                nats_connected,
                workers,
            },
            None => SidecarHealth {
                ok: false,
                version: None,
                worker_id: None,
                acpx_present: None,
                acpx_version: None,
                claude_present: None,
                open_sessions: None,
                ledger_writable: None,
                confined: None,
                landlock_abi: None,
                agents: None,
                nats_connected,
                workers,
            },
        }
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    description = "Health of a worker (`forge.health`), of the NATS connection, and the number of \
                   workers answering `$SRV.PING`. No token needed.",
    responses(
        (status = 200, description = "A worker answered and is healthy", body = SidecarHealth),
        (status = 503, description = "No worker answered, NATS is down, or the worker is unhealthy", body = SidecarHealth),
    )
)]
pub async fn healthz(State(s): State<Sidecar>) -> Response {
    let connected = s.nats_connected();
    let (health, workers) = if connected {
        let (health, ids) = tokio::join!(
            s.client
                .call::<_, wire::Health>(subject::HEALTH, &wire::Empty {}, HEALTH_TIMEOUT),
            s.client.ping_workers(PING_WAIT),
        );
        if let Err(e) = &health {
            tracing::debug!(error = %e, "healthz: no health from a worker");
        }
        (health.ok(), ids.map(|ids| ids.len() as u64).unwrap_or(0))
    } else {
        (None, 0)
    };
    let reply = SidecarHealth::new(health, connected, workers);
    let status = if reply.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(reply)).into_response()
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    description = "This document.",
    responses((status = 200, description = "The OpenAPI document of the sidecar", content_type = "application/json"))
)]
pub async fn openapi(State(s): State<Sidecar>) -> Response {
    json_response(StatusCode::OK, s.openapi.clone())
}

pub async fn not_found(method: Method, uri: Uri) -> Error {
    Error::not_found(format!("no route for {method} {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injected(body: &str, id: &str) -> Result<String> {
        with_session_id(Bytes::from(body.to_string()), id)
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn the_path_session_id_goes_into_the_body() {
        assert_eq!(
            injected(r#"{"prompt": "hi"}"#, "abc").unwrap(),
            r#"{"session_id":"abc","prompt": "hi"}"#
        );
        assert_eq!(
            injected("  { }", "abc").unwrap(),
            r#"  {"session_id":"abc" }"#
        );
        assert_eq!(injected("", "abc").unwrap(), r#"{"session_id":"abc"}"#);
        let same = r#"{"prompt":"hi","session_id":"abc"}"#;
        assert_eq!(injected(same, "abc").unwrap(), same);
        // Quotes in the id are escaped, not spliced in.
        assert_eq!(injected("{}", "a\"b").unwrap(), r#"{"session_id":"a\"b"}"#);
    }

    #[test]
    fn a_different_session_id_in_the_body_is_bad_request() {
        for body in [
            r#"{"session_id":"other","prompt":"hi"}"#,
            r#"{"session_id":12,"prompt":"hi"}"#,
            r#"{"session_id":null}"#,
        ] {
            assert_eq!(
                injected(body, "abc").unwrap_err().kind,
                ErrorKind::BadRequest,
                "{body}"
            );
        }
    }

    #[test]
    fn what_is_not_a_json_object_goes_on_unchanged() {
        for body in [
            "{not json",
            "[1]",
            "null",
            "\u{feff}{}",
            "{\"prompt\": \"hi\"} trailing",
        ] {
            assert_eq!(injected(body, "abc").unwrap(), body);
        }
    }

    #[test]
    fn the_requested_timeout_is_read_leniently() {
        assert_eq!(
            requested_timeout(br#"{"prompt":"x","timeout_secs":42}"#),
            Some(42)
        );
        assert_eq!(requested_timeout(br#"{"prompt":"x"}"#), None);
        assert_eq!(requested_timeout(br#"{"timeout_secs":"soon"}"#), None);
        assert_eq!(requested_timeout(b"{nope"), None);
    }

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
    }
}
