//! `app_policies`, `app_requests` and `app_refusals`: apps' policies, and what they used.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::rows::{all, FromRow};
use super::usage::{admit, minute_key, record_refusal, used_of};
use super::Ledger;
use crate::ledger::{Apps, DayRow, LedgerError, LedgerResult, PolicyRow, Used};
use crate::quota::{Amount, Day, Limit, Limits, Refusal};
use crate::values::Timestamp;
use crate::wire::PolicySet;

const POLICY_SELECT: &str = "SELECT app, policy, updated_at FROM app_policies";

impl FromRow for PolicyRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<PolicyRow> {
        let json: String = r.get(1)?;
        let fields = serde_json::from_str(&json).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
        })?;
        Ok(PolicyRow {
            app: r.get(0)?,
            fields,
            updated_at: r.get(2)?,
        })
    }
}

fn policy_of(c: &Connection, app: &str) -> rusqlite::Result<Option<PolicyRow>> {
    c.prepare_cached(&format!("{POLICY_SELECT} WHERE app = ?1"))?
        .query_row([app], PolicyRow::from_row)
        .optional()
}

impl Apps for Ledger {
    async fn set_policy(&self, change: PolicySet, at: Timestamp) -> LedgerResult<PolicyRow> {
        self.write(move |tx| {
            let before = policy_of(tx, &change.app)?.map(|p| p.fields);
            let fields = change.apply(before.unwrap_or_default());
            let json =
                serde_json::to_string(&fields).map_err(|e| LedgerError::Task(e.to_string()))?;
            tx.execute(
                "INSERT INTO app_policies (app, policy, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (app) DO UPDATE SET policy = excluded.policy,
                                                 updated_at = excluded.updated_at",
                params![change.app, json, at],
            )?;
            Ok(PolicyRow {
                app: change.app,
                fields,
                updated_at: at,
            })
        })
        .await
    }

    async fn policy(&self, app: String) -> LedgerResult<Option<PolicyRow>> {
        self.read(move |c| Ok(policy_of(c, &app)?)).await
    }

    async fn policies(&self) -> LedgerResult<Vec<PolicyRow>> {
        let sql = format!("{POLICY_SELECT} ORDER BY app");
        self.read(move |c| Ok(all(c, &sql, [])?)).await
    }

    async fn open_sessions_by_app(&self) -> LedgerResult<Vec<(String, String, u64)>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT app, agent, COUNT(*) FROM sessions WHERE status = 'open' GROUP BY 1, 2",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn app_names(&self) -> LedgerResult<Vec<String>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT app FROM tokens UNION SELECT app FROM app_policies ORDER BY 1",
            )?;
            let names = stmt.query_map([], |r| r.get(0))?;
            Ok(names.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn count_request(
        &self,
        app: String,
        limit: u64,
        at: Timestamp,
    ) -> LedgerResult<Option<Refusal>> {
        self.write(move |tx| {
            let (at, minute) = (at.utc(), minute_key(at.utc()));
            let limits = Limits {
                requests_per_minute: Some(limit),
                ..Limits::default()
            };
            let which = (&limits, &[Limit::RequestsPerMinute][..]);
            if let Some(refused) = admit(tx, &app, which, at, &Timestamp::at(at))? {
                return Ok(Some(refused));
            }
            tx.prepare_cached(
                "INSERT INTO app_requests (app, minute, requests) VALUES (?1, ?2, 1)
                 ON CONFLICT (app, minute) DO UPDATE SET requests = requests + 1",
            )?
            .execute([&app, &minute])?;
            tx.prepare_cached("DELETE FROM app_requests WHERE app = ?1 AND minute < ?2")?
                .execute([&app, &minute])?;
            Ok(None)
        })
        .await
    }

    async fn record_refusal(&self, app: String, limit: Limit, at: Timestamp) -> LedgerResult<()> {
        self.write(move |tx| Ok(record_refusal(tx, &app, limit, at.utc())?))
            .await
    }

    async fn used(&self, app: String, at: Timestamp, alive_since: Timestamp) -> LedgerResult<Used> {
        self.read(move |c| {
            let used = |limit| used_of(c, &app, limit, at.utc(), &alive_since);
            let n = |limit| used(limit).map(|a: Amount| a.as_f64() as u64);
            let usd = |limit| used(limit).map(|a: Amount| a.as_f64());
            Ok(Used {
                open_sessions: n(Limit::MaxOpenSessions)?,
                turns_in_flight: n(Limit::MaxConcurrentTurns)?,
                runs_in_flight: n(Limit::MaxConcurrentRuns)?,
                requests_this_minute: n(Limit::RequestsPerMinute)?,
                turns_today: n(Limit::TurnsPerDay)?,
                runs_usd_today: usd(Limit::RunsUsdPerDay)?,
                runs_usd_this_month: usd(Limit::RunsUsdPerMonth)?,
                agent_usd_this_month: usd(Limit::AgentUsdPerMonth)?,
            })
        })
        .await
    }

    async fn usage_days(
        &self,
        app: Option<String>,
        from: Day,
        to: Day,
    ) -> LedgerResult<Vec<DayRow>> {
        let names = match &app {
            Some(app) => vec![app.clone()],
            None => self.app_names().await?,
        };
        self.call(move |c| Ok(days(c, app.as_deref(), names, (from, to))?))
            .await
    }
}

