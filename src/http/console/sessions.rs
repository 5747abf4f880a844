//! The sessions: every app's, filtered by app, agent and status, a page at a time; and one
//! session with its turns, each turn's events made readable.

use askama::Template;
use axum::extract::{Path, Query, State};
use futures::future::join_all;
use serde::{Deserialize, Serialize};

use super::replay::replay;
use super::view::{event_views, Chrome, EventView, Section};
use super::{Admin, Page, Sidecar};
use crate::domain::Op;
use crate::error::Error;
use crate::wire::{self, SessionStatus};

/// Sessions per page of the list.
const PAGE_SIZE: u64 = 25;
/// The latest turns a session's page shows.
const TURNS_SHOWN: u64 = 20;

/// The list's filters, as the form sends them (an empty field: no filter).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub(super) struct Filters {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    app: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    agent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page: Option<u64>,
}

impl Filters {
    /// The request of the list for these filters.
    fn asked(&self) -> Result<wire::SessionsAsked, Error> {
        let status = match self.status.as_str() {
            "" => None,
            "open" => Some(SessionStatus::Open),
            "closed" => Some(SessionStatus::Closed),
            other => return Err(Error::bad_request(format!("no status {other:?}"))),
        };
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(wire::SessionsAsked {
            app: some(&self.app),
            agent: some(&self.agent),
            status,
            offset: Some(self.page() * PAGE_SIZE),
            limit: Some(PAGE_SIZE),
        })
    }

    /// The page asked, from 0.
    fn page(&self) -> u64 {
        self.page.unwrap_or(0)
    }

    /// The list's address with these filters on `page`.
    fn href(&self, page: u64) -> String {
        let filters = Filters {
            page: (page > 0).then_some(page),
            ..self.clone()
        };
        let query = serde_urlencoded::to_string(&filters).unwrap_or_default();
        match query.is_empty() {
            true => "/console/sessions".into(),
            false => format!("/console/sessions?{query}"),
        }
    }
}

#[derive(Template)]
#[template(path = "console/sessions.html")]
struct ListPage {
    chrome: Chrome,
    filters: Filters,
    sessions: Vec<wire::Session>,
    /// "21–40 of 53".
    range: String,
    previous: Option<String>,
    next: Option<String>,
}

/// `GET /console/sessions?app=&agent=&status=&page=`.
#[tracing::instrument(name = "console.sessions", skip_all)]
pub(super) async fn list(
    State(s): State<Sidecar>,
    admin: Admin,
    Query(filters): Query<Filters>,
) -> Page {
    let asked = match filters.asked() {
        Ok(asked) => asked,
        Err(err) => return err.into(),
    };
    let found: wire::SessionPage = match s.console_call(&admin, Op::AdminSessionList, &asked).await
    {
        Ok(found) => found,
        Err(err) => return err.into(),
    };
    let page = filters.page();
    let first = page * PAGE_SIZE;
    let shown = found.sessions.len() as u64;
    let range = match shown {
        0 => format!("0 of {}", found.total),
        n => format!("{}–{} of {}", first + 1, first + n, found.total),
    };
    Page::render(&ListPage {
        chrome: Chrome::for_admin(Section::Sessions, admin.csrf()),
        previous: (page > 0).then(|| filters.href(page - 1)),
        next: (first + shown < found.total).then(|| filters.href(page + 1)),
        filters,
        sessions: found.sessions,
        range,
    })
}

/// One turn as the session's page shows it.
struct TurnView {
    number: u64,
    /// The turn running now: shown live.
    live: bool,
    /// The turn is running (or waiting behind the running one): its events are not read here.
    running: bool,
    events: Vec<EventView>,
    /// How it ended: the stop reason and time, or the error.
    ended: String,
    failed: bool,
}

#[derive(Template)]
#[template(path = "console/session.html")]
struct SessionPage {
    chrome: Chrome,
    session: wire::Session,
    turns: Vec<TurnView>,
    /// Older turns not shown.
    older: u64,
    csrf: String,
}

/// `GET /console/sessions/{id}`.
#[tracing::instrument(name = "console.session", skip_all, fields(session = %id))]
pub(super) async fn one(State(s): State<Sidecar>, admin: Admin, Path(id): Path<String>) -> Page {
    let asked = wire::SessionRef { session_id: id };
    let session: wire::Session = match s.console_call(&admin, Op::SessionGet, &asked).await {
        Ok(session) => session,
        Err(err) => return err.into(),
    };
    let first = session.turns.saturating_sub(TURNS_SHOWN) + 1;
    let turns = (first..=session.turns).map(|n| turn_view(&s, &admin, &session, n));
    let turns = join_all(turns).await;
    Page::render(&SessionPage {
        chrome: Chrome::for_admin(Section::Sessions, admin.csrf()),
        older: first - 1,
        csrf: admin.csrf().to_string(),
        session,
        turns,
    })
}

/// Turn `number` of `session`: its recorded events and how it ended, read with
/// `forge.session.events`; a turn from the running one on is only marked running (reading it
/// would wait for its end).
async fn turn_view(s: &Sidecar, admin: &Admin, session: &wire::Session, number: u64) -> TurnView {
    let mut view = TurnView {
        number,
        live: session.running_turn == Some(number),
        running: session
            .running_turn
            .is_some_and(|running| number >= running),
        events: Vec::new(),
        ended: String::new(),
        failed: false,
    };
    if view.running {
        return view;
    }
    let asked = wire::EventsRequest {
        session_id: session.session_id.clone(),
        turn: Some(number),
        after: None,
    };
    let replay = replay(s, admin, &asked).await;
    view.events = event_views(&replay.events);
    match replay.end {
        Ok(turn) => view.ended = format!("{} after {} ms", turn.stop_reason, turn.duration_ms),
        Err(err) => (view.failed, view.ended) = (true, err.message),
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_become_the_request_and_the_page_links() {
        let filters = Filters {
            app: "notes app".into(),
            status: "open".into(),
            page: Some(2),
            ..Default::default()
        };
        let asked = filters.asked().unwrap();
        assert_eq!(asked.app.as_deref(), Some("notes app"));
        assert_eq!(asked.agent, None);
        assert_eq!(asked.status, Some(SessionStatus::Open));
        assert_eq!((asked.offset, asked.limit), (Some(50), Some(PAGE_SIZE)));
        assert_eq!(
            filters.href(3),
            "/console/sessions?app=notes+app&status=open&page=3"
        );
        assert_eq!(Filters::default().href(0), "/console/sessions");
        let bad = Filters {
            status: "gone".into(),
            ..Default::default()
        };
        assert_eq!(
            bad.asked().unwrap_err().kind,
            crate::error::ErrorKind::BadRequest
        );
    }
}
