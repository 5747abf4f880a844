//! Lifecycle across every worker on a ledger: heartbeats; the sweep, which soft-closes idle
//! sessions, hard-deletes long-closed ones, removes runs' staging directories past their
//! retention, and records work a dead worker left running as interrupted. One worker at a time
//! sweeps, under a lease in the ledger.

use super::Forge;
use crate::error::Result;
use crate::ledger::{Idle, Lease, Recovery, Sessions, Stamp, Workers};
use crate::values::Timestamp;

const SWEEP_LEASE: &str = "sweeper";

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Whether this worker held the lease and swept.
    pub swept: bool,
    pub closed: u64,
    pub deleted: u64,
    /// Staging directories of runs past their retention.
    pub runs_removed: u64,
    pub interrupted_turns: u64,
    pub interrupted_runs: u64,
}

impl Forge {
    /// Records that this worker is alive.
    pub async fn heartbeat(&self) -> Result<()> {
        let me = self.settings.worker_id.clone();
        Ok(self.ledger.heartbeat(me, Timestamp::now()).await?)
    }

    /// Records that this worker stops; its running turns and runs, if any are left, are
    /// interrupted.
    pub async fn stopped(&self, why: &str) -> Result<u64> {
        let me = &self.settings.worker_id;
        let left = self
            .ledger
            .interrupt_own(Stamp::now(me), why.to_string())
            .await?;
        self.ledger
            .worker_stopped(me.clone(), Timestamp::now())
            .await?;
        Ok(left.turns + left.runs)
    }

    /// A worker silent this long is dead: what it left running is recorded as interrupted.
    pub(super) fn dead_after_secs(&self) -> i64 {
        3 * self.settings.worker_heartbeat_secs as i64
    }

    /// One sweep, if this worker holds the sweep lease.
    pub async fn sweep(&self) -> Result<SweepReport> {
        let lease_secs = (2 * self.settings.sweep_interval_secs as i64).max(self.dead_after_secs());
        let lease = Lease {
            name: SWEEP_LEASE.into(),
            holder: self.settings.worker_id.clone(),
            expires_at: Timestamp::seconds_from_now(lease_secs),
        };
        let held = self.ledger.try_lease(lease, Timestamp::now()).await?;
        if !held {
            return Ok(SweepReport::default());
        }
        let mut report = SweepReport {
            swept: true,
            ..Default::default()
        };

        let interrupted = self
            .ledger
            .recover_interrupted(
                Timestamp::seconds_from_now(-self.dead_after_secs()),
                Timestamp::now(),
            )
            .await?;
        report.interrupted_turns = interrupted.turns;
        report.interrupted_runs = interrupted.runs;
        if interrupted.turns + interrupted.runs > 0 {
            tracing::warn!(
                turns = interrupted.turns,
                runs = interrupted.runs,
                "recorded work of a stopped worker as interrupted"
            );
        }

        let idle_before = Timestamp::seconds_from_now(-(self.settings.session_ttl_secs as i64));
        let idle = || Idle {
            before: idle_before,
            alive_since: Timestamp::seconds_from_now(-self.dead_after_secs()),
        };
        for row in self.ledger.idle_sessions(idle()).await? {
            let by = Stamp::now(&self.settings.worker_id);
            let closed = self.ledger.sweep_close(row.session_id, idle(), by).await?;
            if !closed {
                continue;
            }
            report.closed += 1;
            tracing::info!(session = %row.session_id, app = %row.app, "idle session closed");
            if let Err(e) = self.agent.close(&self.agent_session(&row)).await {
                tracing::warn!(session = %row.session_id, error = %e, "closing the agent session of a swept session failed");
            }
        }

        let closed_before =
            Timestamp::seconds_from_now(-(self.settings.session_hard_ttl_secs as i64));
        for row in self.ledger.expired_sessions(closed_before).await? {
            if let Err(e) = self.agent.forget(&self.agent_session(&row)).await {
                tracing::warn!(session = %row.session_id, error = %e, "removing the agent's record failed");
            }
            match tokio::fs::remove_dir_all(&row.cwd).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(session = %row.session_id, error = %e, "removing the session directory failed")
                }
            }
            let deleted = self
                .ledger
                .hard_delete(row.session_id, Stamp::now(&self.settings.worker_id))
                .await?;
            if deleted {
                report.deleted += 1;
                tracing::info!(session = %row.session_id, app = %row.app, "closed session deleted");
            }
        }
        report.runs_removed = self.sweep_runs().await?;
        Ok(report)
    }
}
