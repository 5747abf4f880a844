//! Which worker owns a session of the native backend (its agent process holds the session),
//! with a generation number that every change of owner raises: taken by compare-and-set.

use rusqlite::{params, OptionalExtension};

use super::{Ledger, LedgerError, LedgerResult};

/// A session's owner as the ledger has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The asking worker owns it (now, or from before), at this generation.
    Mine { generation: u64 },
    /// Another live worker that is not draining owns it.
    Held { worker_id: String, generation: u64 },
}

impl Ledger {
    /// The owner of `session_id` for `worker_id`: the session becomes the asker's when nobody
    /// owns it or its owner is dead (no heartbeat since `alive_since`), stopped or draining.
    /// `None` when there is no such session. A read, and a write only to take the session.
    pub async fn claim_session(
        &self,
        session_id: String,
        worker_id: String,
        alive_since: String,
    ) -> LedgerResult<Option<Owner>> {
        for _ in 0..3 {
            let (id, since) = (session_id.clone(), alive_since.clone());
            let found = self.read(move |c| owner_of(c, &id, &since)).await?;
            let Some((owner, generation, alive)) = found else {
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
            let id = session_id.clone();
            if let Some(generation) = self.take_session(id, me, generation).await? {
                return Ok(Some(Owner::Mine { generation }));
            }
            // Another worker took it meanwhile: look again.
        }
        Err(LedgerError::Task(
            "the session's owner kept changing while it was claimed".into(),
        ))
    }

    /// Takes `session_id` for `worker_id` if its owner is still at `generation` (its owner was
    /// found unreachable): the new generation, or `None` when it changed meanwhile.
    pub async fn take_session(
        &self,
        session_id: String,
        worker_id: String,
        generation: u64,
    ) -> LedgerResult<Option<u64>> {
        self.call(move |c| Ok(take(c, &session_id, &worker_id, generation)?))
            .await
    }

    /// Records that `worker_id` is draining: the sessions it owns go to whichever worker gets
    /// their next request.
    pub async fn worker_draining(&self, worker_id: String, at: String) -> LedgerResult<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE workers SET draining_at = ?2 WHERE worker_id = ?1",
                params![worker_id, at],
            )?;
            Ok(())
        })
        .await
    }
}

/// A session's owner, its generation, and whether that owner is live and not draining.
fn owner_of(
    c: &rusqlite::Connection,
    session_id: &str,
    alive_since: &str,
) -> LedgerResult<Option<(Option<String>, u64, bool)>> {
    let found = c
        .prepare_cached(
            "SELECT owner_worker, owner_generation,
                    owner_worker IN (SELECT worker_id FROM workers
                                     WHERE stopped_at IS NULL AND draining_at IS NULL
                                       AND heartbeat_at >= ?2)
             FROM sessions WHERE session_id = ?1",
        )?
        .query_row(params![session_id, alive_since], |r| {
            let alive: Option<bool> = r.get(2)?;
            Ok((
                r.get(0)?,
                r.get::<_, i64>(1)? as u64,
                alive.unwrap_or(false),
            ))
        })
        .optional()?;
    Ok(found)
}

/// Makes `worker_id` the owner of `session_id` if it is at `generation`: the new generation.
fn take(
    c: &rusqlite::Connection,
    session_id: &str,
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
pub(super) fn release_all(c: &rusqlite::Connection, worker_id: &str) -> rusqlite::Result<usize> {
    c.execute(
        "UPDATE sessions SET owner_worker = NULL, owner_generation = owner_generation + 1
         WHERE owner_worker = ?1",
        [worker_id],
    )
}
