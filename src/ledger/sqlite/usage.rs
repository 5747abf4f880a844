//! What an app uses of its counted limits, counted from the rows the other tables keep; and the
//! check that admits work within them, run inside the transaction that writes the work, so that
//! workers sharing the ledger admit exactly up to a limit.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, Transaction};

use super::workers::live_worker;
use crate::quota::{Amount, Limit, Limits, Refusal, Window};
use crate::values::Timestamp;

/// A UTC minute as `app_requests` keys it.
pub(super) fn minute_key(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M").to_string()
}

/// A UTC day as `app_refusals` keys it.
pub(super) fn day_key(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

/// The start of `window` at `at`, as the ledger writes times.
fn since(window: Window, at: DateTime<Utc>) -> String {
    let start = window.start(at).unwrap_or(at);
    Timestamp::at(start).to_string()
}

fn count(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<Amount> {
    let n: i64 = c.prepare_cached(sql)?.query_row(p, |r| r.get(0))?;
    Ok(Amount::Count(n.max(0) as u64))
}

fn usd(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<Amount> {
    let n: f64 = c.prepare_cached(sql)?.query_row(p, |r| r.get(0))?;
    Ok(Amount::Usd(n))
}

/// The turns of `app` taken and waiting to begin on a live worker: an SQL count, `?1` the app,
/// `?2` since when a worker counts as alive.
fn waiting_turns() -> String {
    format!(
        "(SELECT COUNT(*) FROM turn_waits WHERE app = ?1 AND {})",
        live_worker("?2")
    )
}

/// What `limit` counts of `app` at `at`.
pub(super) fn used_of(
    c: &Connection,
    app: &str,
    limit: Limit,
    at: DateTime<Utc>,
    alive_since: &Timestamp,
) -> rusqlite::Result<Amount> {
    let start = limit.window().map(|w| since(w, at)).unwrap_or_default();
    match limit {
        Limit::MaxOpenSessions => count(
            c,
            "SELECT COUNT(*) FROM sessions WHERE app = ?1 AND status = 'open'",
            [app],
        ),
        Limit::MaxConcurrentTurns => count(
            c,
            &format!(
                "SELECT (SELECT COUNT(*) FROM session_events
                          WHERE outcome = 'running' AND event = 'turn' AND app = ?1) + {}",
                waiting_turns()
            ),
            params![app, alive_since],
        ),
        Limit::MaxConcurrentRuns => count(
            c,
            "SELECT COUNT(*) FROM runs WHERE app = ?1 AND outcome = 'running'",
            [app],
        ),
        Limit::RequestsPerMinute => count(
            c,
            "SELECT COALESCE((SELECT requests FROM app_requests WHERE app = ?1 AND minute = ?2), 0)",
            [app, &minute_key(at)],
        ),
        Limit::TurnsPerDay => count(
            c,
            "SELECT COALESCE(SUM(turns), 0) FROM app_days WHERE app = ?1 AND day >= ?2",
            [app, &start[..10]],
        ),
        Limit::RunsUsdPerDay | Limit::RunsUsdPerMonth => usd(
            c,
            "SELECT COALESCE(SUM(runs_usd), 0) FROM app_days WHERE app = ?1 AND day >= ?2",
            [app, &start[..10]],
        ),
        Limit::AgentUsdPerMonth => usd(
            c,
            "SELECT COALESCE(SUM(agent_usd), 0) FROM app_days WHERE app = ?1 AND day >= ?2",
            [app, &start[..10]],
        ),
        Limit::Agents | Limit::Models | Limit::MaxPermissions | Limit::MaxTimeoutSecs => {
            Ok(Amount::Count(0))
        }
    }
}

/// What an app's day gains: a turn taken, or a cost.
pub(super) enum DayGain {
    Turn,
    AgentUsd(f64),
    RunsUsd(f64),
}

/// Adds `gain` to `app`'s figures of `day` (`YYYY-MM-DD`).
pub(super) fn add_to_day(
    tx: &Transaction<'_>,
    app: &str,
    day: &str,
    gain: DayGain,
) -> rusqlite::Result<()> {
    let (turns, agent_usd, runs_usd) = match gain {
        DayGain::Turn => (1, 0.0, 0.0),
        DayGain::AgentUsd(usd) => (0, usd, 0.0),
        DayGain::RunsUsd(usd) => (0, 0.0, usd),
    };
    tx.prepare_cached(
        "INSERT INTO app_days (app, day, turns, agent_usd, runs_usd) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (app, day) DO UPDATE SET turns = turns + excluded.turns,
             agent_usd = agent_usd + excluded.agent_usd, runs_usd = runs_usd + excluded.runs_usd",
    )?
    .execute(params![app, day, turns, agent_usd, runs_usd])?;
    Ok(())
}

/// Records a refusal by `limit` of a request of `app` at `at`.
pub(super) fn record_refusal(
    tx: &Transaction<'_>,
    app: &str,
    limit: Limit,
    at: DateTime<Utc>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO app_refusals (app, day, limit_name, refused) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT (app, day, limit_name) DO UPDATE SET refused = refused + 1",
    )?
    .execute(params![app, day_key(at), limit.name()])?;
    Ok(())
}

/// Work of `app` at `at`, checked against those of `limits` that are set among `which`: the
/// first one reached refuses it (and the refusal is recorded); `None` admits it.
pub(super) fn admit(
    tx: &Transaction<'_>,
    app: &str,
    (limits, which): (&Limits, &[Limit]),
    at: DateTime<Utc>,
    alive_since: &Timestamp,
) -> rusqlite::Result<Option<Refusal>> {
    for &limit in which {
        let Some(value) = limits.amount(limit) else {
            continue;
        };
        let used = used_of(tx, app, limit, at, alive_since)?;
        if used.reaches(value) {
            record_refusal(tx, app, limit, at)?;
            return Ok(Some(Refusal::counted(app, limit, value, used, at)));
        }
    }
    Ok(None)
}
