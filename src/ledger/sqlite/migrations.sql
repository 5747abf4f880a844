-- v1: tokens, sessions, session events, runs.
CREATE TABLE tokens (
    token_id    TEXT PRIMARY KEY,
    app         TEXT NOT NULL,
    admin       INTEGER NOT NULL CHECK (admin IN (0, 1)),
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);

CREATE TABLE sessions (
    session_id    TEXT PRIMARY KEY,
    app           TEXT NOT NULL,
    agent         TEXT NOT NULL,
    agent_command TEXT NOT NULL,
    cwd           TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    created_at    TEXT NOT NULL,
    last_turn_at  TEXT,
    closed_at     TEXT,
    turns         INTEGER NOT NULL DEFAULT 0,
    -- JSON array of the paths of files attached at create, listed ahead of the first turn.
    pending_files TEXT,
    -- acpx's own id for the session record (its file name under ~/.acpx/sessions).
    acpx_record_id TEXT
);
CREATE INDEX sessions_by_app ON sessions (app, created_at);
CREATE INDEX sessions_by_status ON sessions (status);

-- The audit trail: rows are never deleted, not even by a hard delete of their session.
CREATE TABLE session_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id     TEXT NOT NULL,
    app            TEXT NOT NULL,
    event          TEXT NOT NULL
                   CHECK (event IN ('create', 'turn', 'close', 'sweep_close', 'hard_delete')),
    at             TEXT NOT NULL,
    worker_id      TEXT NOT NULL,
    turn           INTEGER,
    outcome        TEXT NOT NULL,
    stop_reason    TEXT,
    duration_ms    INTEGER,
    prompt         TEXT,
    prompt_bytes   INTEGER,
    prompt_sha256  TEXT,
    output         TEXT,
    output_bytes   INTEGER,
    output_sha256  TEXT,
    error          TEXT
);
CREATE INDEX session_events_by_session ON session_events (session_id, id);
CREATE INDEX session_events_running ON session_events (outcome) WHERE outcome = 'running';

CREATE TABLE runs (
    run_id         TEXT PRIMARY KEY,
    app            TEXT NOT NULL,
    model          TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    worker_id      TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    finished_at    TEXT,
    prompt         TEXT,
    prompt_bytes   INTEGER NOT NULL,
    prompt_sha256  TEXT NOT NULL,
    result         TEXT,
    result_bytes   INTEGER,
    result_sha256  TEXT,
    error          TEXT,
    exit_code      INTEGER,
    duration_ms    INTEGER,
    cost_usd       REAL,
    stderr_tail    TEXT
);
CREATE INDEX runs_by_app ON runs (app, created_at);

-- Workers sharing the ledger: each writes a heartbeat; a turn or run left 'running' by a worker
-- whose heartbeat stopped is recorded as interrupted.
CREATE TABLE workers (
    worker_id     TEXT PRIMARY KEY,
    started_at    TEXT NOT NULL,
    heartbeat_at  TEXT NOT NULL,
    stopped_at    TEXT
);

-- Named leases, so that one worker at a time does a shared job (the sweeper).
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
