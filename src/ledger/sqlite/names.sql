-- A session may have a name, unique among its app's open sessions of its agent (contract v3.3).
-- The partial index makes two workers creating the same name at once give one session.
ALTER TABLE sessions ADD COLUMN name TEXT;
CREATE UNIQUE INDEX sessions_open_names ON sessions (app, agent, name)
    WHERE status = 'open' AND name IS NOT NULL;
