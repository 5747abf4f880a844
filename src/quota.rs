//! Per-app limits (contract v3): what each limit is called, the window it counts over, and the
//! refusal of work that would go past one. Shared by the domain, which decides, and the
//! ledger, which counts in the same transaction that admits the work.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::agent::def::PermissionPolicy;

/// One field of an app's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Agents,
    Models,
    MaxPermissions,
    MaxOpenSessions,
    MaxConcurrentTurns,
    MaxConcurrentRuns,
    MaxTimeoutSecs,
    RequestsPerMinute,
    TurnsPerDay,
    RunsUsdPerDay,
    RunsUsdPerMonth,
    AgentUsdPerMonth,
}

impl Limit {
    pub const ALL: [Limit; 12] = [
        Limit::Agents,
        Limit::Models,
        Limit::MaxPermissions,
        Limit::MaxOpenSessions,
        Limit::MaxConcurrentTurns,
        Limit::MaxConcurrentRuns,
        Limit::MaxTimeoutSecs,
        Limit::RequestsPerMinute,
        Limit::TurnsPerDay,
        Limit::RunsUsdPerDay,
        Limit::RunsUsdPerMonth,
        Limit::AgentUsdPerMonth,
    ];

    /// The limits that count something: the ones usage reports.
    pub const COUNTED: [Limit; 8] = [
        Limit::MaxOpenSessions,
        Limit::MaxConcurrentTurns,
        Limit::MaxConcurrentRuns,
        Limit::RequestsPerMinute,
        Limit::TurnsPerDay,
        Limit::RunsUsdPerDay,
        Limit::RunsUsdPerMonth,
        Limit::AgentUsdPerMonth,
    ];

    /// Its field name in the policy, in messages and in the ledger.
    pub const fn name(self) -> &'static str {
        match self {
            Limit::Agents => "agents",
            Limit::Models => "models",
            Limit::MaxPermissions => "max_permissions",
            Limit::MaxOpenSessions => "max_open_sessions",
            Limit::MaxConcurrentTurns => "max_concurrent_turns",
            Limit::MaxConcurrentRuns => "max_concurrent_runs",
            Limit::MaxTimeoutSecs => "max_timeout_secs",
            Limit::RequestsPerMinute => "requests_per_minute",
            Limit::TurnsPerDay => "turns_per_day",
            Limit::RunsUsdPerDay => "runs_usd_per_day",
            Limit::RunsUsdPerMonth => "runs_usd_per_month",
            Limit::AgentUsdPerMonth => "agent_usd_per_month",
        }
    }

    pub fn from_name(name: &str) -> Option<Limit> {
        Limit::ALL.into_iter().find(|l| l.name() == name)
    }

    /// What it counts over. `None` for the limits that count nothing (lists, caps).
    pub const fn window(self) -> Option<Window> {
        match self {
            Limit::MaxOpenSessions | Limit::MaxConcurrentTurns | Limit::MaxConcurrentRuns => {
                Some(Window::Now)
            }
            Limit::RequestsPerMinute => Some(Window::Minute),
            Limit::TurnsPerDay | Limit::RunsUsdPerDay => Some(Window::Day),
            Limit::RunsUsdPerMonth | Limit::AgentUsdPerMonth => Some(Window::Month),
            _ => None,
        }
    }

    /// What it counts, for messages.
    const fn counts(self) -> &'static str {
        match self {
            Limit::MaxOpenSessions => "open sessions",
            Limit::MaxConcurrentTurns => "turns running or queued",
            Limit::MaxConcurrentRuns => "runs running",
            Limit::RequestsPerMinute => "requests this minute",
            Limit::TurnsPerDay => "turns today, UTC",
            Limit::RunsUsdPerDay => "runs' cost today, UTC",
            Limit::RunsUsdPerMonth => "runs' cost this month, UTC",
            Limit::AgentUsdPerMonth => "agents' reported cost this month, UTC",
            _ => "",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a counted limit counts over. Days and months are UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// What is open or running now; it frees when work ends.
    Now,
    Minute,
    Day,
    Month,
}

impl Window {
    /// The start of the window that holds `at`; `None` for [`Window::Now`].
    pub fn start(self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let day = Utc.from_utc_datetime(&at.date_naive().and_hms_opt(0, 0, 0)?);
        match self {
            Window::Now => None,
            Window::Minute => at.with_nanosecond(0)?.with_second(0),
            Window::Day => Some(day),
            Window::Month => day.with_day(1),
        }
    }

