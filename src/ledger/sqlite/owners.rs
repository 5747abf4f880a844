//! The owners of sessions (`sessions.owner_worker`, `owner_generation`): taken by
//! compare-and-set on the generation.

use rusqlite::{params, Connection, Row};

use super::rows::{one, FromRow};
use super::Ledger;
use crate::ledger::{LedgerError, LedgerResult, Owner, Ownership};
use crate::values::{SessionId, Timestamp};

impl Ownership for Ledger {
    async fn claim_session(
        &self,
        session_id: SessionId,
        worker_id: String,
        alive_since: Timestamp,
    ) -> LedgerResult<Option<Owner>> {
        for _ in 0..3 {
            let found = self
                .read(move |c| Ok(owner_of(c, session_id, alive_since)?))
                .await?;
            let Some(OwnerRow {
                worker_id: owner,
                generation,
                alive,
            }) = found
            else {
                return Ok(None);
            };
            match owner {
                Some(w) if w == worker_id => return Ok(Some(Owner::Mine { generation })),
                Some(w) if alive => {
                    return Ok(Some(Owner::Held {
                        worker_id: w,
                        generation,
                    }))
                }
                _ => {}
            }
            let me = worker_id.clone();
            if let Some(generation) = self.take_session(session_id, me, generation).await? {
                return Ok(Some(Owner::Mine { generation }));
            }
            // Another worker took it meanwhile: look again.
        }
        Err(LedgerError::Task(
            "the session's owner kept changing while it was claimed".into(),
        ))
    }

    async fn take_session(
        &self,
        session_id: SessionId,
        worker_id: String,
        generation: u64,
    ) -> LedgerResult<Option<u64>> {
        self.write(move |tx| Ok(take(tx, session_id, &worker_id, generation)?))
            .await
    }
}

/// A session's owner as its row has it.
struct OwnerRow {
    worker_id: Option<String>,
    generation: u64,
    /// Whether the owner is live and not draining.
    alive: bool,
}

impl FromRow for OwnerRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<OwnerRow> {
        Ok(OwnerRow {
            worker_id: r.get(0)?,
            generation: r.get::<_, i64>(1)? as u64,
            alive: r.get::<_, Option<bool>>(2)?.unwrap_or(false),
        })
    }
}

/// The owner of `session_id`, and whether it is live (a heartbeat since `alive_since`).
fn owner_of(
    c: &Connection,
    session_id: SessionId,
    alive_since: Timestamp,
) -> rusqlite::Result<Option<OwnerRow>> {
    one(
        c,
        "SELECT owner_worker, owner_generation,
                owner_worker IN (SELECT worker_id FROM workers
                                 WHERE stopped_at IS NULL AND draining_at IS NULL
                                   AND heartbeat_at >= ?2)
         FROM sessions WHERE session_id = ?1",
        params![session_id, alive_since],
    )
}

/// Makes `worker_id` the owner of `session_id` if it is at `generation`: the new generation.
fn take(
    c: &Connection,
    session_id: SessionId,
    worker_id: &str,
    generation: u64,
) -> rusqlite::Result<Option<u64>> {
    let next = generation as i64 + 1;
    let changed = c.execute(
        "UPDATE sessions SET owner_worker = ?2, owner_generation = ?3
         WHERE session_id = ?1 AND owner_generation = ?4",
        params![session_id, worker_id, next, generation as i64],
    )?;
    Ok((changed == 1).then_some(next as u64))
}

/// At a worker's stop: the sessions it owns are nobody's (a new generation each).
pub(super) fn release_all(c: &Connection, worker_id: &str) -> rusqlite::Result<usize> {
    c.execute(
        "UPDATE sessions SET owner_worker = NULL, owner_generation = owner_generation + 1
         WHERE owner_worker = ?1",
        [worker_id],
    )
}
