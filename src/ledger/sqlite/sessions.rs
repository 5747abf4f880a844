//! `sessions` and their audit trail in `session_events`: created, closed, swept, deleted.

use rusqlite::{params, OptionalExtension, Transaction};

use super::rows::{
    all, files_json, insert_event, one, session_state, EventOf, EVENT_SELECT, SESSION_SELECT,
};
use super::waits::has_waiting_turn;
use super::Ledger;
use crate::ledger::{
    CloseOutcome, CreateOutcome, EventDetail, EventRow, LedgerResult, SessionEvent, SessionRow,
    Sessions,
};

impl Sessions for Ledger {
    async fn create_session(
        &self,
        row: SessionRow,
        worker_id: String,
        cap: u64,
    ) -> LedgerResult<CreateOutcome> {
        self.write(move |tx| {
            let open: i64 = tx.query_row(
                "SELECT COUNT(*) FROM sessions WHERE status = 'open'",
                [],
                |r| r.get(0),
            )?;
            if open as u64 >= cap {
                return Ok(CreateOutcome::AtCapacity { open: open as u64 });
            }
            tx.execute(
                "INSERT INTO sessions (session_id, app, agent, agent_command, cwd, status,
                                       created_at, last_turn_at, closed_at, turns, pending_files)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'open', ?6, NULL, NULL, 0, ?7)",
                params![
                    row.session_id,
                    row.app,
                    row.agent,
                    row.agent_command,
                    row.cwd,
                    row.created_at,
                    files_json(&row.pending_files),
                ],
            )?;
            let of = EventOf {
                session_id: &row.session_id,
                app: &row.app,
                event: SessionEvent::Create,
                at: &row.created_at,
                worker_id: &worker_id,
            };
            // Until the agent session exists: the sweep leaves the session alone.
            let detail = EventDetail {
                outcome: "running".into(),
                ..Default::default()
            };
            insert_event(tx, of, &detail)?;
            Ok(CreateOutcome::Created)
        })
        .await
    }

    async fn session(&self, session_id: String) -> LedgerResult<Option<SessionRow>> {
        let sql = format!("{SESSION_SELECT} WHERE session_id = ?1");
        self.read(move |c| Ok(one(c, &sql, [&session_id])?)).await
    }

    async fn sessions_of(&self, app: String) -> LedgerResult<Vec<SessionRow>> {
        let sql = format!("{SESSION_SELECT} WHERE app = ?1 ORDER BY created_at DESC, session_id");
        self.read(move |c| Ok(all(c, &sql, [&app])?)).await
    }

    async fn finish_create(
        &self,
        session_id: String,
        outcome: String,
        error: Option<String>,
    ) -> LedgerResult<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE session_events SET outcome = ?2, error = ?3
                 WHERE session_id = ?1 AND event = 'create'",
                params![session_id, outcome, error],
            )?;
            Ok(())
        })
        .await
    }

    async fn set_agent_state(
        &self,
        session_id: String,
        state: String,
        owner: Option<String>,
    ) -> LedgerResult<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE sessions SET agent_state = ?2, owner_worker = ?3,
                                     owner_generation = owner_generation + (?3 IS NOT NULL)
                 WHERE session_id = ?1",
                params![session_id, state, owner],
            )?;
            Ok(())
        })
        .await
    }

    async fn open_session_count(&self) -> LedgerResult<u64> {
        self.read(|c| {
            let n: i64 = c
                .prepare_cached("SELECT COUNT(*) FROM sessions WHERE status = 'open'")?
                .query_row([], |r| r.get(0))?;
            Ok(n as u64)
        })
        .await
    }

    async fn close_session(
        &self,
        session_id: String,
        app: String,
        event: SessionEvent,
        at: String,
        worker_id: String,
        detail: EventDetail,
    ) -> LedgerResult<CloseOutcome> {
        self.write(move |tx| {
            match session_state(tx, &session_id, &app)? {
                None => return Ok(CloseOutcome::NotFound),
                Some(s) if !s.open => return Ok(CloseOutcome::AlreadyClosed),
                Some(_) => {}
            }
            let of = EventOf {
                session_id: &session_id,
                app: &app,
                event,
                at: &at,
                worker_id: &worker_id,
            };
            close(tx, of, &detail)?;
            Ok(CloseOutcome::Closed)
        })
        .await
    }

    async fn events_of(&self, session_id: String) -> LedgerResult<Vec<EventRow>> {
        let sql = format!("{EVENT_SELECT} WHERE session_id = ?1 ORDER BY id");
        self.call(move |c| Ok(all(c, &sql, [session_id])?)).await
    }

    async fn idle_sessions(
        &self,
        idle_before: String,
        alive_since: String,
    ) -> LedgerResult<Vec<SessionRow>> {
        let sql = format!(
            "{SESSION_SELECT} WHERE status = 'open'
               AND COALESCE(last_turn_at, created_at) < ?1
               AND NOT EXISTS (SELECT 1 FROM session_events e
                               WHERE e.session_id = sessions.session_id
                                 AND e.outcome = 'running')
               AND NOT {}",
            has_waiting_turn("?2")
        );
        self.call(move |c| Ok(all(c, &sql, [idle_before, alive_since])?))
            .await
    }

    async fn sweep_close(
        &self,
        session_id: String,
        idle_before: String,
        at: String,
        worker_id: String,
        alive_since: String,
    ) -> LedgerResult<bool> {
        let sql = format!(
            "SELECT app FROM sessions WHERE session_id = ?1 AND status = 'open'
               AND COALESCE(last_turn_at, created_at) < ?2
               AND NOT EXISTS (SELECT 1 FROM session_events e
                               WHERE e.session_id = ?1 AND e.outcome = 'running')
               AND NOT {}",
            has_waiting_turn("?3")
        );
        self.write(move |tx| {
            let app: Option<String> = tx
                .query_row(&sql, params![session_id, idle_before, alive_since], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(app) = app else {
                return Ok(false);
            };
            let of = EventOf {
                session_id: &session_id,
                app: &app,
                event: SessionEvent::SweepClose,
                at: &at,
                worker_id: &worker_id,
            };
            let detail = EventDetail {
                outcome: "ok".into(),
                error: Some(format!("idle since before {idle_before}")),
                ..Default::default()
            };
            close(tx, of, &detail)?;
            Ok(true)
        })
        .await
    }

    async fn expired_sessions(&self, closed_before: String) -> LedgerResult<Vec<SessionRow>> {
        let sql = format!("{SESSION_SELECT} WHERE status = 'closed' AND closed_at < ?1");
        self.call(move |c| Ok(all(c, &sql, [closed_before])?)).await
    }

    async fn hard_delete(
        &self,
        session_id: String,
        at: String,
        worker_id: String,
    ) -> LedgerResult<bool> {
        self.write(move |tx| {
            let app: Option<String> = tx
                .query_row(
                    "SELECT app FROM sessions WHERE session_id = ?1 AND status = 'closed'",
                    [&session_id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(app) = app else {
                return Ok(false);
            };
            tx.execute("DELETE FROM sessions WHERE session_id = ?1", [&session_id])?;
            tx.execute(
                "DELETE FROM turn_events WHERE session_id = ?1",
                [&session_id],
            )?;
            let of = EventOf {
                session_id: &session_id,
                app: &app,
                event: SessionEvent::HardDelete,
                at: &at,
                worker_id: &worker_id,
            };
            let detail = EventDetail {
                outcome: "ok".into(),
                ..Default::default()
            };
            insert_event(tx, of, &detail)?;
            Ok(true)
        })
        .await
    }
}

/// Closes the session `of` names at its time, and records the event.
fn close(tx: &Transaction<'_>, of: EventOf<'_>, detail: &EventDetail) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE sessions SET status = 'closed', closed_at = ?2 WHERE session_id = ?1",
        params![of.session_id, of.at],
    )?;
    insert_event(tx, of, detail)?;
    Ok(())
}
