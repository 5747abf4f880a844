//! Heartbeats, leases, the sweep and recovery.

use super::{by, idle};
use crate::ledger::*;
use crate::values::{RunId, SessionId};

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
        name: None,
    }
}

#[tokio::test]
async fn one_holder_per_lease_until_it_expires() {
    let (_d, l) = ledger();
    let lease = |who: &str, now: &str, until: &str| {
        let lease = Lease {
            name: "sweeper".into(),
            holder: who.into(),
            expires_at: until.into(),
        };
        l.try_lease(lease, now.into())
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
            l.create_session(session(id, created), "w".into(), 10, Default::default())
                .await
                .unwrap(),
            CreateOutcome::Created
        );
    }
    // A session whose create is still under way is never idle.
    assert!(l
        .idle_sessions(idle("t05", "t00"))
        .await
        .unwrap()
        .is_empty());
    for id in ["old", "busy", "fresh"] {
        l.finish_create(id.into(), EventOutcome::Ok, None)
            .await
            .unwrap();
    }
    let begun = l
        .begin_turn(TurnStart {
            session_id: "busy".into(),
            app: "a".into(),
            by: by("w", "t02"),
            prompt: Recorded::of("x", true),
            alive_since: "".into(),
            wait_id: None,
        })
        .await
        .unwrap();
    assert!(matches!(begun, BeginTurn::Started { .. }));
    let idle_ids: Vec<SessionId> = l
        .idle_sessions(idle("t05", "t00"))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.session_id)
        .collect();
    assert_eq!(idle_ids, ["old".into()]);
    assert!(!l
        .sweep_close("busy".into(), idle("t05", "t00"), by("w", "t06"))
        .await
        .unwrap());
    assert!(l
        .sweep_close("old".into(), idle("t05", "t00"), by("w", "t06"))
        .await
        .unwrap());
    assert!(!l
        .sweep_close("old".into(), idle("t05", "t00"), by("w", "t06"))
        .await
        .unwrap());

    assert!(l.expired_sessions("t06".into()).await.unwrap().is_empty());
    let expired = l.expired_sessions("t07".into()).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert!(l.hard_delete("old".into(), by("w", "t08")).await.unwrap());
    assert!(l.session("old".into()).await.unwrap().is_none());
    let trail: Vec<String> = l
        .events_of("old".into())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.as_str().to_string())
        .collect();
    assert_eq!(trail, ["create", "sweep_close", "hard_delete"]);
    assert!(
        !l.hard_delete("fresh".into(), by("w", "t08")).await.unwrap(),
        "an open session is never deleted"
    );
}

#[tokio::test]
async fn work_of_dead_workers_is_interrupted() {
    let (_d, l) = ledger();
    l.create_session(session("s1", "t01"), "alive".into(), 10, Default::default())
        .await
        .unwrap();
    l.create_session(session("s2", "t01"), "dead".into(), 10, Default::default())
        .await
        .unwrap();
    for s in ["s1", "s2"] {
        l.finish_create(s.into(), EventOutcome::Ok, None)
            .await
            .unwrap();
    }
    l.heartbeat("alive".into(), "t10".into()).await.unwrap();
    l.heartbeat("dead".into(), "t02".into()).await.unwrap();
    for (s, w) in [("s1", "alive"), ("s2", "dead")] {
        l.begin_turn(TurnStart {
            session_id: s.into(),
            app: "a".into(),
            by: by(w, "t03"),
            prompt: Recorded::of("x", true),
            alive_since: "".into(),
            wait_id: None,
        })
        .await
        .unwrap();
    }
    for (r, w) in [("r1", "alive"), ("r2", "dead")] {
        l.begin_run(
            NewRun {
                run_id: r.into(),
                app: "a".into(),
                model: "m".into(),
                prompt: Recorded::of("x", true),
            },
            by(w, "t03"),
            Default::default(),
        )
        .await
        .unwrap();
    }
    let ended = |r: &str| {
        let l = l.clone();
        let r: RunId = r.into();
        async move {
            l.runs_finished_at(vec![r])
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
    assert_eq!(ended("r2").await, Some("t11".into()));
    assert_eq!(ended("r1").await, None);
    let outcome = |s: &str| {
        let l = l.clone();
        let s: SessionId = s.into();
        async move { l.events_of(s).await.unwrap().last().unwrap().outcome }
    };
    assert_eq!(outcome("s1").await, EventOutcome::Running);
    assert_eq!(outcome("s2").await, EventOutcome::Interrupted);

    // A worker that stops on purpose interrupts what it leaves.
    assert_eq!(
        l.interrupt_own(by("alive", "t12"), "shutdown".into())
            .await
            .unwrap(),
        Interrupted { turns: 1, runs: 1 }
    );
    assert_eq!(outcome("s1").await, EventOutcome::Interrupted);
    assert_eq!(ended("r1").await, Some("t12".into()));
}