/// The rows of [`Apps::usage_days`]: every app of `names` or seen in the range, every day.
fn days(
    c: &Connection,
    app: Option<&str>,
    names: Vec<String>,
    (from, to): (Day, Day),
) -> rusqlite::Result<Vec<DayRow>> {
    let start = format!("{from}T00:00:00.000Z");
    let end = format!("{}T00:00:00.000Z", to.succ_opt().unwrap_or(to));
    let mut table: BTreeMap<(String, Day), DayRow> = BTreeMap::new();
    let mut apps: BTreeSet<String> = names.into_iter().collect();
    let range = (start.as_str(), end.as_str(), app);
    for (name, date, fill) in day_figures(c, range)? {
        apps.insert(name.clone());
        let row = table.entry((name.clone(), date)).or_insert_with(|| DayRow {
            date,
            app: name,
            ..DayRow::default()
        });
        fill.add_to(row);
    }
    let mut out = Vec::new();
    for name in apps {
        let mut day = from;
        while day <= to {
            out.push(
                table
                    .remove(&(name.clone(), day))
                    .unwrap_or_else(|| DayRow {
                        date: day,
                        app: name.clone(),
                        ..DayRow::default()
                    }),
            );
            let Some(next) = day.succ_opt() else { break };
            day = next;
        }
    }
    Ok(out)
}

/// One figure of one app's day.
enum Figure {
    /// Sessions created, turns, agents' USD.
    Sessions(u64, u64, f64),
    /// Runs, runs' USD.
    Runs(u64, f64),
    Refused(Limit, u64),
}

impl Figure {
    fn add_to(self, row: &mut DayRow) {
        match self {
            Figure::Sessions(created, turns, usd) => {
                row.sessions_created += created;
                row.turns += turns;
                row.agent_usd += usd;
            }
            Figure::Runs(runs, usd) => {
                row.runs += runs;
                row.runs_usd += usd;
            }
            Figure::Refused(limit, n) => *row.refused.entry(limit).or_default() += n,
        }
    }
}

/// Every figure of the days from `start` (inclusive) to `end` (exclusive), of `app` or all.
fn day_figures(
    c: &Connection,
    (start, end, app): (&str, &str, Option<&str>),
) -> rusqlite::Result<Vec<(String, Day, Figure)>> {
    let date = |r: &Row<'_>, i| -> rusqlite::Result<Day> {
        let text: String = r.get(i)?;
        text.parse().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    };
    let mut out = Vec::new();
    let mut stmt = c.prepare_cached(
        "SELECT app, substr(at, 1, 10),
                SUM(event = 'create' AND outcome IN ('ok', 'running')), SUM(event = 'turn'),
                COALESCE(SUM(CASE WHEN event = 'turn' THEN cost_usd END), 0)
         FROM session_events
         WHERE at >= ?1 AND at < ?2 AND (?3 IS NULL OR app = ?3) AND event IN ('create', 'turn')
         GROUP BY 1, 2",
    )?;
    for row in stmt.query_map(params![start, end, app], |r| {
        let figure = Figure::Sessions(
            r.get::<_, i64>(2)? as u64,
            r.get::<_, i64>(3)? as u64,
            r.get(4)?,
        );
        Ok((r.get(0)?, date(r, 1)?, figure))
    })? {
        out.push(row?);
    }
    let mut stmt = c.prepare_cached(
        "SELECT app, substr(created_at, 1, 10), COUNT(*), COALESCE(SUM(cost_usd), 0) FROM runs
         WHERE created_at >= ?1 AND created_at < ?2 AND (?3 IS NULL OR app = ?3) GROUP BY 1, 2",
    )?;
    for row in stmt.query_map(params![start, end, app], |r| {
        let figure = Figure::Runs(r.get::<_, i64>(2)? as u64, r.get(3)?);
        Ok((r.get(0)?, date(r, 1)?, figure))
    })? {
        out.push(row?);
    }
    let mut stmt = c.prepare_cached(
        "SELECT app, day, limit_name, refused FROM app_refusals
         WHERE day >= substr(?1, 1, 10) AND day < substr(?2, 1, 10) AND (?3 IS NULL OR app = ?3)",
    )?;
    for row in stmt.query_map(params![start, end, app], |r| {
        let name: String = r.get(2)?;
        Ok((r.get(0)?, date(r, 1)?, name, r.get::<_, i64>(3)? as u64))
    })? {
        let (app, day, name, n) = row?;
        // A limit this version does not know is left out.
        if let Some(limit) = Limit::from_name(&name) {
            out.push((app, day, Figure::Refused(limit, n)));
        }
    }
    Ok(out)
}
