//! Each row type read one way: its columns, and one mapping from them. The `SELECT`s here name
//! the columns in the order the mappings read them.

use rusqlite::{params, Connection, OptionalExtension, Params, Row, Transaction};

use crate::ledger::rows::{
    EventDetail, EventRow, Recorded, RunRow, SessionEvent, SessionRow, Stamp, TokenRow, TurnRow,
};
use crate::values::SessionId;

/// A value read from one row of its `SELECT`.
pub(super) trait FromRow: Sized {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self>;
}

/// Every row `sql` selects, as `T`.
pub(super) fn all<T: FromRow>(
    c: &Connection,
    sql: &str,
    params: impl Params,
) -> rusqlite::Result<Vec<T>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(params, T::from_row)?;
    rows.collect()
}

/// The row `sql` selects, as `T`, if there is one.
pub(super) fn one<T: FromRow>(
    c: &Connection,
    sql: &str,
    params: impl Params,
) -> rusqlite::Result<Option<T>> {
    c.prepare_cached(sql)?
        .query_row(params, T::from_row)
        .optional()
}

pub(super) const TOKEN_SELECT: &str =
    "SELECT token_id, app, admin, token_hash, created_at, revoked_at FROM tokens";

impl FromRow for TokenRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<TokenRow> {
        Ok(TokenRow {
            token_id: r.get(0)?,
            app: r.get(1)?,
            admin: r.get(2)?,
            token_hash: r.get(3)?,
            created_at: r.get(4)?,
            revoked_at: r.get(5)?,
        })
    }
}

pub(super) const SESSION_SELECT: &str = "SELECT session_id, app, agent, agent_command, cwd, status,
        created_at, last_turn_at, closed_at, turns, pending_files, agent_state,
        (SELECT e.turn FROM session_events e
          WHERE e.session_id = sessions.session_id AND e.event = 'turn' AND e.outcome = 'running'
          ORDER BY e.id DESC LIMIT 1), name
        FROM sessions";

impl FromRow for SessionRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<SessionRow> {
        Ok(SessionRow {
            session_id: r.get(0)?,
            app: r.get(1)?,
            agent: r.get(2)?,
            agent_command: r.get(3)?,
            cwd: r.get(4)?,
            open: r.get::<_, String>(5)? == "open",
            created_at: r.get(6)?,
            last_turn_at: r.get(7)?,
            closed_at: r.get(8)?,
            turns: r.get::<_, i64>(9)? as u64,
            pending_files: parse_files(r.get(10)?),
            agent_state: r.get(11)?,
            running_turn: r.get::<_, Option<i64>>(12)?.map(|t| t as u64),
            name: r.get(13)?,
        })
    }
}

/// What a write about a session checks first: whose it is, whether it is open, its turns.
pub(super) struct SessionState {
    pub app: String,
    pub open: bool,
    pub turns: u64,
    pub pending_files: Vec<String>,
}

pub(super) const STATE_SELECT: &str =
    "SELECT app, status, turns, pending_files FROM sessions WHERE session_id = ?1";

impl FromRow for SessionState {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<SessionState> {
        Ok(SessionState {
            app: r.get(0)?,
            open: r.get::<_, String>(1)? == "open",
            turns: r.get::<_, i64>(2)? as u64,
            pending_files: parse_files(r.get(3)?),
        })
    }
}

/// The state of `session_id` if it exists and is `app`'s.
pub(super) fn session_state(
    c: &Connection,
    session_id: SessionId,
    app: &str,
) -> rusqlite::Result<Option<SessionState>> {
    let found: Option<SessionState> = one(c, STATE_SELECT, [session_id])?;
    Ok(found.filter(|s| s.app == app))
}

pub(super) const EVENT_SELECT: &str =
    "SELECT id, session_id, app, event, at, worker_id, turn, outcome, stop_reason, duration_ms,
            prompt, prompt_bytes, prompt_sha256, output, output_bytes, output_sha256, error
     FROM session_events";

