//! What the ledger knows of turns in flight: the turns workers have taken and not yet begun
//! (`turn_waits`), and which worker holds a session's current turn.

use rusqlite::{params, OptionalExtension};

use super::{Ledger, LedgerResult};
use crate::wire;

/// An SQL condition on `worker_id`: the worker has not stopped and its heartbeat is no older
/// than the parameter `alive_since` (e.g. `?2`). A worker that never wrote one is not alive.
pub(super) fn live_worker(alive_since: &str) -> String {
    format!(
        "worker_id IN (SELECT worker_id FROM workers
                       WHERE stopped_at IS NULL AND heartbeat_at >= {alive_since})"
    )
}

impl Ledger {
    /// Records that `worker_id` has taken a turn of `session_id` (the caller's, `app`) that
    /// has not begun yet, and gives it the session's next number.
    pub async fn reserve_turn(
        &self,
        wait_id: String,
        session_id: String,
        app: String,
        worker_id: String,
        at: String,
    ) -> LedgerResult<Reserved> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let found: Option<(String, String, i64)> = tx
                .query_row(
                    "SELECT app, status, turns FROM sessions WHERE session_id = ?1",
                    [&session_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let turn = match found {
                Some((owner, ..)) if owner != app => return Ok(Reserved::NotFound),
                None => return Ok(Reserved::NotFound),
                Some((_, status, _)) if status != "open" => return Ok(Reserved::Closed),
                Some((.., turns)) => turns + 1,
            };
            tx.execute(
                "UPDATE sessions SET turns = ?2 WHERE session_id = ?1",
                params![session_id, turn],
            )?;
            tx.execute(
                "INSERT INTO turn_waits (wait_id, session_id, app, worker_id, since, turn)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![wait_id, session_id, app, worker_id, at, turn],
            )?;
            tx.commit()?;
            Ok(Reserved::Turn(turn as u64))
        })
        .await
    }

    /// A turn taken and numbered that will not begin: its number is recorded with why.
    pub async fn abandon_turn(
        &self,
        wait_id: String,
        at: String,
        outcome: String,
        error: String,
    ) -> LedgerResult<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            abandon_waits(&tx, "wait_id = ?1", &wait_id, &at, &outcome, &error)?;
            tx.commit()?;
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
                 WHERE session_id = ?1 AND event = 'turn' AND outcome = 'running' AND {}
                 ORDER BY id DESC LIMIT 1",
                live_worker("?2")
            );
            let waiting = format!(
                "SELECT worker_id FROM turn_waits WHERE session_id = ?1 AND {}
                 ORDER BY since LIMIT 1",
                live_worker("?2")
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

/// What taking a turn gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    Turn(u64),
    NotFound,
    Closed,
}

/// Records the waiting turns `whose` selects (an SQL condition on `turn_waits` with `?1`) as
/// turns that ended before they began, with `outcome` and `error`, and forgets them.
pub(super) fn abandon_waits(
    tx: &rusqlite::Transaction<'_>,
    whose: &str,
    param: &str,
    at: &str,
    outcome: &str,
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

/// How a turn stands in the ledger, for a replay's final message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnRow {
    pub outcome: String,
    pub stop_reason: Option<String>,
    pub duration_ms: Option<u64>,
    /// The output, when the ledger keeps text.
    pub output: Option<String>,
    pub error: Option<String>,
}

impl TurnRow {
    pub fn running(&self) -> bool {
        self.outcome == "running"
    }
}

/// Events read at most per query.
const EVENTS_PER_READ: i64 = 512;

impl Ledger {
    /// Records a batch of a turn's events in one transaction.
    pub async fn record_events(&self, events: Vec<wire::Event>) -> LedgerResult<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            {
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
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The recorded events of turn `turn` of `session_id` after `after`, in order (at most
    /// `EVENTS_PER_READ` of them: read again after the last one for more).
    pub async fn events_after(
        &self,
        session_id: String,
        turn: u64,
        after: u64,
    ) -> LedgerResult<Vec<wire::Event>> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, at, body FROM turn_events
                 WHERE session_id = ?1 AND turn = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![session_id, turn as i64, after as i64, EVENTS_PER_READ],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )?;
            let mut events = Vec::new();
            for row in rows {
                let (seq, at, body) = row?;
                events.push(wire::Event {
                    session_id: Some(session_id.clone()),
                    turn: Some(turn),
                    run_id: None,
                    seq: seq as u64,
                    at,
                    // A body this version cannot read is an event of a type it does not know.
                    body: serde_json::from_str(&body).unwrap_or(wire::EventBody::Unknown),
                });
            }
            Ok(events)
        })
        .await
    }

    /// Turn `turn` of `session_id` as the ledger has it; `None` when there is no such turn.
    pub async fn turn_row(&self, session_id: String, turn: u64) -> LedgerResult<Option<TurnRow>> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT outcome, stop_reason, duration_ms, output, error FROM session_events
                 WHERE session_id = ?1 AND event = 'turn' AND turn = ?2",
                params![session_id, turn as i64],
                |r| {
                    Ok(TurnRow {
                        outcome: r.get(0)?,
                        stop_reason: r.get(1)?,
                        duration_ms: r.get::<_, Option<i64>>(2)?.map(|d| d as u64),
                        output: r.get(3)?,
                        error: r.get(4)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// The number of the session's latest turn, if it has one.
    pub async fn latest_turn(&self, session_id: String) -> LedgerResult<Option<u64>> {
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
