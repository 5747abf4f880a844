//! `sessions` and their audit trail in `session_events`: created, closed, swept, deleted.

use rusqlite::{params, OptionalExtension, Transaction};

use super::rows::{
    all, files_json, insert_event, one, session_state, EventOf, EVENT_SELECT, SESSION_SELECT,
};
use super::usage::admit;
use super::waits::has_waiting_turn;
use super::Ledger;
use crate::ledger::{
    CloseOutcome, CreateOutcome, EventDetail, EventOutcome, EventRow, Idle, LedgerResult,
    SessionEvent, SessionFilter, SessionRow, Sessions, Stamp,
};
use crate::quota::{Limit, Limits};
use crate::values::{SessionId, Timestamp};

/// An open session (`session`, its id) idle since before the parameter `before`, with no turn
/// running, nor waiting to begin on a worker alive since the parameter `alive_since`: an SQL
/// condition on `sessions`.
fn idle(session: &str, before: &str, alive_since: &str) -> String {
    format!(
        "status = 'open' AND COALESCE(last_turn_at, created_at) < {before}
         AND NOT EXISTS (SELECT 1 FROM session_events e
                         WHERE e.session_id = {session} AND e.outcome = 'running')
         AND NOT {}",
        has_waiting_turn(alive_since)
    )
}

/// Whether an open session of `row`'s app and agent has `row`'s name (the index holds the same
/// rule; asked first, so that a taken name is an answer, not a failed write).
fn name_taken(tx: &rusqlite::Transaction<'_>, row: &SessionRow) -> rusqlite::Result<bool> {
    let Some(name) = &row.name else {
        return Ok(false);
    };
    tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sessions WHERE app = ?1 AND agent = ?2 AND name = ?3
                                                 AND status = 'open')",
        params![row.app, row.agent, name],
        |r| r.get(0),
    )
}

