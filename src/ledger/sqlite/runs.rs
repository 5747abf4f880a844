//! `runs`: one-shot runs.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};

use super::rows::{one, RUN_SELECT};
use super::usage::{add_to_day, admit, DayGain};
use super::Ledger;
use crate::ledger::{LedgerResult, NewRun, RunBegun, RunEnd, RunOutcome, RunRow, Runs, Stamp};
use crate::quota::{Limit, Limits};
use crate::values::{RunId, Timestamp};

/// The limits a run is admitted under.
const RUN_LIMITS: [Limit; 3] = [
    Limit::MaxConcurrentRuns,
    Limit::RunsUsdPerDay,
    Limit::RunsUsdPerMonth,
];

impl Runs for Ledger {
    async fn begin_run(&self, run: NewRun, by: Stamp, limits: Limits) -> LedgerResult<RunBegun> {
        self.write(move |tx| {
            let which = (&limits, &RUN_LIMITS[..]);
            if let Some(refused) = admit(tx, &run.app, which, by.at.utc(), &by.at)? {
                return Ok(RunBegun::Refused(refused));
            }
            tx.execute(
                "INSERT INTO runs (run_id, app, model, outcome, worker_id, created_at, prompt,
                                   prompt_bytes, prompt_sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    run.run_id,
                    run.app,
                    run.model,
                    RunOutcome::Running,
                    by.worker_id,
                    by.at,
                    run.prompt.text,
                    run.prompt.bytes,
                    run.prompt.sha256
                ],
            )?;
            Ok(RunBegun::Begun)
        })
        .await
    }

    async fn finish_run(
        &self,
        run_id: RunId,
        finished_at: Timestamp,
        end: RunEnd,
    ) -> LedgerResult<()> {
        self.write(move |tx| {
            if let Some(usd) = end.cost_usd.filter(|c| c.is_finite() && *c > 0.0) {
                let of_run = tx
                    .query_row(
                        "SELECT app, substr(created_at, 1, 10) FROM runs
                         WHERE run_id = ?1 AND cost_usd IS NULL",
                        [run_id],
                        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                    )
                    .optional()?;
                if let Some((app, day)) = of_run {
                    add_to_day(tx, &app, &day, DayGain::RunsUsd(usd))?;
                }
            }
            let result = end.result.as_ref();
            tx.execute(
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

    async fn run(&self, run_id: RunId) -> LedgerResult<Option<RunRow>> {
        let sql = format!("{RUN_SELECT} WHERE run_id = ?1");
        self.call(move |c| Ok(one(c, &sql, [run_id])?)).await
    }

    async fn runs_finished_at(
        &self,
        run_ids: Vec<RunId>,
    ) -> LedgerResult<HashMap<RunId, Option<Timestamp>>> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached("SELECT finished_at FROM runs WHERE run_id = ?1")?;
            let mut out = HashMap::new();
            for id in run_ids {
                if let Some(at) = stmt
                    .query_row([id], |r| r.get::<_, Option<Timestamp>>(0))
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
