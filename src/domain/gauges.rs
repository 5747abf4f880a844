//! The gauges a scrape of `/metrics` reads, brought up to date when it asks: open sessions and
//! the apps' budgets against what they spent, from the ledger (every worker sharing it reports
//! the same figures: aggregate them with `max`), and this worker's work in flight and agent
//! processes.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::Forge;
use crate::ledger::Apps;
use crate::quota::Limit;
use crate::telemetry;
use crate::values::Timestamp;

/// The budgets an app can have, in dollars.
const BUDGETS: [Limit; 3] = [
    Limit::RunsUsdPerDay,
    Limit::RunsUsdPerMonth,
    Limit::AgentUsdPerMonth,
];

/// The (app, agent) pairs last reported with open sessions, so that one with none left is set
/// back to 0 rather than left at its last figure; and the apps last reported with a budget.
#[derive(Default)]
pub(super) struct Reported {
    open: Mutex<BTreeSet<(String, String)>>,
    budgets: Mutex<BTreeSet<(String, &'static str)>>,
}

impl Forge {
    /// Brings the gauges up to date.
    pub async fn refresh_gauges(&self) {
        let (turns_running, turns_queued) = self.turns.load();
        let (runs_running, _) = self.runs.load();
        telemetry::in_flight(turns_running, turns_queued, runs_running);
        for (backend, n) in self.agent.agent_processes() {
            telemetry::agent_processes(backend, n);
        }
        match self.ledger.open_sessions_by_app().await {
            Ok(open) => self.report_open(open),
            Err(e) => tracing::warn!(error = %e, "metrics: the open sessions could not be read"),
        }
        if let Err(e) = self.report_budgets().await {
            tracing::warn!(error = %e, "metrics: the apps' budgets could not be read");
        }
    }

    /// Each app's budgets that are set, and what it spent of each in its window; a budget no
    /// longer set is reported as such (not a number).
    async fn report_budgets(&self) -> crate::error::Result<()> {
        let mut had = std::mem::take(&mut *lock(&self.reported.budgets));
        let mut has = BTreeSet::new();
        for app in self.ledger.app_names().await? {
            let limits = self.limits_of(&app).await?;
            let set: Vec<_> = BUDGETS
                .into_iter()
                .filter_map(|limit| Some((limit, limits.amount(limit)?.as_f64())))
                .collect();
            if set.is_empty() {
                continue;
            }
            let at = Timestamp::now();
            let alive_since = Timestamp::seconds_from_now(-self.dead_after_secs());
            let used = self.ledger.used(app.clone(), at, alive_since).await?;
            for (limit, usd) in set {
                telemetry::budget(&app, limit.name(), Some(usd), used.of(limit).as_f64());
                had.remove(&(app.clone(), limit.name()));
                has.insert((app.clone(), limit.name()));
            }
        }
        for (app, limit) in had {
            telemetry::budget(&app, limit, None, 0.0);
        }
        *lock(&self.reported.budgets) = has;
        Ok(())
    }

    fn report_open(&self, open: Vec<(String, String, u64)>) {
        let mut reported = lock(&self.reported.open);
        let now: BTreeSet<(String, String)> = open
            .iter()
            .map(|(app, agent, _)| (app.clone(), agent.clone()))
            .collect();
        for (app, agent) in reported.difference(&now) {
            telemetry::sessions_open(app, agent, 0);
        }
        for (app, agent, n) in &open {
            telemetry::sessions_open(app, agent, *n);
        }
        *reported = now;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
