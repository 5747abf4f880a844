//! The gauges a scrape of `/metrics` reads, brought up to date when it asks: open sessions from
//! the ledger (every worker sharing it reports the same figures: aggregate them with `max`),
//! and this worker's work in flight and agent processes.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::Forge;
use crate::ledger::Apps;
use crate::telemetry;

/// The (app, agent) pairs last reported with open sessions, so that one with none left is set
/// back to 0 rather than left at its last figure.
#[derive(Default)]
pub(super) struct Reported(Mutex<BTreeSet<(String, String)>>);

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
    }

    fn report_open(&self, open: Vec<(String, String, u64)>) {
        let mut reported = self.reported.0.lock().unwrap_or_else(|p| p.into_inner());
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
