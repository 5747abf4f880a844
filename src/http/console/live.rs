//! A running turn, live: its events as server-sent events (the sidecar's own relay of
//! `forge.session.events`, as `GET /sessions/{id}/events` serves them), its cancel, and the
//! answer to its permission request. The page's small script (live.js) shows the events; the
//! two forms work without it.

use axum::extract::{Path, Query, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use super::{Admin, CsrfOnly, Page, Sidecar};
use crate::domain::Op;
use crate::error::Error;
use crate::http::sse::last_event_id;
use crate::wire;

#[derive(Debug, Deserialize)]
pub(super) struct TurnQuery {
    turn: Option<u64>,
}

/// `GET /console/sessions/{id}/events?turn=N`: the turn's events so far, then live, then how
/// it ended, as server-sent events (`Last-Event-ID`, sent by a reconnecting `EventSource`,
/// picks up after the last event it got).
#[tracing::instrument(name = "console.live", skip_all, fields(session = %id))]
pub(super) async fn events(
    State(s): State<Sidecar>,
    admin: Admin,
    Path(id): Path<String>,
    Query(query): Query<TurnQuery>,
    headers: HeaderMap,
) -> Response {
    let after = match last_event_id(&headers) {
        Ok(after) => after,
        Err(err) => return Page::from(err).into_response(),
    };
    let asked = wire::EventsRequest {
        session_id: id,
        turn: query.turn,
        after,
    };
    let body = match serde_json::to_vec(&asked) {
        Ok(body) => body,
        Err(err) => return Page::from(Error::internal(err)).into_response(),
    };
    let mut forwarded = HeaderMap::new();
    match HeaderValue::from_str(&admin.0.authorization) {
        Ok(value) => forwarded.insert(AUTHORIZATION, value),
        Err(_) => return Page::from(Error::internal("a token unfit for a header")).into_response(),
    };
    s.stream(Op::SessionEvents, &forwarded, body.into()).await
}

/// `POST /console/sessions/{id}/cancel`: tells the session's running turn to stop.
#[tracing::instrument(name = "console.cancel", skip_all, fields(session = %id))]
pub(super) async fn cancel(
    State(s): State<Sidecar>,
    admin: Admin,
    Path(id): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Page {
    if let Err(page) = admin.check_csrf(&form.csrf) {
        return page;
    }
    let asked = wire::SessionRef {
        session_id: id.clone(),
    };
    let cancelled: Result<wire::Cancelled, _> =
        s.console_call(&admin, Op::SessionCancel, &asked).await;
    match cancelled {
        Ok(c) => {
            tracing::info!(
                cancelled = c.cancelled,
                "a turn was cancelled from the console"
            );
            Page::see_other(&session_page(&id))
        }
        Err(err) => err.into(),
    }
}

#[derive(Deserialize)]
pub(super) struct AnswerForm {
    #[serde(default)]
    csrf: String,
    option_id: String,
}

/// `POST /console/sessions/{id}/permissions/{request_id}`: answers the running turn's
/// permission request with one of its options.
#[tracing::instrument(name = "console.permission", skip_all, fields(session = %id))]
pub(super) async fn answer(
    State(s): State<Sidecar>,
    admin: Admin,
    Path((id, request_id)): Path<(String, String)>,
    Form(form): Form<AnswerForm>,
) -> Page {
    if let Err(page) = admin.check_csrf(&form.csrf) {
        return page;
    }
    let asked = wire::PermissionAnswer {
        session_id: id.clone(),
        request_id,
        option_id: form.option_id,
    };
    let answered: Result<wire::PermissionAnswered, _> =
        s.console_call(&admin, Op::SessionPermission, &asked).await;
    match answered {
        Ok(a) => {
            tracing::info!(
                accepted = a.accepted,
                "a permission was answered from the console"
            );
            Page::see_other(&session_page(&id))
        }
        Err(err) => err.into(),
    }
}

/// The session's page. The id went through the worker, which takes only a UUID.
fn session_page(id: &str) -> String {
    format!("/console/sessions/{id}")
}
