//! Per-app policy (contract v3): the limits an app's requests are checked against in the
//! pipeline's policy step, the admin operations that set them, and each app's usage.
//! The counted limits are checked by the ledger in the transaction that admits the work.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};

use super::ops::{Access, Op};
use super::request::Request;
use super::types::AppName;
use super::{Caller, Forge};
use crate::agent::def::{BackendKind, PermissionPolicy};
use crate::error::{Error, Result};
use crate::ledger::{Apps, Ledger, PolicyRow};
use crate::quota::{Limit, Limits, Refusal, Window};
use crate::values::Timestamp;
use crate::wire::{self, PolicyFields};

/// How long a worker uses an app's policy before it reads it again: a change holds on every
/// worker within this.
const POLICY_FRESH: Duration = Duration::from_secs(1);

/// The longest range of days `forge.admin.usage` answers.
const MAX_USAGE_DAYS: i64 = 366;

/// The apps' limits as this worker read them last.
#[derive(Default)]
pub(super) struct PolicyCache {
    read: Mutex<HashMap<String, (Instant, Arc<Limits>)>>,
}

impl PolicyCache {
    fn fresh(&self, app: &str) -> Option<Arc<Limits>> {
        let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let (at, limits) = read.get(app)?;
        (at.elapsed() < POLICY_FRESH).then(|| limits.clone())
    }

    fn keep(&self, app: &str, limits: Arc<Limits>) {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        read.insert(app.to_string(), (Instant::now(), limits));
    }

    fn forget(&self, app: &str) {
        self.read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(app);
    }
}

/// The error of work of `app` that a limit refused; counted.
pub(super) fn refusal(app: &str, refused: &Refusal) -> Error {
    crate::telemetry::quota_refused(app, refused.limit.name());
    Error::quota(refused)
}

/// An app's policy as it applies, for the wire: `row` (its own, if it has one) over `defaults`.
pub fn policy_reply(app: &str, row: Option<&PolicyRow>, defaults: &PolicyFields) -> wire::Policy {
    let own = row.map(|r| r.fields.clone()).unwrap_or_default();
    let (limits, sources) = own.over(defaults);
    wire::Policy {
        app: app.to_string(),
        fields: PolicyFields::from(&limits),
        updated_at: row.map(|r| r.updated_at.to_string()),
        sources: sources
            .into_iter()
            .map(|(limit, source)| (limit.name().to_string(), source))
            .collect(),
    }
}

/// The usage of one app's counted limits under `limits`, from what it `used`, at `at`.
pub fn usage_reply(
    app: &str,
    limits: &Limits,
    used: &crate::ledger::Used,
    at: Timestamp,
) -> wire::Usage {
    let entries = Limit::COUNTED.into_iter().map(|limit| {
        let window = limit.window().unwrap_or(Window::Now);
        let usage = wire::LimitUsage {
            limit: limits.amount(limit),
            used: used.of(limit),
            window,
            resets_at: window
                .resets_at(at.utc())
                .map(|t| Timestamp::at(t).to_string()),
        };
        (limit.name().to_string(), usage)
    });
    wire::Usage {
        app: app.to_string(),
        at: at.to_string(),
        limits: entries.collect(),
    }
}

/// A usage day for the wire.
pub fn day_reply(row: crate::ledger::DayRow) -> wire::UsageDay {
    wire::UsageDay {
        date: row.date.to_string(),
        app: row.app,
        sessions_created: row.sessions_created,
        turns: row.turns,
        runs: row.runs,
        runs_usd: row.runs_usd,
        agent_usd: row.agent_usd,
        refused: row
            .refused
            .into_iter()
            .map(|(limit, n)| (limit.name().to_string(), n))
            .collect(),
    }
}

/// A UTC date of a usage range: `YYYY-MM-DD`, today when not given.
pub fn usage_date(given: Option<&str>, field: &str) -> Result<NaiveDate> {
    match given {
        None => Ok(Utc::now().date_naive()),
        Some(text) => NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
            Error::bad_request(format!(
                "invalid {field} {:?}: expected a UTC date like 2026-01-31",
                crate::error::clip(text, 40)
            ))
        }),
    }
}

/// A usage range, checked: `from` not after `to`, at most [`MAX_USAGE_DAYS`] days.
pub fn usage_range(from: Option<&str>, to: Option<&str>) -> Result<(NaiveDate, NaiveDate)> {
    let (from, to) = (usage_date(from, "from")?, usage_date(to, "to")?);
    if from > to {
        return Err(Error::bad_request(format!("from {from} is after to {to}")));
    }
    if (to - from).num_days() >= MAX_USAGE_DAYS {
        return Err(Error::bad_request(format!(
            "a usage range holds at most {MAX_USAGE_DAYS} days"
        )));
    }
    Ok((from, to))
}

