-- v3: live turns.
-- A turn a worker has taken and not yet begun (it waits for the session's earlier turns or for
-- a slot): the session is not idle, and a cancel finds the worker that holds the turn.
CREATE TABLE turn_waits (
    wait_id    TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    worker_id  TEXT NOT NULL,
    since      TEXT NOT NULL
);
CREATE INDEX turn_waits_by_session ON turn_waits (session_id, since);
