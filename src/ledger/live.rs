//! What the ledger knows of turns in flight: the turns workers have taken and not yet begun
//! (`turn_waits`), and which worker holds a session's current turn.

use rusqlite::{params, OptionalExtension};

use super::{Ledger, LedgerResult};

/// Workers alive since `?2`: an SQL condition on `worker_id`.
const LIVE_WORKER: &str = "worker_id IN (SELECT worker_id FROM workers
                                         WHERE stopped_at IS NULL AND heartbeat_at >= ?2)";

impl Ledger {
    /// Records that `worker_id` has taken a turn of `session_id` that has not begun yet.
    pub async fn begin_wait(
        &self,
        wait_id: String,
        session_id: String,
        worker_id: String,
        at: String,
    ) -> LedgerResult<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO turn_waits (wait_id, session_id, worker_id, since)
                 VALUES (?1, ?2, ?3, ?4)",
                params![wait_id, session_id, worker_id, at],
            )?;
            Ok(())
        })
        .await
    }

    /// The turn of `wait_id` began, or will not: it waits no more.
    pub async fn end_wait(&self, wait_id: String) -> LedgerResult<()> {
        self.call(move |c| {
            c.execute("DELETE FROM turn_waits WHERE wait_id = ?1", [wait_id])?;
            Ok(())
        })
        .await
    }

    /// The live worker (heartbeat no older than `alive_since`) that holds the current turn of
    /// `session_id`: the one running a turn of it, or else the one that took the oldest turn
    /// still waiting to begin.
    pub async fn turn_holder(
        &self,
        session_id: String,
        alive_since: String,
    ) -> LedgerResult<Option<String>> {
        self.call(move |c| {
            let running = format!(
                "SELECT worker_id FROM session_events
                 WHERE session_id = ?1 AND event = 'turn' AND outcome = 'running' AND {LIVE_WORKER}
                 ORDER BY id DESC LIMIT 1"
            );
            let waiting = format!(
                "SELECT worker_id FROM turn_waits WHERE session_id = ?1 AND {LIVE_WORKER}
                 ORDER BY since LIMIT 1"
            );
            let holder = |sql: &str| {
                c.query_row(sql, params![session_id, alive_since], |r| r.get(0))
                    .optional()
            };
            Ok(match holder(&running)? {
                Some(w) => Some(w),
                None => holder(&waiting)?,
            })
        })
        .await
    }
}

/// A session with a turn waiting to begin on a live worker (alive since `?2`), as an SQL
/// condition on `sessions.session_id`.
pub(super) fn has_waiting_turn(alive_since_param: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM turn_waits w WHERE w.session_id = sessions.session_id
                   AND w.worker_id IN (SELECT worker_id FROM workers
                                       WHERE stopped_at IS NULL AND heartbeat_at >= {alive_since_param}))"
    )
}