    /// The start of the next window after the one that holds `at`.
    pub fn resets_at(self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = self.start(at)?;
        match self {
            Window::Now => None,
            Window::Minute => Some(start + Duration::minutes(1)),
            Window::Day => Some(start + Duration::days(1)),
            Window::Month => start.checked_add_months(chrono::Months::new(1)),
        }
    }

    /// Whole seconds from `at` until the window resets (at least 1).
    pub fn retry_after_secs(self, at: DateTime<Utc>) -> Option<u64> {
        let left = self.resets_at(at)? - at;
        Some(((left.num_milliseconds() + 999) / 1000).max(1) as u64)
    }
}

/// A UTC day, for usage by day.
pub type Day = NaiveDate;

/// An amount a limit is set to or counts: a number of things, or US dollars.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Amount {
    Count(u64),
    Usd(f64),
}

impl Amount {
    /// Whether `self`, what is used, leaves no room under `limit`.
    pub fn reaches(self, limit: Amount) -> bool {
        match (self, limit) {
            (Amount::Count(used), Amount::Count(limit)) => used >= limit,
            (used, limit) => used.as_f64() >= limit.as_f64(),
        }
    }

    pub fn as_f64(self) -> f64 {
        match self {
            Amount::Count(n) => n as f64,
            Amount::Usd(usd) => usd,
        }
    }
}

impl fmt::Display for Amount {
    /// A count as it is; dollars to a hundredth of a cent, without trailing zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Usd(usd) => {
                let text = format!("{usd:.4}");
                let text = text.trim_end_matches('0').trim_end_matches('.');
                write!(f, "{text} USD")
            }
        }
    }
}

/// The limits an app's work is admitted under: its policy over the defaults. `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub agents: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub max_permissions: Option<PermissionPolicy>,
    pub max_open_sessions: Option<u64>,
    pub max_concurrent_turns: Option<u64>,
    pub max_concurrent_runs: Option<u64>,
    pub max_timeout_secs: Option<u64>,
    pub requests_per_minute: Option<u64>,
    pub turns_per_day: Option<u64>,
    pub runs_usd_per_day: Option<f64>,
    pub runs_usd_per_month: Option<f64>,
    pub agent_usd_per_month: Option<f64>,
}

impl Limits {
    /// The value a counted limit is set to, if it is set.
    pub fn amount(&self, limit: Limit) -> Option<Amount> {
        let count = |n: Option<u64>| n.map(Amount::Count);
        let usd = |n: Option<f64>| n.map(Amount::Usd);
        match limit {
            Limit::MaxOpenSessions => count(self.max_open_sessions),
            Limit::MaxConcurrentTurns => count(self.max_concurrent_turns),
            Limit::MaxConcurrentRuns => count(self.max_concurrent_runs),
            Limit::MaxTimeoutSecs => count(self.max_timeout_secs),
            Limit::RequestsPerMinute => count(self.requests_per_minute),
            Limit::TurnsPerDay => count(self.turns_per_day),
            Limit::RunsUsdPerDay => usd(self.runs_usd_per_day),
            Limit::RunsUsdPerMonth => usd(self.runs_usd_per_month),
            Limit::AgentUsdPerMonth => usd(self.agent_usd_per_month),
            Limit::Agents | Limit::Models | Limit::MaxPermissions => None,
        }
    }

    /// The first of `limits` that `used` reaches, as a refusal at `at`.
    pub fn first_reached(
        &self,
        app: &str,
        at: DateTime<Utc>,
        limits: &[Limit],
        used: impl Fn(Limit) -> Amount,
    ) -> Option<Refusal> {
        limits.iter().find_map(|&limit| {
            let value = self.amount(limit)?;
            let used = used(limit);
            used.reaches(value)
                .then(|| Refusal::counted(app, limit, value, used, at))
        })
    }

    /// The permission policy a session of an agent answering with `agent`'s gets: the less
    /// permissive of the two.
    pub fn permissions(&self, agent: PermissionPolicy) -> PermissionPolicy {
        match self.max_permissions {
            Some(cap) if permissiveness(cap) < permissiveness(agent) => cap,
            _ => agent,
        }
    }
}

