//! Runs and spend: what each app did per UTC day (`forge.admin.usage`): runs and their cost,
//! turns and the agents' cost, sessions created, requests refused; filtered by app and days,
//! with the cost per day as a chart. The contract lists no single runs: days are its unit.

use askama::Template;
use axum::extract::{Query, State};
use chrono::{Days, NaiveDate, Utc};
use serde::Deserialize;
use std::collections::BTreeMap;

use super::chart::BarChart;
use super::view::{Chrome, Section};
use super::{Admin, Page, Sidecar};
use crate::domain::Op;
use crate::error::Error;
use crate::wire;

/// The days the page shows without `from`: the last two weeks.
const DEFAULT_DAYS: u64 = 14;

#[derive(Debug, Default, Deserialize)]
pub(super) struct Filters {
    #[serde(default)]
    app: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

impl Filters {
    /// The request for these filters: an empty field is every app, or the last two weeks.
    fn asked(&self, today: NaiveDate) -> wire::UsageAsked {
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        let from = today
            .checked_sub_days(Days::new(DEFAULT_DAYS - 1))
            .unwrap_or(today);
        wire::UsageAsked {
            app: some(&self.app),
            from: some(&self.from).or_else(|| Some(from.to_string())),
            to: some(&self.to).or_else(|| Some(today.to_string())),
        }
    }
}

/// A day of one app with anything in it.
fn active(day: &wire::UsageDay) -> bool {
    day.sessions_created + day.turns + day.runs > 0
        || day.runs_usd > 0.0
        || day.agent_usd > 0.0
        || !day.refused.is_empty()
}

/// One app's totals over the days shown.
#[derive(Debug, Default, Clone, PartialEq)]
struct Total {
    app: String,
    runs: u64,
    runs_usd: f64,
    turns: u64,
    agent_usd: f64,
    refused: u64,
}

#[derive(Template)]
#[template(path = "console/runs.html")]
struct RunsPage {
    chrome: Chrome,
    asked: wire::UsageAsked,
    charts: Vec<BarChart>,
    days: Vec<wire::UsageDay>,
    totals: Vec<Total>,
}

fn usd(v: f64) -> String {
    format!("{v:.4} USD")
}

/// The cost per day (runs' and agents'), over the apps shown, as a chart; then each app's
/// totals.
fn summarise(days: &[wire::UsageDay]) -> (BarChart, Vec<Total>) {
    let mut per_day: BTreeMap<&str, f64> = BTreeMap::new();
    let mut totals: BTreeMap<&str, Total> = BTreeMap::new();
    for day in days {
        *per_day.entry(&day.date).or_default() += day.runs_usd + day.agent_usd;
        let total = totals.entry(&day.app).or_insert_with(|| Total {
            app: day.app.clone(),
            ..Default::default()
        });
        total.runs += day.runs;
        total.runs_usd += day.runs_usd;
        total.turns += day.turns;
        total.agent_usd += day.agent_usd;
        total.refused += day.refused.values().sum::<u64>();
    }
    let values: Vec<(String, f64)> = per_day
        .into_iter()
        .map(|(date, v)| (date.get(5..).unwrap_or(date).to_string(), v))
        .collect();
    let chart = BarChart::new("Cost per UTC day (runs and agents, USD)", &values, usd);
    (chart, totals.into_values().collect())
}

/// `GET /console/runs?app=&from=&to=`.
#[tracing::instrument(name = "console.runs", skip_all)]
pub(super) async fn page(
    State(s): State<Sidecar>,
    admin: Admin,
    Query(filters): Query<Filters>,
) -> Page {
    let asked = filters.asked(Utc::now().date_naive());
    let days: Result<wire::UsageDays, Error> = s.console_call(&admin, Op::AdminUsage, &asked).await;
    let days = match days {
        Ok(days) => days.days,
        Err(err) => return err.into(),
    };
    let (chart, totals) = summarise(&days);
    Page::render(&RunsPage {
        chrome: Chrome::for_admin(Section::Runs, admin.csrf()),
        asked,
        charts: vec![chart],
        days: days.into_iter().filter(active).collect(),
        totals,
    })
}

/// The overview's charts: each app's cost, and its requests refused by a limit, over the
/// current and the previous UTC day (the last 24 hours, as days count them).
pub(super) async fn last_day_charts(s: &Sidecar, admin: &Admin) -> Result<Vec<BarChart>, Error> {
    let today = Utc::now().date_naive();
    let yesterday = today.checked_sub_days(Days::new(1)).unwrap_or(today);
    let asked = wire::UsageAsked {
        app: None,
        from: Some(yesterday.to_string()),
        to: Some(today.to_string()),
    };
    let days: wire::UsageDays = s.console_call(admin, Op::AdminUsage, &asked).await?;
    let (_, totals) = summarise(&days.days);
    let spend: Vec<(String, f64)> = totals
        .iter()
        .map(|t| (t.app.clone(), t.runs_usd + t.agent_usd))
        .collect();
    let refused: Vec<(String, f64)> = totals
        .iter()
        .map(|t| (t.app.clone(), t.refused as f64))
        .collect();
    Ok(vec![
        BarChart::new("Cost by app, yesterday and today (USD)", &spend, usd),
        BarChart::new(
            "Requests refused by a limit, yesterday and today",
            &refused,
            |v| format!("{v}"),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_filters_are_the_last_two_weeks_of_every_app() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 8).unwrap();
        let asked = Filters::default().asked(today);
        assert_eq!(asked.app, None);
        assert_eq!(asked.from.as_deref(), Some("2026-11-25"));
        assert_eq!(asked.to.as_deref(), Some("2026-12-08"));
        let given = Filters {
            app: "notes".into(),
            from: "2026-12-01".into(),
            to: " ".into(),
        };
        let asked = given.asked(today);
        assert_eq!(asked.app.as_deref(), Some("notes"));
        assert_eq!(asked.from.as_deref(), Some("2026-12-01"));
        assert_eq!(asked.to.as_deref(), Some("2026-12-08"));
    }
}
