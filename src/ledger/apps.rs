//! Apps' policies and what they used: the records per-app limits are set in and counted from.

use std::future::Future;

use super::rows::{DayRow, PolicyRow, Used};
use super::LedgerResult;
use crate::quota::{Day, Limit, Refusal};
use crate::values::Timestamp;
use crate::wire::PolicySet;

pub trait Apps {
    /// Makes `change` to its app's policy (creating it), at `at`; returns the policy.
    fn set_policy(
        &self,
        change: PolicySet,
        at: Timestamp,
    ) -> impl Future<Output = LedgerResult<PolicyRow>> + Send;

    /// An app's own policy, if it has one.
    fn policy(&self, app: String) -> impl Future<Output = LedgerResult<Option<PolicyRow>>> + Send;

    /// Every app's own policy, by app.
    fn policies(&self) -> impl Future<Output = LedgerResult<Vec<PolicyRow>>> + Send;

    /// The open sessions, counted by app and agent.
    fn open_sessions_by_app(
        &self,
    ) -> impl Future<Output = LedgerResult<Vec<(String, String, u64)>>> + Send;

    /// Every app with a token or a policy, by name.
    fn app_names(&self) -> impl Future<Output = LedgerResult<Vec<String>>> + Send;

    /// Counts a request of `app` in the minute of `at`, unless `limit` requests were counted in
    /// it already: then the refusal is recorded and returned.
    fn count_request(
        &self,
        app: String,
        limit: u64,
        at: Timestamp,
    ) -> impl Future<Output = LedgerResult<Option<Refusal>>> + Send;

    /// Records that `limit` refused a request of `app` at `at`.
    fn record_refusal(
        &self,
        app: String,
        limit: Limit,
        at: Timestamp,
    ) -> impl Future<Output = LedgerResult<()>> + Send;

    /// What `app` uses of each counted limit at `at`; turns held by workers not heard from
    /// since `alive_since` are not counted.
    fn used(
        &self,
        app: String,
        at: Timestamp,
        alive_since: Timestamp,
    ) -> impl Future<Output = LedgerResult<Used>> + Send;

    /// What `app` (or every app) did on each UTC day from `from` to `to`, inclusive: a row per
    /// app and day, days without anything included, by app then day.
    fn usage_days(
        &self,
        app: Option<String>,
        from: Day,
        to: Day,
    ) -> impl Future<Output = LedgerResult<Vec<DayRow>>> + Send;
}
