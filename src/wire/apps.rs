//! Contract v3: apps' policies and what they used.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::agent::def::PermissionPolicy;
use crate::quota::{Amount, Limit, Limits, Window};

/// The fields of an app's policy; `None` is "not set here" (the defaults' value, or no limit).
/// The same fields make the configuration's `[app_defaults]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyFields {
    /// The agents its sessions may use; `None`: every configured agent.
    #[serde(default)]
    pub agents: Option<Vec<String>>,
    /// The models its runs may use; `None`: any.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// The most permissive permission policy its sessions get (the agent's, if less).
    #[serde(default)]
    pub max_permissions: Option<PermissionPolicy>,
    #[serde(default)]
    pub max_open_sessions: Option<u64>,
    /// Turns taken and not ended (running or queued), over all its sessions.
    #[serde(default)]
    pub max_concurrent_turns: Option<u64>,
    #[serde(default)]
    pub max_concurrent_runs: Option<u64>,
    #[serde(default)]
    pub max_timeout_secs: Option<u64>,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub turns_per_day: Option<u64>,
    #[serde(default)]
    pub runs_usd_per_day: Option<f64>,
    #[serde(default)]
    pub runs_usd_per_month: Option<f64>,
    /// The agents' own reported cost (`usage` events).
    #[serde(default)]
    pub agent_usd_per_month: Option<f64>,
}

/// Calls `$m!(field, Limit)` for every field of [`PolicyFields`].
macro_rules! each_field {
    ($m:ident) => {
        $m!(agents, Agents);
        $m!(models, Models);
        $m!(max_permissions, MaxPermissions);
        $m!(max_open_sessions, MaxOpenSessions);
        $m!(max_concurrent_turns, MaxConcurrentTurns);
        $m!(max_concurrent_runs, MaxConcurrentRuns);
        $m!(max_timeout_secs, MaxTimeoutSecs);
        $m!(requests_per_minute, RequestsPerMinute);
        $m!(turns_per_day, TurnsPerDay);
        $m!(runs_usd_per_day, RunsUsdPerDay);
        $m!(runs_usd_per_month, RunsUsdPerMonth);
        $m!(agent_usd_per_month, AgentUsdPerMonth);
    };
}

impl PolicyFields {
    /// These fields over `defaults`: each field set here wins. Also says, per field, whether
    /// its value is the app's own.
    pub fn over(&self, defaults: &PolicyFields) -> (Limits, BTreeMap<Limit, Source>) {
        let mut limits = Limits::default();
        let mut sources = BTreeMap::new();
        macro_rules! pick {
            ($f:ident, $l:ident) => {
                let own = self.$f.is_some();
                limits.$f = if own {
                    self.$f.clone()
                } else {
                    defaults.$f.clone()
                };
                let source = if own { Source::App } else { Source::Default };
                sources.insert(Limit::$l, source);
            };
        }
        each_field!(pick);
        (limits, sources)
    }

    /// A check of the values: amounts not negative and finite, lists not holding blanks.
    pub fn check(&self) -> Result<(), String> {
        for (name, usd) in [
            ("runs_usd_per_day", self.runs_usd_per_day),
            ("runs_usd_per_month", self.runs_usd_per_month),
            ("agent_usd_per_month", self.agent_usd_per_month),
        ] {
            if usd.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(format!("{name} must be a number of USD, 0 or more"));
            }
        }
        if self.max_timeout_secs == Some(0) {
            return Err("max_timeout_secs must be at least 1".into());
        }
        for (name, list) in [("agents", &self.agents), ("models", &self.models)] {
            if list.iter().flatten().any(|n| n.trim().is_empty()) {
                return Err(format!("{name} holds an empty name"));
            }
        }
        Ok(())
    }
}

impl From<&Limits> for PolicyFields {
    fn from(limits: &Limits) -> PolicyFields {
        let mut fields = PolicyFields::default();
        macro_rules! copy {
            ($f:ident, $l:ident) => {
                fields.$f = limits.$f.clone();
            };
        }
        each_field!(copy);
        fields
    }
}

