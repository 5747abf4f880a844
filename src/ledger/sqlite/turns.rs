//! The turns of sessions (their `turn` rows in `session_events`) and the events they emitted
//! (`turn_events`).

use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::rows::{all, insert_event, one, session_state, EventOf, FromRow, TURN_SELECT};
use super::usage::{add_to_day, day_key, DayGain};
use super::workers::live_worker;
use super::Ledger;
use crate::ledger::{
    BeginTurn, EventDetail, EventOutcome, LedgerResult, SessionEvent, TurnRow, TurnStart, Turns,
};
use crate::values::{SessionId, Timestamp, WaitId};
use crate::wire;

/// A turn's own cost, from what its agent `reported` the session had cost by its end: the
/// growth since the session's last earlier report, or all of it when the count started again
/// (a report lower than the one before: an agent process that loaded the session anew).
fn turn_cost(
    tx: &Transaction<'_>,
    session_id: SessionId,
    event_id: i64,
    reported: Option<f64>,
) -> rusqlite::Result<Option<f64>> {
    let Some(now) = reported else {
        return Ok(None);
    };
    let before: Option<f64> = tx
        .prepare_cached(
            "SELECT reported_cost_usd FROM session_events
             WHERE session_id = ?1 AND event = 'turn' AND id < ?2
                   AND reported_cost_usd IS NOT NULL
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row(params![session_id, event_id], |r| r.get(0))
        .optional()?;
    Ok(Some(match before {
        Some(before) if before <= now => now - before,
        _ => now,
    }))
}

/// Events read at most per query.
const EVENTS_PER_READ: i64 = 512;

impl Turns for Ledger {
    async fn begin_turn(&self, start: TurnStart) -> LedgerResult<BeginTurn> {
        self.write(move |tx| {
            let reserved = reserved_turn(tx, start.wait_id)?;
            let busy = busy_elsewhere(tx, &start)?;
            let state = match session_state(tx, start.session_id, &start.app)? {
                None => return Ok(BeginTurn::NotFound),
                Some(s) if !s.open => return Ok(BeginTurn::Closed),
                Some(_) if busy => return Ok(BeginTurn::Busy),
                Some(s) => s,
            };
            // A reserved number is counted in `turns` already (and in its app's day); an
            // unreserved turn takes the next.
            if reserved.is_none() {
                add_to_day(tx, &start.app, &day_key(start.by.at.utc()), DayGain::Turn)?;
            }
            let turn = reserved.unwrap_or(state.turns + 1);
            tx.execute(
                "UPDATE sessions SET turns = MAX(turns, ?2), last_turn_at = ?3, pending_files = NULL
                 WHERE session_id = ?1",
                params![start.session_id, turn as i64, start.by.at],
            )?;
            if let Some(id) = &start.wait_id {
                tx.execute("DELETE FROM turn_waits WHERE wait_id = ?1", [id])?;
            }
            let of = EventOf {
                session_id: start.session_id,
                app: &start.app,
                event: SessionEvent::Turn,
                by: &start.by,
            };
            let detail = EventDetail {
                turn: Some(turn),
                prompt: Some(start.prompt.clone()),
                ..EventDetail::of(EventOutcome::Running)
            };
            let event_id = insert_event(tx, of, &detail)?;
            Ok(BeginTurn::Started {
                turn,
                event_id,
                pending_files: state.pending_files,
            })
        })
        .await
    }

    async fn finish_turn(
        &self,
        session_id: SessionId,
        event_id: i64,
        at: Timestamp,
        detail: EventDetail,
    ) -> LedgerResult<Option<f64>> {
        self.write(move |tx| {
            let output = detail.output.as_ref();
            let cost = turn_cost(tx, session_id, event_id, detail.reported_cost_usd)?;
            if let Some(usd) = cost {
                let (app, day): (String, String) = tx.query_row(
                    "SELECT app, substr(at, 1, 10) FROM session_events WHERE id = ?1",
                    [event_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                add_to_day(tx, &app, &day, DayGain::AgentUsd(usd))?;
            }
            tx.execute(
                "UPDATE session_events SET outcome = ?2, stop_reason = ?3, duration_ms = ?4,
                        output = ?5, output_bytes = ?6, output_sha256 = ?7, error = ?8,
                        reported_cost_usd = ?9, cost_usd = ?10
                 WHERE id = ?1",
                params![
                    event_id,
                    detail.outcome,
                    detail.stop_reason,
                    detail.duration_ms.map(|d| d as i64),
                    output.and_then(|o| o.text.clone()),
                    output.map(|o| o.bytes),
                    output.map(|o| o.sha256.clone()),
                    detail.error,
                    detail.reported_cost_usd,
                    cost,
                ],
            )?;
            tx.execute(
                "UPDATE sessions SET last_turn_at = ?2 WHERE session_id = ?1",
                params![session_id, at],
            )?;
            Ok(cost)
        })
        .await
    }

    async fn record_events(&self, events: Vec<wire::Event>) -> LedgerResult<()> {
        self.write(move |tx| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO turn_events (session_id, turn, seq, at, type, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for e in &events {
                let body = serde_json::to_string(&e.body).expect("an event serializes");
                insert.execute(params![
                    e.session_id,
                    e.turn.map(|t| t as i64),
                    e.seq as i64,
                    e.at,
                    e.body.kind(),
                    body
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn events_after(
        &self,
        session_id: SessionId,
        turn: u64,
        after: u64,
    ) -> LedgerResult<Vec<wire::Event>> {
        self.call(move |c| {
            let events: Vec<Recorded> = all(
                c,
                "SELECT seq, at, body FROM turn_events
                 WHERE session_id = ?1 AND turn = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
                params![session_id, turn as i64, after as i64, EVENTS_PER_READ],
            )?;
            Ok(events.into_iter().map(|e| e.of(session_id, turn)).collect())
        })
        .await
    }

    async fn turn_row(&self, session_id: SessionId, turn: u64) -> LedgerResult<Option<TurnRow>> {
        let sql = format!("{TURN_SELECT} WHERE session_id = ?1 AND event = 'turn' AND turn = ?2");
        self.call(move |c| Ok(one(c, &sql, params![session_id, turn as i64])?))
            .await
    }

    async fn latest_turn(&self, session_id: SessionId) -> LedgerResult<Option<u64>> {
        self.call(move |c| {
            let n: Option<i64> = c.query_row(
                "SELECT MAX(turn) FROM session_events WHERE session_id = ?1 AND event = 'turn'",
                [session_id],
                |r| r.get(0),
            )?;
            Ok(n.map(|n| n as u64))
        })
        .await
    }
}

/// A row of `turn_events`, as recorded.
struct Recorded {
    seq: u64,
    at: String,
    body: String,
}

impl FromRow for Recorded {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Recorded> {
        Ok(Recorded {
            seq: r.get::<_, i64>(0)? as u64,
            at: r.get(1)?,
            body: r.get(2)?,
        })
    }
}

impl Recorded {
    fn of(self, session_id: SessionId, turn: u64) -> wire::Event {
        wire::Event {
            session_id: Some(session_id.to_string()),
            turn: Some(turn),
            run_id: None,
            seq: self.seq,
            at: self.at,
            // A body this version cannot read is an event of a type it does not know.
            body: serde_json::from_str(&self.body).unwrap_or(wire::EventBody::Unknown),
        }
    }
}

/// Whether another worker's turn of the session is running (and that worker's heartbeat is no
/// older than `alive_since`): then this one waits, so that one session runs one turn at a time
/// across workers. This worker's own turns of the session are one at a time already; a
/// `running` row of its own is one it could not finish recording.
fn busy_elsewhere(tx: &Transaction<'_>, start: &TurnStart) -> rusqlite::Result<bool> {
    tx.query_row(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM session_events
                            WHERE session_id = ?1 AND event = 'turn' AND outcome = 'running'
                              AND worker_id != ?3 AND {})",
            live_worker("?2")
        ),
        params![start.session_id, start.alive_since, start.by.worker_id],
        |r| r.get(0),
    )
}

/// The number a turn got when it was taken (see `reserve_turn`), if it was.
fn reserved_turn(tx: &Transaction<'_>, wait_id: Option<WaitId>) -> rusqlite::Result<Option<u64>> {
    let Some(id) = wait_id else {
        return Ok(None);
    };
    let turn: Option<i64> = tx
        .query_row(
            "SELECT turn FROM turn_waits WHERE wait_id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(turn.map(|t| t as u64))
}
