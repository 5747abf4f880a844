//! The apps: each app's policy as it applies (its own values over the defaults) beside what it
//! uses of each limit, and a form that changes its own values (`forge.admin.app.set`).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Form;
use chrono::{Datelike, Utc};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

use super::view::{Chrome, Section};
use super::{Admin, Page, Sidecar};
use crate::domain::Op;
use crate::error::Error;
use crate::wire::{self, Source};

/// What a policy field holds, so that the form's text becomes its JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A whole number.
    Count,
    /// A number of USD.
    Usd,
    /// Names, comma-separated.
    Names,
    /// One of the permission policies.
    Permissions,
}

/// Every field of a policy the form edits, with its kind and its words.
const FIELDS: [(&str, Kind, &str); 12] = [
    ("max_open_sessions", Kind::Count, "Open sessions at once"),
    ("max_concurrent_turns", Kind::Count, "Turns at once"),
    ("max_concurrent_runs", Kind::Count, "Runs at once"),
    ("max_timeout_secs", Kind::Count, "Longest timeout (s)"),
    ("requests_per_minute", Kind::Count, "Requests per minute"),
    ("turns_per_day", Kind::Count, "Turns per UTC day"),
    ("runs_usd_per_day", Kind::Usd, "Runs' USD per day"),
    ("runs_usd_per_month", Kind::Usd, "Runs' USD per month"),
    ("agent_usd_per_month", Kind::Usd, "Agents' USD per month"),
    ("agents", Kind::Names, "Agents (comma-separated)"),
    ("models", Kind::Names, "Models (comma-separated)"),
    ("max_permissions", Kind::Permissions, "Most permissions"),
];

/// `text` from the form as the JSON value of a field of `kind`: empty clears the app's own
/// value (`null`: the default applies).
fn field_value(name: &str, kind: Kind, text: &str) -> Result<Value, Error> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Value::Null);
    }
    let bad = |what: &str| Error::bad_request(format!("{name}: {what}, or empty for the default"));
    Ok(match kind {
        Kind::Count => Value::from(text.parse::<u64>().map_err(|_| bad("a whole number"))?),
        Kind::Usd => Value::from(text.parse::<f64>().map_err(|_| bad("a number of USD"))?),
        Kind::Names => Value::from(
            text.split(',')
                .map(|n| n.trim().to_string())
                .collect::<Vec<_>>(),
        ),
        Kind::Permissions => Value::from(text),
    })
}

/// The `forge.admin.app.set` request of the form's fields for `app`.
fn change_of(app: &str, form: &BTreeMap<String, String>) -> Result<Value, Error> {
    let mut change = Map::new();
    change.insert("app".into(), Value::from(app));
    for (name, kind, _) in FIELDS {
        if let Some(text) = form.get(name) {
            change.insert(name.into(), field_value(name, kind, text)?);
        }
    }
    Ok(Value::Object(change))
}

/// One line of an app's page: a limit, its value, where it comes from, what is used of it.
struct Row {
    name: &'static str,
    label: &'static str,
    kind: Kind,
    /// The value as it applies ("no limit" when none).
    shown: String,
    /// The app's own value, as the form's field shows it ("" when it has none).
    own: String,
    from_app: bool,
    used: String,
}

impl Row {
    fn is_permissions(&self) -> bool {
        self.kind == Kind::Permissions
    }
}

/// What an app uses now, as far as the admin subjects tell: its open sessions and running turns
/// (`forge.admin.session.list`), its turns today and USD this day and month
/// (`forge.admin.usage`).
#[derive(Debug, Default, Clone, PartialEq)]
struct Used {
    open_sessions: u64,
    running_turns: u64,
    turns_today: u64,
    runs_usd_today: f64,
    runs_usd_month: f64,
    agent_usd_month: f64,
}

impl Used {
    fn of(&self, field: &str) -> String {
        match field {
            "max_open_sessions" => self.open_sessions.to_string(),
            "max_concurrent_turns" => self.running_turns.to_string(),
            "turns_per_day" => self.turns_today.to_string(),
            "runs_usd_per_day" => format!("{:.4}", self.runs_usd_today),
            "runs_usd_per_month" => format!("{:.4}", self.runs_usd_month),
            "agent_usd_per_month" => format!("{:.4}", self.agent_usd_month),
            _ => String::new(),
        }
    }
}

/// The values of a policy's fields as JSON, by field name.
fn values_of(policy: &wire::Policy) -> Map<String, Value> {
    match serde_json::to_value(&policy.fields) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fn text_of(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        Some(other) => other.to_string(),
    }
}

fn rows(policy: &wire::Policy, used: &Used) -> Vec<Row> {
    let values = values_of(policy);
    FIELDS
        .into_iter()
        .map(|(name, kind, label)| {
            let from_app = policy.sources.get(name) == Some(&Source::App);
            let value = text_of(values.get(name));
            Row {
                name,
                label,
                kind,
                shown: if value.is_empty() {
                    "no limit".into()
                } else {
                    value.clone()
                },
                own: if from_app { value } else { String::new() },
                from_app,
                used: used.of(name),
            }
        })
        .collect()
}

