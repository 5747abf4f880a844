//! The overview: NATS, the workers and their health, each app's open sessions and running
//! turns, and its cost and refusals over the last two UTC days as charts.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::State;

use super::chart::BarChart;
use super::view::{Chrome, Section};
use super::{Admin, Page, Sidecar};
use crate::domain::Op;
use crate::error::Error;
use crate::http::health::health_and_workers;
use crate::wire;

/// The open sessions the overview counts at most (the admin list's largest page).
const COUNTED: u64 = 500;

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    chrome: Chrome,
    nats_connected: bool,
    workers: Vec<String>,
    health: Option<wire::Health>,
    apps: Vec<AppRow>,
    open_total: u64,
    /// More sessions are open than were counted.
    capped: bool,
    /// Cost and refusals per app over the last two UTC days.
    charts: Vec<BarChart>,
}

/// One app's line: its open sessions and its running turns.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct AppRow {
    app: String,
    open_sessions: u64,
    running_turns: u64,
}

/// `GET /console`.
#[tracing::instrument(name = "console.overview", skip_all)]
pub(super) async fn page(State(s): State<Sidecar>, admin: Admin) -> Page {
    let (health, pings) = health_and_workers(&s).await;
    let (apps, open_total) = match app_rows(&s, &admin).await {
        Ok(rows) => rows,
        Err(err) => return err.into(),
    };
    let charts = match super::runs::last_day_charts(&s, &admin).await {
        Ok(charts) => charts,
        Err(err) => return err.into(),
    };
    let workers = pings
        .into_iter()
        .map(|p| p.worker_id.unwrap_or(p.id))
        .collect();
    Page::render(&OverviewPage {
        chrome: Chrome::for_admin(Section::Overview, admin.csrf()),
        nats_connected: s.nats_connected(),
        workers,
        health,
        apps,
        capped: open_total > COUNTED,
        charts,
        open_total,
    })
}

/// Every app (each with a token or a policy, and each with an open session), with its open
/// sessions and running turns; and how many sessions are open in all.
async fn app_rows(s: &Sidecar, admin: &Admin) -> Result<(Vec<AppRow>, u64), Error> {
    let open = wire::SessionsAsked {
        status: Some(wire::SessionStatus::Open),
        limit: Some(COUNTED),
        ..Default::default()
    };
    let page: wire::SessionPage = s.console_call(admin, Op::AdminSessionList, &open).await?;
    let apps: wire::PolicyList = s.console_call(admin, Op::AppList, &wire::Empty {}).await?;
    let mut rows: BTreeMap<String, AppRow> = apps
        .apps
        .into_iter()
        .map(|p| {
            (
                p.app.clone(),
                AppRow {
                    app: p.app,
                    ..Default::default()
                },
            )
        })
        .collect();
    for session in page.sessions {
        let row = rows.entry(session.app.clone()).or_insert_with(|| AppRow {
            app: session.app.clone(),
            ..Default::default()
        });
        row.open_sessions += 1;
        row.running_turns += u64::from(session.running_turn.is_some());
    }
    Ok((rows.into_values().collect(), page.total))
}
