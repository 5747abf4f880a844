-- v3: live turns.
-- A turn a worker has taken and not yet begun (it waits for the session's earlier turns or for
-- a slot), with the number it was given when taken: the session is not idle, and a cancel
-- finds the worker that holds the turn.
CREATE TABLE turn_waits (
    wait_id    TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    app        TEXT NOT NULL,
    worker_id  TEXT NOT NULL,
    since      TEXT NOT NULL,
    turn       INTEGER NOT NULL
);
CREATE INDEX turn_waits_by_session ON turn_waits (session_id, since);

-- Every event of every turn, as the agent produced it (message and thought text per
-- ledger_keep_text), so a turn can be replayed and followed from any worker.
CREATE TABLE turn_events (
    session_id TEXT NOT NULL,
    turn       INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    at         TEXT NOT NULL,
    type       TEXT NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (session_id, turn, seq)
) WITHOUT ROWID;