/// Every app's use now, by app.
async fn usage(s: &Sidecar, admin: &Admin) -> Result<BTreeMap<String, Used>, Error> {
    let today = Utc::now().date_naive();
    let month_start = today.with_day(1).unwrap_or(today);
    let asked = wire::UsageAsked {
        app: None,
        from: Some(month_start.to_string()),
        to: Some(today.to_string()),
    };
    let days: wire::UsageDays = s.console_call(admin, Op::AdminUsage, &asked).await?;
    let open = wire::SessionsAsked {
        status: Some(wire::SessionStatus::Open),
        limit: Some(500),
        ..Default::default()
    };
    let sessions: wire::SessionPage = s.console_call(admin, Op::AdminSessionList, &open).await?;
    let mut used: BTreeMap<String, Used> = BTreeMap::new();
    let today = today.to_string();
    for day in days.days {
        let u = used.entry(day.app.clone()).or_default();
        u.runs_usd_month += day.runs_usd;
        u.agent_usd_month += day.agent_usd;
        if day.date == today {
            u.turns_today += day.turns;
            u.runs_usd_today += day.runs_usd;
        }
    }
    for session in sessions.sessions {
        let u = used.entry(session.app).or_default();
        u.open_sessions += 1;
        u.running_turns += u64::from(session.running_turn.is_some());
    }
    Ok(used)
}

#[derive(Template)]
#[template(path = "console/apps.html")]
struct AppsPage {
    chrome: Chrome,
    apps: Vec<(wire::Policy, Used)>,
}

/// `GET /console/apps`.
#[tracing::instrument(name = "console.apps", skip_all)]
pub(super) async fn list(State(s): State<Sidecar>, admin: Admin) -> Page {
    let policies: Result<wire::PolicyList, _> =
        s.console_call(&admin, Op::AppList, &wire::Empty {}).await;
    let (policies, mut used) = match (policies, usage(&s, &admin).await) {
        (Ok(p), Ok(u)) => (p, u),
        (Err(err), _) | (_, Err(err)) => return err.into(),
    };
    let apps = policies
        .apps
        .into_iter()
        .map(|p| {
            let u = used.remove(&p.app).unwrap_or_default();
            (p, u)
        })
        .collect();
    Page::render(&AppsPage {
        chrome: Chrome::for_admin(Section::Apps, admin.csrf()),
        apps,
    })
}

#[derive(Template)]
#[template(path = "console/app.html")]
struct AppPage {
    chrome: Chrome,
    app: String,
    updated_at: Option<String>,
    rows: Vec<Row>,
    csrf: String,
    /// What the last change said, if it was refused.
    message: Option<String>,
}

async fn app_page(s: &Sidecar, admin: &Admin, app: String, message: Option<String>) -> Page {
    let asked = wire::AppRef { app: app.clone() };
    let policy: wire::Policy = match s.console_call(admin, Op::AppGet, &asked).await {
        Ok(policy) => policy,
        Err(err) => return err.into(),
    };
    let used = match usage(s, admin).await {
        Ok(mut used) => used.remove(&policy.app).unwrap_or_default(),
        Err(err) => return err.into(),
    };
    let status = match message {
        Some(_) => StatusCode::BAD_REQUEST,
        None => StatusCode::OK,
    };
    let page = Page::render(&AppPage {
        chrome: Chrome::for_admin(Section::Apps, admin.csrf()),
        rows: rows(&policy, &used),
        updated_at: policy.updated_at,
        app: policy.app,
        csrf: admin.csrf().to_string(),
        message,
    });
    page.with_status(status)
}

/// `GET /console/apps/{app}`.
#[tracing::instrument(name = "console.app", skip_all, fields(app = %app))]
pub(super) async fn one(State(s): State<Sidecar>, admin: Admin, Path(app): Path<String>) -> Page {
    app_page(&s, &admin, app, None).await
}

/// `POST /console/apps/{app}`: the form's values become the app's own (an empty field clears
/// one: the default applies).
#[tracing::instrument(name = "console.app_set", skip_all, fields(app = %app))]
pub(super) async fn set(
    State(s): State<Sidecar>,
    admin: Admin,
    Path(app): Path<String>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Page {
    let csrf = form.get("csrf").map(String::as_str).unwrap_or_default();
    if let Err(page) = admin.check_csrf(csrf) {
        return page;
    }
    let changed = match change_of(&app, &form) {
        Ok(change) => s
            .console_call::<_, wire::Policy>(&admin, Op::AppSet, &change)
            .await
            .map(|_| ()),
        Err(err) => Err(err),
    };
    match changed {
        Ok(()) => {
            tracing::info!("an app's policy was changed from the console");
            // The app's name is a valid one (the change was taken): letters, digits, `-_.`.
            Page::see_other(&format!("/console/apps/{app}"))
        }
        Err(err) => app_page(&s, &admin, app, Some(err.message)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_becomes_the_change_empty_fields_clear() {
        let form: BTreeMap<String, String> = [
            ("csrf", "x"),
            ("max_open_sessions", " 2 "),
            ("turns_per_day", ""),
            ("runs_usd_per_month", "1.5"),
            ("agents", "claude, native"),
            ("max_permissions", "ask"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            change_of("notes", &form).unwrap(),
            serde_json::json!({
                "app": "notes", "max_open_sessions": 2, "turns_per_day": null,
                "runs_usd_per_month": 1.5, "agents": ["claude", "native"],
                "max_permissions": "ask"
            })
        );
        let bad: BTreeMap<String, String> =
            [("max_open_sessions".to_string(), "two".to_string())].into();
        let err = change_of("notes", &bad).unwrap_err();
        assert!(err.message.contains("max_open_sessions"), "{}", err.message);
    }
}
