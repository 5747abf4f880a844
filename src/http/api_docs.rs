//! The OpenAPI description of every route of the sidecar, one item per route: what
//! `openapi.rs` assembles into the document. The handlers are in `routes.rs`; a test checks that
//! the document describes exactly the routes of the operations table (`domain::ops`).

#![allow(dead_code)]

use super::health::SidecarHealth;
use super::multipart::{RunForm, TurnForm};
use super::routes::{EventsQuery, PermissionChoice};
use crate::wire::{self, ErrorBody};

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
pub(super) fn run() {}

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
pub(super) fn create_session() {}

#[utoipa::path(
    get,
    path = "/sessions",
    tag = "sessions",
    description = "The caller's sessions (`forge.session.list`).",
    responses((status = 200, description = "The caller's sessions", body = wire::SessionList)),
    security(("bearer" = []))
)]
pub(super) fn list_sessions() {}

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
pub(super) fn get_session() {}

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
pub(super) fn close_session() {}

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
pub(super) fn turn() {}

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
pub(super) fn cancel_turn() {}

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
pub(super) fn answer_permission() {}

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
pub(super) fn events() {}

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
pub(super) fn create_token() {}

#[utoipa::path(
    get,
    path = "/admin/tokens",
    tag = "admin",
    description = "Every token, revoked ones too (`forge.admin.token.list`); needs an admin token.",
    responses((status = 200, description = "The tokens, without their secrets", body = wire::TokenList)),
    security(("bearer" = []))
)]
pub(super) fn list_tokens() {}

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
pub(super) fn revoke_token() {}

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
pub(super) fn healthz() {}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    description = "This document.",
    responses((status = 200, description = "The OpenAPI document of the sidecar", content_type = "application/json"))
)]
pub(super) fn openapi() {}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    description = "The sidecar's metrics in the Prometheus text format (clawdforge_workers, its \
                   requests and the process's own figures; docs/operations.md). No token needed.",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"))
)]
pub(super) fn metrics() {}

#[utoipa::path(
    put,
    path = "/admin/apps/{app}",
    tag = "admin",
    description = "Changes an app's policy (`forge.admin.app.set`); needs an admin token. A field \
                   left out stays as it is; `null` clears it, so the `[app_defaults]` value applies.",
    params(("app" = String, Path, description = "The app")),
    request_body = wire::PolicySet,
    responses(
        (status = 200, description = "The app's policy as it now applies", body = wire::Policy),
        (status = 400, description = "bad_request: an unknown field or agent, a bad amount", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) fn set_app() {}

#[utoipa::path(
    get,
    path = "/admin/apps/{app}",
    tag = "admin",
    description = "An app's policy, the defaults filled in, with where each field comes from \
                   (`forge.admin.app.get`); needs an admin token.",
    params(("app" = String, Path, description = "The app")),
    responses(
        (status = 200, description = "The app's policy", body = wire::Policy),
        (status = 400, description = "bad_request: not an app name", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) fn get_app() {}

#[utoipa::path(
    get,
    path = "/admin/apps",
    tag = "admin",
    description = "The policy of every app with a token or a policy (`forge.admin.app.list`); \
                   needs an admin token.",
    responses((status = 200, description = "The apps' policies", body = wire::PolicyList)),
    security(("bearer" = []))
)]
pub(super) fn list_apps() {}

#[utoipa::path(
    get,
    path = "/usage",
    tag = "usage",
    description = "What the caller's app uses of each counted limit, beside the limit and its \
                   window (`forge.usage`).",
    responses((status = 200, description = "The app's usage", body = wire::Usage)),
    security(("bearer" = []))
)]
pub(super) fn usage() {}

#[utoipa::path(
    get,
    path = "/admin/usage",
    tag = "admin",
    description = "What one app or every app did per UTC day (`forge.admin.usage`); needs an \
                   admin token.",
    params(wire::UsageAsked),
    responses(
        (status = 200, description = "A row per app and day", body = wire::UsageDays),
        (status = 400, description = "bad_request: a bad date or range, or an unknown parameter", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) fn admin_usage() {}

#[utoipa::path(
    get,
    path = "/admin/sessions",
    tag = "admin",
    description = "Every app's sessions matching the filters, newest first, a page of them, and \
                   how many match (`forge.admin.session.list`); needs an admin token.",
    params(wire::SessionsAsked),
    responses(
        (status = 200, description = "A page of sessions", body = wire::SessionPage),
        (status = 400, description = "bad_request: a bad app name, status or limit, or an unknown parameter", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) fn admin_sessions() {}
