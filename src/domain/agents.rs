//! The configured agents' readiness, for health: checked when the worker starts, and again
//! when health finds the last check older than [`AGENT_CHECK_TTL`] — by the worker's own
//! checking task, never on a request's path.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::Forge;
use crate::agent::check::Report;
use crate::wire;

/// How old a check of the agents may be before health asks for another.
pub const AGENT_CHECK_TTL: Duration = Duration::from_secs(300);

/// The last check of the agents, and what asks for the next.
pub(super) struct AgentChecks {
    last: Mutex<Last>,
    wanted: Notify,
    /// How many checks have ended.
    done: watch::Sender<u64>,
}

#[derive(Default)]
struct Last {
    /// When the last check started.
    started: Option<Instant>,
    agents: Vec<wire::AgentHealth>,
}

impl Default for AgentChecks {
    fn default() -> Self {
        AgentChecks {
            last: Mutex::default(),
            wanted: Notify::new(),
            done: watch::Sender::new(0),
        }
    }
}

impl AgentChecks {
    /// The agents as last checked; asks for a new check when that is too old.
    pub(super) fn current(&self) -> Vec<wire::AgentHealth> {
        let last = self.last.lock().expect("agent checks lock");
        if last
            .started
            .is_some_and(|at| at.elapsed() > AGENT_CHECK_TTL)
        {
            self.wanted.notify_one();
        }
        last.agents.clone()
    }
}

impl Forge {
    /// Starts every configured agent as a session's would be, asks `initialize` and
    /// `session/new`, and keeps what it found for health. Each agent that is not ready is
    /// logged at warn with the reason.
    pub async fn check_agents(&self) -> Vec<Report> {
        let checks = &self.agent_checks;
        checks.last.lock().expect("agent checks lock").started = Some(Instant::now());
        let reports = self.checker.check_all(&self.settings.agents).await;
        for r in &reports {
            match &r.outcome {
                Ok(()) => tracing::info!(agent = %r.name, "agent ready"),
                Err(e) => tracing::warn!(agent = %r.name, reason = %e, "agent not ready"),
            }
        }
        checks.last.lock().expect("agent checks lock").agents =
            reports.iter().map(Report::health).collect();
        checks.done.send_modify(|n| *n += 1);
        reports
    }

    /// Checks the agents now, then each time health asks for a newer check; runs until the
    /// worker stops.
    pub async fn keep_agents_checked(&self) {
        loop {
            self.check_agents().await;
            self.agent_checks.wanted.notified().await;
        }
    }

    /// Waits, at most `limit`, until the agents have been checked once.
    pub async fn agents_checked(&self, limit: Duration) -> bool {
        let mut done = self.agent_checks.done.subscribe();
        let checked = tokio::time::timeout(limit, done.wait_for(|n| *n > 0)).await;
        checked.is_ok()
    }
}
