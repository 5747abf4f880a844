//! What the tests read of the ledger, in a few named reads: a session's events, an app's, the
//! runs, the sessions, and how many rows a table holds. Read-only; everything else a test knows
//! it learns through the contract.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{read_only_ledger, Forge};

/// One row of `session_events`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub session_id: String,
    pub app: String,
    pub event: String,
    pub at: String,
    pub worker_id: String,
    pub turn: Option<i64>,
    pub outcome: String,
    pub stop_reason: Option<String>,
    pub duration_ms: Option<i64>,
    pub prompt: Option<String>,
    pub output: Option<String>,
    pub error: Option<String>,
}

impl Event {
    pub fn is_turn(&self) -> bool {
        self.event == "turn"
    }

    pub fn running(&self) -> bool {
        self.outcome == "running"
    }
}

/// One row of `runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub run_id: String,
    pub app: String,
    pub model: String,
    pub outcome: String,
    pub worker_id: String,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub prompt: Option<String>,
    pub prompt_bytes: i64,
    pub prompt_sha256: String,
    pub result: Option<String>,
    pub result_bytes: Option<i64>,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<i64>,
    pub cost_usd: Option<f64>,
    pub stderr_tail: Option<String>,
}

fn run_of(r: &rusqlite::Row) -> rusqlite::Result<Run> {
    Ok(Run {
        run_id: r.get(0)?,
        app: r.get(1)?,
        model: r.get(2)?,
        outcome: r.get(3)?,
        worker_id: r.get(4)?,
        created_at: r.get(5)?,
        finished_at: r.get(6)?,
        prompt: r.get(7)?,
        prompt_bytes: r.get(8)?,
        prompt_sha256: r.get(9)?,
        result: r.get(10)?,
        result_bytes: r.get(11)?,
        error: r.get(12)?,
        exit_code: r.get(13)?,
        duration_ms: r.get(14)?,
        cost_usd: r.get(15)?,
        stderr_tail: r.get(16)?,
    })
}

/// One row of `sessions`.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub session_id: String,
    pub app: String,
    pub status: String,
    pub turns: i64,
    pub cwd: String,
    pub owner_worker: Option<String>,
    pub owner_generation: i64,
}

const EVENT_COLUMNS: &str = "session_id, app, event, at, worker_id, turn, outcome, stop_reason,
     duration_ms, prompt, output, error";

fn event_of(r: &rusqlite::Row) -> rusqlite::Result<Event> {
    Ok(Event {
        session_id: r.get(0)?,
        app: r.get(1)?,
        event: r.get(2)?,
        at: r.get(3)?,
        worker_id: r.get(4)?,
        turn: r.get(5)?,
        outcome: r.get(6)?,
        stop_reason: r.get(7)?,
        duration_ms: r.get(8)?,
        prompt: r.get(9)?,
        output: r.get(10)?,
        error: r.get(11)?,
    })
}

/// The events of the ledger at `path` that `filter` (an SQL condition on `?1`) picks, in order.
fn events_where(path: &Path, filter: &str, arg: &str) -> Vec<Event> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM session_events WHERE {filter} ORDER BY id");
    read_only_ledger(path)
        .prepare(&sql)
        .unwrap()
        .query_map([arg], event_of)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The events of `session_id` in the ledger at `path`, in order.
pub fn events_at(path: &Path, session_id: &str) -> Vec<Event> {
    events_where(path, "session_id = ?1", session_id)
}

impl Forge {
    /// The events of `session_id`, in order.
    pub fn events(&self, session_id: &str) -> Vec<Event> {
        events_at(&self.ledger_path(), session_id)
    }

    /// The turn events of `session_id`, in order.
    pub fn turn_events(&self, session_id: &str) -> Vec<Event> {
        let mut events = self.events(session_id);
        events.retain(Event::is_turn);
        events
    }

    /// The events of `app`'s sessions, in order.
    pub fn app_events(&self, app: &str) -> Vec<Event> {
        events_where(&self.ledger_path(), "app = ?1", app)
    }

