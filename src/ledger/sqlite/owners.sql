-- v4: session ownership. A session of the native backend is owned by the worker whose agent
-- process holds it; each change of owner is a new generation, taken by compare-and-set.
ALTER TABLE sessions ADD COLUMN owner_worker TEXT;
ALTER TABLE sessions ADD COLUMN owner_generation INTEGER NOT NULL DEFAULT 0;
-- A worker that is draining (shutting down) serves no new turn of the sessions it owns.
ALTER TABLE workers ADD COLUMN draining_at TEXT;