/// How much an agent may do under a permission policy, in order: nothing; reads; whatever
/// the caller allows, one request at a time; anything.
fn permissiveness(p: PermissionPolicy) -> u8 {
    match p {
        PermissionPolicy::DenyAll => 0,
        PermissionPolicy::AllowReads => 1,
        PermissionPolicy::Ask => 2,
        PermissionPolicy::AllowAll => 3,
    }
}

/// Work refused by a limit: which, its value, and when to try again where it frees with time.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub limit: Limit,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl Refusal {
    /// A counted limit reached: `used` of what `limit` counts, which is set to `value`.
    pub fn counted(
        app: &str,
        limit: Limit,
        value: Amount,
        used: Amount,
        at: DateTime<Utc>,
    ) -> Self {
        let window = limit.window().unwrap_or(Window::Now);
        Refusal {
            limit,
            message: format!(
                "app {app:?} is at its limit {limit} = {value} (used: {used}, {})",
                limit.counts()
            ),
            retry_after_secs: window.retry_after_secs(at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn windows_reset_at_the_next_utc_minute_day_and_month() {
        let t = at("2026-12-31T23:59:30.250Z");
        assert_eq!(
            Window::Minute.resets_at(t),
            Some(at("2027-01-01T00:00:00Z"))
        );
        assert_eq!(Window::Day.start(t), Some(at("2026-12-31T00:00:00Z")));
        assert_eq!(Window::Month.start(t), Some(at("2026-12-01T00:00:00Z")));
        assert_eq!(Window::Month.resets_at(t), Some(at("2027-01-01T00:00:00Z")));
        assert_eq!(Window::Minute.retry_after_secs(t), Some(30));
        assert_eq!(Window::Now.retry_after_secs(t), None);
        let feb = at("2026-01-31T12:00:00Z");
        assert_eq!(
            Window::Month.resets_at(feb),
            Some(at("2026-02-01T00:00:00Z"))
        );
    }

    #[test]
    fn a_limit_is_reached_when_used_is_at_it() {
        let limits = Limits {
            max_open_sessions: Some(2),
            runs_usd_per_month: Some(5.0),
            ..Limits::default()
        };
        let t = at("2026-06-15T10:00:00Z");
        let used = |n, usd| {
            move |l: Limit| match l {
                Limit::MaxOpenSessions => Amount::Count(n),
                _ => Amount::Usd(usd),
            }
        };
        let some = [Limit::MaxOpenSessions, Limit::RunsUsdPerMonth];
        assert_eq!(limits.first_reached("a", t, &some, used(1, 4.99)), None);
        let refused = limits.first_reached("a", t, &some, used(2, 0.0)).unwrap();
        assert_eq!(refused.limit, Limit::MaxOpenSessions);
        assert_eq!(refused.retry_after_secs, None);
        assert!(
            refused.message.contains("max_open_sessions = 2"),
            "{}",
            refused.message
        );
        let refused = limits.first_reached("a", t, &some, used(0, 5.0)).unwrap();
        assert_eq!(refused.limit, Limit::RunsUsdPerMonth);
        assert_eq!(refused.retry_after_secs, Some(15 * 24 * 3600 + 14 * 3600));
    }

    #[test]
    fn dollars_show_to_a_hundredth_of_a_cent() {
        assert_eq!(Amount::Usd(0.0123).to_string(), "0.0123 USD");
        assert_eq!(Amount::Usd(5.0).to_string(), "5 USD");
        assert_eq!(Amount::Usd(1.5).to_string(), "1.5 USD");
        assert_eq!(Amount::Count(3).to_string(), "3");
    }

    #[test]
    fn a_session_gets_the_less_permissive_of_agent_and_app() {
        use PermissionPolicy::*;
        let capped = |cap| Limits {
            max_permissions: cap,
            ..Limits::default()
        };
        assert_eq!(capped(None).permissions(AllowAll), AllowAll);
        assert_eq!(capped(Some(AllowReads)).permissions(AllowAll), AllowReads);
        assert_eq!(capped(Some(AllowReads)).permissions(Ask), AllowReads);
        assert_eq!(capped(Some(Ask)).permissions(AllowAll), Ask);
        assert_eq!(capped(Some(AllowAll)).permissions(DenyAll), DenyAll);
        for name in Limit::ALL {
            assert_eq!(Limit::from_name(name.name()), Some(name));
        }
    }
}
