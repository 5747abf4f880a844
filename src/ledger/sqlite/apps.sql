-- v5: apps' policies, and what the limits count that the other tables do not hold.
CREATE TABLE app_policies (
    app        TEXT PRIMARY KEY,
    -- The policy's fields as JSON (PolicyFields): a field left out is not set.
    policy     TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Requests per app and UTC minute (`2026-01-01T10:05`), counted for apps with a
-- requests_per_minute limit; minutes before the current one are deleted as it is counted.
CREATE TABLE app_requests (
    app      TEXT NOT NULL,
    minute   TEXT NOT NULL,
    requests INTEGER NOT NULL,
    PRIMARY KEY (app, minute)
) WITHOUT ROWID;

-- What each app did per UTC day (`2026-01-01`), kept as work is admitted and ends, so that a
-- limit is checked without counting the day's or the month's rows: turns taken (counted when a
-- worker takes one, so those still waiting to begin are in), the agents' reported cost of its
-- turns (by the day each began), and its runs' cost (by the day each began).
CREATE TABLE app_days (
    app       TEXT NOT NULL,
    day       TEXT NOT NULL,
    turns     INTEGER NOT NULL DEFAULT 0,
    agent_usd REAL NOT NULL DEFAULT 0,
    runs_usd  REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (app, day)
) WITHOUT ROWID;

-- Requests refused by a limit, per app, UTC day (`2026-01-01`) and limit.
CREATE TABLE app_refusals (
    app        TEXT NOT NULL,
    day        TEXT NOT NULL,
    limit_name TEXT NOT NULL,
    refused    INTEGER NOT NULL,
    PRIMARY KEY (app, day, limit_name)
) WITHOUT ROWID;

-- What a turn's agent reported its session had cost by the turn's end (ACP's usage cost is
-- the session's, cumulative: its last `usage` event's cost_usd), and the turn's own part of it:
-- the growth since the session's previous report, or all of it after the count started again
-- (an agent process that loaded the session anew).
ALTER TABLE session_events ADD COLUMN reported_cost_usd REAL;
ALTER TABLE session_events ADD COLUMN cost_usd REAL;
-- An app's turns and creates by time (turns today, agents' cost this month, usage by day).
CREATE INDEX session_events_by_app ON session_events (app, event, at);
-- An app's running runs.
CREATE INDEX runs_running ON runs (app) WHERE outcome = 'running';
