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

    /// One sweep, if this worker holds the sweep lease: work of stopped workers recorded as
    /// interrupted, idle sessions closed, long-closed ones deleted, old runs' files removed.
    pub async fn sweep(&self) -> Result<SweepReport> {
        if !self.take_sweep_lease().await? {
            return Ok(SweepReport::default());
        }
        let (interrupted_turns, interrupted_runs) = self.recover_interrupted().await?;
        Ok(SweepReport {
            swept: true,
            interrupted_turns,
            interrupted_runs,
            closed: self.close_idle_sessions().await?,
            deleted: self.delete_expired_sessions().await?,
            runs_removed: self.sweep_runs().await?,
        })
    }

    /// Whether this worker holds the sweep lease (taken or renewed now).
    async fn take_sweep_lease(&self) -> Result<bool> {
        let lease_secs = (2 * self.settings.sweep_interval_secs as i64).max(self.dead_after_secs());
        let lease = Lease {
            name: SWEEP_LEASE.into(),
            holder: self.settings.worker_id.clone(),
            expires_at: Timestamp::seconds_from_now(lease_secs),
        };
        Ok(self.ledger.try_lease(lease, Timestamp::now()).await?)
    }

    /// The turns and runs of workers silent past `dead_after_secs`, recorded as interrupted.
    async fn recover_interrupted(&self) -> Result<(u64, u64)> {
        let dead_since = Timestamp::seconds_from_now(-self.dead_after_secs());
        let interrupted = self
            .ledger
            .recover_interrupted(dead_since, Timestamp::now())
            .await?;
        if interrupted.turns + interrupted.runs > 0 {
            tracing::warn!(
                turns = interrupted.turns,
                runs = interrupted.runs,
                "recorded work of a stopped worker as interrupted"
            );
        }
        Ok((interrupted.turns, interrupted.runs))
    }

    /// Closes the sessions without a turn for `session_ttl_secs` (counted from their last turn,
    /// or their creation) whose owner, if any, is dead: how many.
    async fn close_idle_sessions(&self) -> Result<u64> {
        let idle_before = Timestamp::seconds_from_now(-(self.settings.session_ttl_secs as i64));
        let idle = || Idle {
            before: idle_before,
            alive_since: Timestamp::seconds_from_now(-self.dead_after_secs()),
        };
        let mut closed = 0;
        for row in self.ledger.idle_sessions(idle()).await? {
            let by = Stamp::now(&self.settings.worker_id);
            if !self.ledger.sweep_close(row.session_id, idle(), by).await? {
                continue;
            }
            closed += 1;
            tracing::info!(session = %row.session_id, app = %row.app, "idle session closed");
            if let Err(e) = self.agent.close(&self.agent_session(&row)).await {
                tracing::warn!(session = %row.session_id, error = %e, "closing the agent session of a swept session failed");
            }
        }
        Ok(closed)
    }

    /// Deletes the sessions closed more than `session_hard_ttl_secs` ago, with their agent's
    /// record and their directory: how many.
    async fn delete_expired_sessions(&self) -> Result<u64> {
        let closed_before =
            Timestamp::seconds_from_now(-(self.settings.session_hard_ttl_secs as i64));
        let mut deleted = 0;
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
            let by = Stamp::now(&self.settings.worker_id);
            if self.ledger.hard_delete(row.session_id, by).await? {
                deleted += 1;
                tracing::info!(session = %row.session_id, app = %row.app, "closed session deleted");
            }
        }
        Ok(deleted)
    }
}