impl Forge {
    /// `app`'s limits: its policy over the defaults, read at most [`POLICY_FRESH`] ago.
    pub(super) async fn limits_of(&self, app: &str) -> Result<Arc<Limits>> {
        if let Some(limits) = self.policies.fresh(app) {
            return Ok(limits);
        }
        let row = self.ledger.policy(app.to_string()).await?;
        let own = row.map(|r| r.fields).unwrap_or_default();
        let limits = Arc::new(own.over(&self.settings.app_defaults).0);
        self.policies.keep(app, limits.clone());
        Ok(limits)
    }

    /// The policy step of the pipeline: the caller's limits, the requests it may send this
    /// minute, and what the request names (an agent, a model, a timeout) checked against them.
    /// Counted limits of the work itself are the ledger's to check when it admits the work.
    /// Admin operations are not limited: an operator stays able to change the policy that
    /// limits its own app. `forge.usage` is not counted against requests per minute, so that
    /// an app at that limit can still learn when it frees.
    pub(super) async fn police(&self, mut caller: Caller, request: &Request) -> Result<Caller> {
        let op = request.op();
        if op.access() == Access::Admin {
            return Ok(caller);
        }
        let limits = self.limits_of(caller.app.as_str()).await?;
        let app = caller.app.to_string();
        if let Some(per_minute) = limits.requests_per_minute.filter(|_| op != Op::Usage) {
            let counted = self
                .ledger
                .count_request(app.clone(), per_minute, Timestamp::now());
            if let Some(refused) = counted.await? {
                return Err(refusal(&app, &refused));
            }
        }
        if let Err(err) = self.named_in(&limits, request) {
            if let Some(limit) = err.limit.as_deref().and_then(Limit::from_name) {
                crate::telemetry::quota_refused(&app, limit.name());
                self.ledger
                    .record_refusal(app, limit, Timestamp::now())
                    .await?;
            }
            return Err(err);
        }
        caller.limits = limits;
        Ok(caller)
    }

    /// What `request` names, checked against `limits`: an agent or model the app may not use
    /// is `forbidden`; a timeout over its maximum is `quota_exceeded`.
    fn named_in(&self, limits: &Limits, request: &Request) -> Result<()> {
        let (timeout, agent, model) = match request {
            Request::SessionCreate(r) => (
                None,
                Some(r.agent.as_ref().unwrap_or(&self.settings.default_agent)),
                None,
            ),
            Request::SessionTurn(r) => (r.timeout_secs, None, None),
            Request::Run(r) => (
                r.timeout_secs,
                None,
                Some(r.model.as_ref().unwrap_or(&self.settings.default_model)),
            ),
            _ => return Ok(()),
        };
        let refused = |limit: Limit, what: &str, name: &str| {
            let mut err = Error::forbidden(format!(
                "this app may not use the {what} {name:?} ({limit})"
            ));
            err.limit = Some(limit.name().to_string());
            err
        };
        // An agent that is not configured is the handler's `bad_request`, whatever the policy.
        let configured = agent.filter(|a| self.settings.agents.contains_key(*a));
        if let (Some(agent), Some(allowed)) = (configured, &limits.agents) {
            if !allowed.contains(agent) {
                return Err(refused(Limit::Agents, "agent", agent));
            }
        }
        if let (Some(model), Some(allowed)) = (model, &limits.models) {
            if !allowed.contains(model) {
                return Err(refused(Limit::Models, "model", model));
            }
        }
        match (timeout, limits.max_timeout_secs) {
            (Some(asked), Some(cap)) if asked > cap => Err(Error::quota(&Refusal {
                limit: Limit::MaxTimeoutSecs,
                message: format!(
                    "timeout_secs {asked} is over this app's limit max_timeout_secs = {cap}"
                ),
                retry_after_secs: None,
            })),
            _ => Ok(()),
        }
    }

    /// The permission policy a session of `backend` gets under `limits`, its agent answering
    /// with `agent`'s: the less permissive. On acpx, which answers permissions itself and cannot
    /// ask the caller, "ask" denies.
    pub(super) fn capped_permissions(
        limits: &Limits,
        backend: BackendKind,
        agent: PermissionPolicy,
    ) -> PermissionPolicy {
        match (limits.permissions(agent), backend) {
            (PermissionPolicy::Ask, BackendKind::Acpx) => PermissionPolicy::DenyAll,
            (permissions, _) => permissions,
        }
    }

