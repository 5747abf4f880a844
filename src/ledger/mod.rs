//! The SQLite ledger: every token, session, turn and run. The only module that imports rusqlite.
//!
//! Several worker processes share one ledger file: WAL mode, a busy timeout, and writes that
//! must see a consistent count (the live-session cap, a turn's number) run in `BEGIN IMMEDIATE`
//! transactions, so that they serialise across processes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use rusqlite_migration::{Migrations, M};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// SQLite opened the file, but only for reading.
    #[error("it is read-only for this worker ({reason})")]
    ReadOnly { reason: String },
    #[error("ledger migration: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("ledger: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("ledger: {0}")]
    Io(#[from] std::io::Error),
    #[error("ledger task failed: {0}")]
    Task(String),
}

pub type LedgerResult<T> = Result<T, LedgerError>;

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("migrations.sql")),
        // The backend's own state of a session, whichever backend it is.
        M::up("ALTER TABLE sessions RENAME COLUMN acpx_record_id TO agent_state;"),
        M::up(include_str!("live.sql")),
        M::up(include_str!("owners.sql")),
    ])
}

/// A handle on the ledger; cheap to clone. Calls run on tokio's blocking pool.
#[derive(Clone)]
pub struct Ledger {
    conn: Arc<Mutex<Connection>>,
    /// A second connection for the quick indexed reads of the request path (token, session,
    /// counts). In WAL mode readers do not wait for writers, so these run inline on the caller's
    /// thread instead of hopping to the blocking pool; a read that does meet a lock (rare: WAL
    /// recovery, checkpoints) gives up quickly and is retried on the blocking pool.
    reader: Arc<Mutex<Connection>>,
    /// The file opened (device, inode): a file put in its place later is not the one in use.
    file_id: (u64, u64),
    path: PathBuf,
}

/// How long an inline read may wait for a lock before it moves to the blocking pool.
const INLINE_READ_BUSY: Duration = Duration::from_millis(50);

/// Text as the ledger keeps it: the text itself unless only sizes and hashes are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub text: Option<String>,
    pub bytes: i64,
    pub sha256: String,
}

impl Recorded {
    pub fn of(text: &str, keep_text: bool) -> Recorded {
        Recorded {
            text: keep_text.then(|| text.to_string()),
            bytes: text.len() as i64,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub token_id: String,
    pub app: String,
    pub admin: bool,
    pub token_hash: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub session_id: String,
    pub app: String,
    pub agent: String,
    pub agent_command: String,
    pub cwd: String,
    pub open: bool,
    pub created_at: String,
    pub last_turn_at: Option<String>,
    pub closed_at: Option<String>,
    pub turns: u64,
    /// Files attached at create, not yet listed ahead of a turn.
    pub pending_files: Vec<String>,
    /// What the agent backend keeps with the session (acpx: its record id).
    pub agent_state: Option<String>,
    /// The number of the turn running now, if one is (read only; never written from here).
    pub running_turn: Option<u64>,
}

/// What a session event row says, beyond its session, kind and time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventDetail {
    pub outcome: String,
    pub turn: Option<u64>,
    pub stop_reason: Option<String>,
    pub duration_ms: Option<u64>,
    pub prompt: Option<Recorded>,
    pub output: Option<Recorded>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    Create,
    Turn,
    Close,
    SweepClose,
    HardDelete,
}

impl SessionEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEvent::Create => "create",
            SessionEvent::Turn => "turn",
            SessionEvent::Close => "close",
            SessionEvent::SweepClose => "sweep_close",
            SessionEvent::HardDelete => "hard_delete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// The live-session cap is reached; nothing was written.
    AtCapacity {
        open: u64,
    },
}

/// A turn to begin: whose, when, by which worker, its prompt; workers alive since
/// `alive_since` hold the session while they run a turn of it; `wait_id` is the turn's
/// reservation (see `reserve_turn`), without which it takes the session's next number.
#[derive(Debug, Clone)]
pub struct TurnStart {
    pub session_id: String,
    pub app: String,
    pub at: String,
    pub worker_id: String,
    pub prompt: Recorded,
    pub alive_since: String,
    pub wait_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginTurn {
    Started {
        turn: u64,
        event_id: i64,
        /// Files attached at create, to list ahead of this (the first) turn.
        pending_files: Vec<String>,
    },
    NotFound,
    Closed,
    /// A turn of the session is running on another live worker.
    Busy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    Closed,
    AlreadyClosed,
    NotFound,
}

/// A row of `session_events`, as the audit trail shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: i64,
    pub session_id: String,
    pub app: String,
    pub event: String,
    pub at: String,
    pub worker_id: String,
    pub turn: Option<u64>,
    pub outcome: String,
    pub stop_reason: Option<String>,
    pub duration_ms: Option<u64>,
    pub prompt: Option<String>,
    pub prompt_bytes: Option<i64>,
    pub prompt_sha256: Option<String>,
    pub output: Option<String>,
    pub output_bytes: Option<i64>,
    pub output_sha256: Option<String>,
    pub error: Option<String>,
}

