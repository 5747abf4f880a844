//! The work a worker left running: its turns and runs recorded as interrupted, its turns taken
//! and not begun recorded with why.

use rusqlite::{params, Transaction};

use super::waits::abandon_waits;
use super::workers::live_worker;
use super::Ledger;
use crate::ledger::{EventOutcome, Interrupted, LedgerResult, Recovery, Stamp};
use crate::values::Timestamp;

impl Recovery for Ledger {
    async fn recover_interrupted(
        &self,
        stale_before: Timestamp,
        at: Timestamp,
    ) -> LedgerResult<Interrupted> {
        self.write(move |tx| {
            let dead = format!("NOT {}", live_worker("?1"));
            let why = "the worker running it stopped";
            let stale_before = stale_before.to_string();
            let done = mark_interrupted(tx, &dead, &stale_before, at, why)?;
            let why = "the worker that took it stopped before it began";
            abandon_waits(tx, &dead, &stale_before, at, EventOutcome::Interrupted, why)?;
            Ok(done)
        })
        .await
    }

    async fn interrupt_own(&self, by: Stamp, why: String) -> LedgerResult<Interrupted> {
        self.write(move |tx| {
            let (mine, at) = ("worker_id = ?1", by.at);
            let done = mark_interrupted(tx, mine, &by.worker_id, at, &why)?;
            let outcome = EventOutcome::Interrupted;
            abandon_waits(tx, mine, &by.worker_id, at, outcome, &why)?;
            Ok(done)
        })
        .await
    }
}

/// Marks the running turns and runs of the workers `whose` selects (an SQL condition on
/// `worker_id` with `?1` = `worker`) as interrupted at `at`, giving `why`.
fn mark_interrupted(
    tx: &Transaction<'_>,
    whose: &str,
    worker: &str,
    at: Timestamp,
    why: &str,
) -> rusqlite::Result<Interrupted> {
    let turns = tx.execute(
        &format!(
            "UPDATE session_events SET outcome = 'interrupted', error = ?3 || ' (recorded at ' || ?2 || ')'
             WHERE outcome = 'running' AND {whose}"
        ),
        params![worker, at, why],
    )?;
    let runs = tx.execute(
        &format!(
            "UPDATE runs SET outcome = 'interrupted', finished_at = ?2, error = ?3
             WHERE outcome = 'running' AND {whose}"
        ),
        params![worker, at, why],
    )?;
    Ok(Interrupted {
        turns: turns as u64,
        runs: runs as u64,
    })
}