    /// Every event of the ledger, in order.
    pub fn all_events(&self) -> Vec<Event> {
        events_where(&self.ledger_path(), "?1 = ?1", "")
    }

    /// The runs, oldest first.
    pub fn runs(&self) -> Vec<Run> {
        self.ledger()
            .prepare(
                "SELECT run_id, app, model, outcome, worker_id, created_at, finished_at, prompt,
                        prompt_bytes, prompt_sha256, result, result_bytes, error, exit_code,
                        duration_ms, cost_usd, stderr_tail
                 FROM runs ORDER BY created_at, rowid",
            )
            .unwrap()
            .query_map([], run_of)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Every session the ledger holds.
    pub fn sessions(&self) -> Vec<Session> {
        self.ledger()
            .prepare(
                "SELECT session_id, app, status, turns, cwd, owner_worker, owner_generation
                 FROM sessions ORDER BY created_at, rowid",
            )
            .unwrap()
            .query_map([], |r| {
                Ok(Session {
                    session_id: r.get(0)?,
                    app: r.get(1)?,
                    status: r.get(2)?,
                    turns: r.get(3)?,
                    cwd: r.get(4)?,
                    owner_worker: r.get(5)?,
                    owner_generation: r.get(6)?,
                })
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// The ledger's row of `session_id`.
    pub fn session_row(&self, session_id: &str) -> Session {
        self.sessions()
            .into_iter()
            .find(|s| s.session_id == session_id)
            .unwrap_or_else(|| panic!("no session {session_id} in the ledger"))
    }

    /// How many rows `table` holds.
    pub fn rows_in(&self, table: &str) -> i64 {
        self.ledger()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// Whether turn `n` of `session_id` began, as the ledger stamps it, only once turn `n - 1`
    /// had ended (its start plus its duration).
    pub fn turn_began_after_the_one_before_ended(&self, session_id: &str, n: i64) -> bool {
        self.ledger()
            .query_row(
                "SELECT ROUND((julianday(t2.at) - julianday(t1.at)) * 86400000) >= t1.duration_ms
                 FROM session_events t1 JOIN session_events t2 ON t2.session_id = t1.session_id
                 WHERE t1.session_id = ?1 AND t1.event = 'turn' AND t1.turn = ?2 - 1
                   AND t2.event = 'turn' AND t2.turn = ?2",
                rusqlite::params![session_id, n],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// A session's working directory, as the ledger has it.
    pub fn session_dir(&self, session_id: &str) -> PathBuf {
        PathBuf::from(self.session_row(session_id).cwd)
    }

    /// The worker the ledger names as the owner of a session, and its generation.
    pub fn owner(&self, session_id: &str) -> (Option<String>, u64) {
        let row = self.session_row(session_id);
        (row.owner_worker, row.owner_generation as u64)
    }

    /// The hash the ledger keeps of token `token_id`.
    pub fn token_hash(&self, token_id: &str) -> String {
        self.ledger()
            .query_row(
                "SELECT token_hash FROM tokens WHERE token_id = ?1",
                [token_id],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Waits until the ledger records a turn of `session_id` as running, and returns it.
    pub async fn running_turn(&self, session_id: &str) -> Event {
        wait_for_running_turn(&self.ledger_path(), session_id).await
    }
}

/// Waits until the ledger at `path` records a turn of `session_id` as running, and returns it.
pub async fn wait_for_running_turn(path: &Path, session_id: &str) -> Event {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = events_at(path, session_id);
        if let Some(running) = events.into_iter().find(|e| e.is_turn() && e.running()) {
            return running;
        }
        assert!(Instant::now() < deadline, "no turn of {session_id} running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many turns of `session_id` the ledger at `path` has taken that have not begun (they wait
/// for an earlier turn of the session).
pub fn waiting_turns_at(path: &Path, session_id: &str) -> i64 {
    read_only_ledger(path)
        .query_row(
            "SELECT COUNT(*) FROM turn_waits WHERE session_id = ?1",
            [session_id],
            |r| r.get(0),
        )
        .unwrap()
}
