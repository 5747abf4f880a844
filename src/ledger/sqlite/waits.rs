//! `turn_waits`: the turns workers have taken and numbered, not yet begun; and which worker
//! holds a session's current turn.

use rusqlite::{params, OptionalExtension, Transaction};

use super::rows::session_state;
use super::usage::{add_to_day, admit, day_key, DayGain};
use super::workers::live_worker;
use super::Ledger;
use crate::ledger::{Admission, EventOutcome, LedgerResult, Reserved, Stamp, TurnWaits};
use crate::quota::Limit;
use crate::values::{SessionId, Timestamp, WaitId};

/// The limits a turn is admitted under.
const TURN_LIMITS: [Limit; 3] = [
    Limit::MaxConcurrentTurns,
    Limit::TurnsPerDay,
    Limit::AgentUsdPerMonth,
];

impl TurnWaits for Ledger {
    async fn reserve_turn(
        &self,
        wait_id: WaitId,
        session_id: SessionId,
        app: String,
        by: Stamp,
        admission: Admission,
    ) -> LedgerResult<Reserved> {
        self.write(move |tx| {
            let turn = match session_state(tx, session_id, &app)? {
                None => return Ok(Reserved::NotFound),
                Some(s) if !s.open => return Ok(Reserved::Closed),
                Some(s) => s.turns as i64 + 1,
            };
            let which = (&admission.limits, &TURN_LIMITS[..]);
            if let Some(refused) = admit(tx, &app, which, by.at.utc(), &admission.alive_since)? {
                return Ok(Reserved::Refused(refused));
            }
            tx.execute(
                "UPDATE sessions SET turns = ?2 WHERE session_id = ?1",
                params![session_id, turn],
            )?;
            tx.execute(
                "INSERT INTO turn_waits (wait_id, session_id, app, worker_id, since, turn)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![wait_id, session_id, app, by.worker_id, by.at, turn],
            )?;
            add_to_day(tx, &app, &day_key(by.at.utc()), DayGain::Turn)?;
            Ok(Reserved::Turn(turn as u64))
        })
        .await
    }

    async fn abandon_turn(
        &self,
        wait_id: WaitId,
        at: Timestamp,
        outcome: EventOutcome,
        error: String,
    ) -> LedgerResult<()> {
        self.write(move |tx| {
            let wait_id = wait_id.to_string();
            abandon_waits(tx, "wait_id = ?1", &wait_id, at, outcome, &error)?;
            Ok(())
        })
        .await
    }

    async fn turn_holder(
        &self,
        session_id: SessionId,
        alive_since: Timestamp,
    ) -> LedgerResult<Option<String>> {
        let running = format!(
            "SELECT worker_id FROM session_events
             WHERE session_id = ?1 AND event = 'turn' AND outcome = 'running' AND {}
             ORDER BY id DESC LIMIT 1",
            live_worker("?2")
        );
        let waiting = format!(
            "SELECT worker_id FROM turn_waits WHERE session_id = ?1 AND {}
             ORDER BY since LIMIT 1",
            live_worker("?2")
        );
        self.call(move |c| {
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

/// Records the waiting turns `whose` selects (an SQL condition on `turn_waits` with `?1`) as
/// turns that ended before they began, with `outcome` and `error`, and forgets them.
pub(super) fn abandon_waits(
    tx: &Transaction<'_>,
    whose: &str,
    param: &str,
    at: Timestamp,
    outcome: EventOutcome,
    error: &str,
) -> rusqlite::Result<usize> {
    tx.execute(
        &format!(
            "INSERT INTO session_events (session_id, app, event, at, worker_id, turn, outcome, error)
             SELECT session_id, app, 'turn', ?2, worker_id, turn, ?3, ?4 FROM turn_waits
             WHERE {whose}"
        ),
        params![param, at, outcome, error],
    )?;
    tx.execute(&format!("DELETE FROM turn_waits WHERE {whose}"), [param])
}

/// A session with a turn waiting to begin on a live worker (alive since `?2`), as an SQL
/// condition on `sessions.session_id`.
pub(super) fn has_waiting_turn(alive_since_param: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM turn_waits w WHERE w.session_id = sessions.session_id AND w.{})",
        live_worker(alive_since_param)
    )
}