impl FromRow for EventRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
        Ok(EventRow {
            id: r.get(0)?,
            session_id: r.get(1)?,
            app: r.get(2)?,
            event: r.get(3)?,
            at: r.get(4)?,
            worker_id: r.get(5)?,
            turn: r.get::<_, Option<i64>>(6)?.map(|t| t as u64),
            outcome: r.get(7)?,
            stop_reason: r.get(8)?,
            duration_ms: r.get::<_, Option<i64>>(9)?.map(|d| d as u64),
            prompt: r.get(10)?,
            prompt_bytes: r.get(11)?,
            prompt_sha256: r.get(12)?,
            output: r.get(13)?,
            output_bytes: r.get(14)?,
            output_sha256: r.get(15)?,
            error: r.get(16)?,
        })
    }
}

pub(super) const TURN_SELECT: &str =
    "SELECT outcome, stop_reason, duration_ms, output, error FROM session_events";

impl FromRow for TurnRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<TurnRow> {
        Ok(TurnRow {
            outcome: r.get(0)?,
            stop_reason: r.get(1)?,
            duration_ms: r.get::<_, Option<i64>>(2)?.map(|d| d as u64),
            output: r.get(3)?,
            error: r.get(4)?,
        })
    }
}

pub(super) const RUN_SELECT: &str =
    "SELECT run_id, app, model, outcome, worker_id, created_at, finished_at, prompt,
            prompt_bytes, prompt_sha256, result, result_bytes, result_sha256, error,
            exit_code, duration_ms, cost_usd, stderr_tail
     FROM runs";

impl FromRow for RunRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<RunRow> {
        let result = match (
            r.get::<_, Option<i64>>(11)?,
            r.get::<_, Option<String>>(12)?,
        ) {
            (Some(bytes), Some(sha256)) => Some(Recorded {
                text: r.get(10)?,
                bytes,
                sha256,
            }),
            _ => None,
        };
        Ok(RunRow {
            run_id: r.get(0)?,
            app: r.get(1)?,
            model: r.get(2)?,
            outcome: r.get(3)?,
            worker_id: r.get(4)?,
            created_at: r.get(5)?,
            finished_at: r.get(6)?,
            prompt: Recorded {
                text: r.get(7)?,
                bytes: r.get(8)?,
                sha256: r.get(9)?,
            },
            result,
            error: r.get(13)?,
            exit_code: r.get(14)?,
            duration_ms: r.get::<_, Option<i64>>(15)?.map(|d| d as u64),
            cost_usd: r.get(16)?,
            stderr_tail: r.get(17)?,
        })
    }
}

pub(super) fn files_json(files: &[String]) -> Option<String> {
    (!files.is_empty()).then(|| serde_json::to_string(files).expect("strings serialize"))
}

fn parse_files(json: Option<String>) -> Vec<String> {
    json.and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default()
}

/// A session event: of which session, what, by which worker and when.
pub(super) struct EventOf<'a> {
    pub session_id: SessionId,
    pub app: &'a str,
    pub event: SessionEvent,
    pub by: &'a Stamp,
}

/// Appends a row to `session_events`: its id.
pub(super) fn insert_event(
    tx: &Transaction<'_>,
    of: EventOf<'_>,
    d: &EventDetail,
) -> rusqlite::Result<i64> {
    let prompt = d.prompt.as_ref();
    let output = d.output.as_ref();
    tx.execute(
        "INSERT INTO session_events (session_id, app, event, at, worker_id, turn, outcome,
                stop_reason, duration_ms, prompt, prompt_bytes, prompt_sha256, output,
                output_bytes, output_sha256, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            of.session_id,
            of.app,
            of.event,
            of.by.at,
            of.by.worker_id,
            d.turn.map(|t| t as i64),
            d.outcome,
            d.stop_reason,
            d.duration_ms.map(|t| t as i64),
            prompt.and_then(|p| p.text.clone()),
            prompt.map(|p| p.bytes),
            prompt.map(|p| p.sha256.clone()),
            output.and_then(|o| o.text.clone()),
            output.map(|o| o.bytes),
            output.map(|o| o.sha256.clone()),
            d.error,
        ],
    )?;
    Ok(tx.last_insert_rowid())
}