impl Sessions for Ledger {
    async fn create_session(
        &self,
        row: SessionRow,
        worker_id: String,
        cap: u64,
        limits: Limits,
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
            let which = (&limits, &[Limit::MaxOpenSessions][..]);
            let at = row.created_at;
            if let Some(refused) = admit(tx, &row.app, which, at.utc(), &at)? {
                return Ok(CreateOutcome::Refused(refused));
            }
            if name_taken(tx, &row)? {
                return Ok(CreateOutcome::NameTaken);
            }
            tx.execute(
                "INSERT INTO sessions (session_id, app, agent, agent_command, cwd, status,
                                       created_at, last_turn_at, closed_at, turns, pending_files,
                                       name)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'open', ?6, NULL, NULL, 0, ?7, ?8)",
                params![
                    row.session_id,
                    row.app,
                    row.agent,
                    row.agent_command,
                    row.cwd,
                    row.created_at,
                    files_json(&row.pending_files),
                    row.name,
                ],
            )?;
            let by = Stamp {
                worker_id,
                at: row.created_at,
            };
            let of = EventOf {
                session_id: row.session_id,
                app: &row.app,
                event: SessionEvent::Create,
                by: &by,
            };
            // Until the agent session exists: the sweep leaves the session alone.
            insert_event(tx, of, &EventDetail::of(EventOutcome::Running))?;
            Ok(CreateOutcome::Created)
        })
        .await
    }

    async fn session(&self, session_id: SessionId) -> LedgerResult<Option<SessionRow>> {
        let sql = format!("{SESSION_SELECT} WHERE session_id = ?1");
        self.read(move |c| Ok(one(c, &sql, [session_id])?)).await
    }

    async fn sessions_of(&self, app: String) -> LedgerResult<Vec<SessionRow>> {
        let sql = format!("{SESSION_SELECT} WHERE app = ?1 ORDER BY created_at DESC, session_id");
        self.read(move |c| Ok(all(c, &sql, [&app])?)).await
    }

    async fn sessions_matching(
        &self,
        filter: SessionFilter,
    ) -> LedgerResult<(Vec<SessionRow>, u64)> {
        let status = filter.open.map(|open| if open { "open" } else { "closed" });
        let matching = "WHERE (?1 IS NULL OR app = ?1) AND (?2 IS NULL OR agent = ?2)
                          AND (?3 IS NULL OR status = ?3)";
        let page = format!(
            "{SESSION_SELECT} {matching} ORDER BY created_at DESC, session_id LIMIT ?4 OFFSET ?5"
        );
        let count = format!("SELECT COUNT(*) FROM sessions {matching}");
        self.read(move |c| {
            let (app, agent) = (filter.app.as_deref(), filter.agent.as_deref());
            let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
            let offset = i64::try_from(filter.offset).unwrap_or(i64::MAX);
            let rows = all(c, &page, params![app, agent, status, limit, offset])?;
            let total: i64 = c.query_row(&count, params![app, agent, status], |r| r.get(0))?;
            Ok((rows, u64::try_from(total).unwrap_or(0)))
        })
        .await
    }

    async fn finish_create(
        &self,
        session_id: SessionId,
        outcome: EventOutcome,
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
        session_id: SessionId,
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
        session_id: SessionId,
        app: String,
        event: SessionEvent,
        by: Stamp,
        detail: EventDetail,
    ) -> LedgerResult<CloseOutcome> {
        self.write(move |tx| {
            match session_state(tx, session_id, &app)? {
                None => return Ok(CloseOutcome::NotFound),
                Some(s) if !s.open => return Ok(CloseOutcome::AlreadyClosed),
                Some(_) => {}
            }
            let of = EventOf {
                session_id,
                app: &app,
                event,
                by: &by,
            };
            close(tx, of, &detail)?;
            Ok(CloseOutcome::Closed)
        })
        .await
    }

    async fn events_of(&self, session_id: SessionId) -> LedgerResult<Vec<EventRow>> {
        let sql = format!("{EVENT_SELECT} WHERE session_id = ?1 ORDER BY id");
        self.call(move |c| Ok(all(c, &sql, [session_id])?)).await
    }

    async fn idle_sessions(&self, idle_now: Idle) -> LedgerResult<Vec<SessionRow>> {
        let sql = format!(
            "{SESSION_SELECT} WHERE {}",
            idle("sessions.session_id", "?1", "?2")
        );
        let Idle {
            before,
            alive_since,
        } = idle_now;
        self.call(move |c| Ok(all(c, &sql, [before, alive_since])?))
            .await
    }

    async fn sweep_close(
        &self,
        session_id: SessionId,
        idle_now: Idle,
        by: Stamp,
    ) -> LedgerResult<bool> {
        let sql = format!(
            "SELECT app FROM sessions WHERE session_id = ?1 AND {}",
            idle("?1", "?2", "?3")
        );
        self.write(move |tx| {
            let found = params![session_id, idle_now.before, idle_now.alive_since];
            let app: Option<String> = tx.query_row(&sql, found, |r| r.get(0)).optional()?;
            let Some(app) = app else {
                return Ok(false);
            };
            let of = EventOf {
                session_id,
                app: &app,
                event: SessionEvent::SweepClose,
                by: &by,
            };
            let detail = EventDetail {
                error: Some(format!("idle since before {}", idle_now.before)),
                ..EventDetail::of(EventOutcome::Ok)
            };
            close(tx, of, &detail)?;
            Ok(true)
        })
        .await
    }

    async fn expired_sessions(&self, closed_before: Timestamp) -> LedgerResult<Vec<SessionRow>> {
        let sql = format!("{SESSION_SELECT} WHERE status = 'closed' AND closed_at < ?1");
        self.call(move |c| Ok(all(c, &sql, [closed_before])?)).await
    }

    async fn hard_delete(&self, session_id: SessionId, by: Stamp) -> LedgerResult<bool> {
        self.write(move |tx| {
            let app: Option<String> = tx
                .query_row(
                    "SELECT app FROM sessions WHERE session_id = ?1 AND status = 'closed'",
                    [session_id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(app) = app else {
                return Ok(false);
            };
            tx.execute("DELETE FROM sessions WHERE session_id = ?1", [session_id])?;
            tx.execute(
                "DELETE FROM turn_events WHERE session_id = ?1",
                [session_id],
            )?;
            let of = EventOf {
                session_id,
                app: &app,
                event: SessionEvent::HardDelete,
                by: &by,
            };
            insert_event(tx, of, &EventDetail::of(EventOutcome::Ok))?;
            Ok(true)
        })
        .await
    }
}

/// Closes the session `of` names at its time, and records the event.
fn close(tx: &Transaction<'_>, of: EventOf<'_>, detail: &EventDetail) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE sessions SET status = 'closed', closed_at = ?2 WHERE session_id = ?1",
        params![of.session_id, of.by.at],
    )?;
    insert_event(tx, of, detail)?;
    Ok(())
}