/// Refuses a file SQLite could open only for reading (its permissions, a read-only mount).
fn refuse_read_only(conn: &Connection, path: &Path) -> LedgerResult<()> {
    let read_only = conn
        .is_readonly(rusqlite::MAIN_DB)
        .map_err(|source| LedgerError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    match (read_only, writable_by_me(path)) {
        (false, Ok(())) => Ok(()),
        (_, Err(e)) => Err(LedgerError::ReadOnly {
            reason: e.to_string(),
        }),
        (true, Ok(())) => Err(LedgerError::ReadOnly {
            reason: "SQLite opened it read-only".into(),
        }),
    }
}

fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Whether this process may write `path`, by its effective ids (access(2) with AT_EACCESS).
fn writable_by_me(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path holds a NUL byte"))?;
    // SAFETY: a valid NUL-terminated path; faccessat only reads it.
    let answer = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::W_OK,
            libc::AT_EACCESS,
        )
    };
    if answer == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> LedgerResult<Ledger> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let open_err = |source| LedgerError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        refuse_read_only(&conn, path)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.set_transaction_behavior(TransactionBehavior::Immediate);
        // Workers starting together race to switch the file to WAL (which SQLite answers with
        // "busy" without waiting) and to migrate: whoever loses tries again and finds the work
        // done.
        let migrations = migrations();
        let mut attempt = 0;
        loop {
            let step = conn
                .pragma_update(None, "journal_mode", "WAL")
                .map_err(LedgerError::from)
                .and_then(|()| migrations.to_latest(&mut conn).map_err(LedgerError::from));
            match step {
                Ok(()) => break,
                Err(e) if attempt < 100 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "ledger set-up raced; retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
        let reader = Connection::open(path).map_err(open_err)?;
        reader.busy_timeout(INLINE_READ_BUSY).map_err(open_err)?;
        reader
            .pragma_update(None, "query_only", true)
            .map_err(open_err)?;
        // A write lock is what every write needs: taking one proves the file and its -wal and
        // -shm companions can be written.
        conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
            .map_err(|e| LedgerError::ReadOnly {
                reason: format!("no write lock: {e}"),
            })?;
        Ok(Ledger {
            conn: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
            path: path.to_path_buf(),
            file_id: file_id(path)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the ledger can still be written: the file at its path is still the one opened,
    /// and this process may write it. A restore that puts a read-only copy in its place, or a
    /// chmod, shows here before any write fails.
    pub fn check_writable(&self) -> Result<(), String> {
        match file_id(&self.path) {
            Ok(id) if id == self.file_id => {}
            Ok(_) => {
                return Err(format!(
                    "{} was replaced by another file; restart the worker to use it",
                    self.path.display()
                ))
            }
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        }
        writable_by_me(&self.path)
            .map_err(|e| format!("{} cannot be written: {e}", self.path.display()))
    }

    async fn call<T, F>(&self, f: F) -> LedgerResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> LedgerResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| LedgerError::Task(e.to_string()))?
    }

    /// A quick read: inline on the reader connection, or on the blocking pool when the
    /// database is busy.
    async fn read<T, F>(&self, f: F) -> LedgerResult<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> LedgerResult<T> + Send + 'static,
    {
        let inline = {
            let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&reader)
        };
        match inline {
            Err(LedgerError::Sql(rusqlite::Error::SqliteFailure(e, _)))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                self.call(move |c| f(c)).await
            }
            other => other,
        }
    }

    // ---- tokens ----

    pub async fn insert_token(&self, row: TokenRow) -> LedgerResult<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO tokens (token_id, app, admin, token_hash, created_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    row.token_id,
                    row.app,
                    row.admin,
                    row.token_hash,
                    row.created_at,
                    row.revoked_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn token_by_hash(&self, hash: String) -> LedgerResult<Option<TokenRow>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT token_id, app, admin, token_hash, created_at, revoked_at
                 FROM tokens WHERE token_hash = ?1",
            )?
            .query_row([&hash], token_row)
            .optional()?)
        })
        .await
    }

    pub async fn list_tokens(&self) -> LedgerResult<Vec<TokenRow>> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT token_id, app, admin, token_hash, created_at, revoked_at
                 FROM tokens ORDER BY created_at, token_id",
            )?;
            let rows = stmt.query_map([], token_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Revokes a token. `None` when there is no such token; the first revocation time is kept.
    pub async fn revoke_token(&self, token_id: String, at: String) -> LedgerResult<Option<()>> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let exists = tx
                .query_row(
                    "SELECT 1 FROM tokens WHERE token_id = ?1",
                    [&token_id],
                    |_| Ok(()),
                )
                .optional()?;
            if exists.is_some() {
                tx.execute(
                    "UPDATE tokens SET revoked_at = ?2 WHERE token_id = ?1 AND revoked_at IS NULL",
                    params![token_id, at],
                )?;
            }
            tx.commit()?;
            Ok(exists)
        })
        .await
    }

    pub async fn active_token_count(&self) -> LedgerResult<u64> {
        self.call(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })
        .await
    }

    // ---- sessions ----

    /// Inserts an open session and its `create` event (`running` until [`Ledger::finish_create`]),
    /// unless `cap` sessions are already open.
    pub async fn create_session(
        &self,
        row: SessionRow,
        worker_id: String,
        cap: u64,
    ) -> LedgerResult<CreateOutcome> {
        self.call(move |c| {
            let tx = c.transaction()?;
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
            insert_event(
                &tx,
                &row.session_id,
                &row.app,
                SessionEvent::Create,
                &row.created_at,
                &worker_id,
                &EventDetail {
                    // Until the agent session exists: the sweep leaves the session alone.
                    outcome: "running".into(),
                    ..Default::default()
                },
            )?;
            tx.commit()?;
            Ok(CreateOutcome::Created)
        })
        .await
    }

    pub async fn session(&self, session_id: String) -> LedgerResult<Option<SessionRow>> {
        self.read(move |c| {
            Ok(
                c.prepare_cached(&format!("{SESSION_SELECT} WHERE session_id = ?1"))?
                    .query_row([&session_id], session_row)
                    .optional()?,
            )
        })
        .await
    }

    /// The sessions of one app, newest first.
    pub async fn sessions_of(&self, app: String) -> LedgerResult<Vec<SessionRow>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "{SESSION_SELECT} WHERE app = ?1 ORDER BY created_at DESC, session_id"
            ))?;
            let rows = stmt.query_map([&app], session_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Records how a create ended (its event was written as `running`).
    pub async fn finish_create(
        &self,
        session_id: String,
        outcome: String,
        error: Option<String>,
    ) -> LedgerResult<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE session_events SET outcome = ?2, error = ?3
                 WHERE session_id = ?1 AND event = 'create'",
                params![session_id, outcome, error],
            )?;
            Ok(())
        })
        .await
    }

    /// Keeps what the agent backend needs to reach the session again, and the worker whose
    /// agent process now holds it, if one does (`owner`: the first generation).
    pub async fn set_agent_state(
        &self,
        session_id: String,
        state: String,
        owner: Option<String>,
    ) -> LedgerResult<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE sessions SET agent_state = ?2, owner_worker = ?3,
                                     owner_generation = owner_generation + (?3 IS NOT NULL)
                 WHERE session_id = ?1",
                params![session_id, state, owner],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn open_session_count(&self) -> LedgerResult<u64> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT COUNT(*) FROM sessions WHERE status = 'open'")?
                    .query_row([], |r| r.get::<_, i64>(0))? as u64,
            )
        })
        .await
    }

    /// Numbers a new turn and records it as running, if the session is open and `app`'s.
    pub async fn begin_turn(&self, start: TurnStart) -> LedgerResult<BeginTurn> {
        let TurnStart {
            session_id,
            app,
            at,
            worker_id,
            prompt,
            alive_since,
            wait_id,
        } = start;
        self.call(move |c| {
            let tx = c.transaction()?;
            let reserved = reserved_turn(&tx, wait_id.as_deref())?;
            // Another worker's turn of this session is running (and that worker's heartbeat is
            // no older than `alive_since`): this one waits, so that one session runs one turn
            // at a time across workers. This worker's own turns of the session are one at a
            // time already; a `running` row of its own is one it could not finish recording.
            let busy: bool = tx.query_row(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM session_events
                                    WHERE session_id = ?1 AND event = 'turn' AND outcome = 'running'
                                      AND worker_id != ?3 AND {})",
                    live_worker("?2")
                ),
                params![session_id, alive_since, worker_id],
                |r| r.get(0),
            )?;
            let found: Option<(String, String, i64, Option<String>)> = tx
                .query_row(
                    "SELECT app, status, turns, pending_files FROM sessions WHERE session_id = ?1",
                    [&session_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let (turns, pending) = match found {
                Some((owner, ..)) if owner != app => return Ok(BeginTurn::NotFound),
                None => return Ok(BeginTurn::NotFound),
                Some((_, status, ..)) if status != "open" => return Ok(BeginTurn::Closed),
                Some(_) if busy => return Ok(BeginTurn::Busy),
                Some((_, _, turns, pending)) => (turns as u64 + 1, parse_files(pending)),
            };
            // A reserved number is counted in `turns` already; an unreserved turn takes the next.
            let turns = reserved.unwrap_or(turns);
            tx.execute(
                "UPDATE sessions SET turns = MAX(turns, ?2), last_turn_at = ?3, pending_files = NULL
                 WHERE session_id = ?1",
                params![session_id, turns as i64, at],
            )?;
            if let Some(id) = &wait_id {
                tx.execute("DELETE FROM turn_waits WHERE wait_id = ?1", [id])?;
            }
            let event_id = insert_event(
                &tx,
                &session_id,
                &app,
                SessionEvent::Turn,
                &at,
                &worker_id,
                &EventDetail {
                    outcome: "running".into(),
                    turn: Some(turns),
                    prompt: Some(prompt),
                    ..Default::default()
                },
            )?;
            tx.commit()?;
            Ok(BeginTurn::Started {
                turn: turns,
                event_id,
                pending_files: pending,
            })
        })
        .await
    }

    /// Records how a turn ended, and moves the session's `last_turn_at` to its end.
    pub async fn finish_turn(
        &self,
        session_id: String,
        event_id: i64,
        at: String,
        detail: EventDetail,
    ) -> LedgerResult<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let output = detail.output.as_ref();
            tx.execute(
                "UPDATE session_events SET outcome = ?2, stop_reason = ?3, duration_ms = ?4,
                        output = ?5, output_bytes = ?6, output_sha256 = ?7, error = ?8
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
                ],
            )?;
            tx.execute(
                "UPDATE sessions SET last_turn_at = ?2 WHERE session_id = ?1",
                params![session_id, at],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Closes an open session of `app` and records `event` (close or sweep_close).
    pub async fn close_session(
        &self,
        session_id: String,
        app: String,
        event: SessionEvent,
        at: String,
        worker_id: String,
        detail: EventDetail,
    ) -> LedgerResult<CloseOutcome> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let status: Option<(String, String)> = tx
                .query_row(
                    "SELECT app, status FROM sessions WHERE session_id = ?1",
                    [&session_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match status {
                None => return Ok(CloseOutcome::NotFound),
                Some((owner, _)) if owner != app => return Ok(CloseOutcome::NotFound),
                Some((_, status)) if status != "open" => return Ok(CloseOutcome::AlreadyClosed),
                Some(_) => {}
            }
            tx.execute(
                "UPDATE sessions SET status = 'closed', closed_at = ?2 WHERE session_id = ?1",
                params![session_id, at],
            )?;
            insert_event(&tx, &session_id, &app, event, &at, &worker_id, &detail)?;
            tx.commit()?;
            Ok(CloseOutcome::Closed)
        })
        .await
    }

    /// The audit trail of one session, oldest first.
    pub async fn events_of(&self, session_id: String) -> LedgerResult<Vec<EventRow>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, session_id, app, event, at, worker_id, turn, outcome, stop_reason,
                        duration_ms, prompt, prompt_bytes, prompt_sha256, output, output_bytes,
                        output_sha256, error
                 FROM session_events WHERE session_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([session_id], |r| {
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
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}

pub(crate) const SESSION_SELECT: &str = "SELECT session_id, app, agent, agent_command, cwd, status,
        created_at, last_turn_at, closed_at, turns, pending_files, agent_state,
        (SELECT e.turn FROM session_events e
          WHERE e.session_id = sessions.session_id AND e.event = 'turn' AND e.outcome = 'running'
          ORDER BY e.id DESC LIMIT 1)
        FROM sessions";

fn files_json(files: &[String]) -> Option<String> {
    (!files.is_empty()).then(|| serde_json::to_string(files).expect("strings serialize"))
}

fn parse_files(json: Option<String>) -> Vec<String> {
    json.and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default()
}

pub(crate) fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
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
    })
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        token_id: r.get(0)?,
        app: r.get(1)?,
        admin: r.get(2)?,
        token_hash: r.get(3)?,
        created_at: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

