//! The ledger side of session lifecycle: worker heartbeats, leases, the TTL sweep, hard deletes
//! and the recovery of work a dead worker left running.

use rusqlite::{params, OptionalExtension};

use super::live::{abandon_waits, has_waiting_turn, live_worker};
use super::{
    insert_event, session_row, EventDetail, Ledger, LedgerResult, SessionEvent, SessionRow,
    SESSION_SELECT,
};

/// What a sweep found to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interrupted {
    pub turns: u64,
    pub runs: u64,
}

impl Ledger {
    /// Records that `worker_id` is alive now.
    pub async fn heartbeat(&self, worker_id: String, at: String) -> LedgerResult<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO workers (worker_id, started_at, heartbeat_at) VALUES (?1, ?2, ?2)
                 ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                params![worker_id, at],
            )?;
            Ok(())
        })
        .await
    }

    /// Records that `worker_id` stopped on purpose: the sessions it owned are nobody's.
    pub async fn worker_stopped(&self, worker_id: String, at: String) -> LedgerResult<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE workers SET stopped_at = ?2, heartbeat_at = ?2 WHERE worker_id = ?1",
                params![worker_id, at],
            )?;
            super::owners::release_all(&tx, &worker_id)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Takes or renews the lease `name` for `holder` until `expires_at`, unless another holder
    /// has it and it has not expired by `now`.
    pub async fn try_lease(
        &self,
        name: String,
        holder: String,
        now: String,
        expires_at: String,
    ) -> LedgerResult<bool> {
        self.call(move |c| {
            let changed = c.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                                                  expires_at = excluded.expires_at
                 WHERE leases.holder = excluded.holder OR leases.expires_at < ?4",
                params![name, holder, expires_at, now],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    /// Marks as `interrupted` the turns and runs still `running` under a worker that stopped,
    /// or whose heartbeat is older than `stale_before`, or that never wrote one.
    pub async fn recover_interrupted(
        &self,
        stale_before: String,
        at: String,
    ) -> LedgerResult<Interrupted> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let dead = format!("NOT {}", live_worker("?1"));
            let done = mark_interrupted(
                &tx,
                &dead,
                &stale_before,
                &at,
                "the worker running it stopped",
            )?;
            abandon_waits(
                &tx,
                &dead,
                &stale_before,
                &at,
                "interrupted",
                "the worker that took it stopped before it began",
            )?;
            tx.commit()?;
            Ok(done)
        })
        .await
    }

    /// Marks this worker's own running turns and runs as interrupted (at shutdown, after the
    /// grace).
    pub async fn interrupt_own(
        &self,
        worker_id: String,
        at: String,
        why: String,
    ) -> LedgerResult<Interrupted> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let done = mark_interrupted(&tx, "worker_id = ?1", &worker_id, &at, &why)?;
            abandon_waits(&tx, "worker_id = ?1", &worker_id, &at, "interrupted", &why)?;
            tx.commit()?;
            Ok(done)
        })
        .await
    }

    /// Open sessions idle since before `idle_before` (last turn, or creation) with no turn
    /// running.
    pub async fn idle_sessions(
        &self,
        idle_before: String,
        alive_since: String,
    ) -> LedgerResult<Vec<SessionRow>> {
        self.call(move |c| {
            let mut stmt = c.prepare(&format!(
                "{SESSION_SELECT} WHERE status = 'open'
                   AND COALESCE(last_turn_at, created_at) < ?1
                   AND NOT EXISTS (SELECT 1 FROM session_events e
                                   WHERE e.session_id = sessions.session_id
                                     AND e.outcome = 'running')
                   AND NOT {}",
                has_waiting_turn("?2")
            ))?;
            let rows = stmt.query_map([idle_before, alive_since], session_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Closes a session as swept if it is still open, idle since before `idle_before`, and has no
    /// turn running — checked and written in one transaction, so a turn that starts meanwhile
    /// wins.
    pub async fn sweep_close(
        &self,
        session_id: String,
        idle_before: String,
        at: String,
        worker_id: String,
        alive_since: String,
    ) -> LedgerResult<bool> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let app: Option<String> = tx
                .query_row(
                    &format!(
                        "SELECT app FROM sessions WHERE session_id = ?1 AND status = 'open'
                           AND COALESCE(last_turn_at, created_at) < ?2
                           AND NOT EXISTS (SELECT 1 FROM session_events e
                                           WHERE e.session_id = ?1 AND e.outcome = 'running')
                           AND NOT {}",
                        has_waiting_turn("?3")
                    ),
                    params![session_id, idle_before, alive_since],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(app) = app else {
                return Ok(false);
            };
            tx.execute(
                "UPDATE sessions SET status = 'closed', closed_at = ?2 WHERE session_id = ?1",
                params![session_id, at],
            )?;
            insert_event(
                &tx,
                &session_id,
                &app,
                SessionEvent::SweepClose,
                &at,
                &worker_id,
                &EventDetail {
                    outcome: "ok".into(),
                    error: Some(format!("idle since before {idle_before}")),
                    ..Default::default()
                },
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// Sessions closed before `closed_before`.
    pub async fn expired_sessions(&self, closed_before: String) -> LedgerResult<Vec<SessionRow>> {
        self.call(move |c| {
            let mut stmt = c.prepare(&format!(
                "{SESSION_SELECT} WHERE status = 'closed' AND closed_at < ?1"
            ))?;
            let rows = stmt.query_map([closed_before], session_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Deletes a closed session's row; its events stay, with a `hard_delete` event last.
    pub async fn hard_delete(
        &self,
        session_id: String,
        at: String,
        worker_id: String,
    ) -> LedgerResult<bool> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let app: Option<String> = tx
                .query_row(
                    "SELECT app FROM sessions WHERE session_id = ?1 AND status = 'closed'",
                    [&session_id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(app) = app else {
                return Ok(false);
            };
            tx.execute("DELETE FROM sessions WHERE session_id = ?1", [&session_id])?;
            tx.execute(
                "DELETE FROM turn_events WHERE session_id = ?1",
                [&session_id],
            )?;
            insert_event(
                &tx,
                &session_id,
                &app,
                SessionEvent::HardDelete,
                &at,
                &worker_id,
                &EventDetail {
                    outcome: "ok".into(),
                    ..Default::default()
                },
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}

/// Marks the running turns and runs of the workers `whose` selects (an SQL condition on
/// `worker_id` with `?1` = `worker`) as interrupted at `at`, giving `why`.
fn mark_interrupted(
    tx: &rusqlite::Transaction<'_>,
    whose: &str,
    worker: &str,
    at: &str,
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

#[cfg(test)]
mod tests {
    use super::super::{BeginTurn, CreateOutcome, Recorded, TurnStart};
    use super::*;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.db")).unwrap();
        (dir, ledger)
    }

    fn session(id: &str, created_at: &str) -> SessionRow {
        SessionRow {
            session_id: id.into(),
            app: "a".into(),
            agent: "echo".into(),
            agent_command: "node agent.mjs".into(),
            cwd: format!("/tmp/{id}"),
            open: true,
            created_at: created_at.into(),
            last_turn_at: None,
            closed_at: None,
            turns: 0,
            pending_files: vec![],
            agent_state: None,
            running_turn: None,
        }
    }

    #[tokio::test]
    async fn one_holder_per_lease_until_it_expires() {
        let (_d, l) = ledger();
        let lease = |who: &str, now: &str, until: &str| {
            l.try_lease("sweeper".into(), who.into(), now.into(), until.into())
        };
        assert!(lease("w1", "t01", "t05").await.unwrap());
        assert!(!lease("w2", "t02", "t06").await.unwrap(), "w1 holds it");
        assert!(
            lease("w1", "t03", "t07").await.unwrap(),
            "the holder renews"
        );
        assert!(
            !lease("w2", "t06", "t10").await.unwrap(),
            "renewed until t07"
        );
        assert!(
            lease("w2", "t08", "t12").await.unwrap(),
            "expired: w2 takes it"
        );
    }

    #[tokio::test]
    async fn sweeping_skips_busy_and_fresh_sessions_and_deletes_keep_the_trail() {
        let (_d, l) = ledger();
        for (id, created) in [("old", "t01"), ("busy", "t01"), ("fresh", "t09")] {
            assert_eq!(
                l.create_session(session(id, created), "w".into(), 10)
                    .await
                    .unwrap(),
                CreateOutcome::Created
            );
        }
        // A session whose create is still under way is never idle.
        assert!(l
            .idle_sessions("t05".into(), "t00".into())
            .await
            .unwrap()
            .is_empty());
        for id in ["old", "busy", "fresh"] {
            l.finish_create(id.into(), "ok".into(), None).await.unwrap();
        }
        let begun = l
            .begin_turn(TurnStart {
                session_id: "busy".into(),
                app: "a".into(),
                at: "t02".into(),
                worker_id: "w".into(),
                prompt: Recorded::of("x", true),
                alive_since: "".into(),
                wait_id: None,
            })
            .await
            .unwrap();
        assert!(matches!(begun, BeginTurn::Started { .. }));
        let idle: Vec<String> = l
            .idle_sessions("t05".into(), "t00".into())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.session_id)
            .collect();
        assert_eq!(idle, ["old"]);
        assert!(!l
            .sweep_close(
                "busy".into(),
                "t05".into(),
                "t06".into(),
                "w".into(),
                "t00".into()
            )
            .await
            .unwrap());
        assert!(l
            .sweep_close(
                "old".into(),
                "t05".into(),
                "t06".into(),
                "w".into(),
                "t00".into()
            )
            .await
            .unwrap());
        assert!(!l
            .sweep_close(
                "old".into(),
                "t05".into(),
                "t06".into(),
                "w".into(),
                "t00".into()
            )
            .await
            .unwrap());

        assert!(l.expired_sessions("t06".into()).await.unwrap().is_empty());
        let expired = l.expired_sessions("t07".into()).await.unwrap();
        assert_eq!(expired.len(), 1);
        assert!(l
            .hard_delete("old".into(), "t08".into(), "w".into())
            .await
            .unwrap());
        assert!(l.session("old".into()).await.unwrap().is_none());
        let trail: Vec<String> = l
            .events_of("old".into())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(trail, ["create", "sweep_close", "hard_delete"]);
        assert!(
            !l.hard_delete("fresh".into(), "t08".into(), "w".into())
                .await
                .unwrap(),
            "an open session is never deleted"
        );
    }

    #[tokio::test]
    async fn work_of_dead_workers_is_interrupted() {
        let (_d, l) = ledger();
        l.create_session(session("s1", "t01"), "alive".into(), 10)
            .await
            .unwrap();
        l.create_session(session("s2", "t01"), "dead".into(), 10)
            .await
            .unwrap();
        for s in ["s1", "s2"] {
            l.finish_create(s.into(), "ok".into(), None).await.unwrap();
        }
        l.heartbeat("alive".into(), "t10".into()).await.unwrap();
        l.heartbeat("dead".into(), "t02".into()).await.unwrap();
        for (s, w) in [("s1", "alive"), ("s2", "dead")] {
            l.begin_turn(TurnStart {
                session_id: s.into(),
                app: "a".into(),
                at: "t03".into(),
                worker_id: w.into(),
                prompt: Recorded::of("x", true),
                alive_since: "".into(),
                wait_id: None,
            })
            .await
            .unwrap();
        }
        for (r, w) in [("r1", "alive"), ("r2", "dead")] {
            l.begin_run(
                r.into(),
                "a".into(),
                "m".into(),
                w.into(),
                "t03".into(),
                Recorded::of("x", true),
            )
            .await
            .unwrap();
        }
        let ended = |r: &str| {
            let l = l.clone();
            let r = r.to_string();
            async move {
                l.runs_finished_at(vec![r.clone()])
                    .await
                    .unwrap()
                    .remove(&r)
                    .unwrap()
            }
        };
        let got = l
            .recover_interrupted("t05".into(), "t11".into())
            .await
            .unwrap();
        assert_eq!(got, Interrupted { turns: 1, runs: 1 });
        assert_eq!(ended("r2").await.as_deref(), Some("t11"));
        assert_eq!(ended("r1").await, None);
        let outcome = |s: &str| {
            let l = l.clone();
            let s = s.to_string();
            async move {
                l.events_of(s)
                    .await
                    .unwrap()
                    .last()
                    .unwrap()
                    .outcome
                    .clone()
            }
        };
        assert_eq!(outcome("s1").await, "running");
        assert_eq!(outcome("s2").await, "interrupted");

        // A worker that stops on purpose interrupts what it leaves.
        assert_eq!(
            l.interrupt_own("alive".into(), "t12".into(), "shutdown".into())
                .await
                .unwrap(),
            Interrupted { turns: 1, runs: 1 }
        );
        assert_eq!(outcome("s1").await, "interrupted");
        assert_eq!(ended("r1").await.as_deref(), Some("t12"));
    }
}