    /// A turn's or run's timeout: the requested one checked, or the default, within the app's
    /// maximum (which the policy step held the request to).
    pub(super) fn timeout_within(&self, requested: Option<u64>, limits: &Limits) -> Result<u64> {
        let secs = self.timeout_secs(requested)?;
        Ok(limits
            .max_timeout_secs
            .map_or(secs, |cap| secs.min(cap.max(1))))
    }

    /// `forge.admin.app.set`.
    pub async fn set_app_policy(&self, change: wire::PolicySet) -> Result<wire::Policy> {
        let agents: Vec<&str> = self.settings.agents.keys().map(String::as_str).collect();
        let defaults = &self.settings.app_defaults;
        let policy = set_policy(&self.ledger, change, &agents, defaults).await?;
        self.policies.forget(&policy.app);
        Ok(policy)
    }

    /// `forge.admin.app.get`.
    pub async fn get_app_policy(&self, app: AppName) -> Result<wire::Policy> {
        get_policy(&self.ledger, app, &self.settings.app_defaults).await
    }

    /// `forge.admin.app.list`.
    pub async fn list_app_policies(&self) -> Result<wire::PolicyList> {
        list_policies(&self.ledger, &self.settings.app_defaults).await
    }

    /// `forge.usage`: the caller's app.
    pub async fn usage(&self, caller: &Caller) -> Result<wire::Usage> {
        let at = Timestamp::now();
        let alive_since = Timestamp::seconds_from_now(-self.dead_after_secs());
        let used = self
            .ledger
            .used(caller.app.to_string(), at, alive_since)
            .await?;
        Ok(usage_reply(caller.app.as_str(), &caller.limits, &used, at))
    }

    /// `forge.admin.usage`.
    pub async fn admin_usage(&self, asked: wire::UsageAsked) -> Result<wire::UsageDays> {
        usage_days(&self.ledger, asked).await
    }
}

/// Changes an app's policy: `forge.admin.app.set`, and the CLI's `app set`. `agents` are the
/// configured agents' names, which a policy's `agents` must be among.
pub async fn set_policy(
    ledger: &Ledger,
    change: wire::PolicySet,
    agents: &[&str],
    defaults: &PolicyFields,
) -> Result<wire::Policy> {
    let app = AppName::parse(&change.app)?;
    let fields = change.apply(PolicyFields::default());
    fields.check().map_err(Error::bad_request)?;
    let listed = fields.agents.iter().flatten();
    if let Some(unknown) = listed.clone().find(|a| !agents.contains(&a.as_str())) {
        return Err(Error::bad_request(format!(
            "unknown agent {unknown:?}; configured agents: {}",
            agents.join(", ")
        )));
    }
    let row = ledger.set_policy(change, Timestamp::now()).await?;
    tracing::info!(app = %app, "app policy changed");
    Ok(policy_reply(app.as_str(), Some(&row), defaults))
}

/// An app's policy as it applies: `forge.admin.app.get`, and the CLI's `app show`.
pub async fn get_policy(
    ledger: &Ledger,
    app: AppName,
    defaults: &PolicyFields,
) -> Result<wire::Policy> {
    let row = ledger.policy(app.to_string()).await?;
    Ok(policy_reply(app.as_str(), row.as_ref(), defaults))
}

/// Every app with a token or a policy: `forge.admin.app.list`, and the CLI's `app list`.
pub async fn list_policies(ledger: &Ledger, defaults: &PolicyFields) -> Result<wire::PolicyList> {
    let rows: BTreeMap<String, PolicyRow> = ledger
        .policies()
        .await?
        .into_iter()
        .map(|r| (r.app.clone(), r))
        .collect();
    let names = ledger.app_names().await?;
    let apps = names
        .iter()
        .map(|app| policy_reply(app, rows.get(app), defaults));
    Ok(wire::PolicyList {
        apps: apps.collect(),
    })
}

/// What apps did per UTC day: `forge.admin.usage`, and the CLI's `usage`.
pub async fn usage_days(ledger: &Ledger, asked: wire::UsageAsked) -> Result<wire::UsageDays> {
    let app = asked.app.as_deref().map(AppName::parse).transpose()?;
    let (from, to) = usage_range(asked.from.as_deref(), asked.to.as_deref())?;
    let rows = ledger
        .usage_days(app.map(|a| a.to_string()), from, to)
        .await?;
    Ok(wire::UsageDays {
        days: rows.into_iter().map(day_reply).collect(),
    })
}