/// The number a turn got when it was taken (see `reserve_turn`), if it was.
fn reserved_turn(
    tx: &rusqlite::Transaction<'_>,
    wait_id: Option<&str>,
) -> rusqlite::Result<Option<u64>> {
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

pub(crate) fn insert_event(
    tx: &rusqlite::Transaction<'_>,
    session_id: &str,
    app: &str,
    event: SessionEvent,
    at: &str,
    worker_id: &str,
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
            session_id,
            app,
            event.as_str(),
            at,
            worker_id,
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

/// A row of `runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub run_id: String,
    pub app: String,
    pub model: String,
    pub outcome: String,
    pub worker_id: String,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub prompt: Recorded,
    pub result: Option<Recorded>,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    pub cost_usd: Option<f64>,
    pub stderr_tail: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunEnd {
    pub outcome: String,
    pub result: Option<Recorded>,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    pub cost_usd: Option<f64>,
    pub stderr_tail: Option<String>,
}

impl Ledger {
    // ---- runs ----

    /// Records a run as `running`, before its process starts: a crash leaves the row behind.
    pub async fn begin_run(
        &self,
        run_id: String,
        app: String,
        model: String,
        worker_id: String,
        created_at: String,
        prompt: Recorded,
    ) -> LedgerResult<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO runs (run_id, app, model, outcome, worker_id, created_at, prompt,
                                   prompt_bytes, prompt_sha256)
                 VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7, ?8)",
                params![
                    run_id,
                    app,
                    model,
                    worker_id,
                    created_at,
                    prompt.text,
                    prompt.bytes,
                    prompt.sha256
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Records how a run ended.
    pub async fn finish_run(
        &self,
        run_id: String,
        finished_at: String,
        end: RunEnd,
    ) -> LedgerResult<()> {
        self.call(move |c| {
            let result = end.result.as_ref();
            c.execute(
                "UPDATE runs SET outcome = ?2, finished_at = ?3, result = ?4, result_bytes = ?5,
                        result_sha256 = ?6, error = ?7, exit_code = ?8, duration_ms = ?9,
                        cost_usd = ?10, stderr_tail = ?11
                 WHERE run_id = ?1",
                params![
                    run_id,
                    end.outcome,
                    finished_at,
                    result.and_then(|r| r.text.clone()),
                    result.map(|r| r.bytes),
                    result.map(|r| r.sha256.clone()),
                    end.error,
                    end.exit_code,
                    end.duration_ms.map(|d| d as i64),
                    end.cost_usd,
                    end.stderr_tail,
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn run(&self, run_id: String) -> LedgerResult<Option<RunRow>> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT run_id, app, model, outcome, worker_id, created_at, finished_at, prompt,
                        prompt_bytes, prompt_sha256, result, result_bytes, result_sha256, error,
                        exit_code, duration_ms, cost_usd, stderr_tail
                 FROM runs WHERE run_id = ?1",
                [run_id],
                run_row,
            )
            .optional()?)
        })
        .await
    }

    /// The end time of each of `run_ids` the ledger knows: `None` for a run with none (still
    /// running, or cut short). Runs the ledger does not know are left out.
    pub async fn runs_finished_at(
        &self,
        run_ids: Vec<String>,
    ) -> LedgerResult<std::collections::HashMap<String, Option<String>>> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached("SELECT finished_at FROM runs WHERE run_id = ?1")?;
            let mut out = std::collections::HashMap::new();
            for id in run_ids {
                if let Some(at) = stmt
                    .query_row([&id], |r| r.get::<_, Option<String>>(0))
                    .optional()?
                {
                    out.insert(id, at);
                }
            }
            Ok(out)
        })
        .await
    }
}

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
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

mod lifecycle;
mod live;
mod owners;

use live::live_worker;
pub use live::{Reserved, TurnRow};
pub use owners::Owner;

#[cfg(test)]
mod tests;