/// Reads a field that may be absent (outer `None`), `null` (`Some(None)`) or a value.
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `forge.admin.app.set`: the app, and the fields to change: a field left out stays as it is,
/// `null` clears it (the default applies again).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySet {
    pub app: String,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub agents: Option<Option<Vec<String>>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub models: Option<Option<Vec<String>>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_permissions: Option<Option<PermissionPolicy>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_open_sessions: Option<Option<u64>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_concurrent_turns: Option<Option<u64>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_concurrent_runs: Option<Option<u64>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_timeout_secs: Option<Option<u64>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub requests_per_minute: Option<Option<u64>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub turns_per_day: Option<Option<u64>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub runs_usd_per_day: Option<Option<f64>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub runs_usd_per_month: Option<Option<f64>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub agent_usd_per_month: Option<Option<f64>>,
}

impl PolicySet {
    /// `fields` with this change made.
    pub fn apply(&self, mut fields: PolicyFields) -> PolicyFields {
        macro_rules! change {
            ($f:ident, $l:ident) => {
                if let Some(value) = &self.$f {
                    fields.$f = value.clone();
                }
            };
        }
        each_field!(change);
        fields
    }
}

/// Where a value of an app's policy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The app's own policy.
    App,
    /// `[app_defaults]` (or no limit, where that sets none).
    Default,
}

/// An app's policy as it applies: every field, the defaults filled in, and where each came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Policy {
    pub app: String,
    #[serde(flatten)]
    pub fields: PolicyFields,
    /// When the app's own policy last changed; `None` when it has none.
    pub updated_at: Option<String>,
    pub sources: BTreeMap<String, Source>,
}

/// `forge.admin.app.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppRef {
    pub app: String,
}

/// `forge.admin.app.list`: every app with a token or a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PolicyList {
    pub apps: Vec<Policy>,
}

/// One counted limit of `forge.usage`: its value (`None`: no limit), what is used, over what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LimitUsage {
    pub limit: Option<Amount>,
    pub used: Amount,
    pub window: Window,
    /// When the window starts again (UTC); absent for `now`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
}

/// `forge.usage`: the caller's app, each counted limit beside what it used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub app: String,
    pub at: String,
    pub limits: BTreeMap<String, LimitUsage>,
}

/// `forge.admin.usage`: one app or every app, UTC days from `from` to `to` (inclusive,
/// `YYYY-MM-DD`; both default to today).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageAsked {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// What one app did on one UTC day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageDay {
    pub date: String,
    pub app: String,
    pub sessions_created: u64,
    pub turns: u64,
    pub runs: u64,
    pub runs_usd: f64,
    pub agent_usd: f64,
    /// Requests refused, by the limit that refused them.
    pub refused: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageDays {
    pub days: Vec<UsageDay>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_keeps_what_it_leaves_out_and_clears_what_is_null() {
        let before = PolicyFields {
            max_open_sessions: Some(2),
            turns_per_day: Some(10),
            ..PolicyFields::default()
        };
        let change: PolicySet =
            serde_json::from_str(r#"{"app": "a", "turns_per_day": null, "runs_usd_per_month": 5}"#)
                .unwrap();
        let after = change.apply(before);
        assert_eq!(after.max_open_sessions, Some(2));
        assert_eq!(after.turns_per_day, None);
        assert_eq!(after.runs_usd_per_month, Some(5.0));
        let unknown = serde_json::from_str::<PolicySet>(r#"{"app": "a", "max_sessions": 1}"#);
        assert!(unknown.is_err());
    }

    #[test]
    fn the_app_wins_over_the_defaults_field_by_field() {
        let defaults = PolicyFields {
            max_open_sessions: Some(8),
            turns_per_day: Some(100),
            ..PolicyFields::default()
        };
        let own = PolicyFields {
            max_open_sessions: Some(2),
            ..PolicyFields::default()
        };
        let (limits, sources) = own.over(&defaults);
        assert_eq!(limits.max_open_sessions, Some(2));
        assert_eq!(limits.turns_per_day, Some(100));
        assert_eq!(sources[&Limit::MaxOpenSessions], Source::App);
        assert_eq!(sources[&Limit::TurnsPerDay], Source::Default);
        assert_eq!(sources.len(), Limit::ALL.len());
    }
}
