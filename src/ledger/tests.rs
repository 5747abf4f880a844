use sha2::{Digest, Sha256};

use super::*;
use crate::error::ErrorKind;
use crate::values::{RunId, SessionId, Timestamp, TokenId, WaitId};

mod apps;
mod lifecycle;

// Names for the ids and times of these tests: each name is one id, and short names ("t05", "")
// are times that sort as their text does.

macro_rules! named_ids {
    ($($t:ty),*) => {$(
        impl From<&str> for $t {
            fn from(name: &str) -> $t {
                let h = hex::encode(Sha256::digest(name.as_bytes()));
                let id = format!("{}-{}-4{}-8{}-{}", &h[..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32]);
                <$t>::parse(&id).unwrap()
            }
        }
    )*};
}

named_ids!(SessionId, RunId, TokenId, WaitId);

impl From<&str> for Timestamp {
    /// A time as written, or for a short name, a time in 2500 (after every written one) that
    /// sorts as the name does; "" is the earliest time.
    fn from(name: &str) -> Timestamp {
        if let Ok(t) = name.parse() {
            return t;
        }
        if name.is_empty() {
            return "0001-01-01T00:00:00.000Z".parse().unwrap();
        }
        assert!(
            name.len() <= 3,
            "{name:?}: a time name has at most three bytes"
        );
        let secs = name
            .bytes()
            .chain(std::iter::repeat(0))
            .take(3)
            .fold(0, |n, b| n * 256 + i64::from(b));
        let year_2500 = 16_725_225_600;
        let at = chrono::DateTime::from_timestamp(year_2500 + secs, 0).unwrap();
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            .parse()
            .unwrap()
    }
}

/// Idle since before `before`, with workers alive since `alive_since`.
fn idle(before: impl Into<Timestamp>, alive_since: impl Into<Timestamp>) -> Idle {
    Idle {
        before: before.into(),
        alive_since: alive_since.into(),
    }
}

/// `worker`, at the time `at` names.
fn by(worker: impl ToString, at: impl Into<Timestamp>) -> Stamp {
    Stamp {
        worker_id: worker.to_string(),
        at: at.into(),
    }
}

fn ledger() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("sub/ledger.db")).unwrap();
    (dir, ledger)
}

fn session(id: &str, app: &str) -> SessionRow {
    SessionRow {
        session_id: id.into(),
        app: app.into(),
        agent: "echo".into(),
        agent_command: "node agent.mjs".into(),
        cwd: format!("/tmp/{id}"),
        open: true,
        created_at: "2026-01-01T00:00:00.000Z".into(),
        last_turn_at: None,
        closed_at: None,
        turns: 0,
        pending_files: vec!["/tmp/a.md".into()],
        agent_state: None,
        running_turn: None,
        name: None,
    }
}

#[tokio::test]
async fn a_name_is_unique_among_the_open_sessions_of_an_app_and_agent() {
    let (_d, l) = ledger();
    let w = "w1".to_string();
    let named = |id: &str, app: &str, agent: &str| SessionRow {
        name: Some("default".into()),
        agent: agent.into(),
        ..session(id, app)
    };
    let create = |row| l.create_session(row, w.clone(), 100, Default::default());
    assert_eq!(
        create(named("s1", "a", "echo")).await.unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        create(named("s2", "a", "echo")).await.unwrap(),
        CreateOutcome::NameTaken
    );
    assert!(l.session("s2".into()).await.unwrap().is_none());
    assert_eq!(
        create(named("s3", "a", "other")).await.unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        create(named("s4", "b", "echo")).await.unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        create(session("s5", "a")).await.unwrap(),
        CreateOutcome::Created
    );
    let closed = l.close_session(
        "s1".into(),
        "a".into(),
        SessionEvent::Close,
        by(w.clone(), "t"),
        EventDetail::of(EventOutcome::Ok),
    );
    closed.await.unwrap();
    assert_eq!(
        create(named("s6", "a", "echo")).await.unwrap(),
        CreateOutcome::Created
    );
    let again = l.session("s6".into()).await.unwrap().unwrap();
    assert_eq!(again.name.as_deref(), Some("default"));
    assert_eq!(l.session("s5".into()).await.unwrap().unwrap().name, None);
}

#[tokio::test]
async fn cap_counts_open_sessions_only() {
    let (_d, l) = ledger();
    let w = "w1".to_string();
    assert_eq!(
        l.create_session(session("s1", "a"), w.clone(), 2, Default::default())
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        l.create_session(session("s2", "a"), w.clone(), 2, Default::default())
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        l.create_session(session("s3", "b"), w.clone(), 2, Default::default())
            .await
            .unwrap(),
        CreateOutcome::AtCapacity { open: 2 }
    );
    assert!(l.session("s3".into()).await.unwrap().is_none());
    let closed = l
        .close_session(
            "s1".into(),
            "a".into(),
            SessionEvent::Close,
            by(w.clone(), "t"),
            EventDetail::of(EventOutcome::Ok),
        )
        .await
        .unwrap();
    assert_eq!(closed, CloseOutcome::Closed);
    assert_eq!(
        l.create_session(session("s3", "b"), w, 2, Default::default())
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(l.open_session_count().await.unwrap(), 2);
}

#[tokio::test]
async fn turns_are_numbered_and_recorded() {
    let (_d, l) = ledger();
    l.create_session(session("s1", "a"), "w".into(), 10, Default::default())
        .await
        .unwrap();
    let first = l
        .begin_turn(TurnStart {
            session_id: "s1".into(),
            app: "a".into(),
            by: by("w", "t1"),
            prompt: Recorded::of("hello", true),
            alive_since: "".into(),
            wait_id: None,
        })
        .await
        .unwrap();
    let BeginTurn::Started {
        turn,
        event_id,
        pending_files,
    } = first
    else {
        panic!("{first:?}")
    };
    assert_eq!(turn, 1);
    assert_eq!(pending_files, vec!["/tmp/a.md".to_string()]);
    l.finish_turn(
        "s1".into(),
        event_id,
        "t2".into(),
        EventDetail {
            turn: Some(1),
            stop_reason: Some("end_turn".into()),
            duration_ms: Some(12),
            output: Some(Recorded::of("echo: hello", false)),
            ..EventDetail::of(EventOutcome::Ok)
        },
    )
    .await
    .unwrap();
    let second = l
        .begin_turn(TurnStart {
            session_id: "s1".into(),
            app: "a".into(),
            by: by("w", "t3"),
            prompt: Recorded::of("again", true),
            alive_since: "".into(),
            wait_id: None,
        })
        .await
        .unwrap();
    assert!(
        matches!(second, BeginTurn::Started { turn: 2, ref pending_files, .. } if pending_files.is_empty()),
        "{second:?}"
    );
    let other_app = l
        .begin_turn(TurnStart {
            session_id: "s1".into(),
            app: "b".into(),
            by: by("w", "t"),
            prompt: Recorded::of("x", true),
            alive_since: "".into(),
            wait_id: None,
        })
        .await
        .unwrap();
    assert_eq!(other_app, BeginTurn::NotFound);

    let events = l.events_of("s1".into()).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["create", "turn", "turn"]);
    let t1 = &events[1];
    assert_eq!(t1.outcome.as_str(), "ok");
    assert_eq!(t1.prompt.as_deref(), Some("hello"));
    assert_eq!(
        t1.output, None,
        "only the hash is kept when keep_text is off"
    );
    assert_eq!(t1.output_bytes, Some(11));
    assert_eq!(
        t1.output_sha256.as_deref(),
        Some(Recorded::of("echo: hello", true).sha256.as_str())
    );
    assert_eq!(events[2].outcome.as_str(), "running");
    let row = l.session("s1".into()).await.unwrap().unwrap();
    assert_eq!(row.turns, 2);
    assert_eq!(row.last_turn_at, Some("t3".into()));
}

#[tokio::test]
async fn closing_twice_and_turning_a_closed_session() {
    let (_d, l) = ledger();
    l.create_session(session("s1", "a"), "w".into(), 10, Default::default())
        .await
        .unwrap();
    let close = |app: &str| {
        l.close_session(
            "s1".into(),
            app.into(),
            SessionEvent::Close,
            by("w", "t"),
            EventDetail::of(EventOutcome::Ok),
        )
    };
    assert_eq!(close("b").await.unwrap(), CloseOutcome::NotFound);
    assert_eq!(close("a").await.unwrap(), CloseOutcome::Closed);
    assert_eq!(close("a").await.unwrap(), CloseOutcome::AlreadyClosed);
    let turn = l
        .begin_turn(TurnStart {
            session_id: "s1".into(),
            app: "a".into(),
            by: by("w", "t"),
            prompt: Recorded::of("x", true),
            alive_since: "".into(),
            wait_id: None,
        })
        .await
        .unwrap();
    assert_eq!(turn, BeginTurn::Closed);
    let events = l.events_of("s1".into()).await.unwrap();
    assert_eq!(events.len(), 2, "one create, one close: {events:?}");
}

#[tokio::test]
async fn tokens_revoke_once() {
    let (_d, l) = ledger();
    l.insert_token(TokenRow {
        token_id: "t1".into(),
        app: "a".into(),
        admin: false,
        token_hash: "h1".into(),
        created_at: "c".into(),
        revoked_at: None,
    })
    .await
    .unwrap();
    assert_eq!(l.active_token_count().await.unwrap(), 1);
    assert_eq!(
        l.revoke_token("t1".into(), "r1".into()).await.unwrap(),
        Some(())
    );
    assert_eq!(
        l.revoke_token("t1".into(), "r2".into()).await.unwrap(),
        Some(())
    );
    assert_eq!(
        l.revoke_token("nope".into(), "r".into()).await.unwrap(),
        None
    );
    let row = l.token_by_hash("h1".into()).await.unwrap().unwrap();
    assert_eq!(row.revoked_at, Some("r1".into()));
    assert_eq!(l.active_token_count().await.unwrap(), 0);
}

#[test]
fn event_kinds_match_the_schema() {
    let sql = include_str!("sqlite/migrations.sql");
    for e in SessionEvent::ALL {
        assert!(sql.contains(&format!("'{}'", e.as_str())), "{}", e.as_str());
    }
}

#[test]
fn two_processes_worth_of_connections_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || Ledger::open(&path).map(|_| ()))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let a = Ledger::open(&path).unwrap();
    let b = Ledger::open(&path).unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let l = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                l.create_session(
                    session(&format!("s{i}"), "a"),
                    "w".into(),
                    15,
                    Default::default(),
                )
                .await
                .unwrap()
            }));
        }
        let mut created = 0;
        for t in tasks {
            if t.await.unwrap() == CreateOutcome::Created {
                created += 1;
            }
        }
        assert_eq!(created, 15, "the cap holds across connections");
        assert_eq!(a.open_session_count().await.unwrap(), 15);
    });
}

#[test]
fn recorded_hashes() {
    let r = Recorded::of("abc", false);
    assert_eq!(r.text, None);
    assert_eq!(r.bytes, 3);
    assert_eq!(
        r.sha256,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(Recorded::of("abc", true).text.as_deref(), Some("abc"));
}

#[tokio::test]
async fn a_run_is_recorded_as_running_then_as_it_ended() {
    let (_d, l) = ledger();
    l.begin_run(
        NewRun {
            run_id: "r1".into(),
            app: "a".into(),
            model: "sonnet".into(),
            prompt: Recorded::of("hello", true),
        },
        by("w1", "2026-01-01T00:00:00.000Z"),
        Default::default(),
    )
    .await
    .unwrap();
    let running = l.run("r1".into()).await.unwrap().unwrap();
    assert_eq!(running.outcome.as_str(), "running");
    assert_eq!(running.app, "a");
    assert_eq!(running.model, "sonnet");
    assert_eq!(running.worker_id, "w1");
    assert_eq!(running.prompt, Recorded::of("hello", true));
    assert_eq!(running.finished_at, None);
    assert_eq!(running.result, None);
    assert_eq!(running.exit_code, None);

    l.finish_run(
        "r1".into(),
        "2026-01-01T00:00:02.000Z".into(),
        RunEnd {
            result: Some(Recorded::of("hi there", true)),
            exit_code: Some(0),
            duration_ms: Some(2000),
            cost_usd: Some(0.0123),
            ..RunEnd::of(RunOutcome::Ok)
        },
    )
    .await
    .unwrap();
    let done = l.run("r1".into()).await.unwrap().unwrap();
    assert_eq!(done.outcome.as_str(), "ok");
    assert_eq!(done.finished_at, Some("2026-01-01T00:00:02.000Z".into()));
    assert_eq!(done.result, Some(Recorded::of("hi there", true)));
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.duration_ms, Some(2000));
    assert_eq!(done.cost_usd, Some(0.0123));
    assert_eq!(done.error, None);
    assert_eq!(done.stderr_tail, None);
    assert!(l.run("nope".into()).await.unwrap().is_none());
}

#[tokio::test]
async fn a_failed_run_keeps_its_error_and_stderr_and_hashes_only_when_asked() {
    let (_d, l) = ledger();
    l.begin_run(
        NewRun {
            run_id: "r2".into(),
            app: "a".into(),
            model: "opus".into(),
            prompt: Recorded::of("secret prompt", false),
        },
        by("w1", "t0"),
        Default::default(),
    )
    .await
    .unwrap();
    l.finish_run(
        "r2".into(),
        "t1".into(),
        RunEnd {
            error: Some("claude exited with code 3: boom".into()),
            exit_code: Some(3),
            duration_ms: Some(15),
            stderr_tail: Some("boom".into()),
            ..RunEnd::of(RunOutcome::Failed(ErrorKind::AgentError))
        },
    )
    .await
    .unwrap();
    let row = l.run("r2".into()).await.unwrap().unwrap();
    assert_eq!(row.prompt.text, None);
    assert_eq!(row.prompt.bytes, 13);
    assert_eq!(
        row.prompt.sha256,
        Recorded::of("secret prompt", true).sha256
    );
    assert_eq!(row.outcome.as_str(), "agent_error");
    assert_eq!(row.exit_code, Some(3));
    assert_eq!(row.stderr_tail.as_deref(), Some("boom"));
    assert_eq!(row.result, None);
    assert_eq!(row.cost_usd, None);
}

#[tokio::test]
async fn end_times_of_known_runs() {
    let (_d, l) = ledger();
    for id in ["r1", "r2"] {
        l.begin_run(
            NewRun {
                run_id: id.into(),
                app: "a".into(),
                model: "m".into(),
                prompt: Recorded::of("p", true),
            },
            by("w", "t0"),
            Default::default(),
        )
        .await
        .unwrap();
    }
    l.finish_run("r1".into(), "t9".into(), RunEnd::of(RunOutcome::Ok))
        .await
        .unwrap();
    let ends = l
        .runs_finished_at(vec!["r1".into(), "r2".into(), "r3".into()])
        .await
        .unwrap();
    assert_eq!(ends.len(), 2);
    assert_eq!(ends[&"r1".into()], Some("t9".into()));
    assert_eq!(ends[&"r2".into()], None);
}

#[tokio::test]
async fn a_turn_waits_while_a_live_worker_runs_one_of_its_session() {
    let (_d, l) = ledger();
    l.create_session(session("s1", "a"), "w1".into(), 10, Default::default())
        .await
        .unwrap();
    l.create_session(session("s2", "a"), "w1".into(), 10, Default::default())
        .await
        .unwrap();
    l.heartbeat("w1".into(), "t5".into()).await.unwrap();
    let begin = |s: &str, worker: &str, alive_since: &str| {
        l.begin_turn(TurnStart {
            session_id: s.into(),
            app: "a".into(),
            by: by(worker, "t6"),
            prompt: Recorded::of("x", true),
            alive_since: alive_since.into(),
            wait_id: None,
        })
    };
    assert!(matches!(
        begin("s1", "w1", "t4").await.unwrap(),
        BeginTurn::Started { turn: 1, .. }
    ));
    // w1's turn of s1 runs: another worker waits for it, and nothing is written meanwhile.
    assert_eq!(begin("s1", "w2", "t4").await.unwrap(), BeginTurn::Busy);
    // w1's own turns of a session are one at a time in w1 already: a `running` row of its own
    // (one it could not finish recording) does not hold w1's next turn up for ever.
    assert!(matches!(
        begin("s1", "w1", "t4").await.unwrap(),
        BeginTurn::Started { turn: 2, .. }
    ));
    assert_eq!(l.session("s1".into()).await.unwrap().unwrap().turns, 2);
    assert_eq!(l.events_of("s1".into()).await.unwrap().len(), 3);
    // Other sessions are not held up.
    assert!(matches!(
        begin("s2", "w2", "t4").await.unwrap(),
        BeginTurn::Started { turn: 1, .. }
    ));
    // A worker whose heartbeat is too old, or that stopped, holds nothing.
    assert!(matches!(
        begin("s1", "w2", "t9").await.unwrap(),
        BeginTurn::Started { turn: 3, .. }
    ));
    // (w2 never wrote a heartbeat, so its turn 3 holds nothing; w1's turns still do.)
    assert_eq!(begin("s1", "w3", "t4").await.unwrap(), BeginTurn::Busy);
    l.worker_stopped("w1".into(), "t7".into()).await.unwrap();
    assert!(matches!(
        begin("s1", "w3", "t4").await.unwrap(),
        BeginTurn::Started { turn: 4, .. }
    ));
    l.heartbeat("w3".into(), "t7".into()).await.unwrap();
    assert_eq!(begin("s1", "w4", "t4").await.unwrap(), BeginTurn::Busy);
}

#[tokio::test]
async fn a_turn_waiting_to_begin_keeps_its_session_from_the_sweep_and_names_its_worker() {
    let (_d, l) = ledger();
    l.create_session(session("s1", "a"), "w1".into(), 10, Default::default())
        .await
        .unwrap();
    l.finish_create("s1".into(), EventOutcome::Ok, None)
        .await
        .unwrap();
    l.heartbeat("w1".into(), "2026-01-01T00:00:05.000Z".into())
        .await
        .unwrap();
    let idle_before: Timestamp = "2026-01-02T00:00:00.000Z".into();
    let alive_since: Timestamp = "2026-01-01T00:00:01.000Z".into();
    let idle_now = || l.idle_sessions(idle(idle_before, alive_since));
    assert_eq!(idle_now().await.unwrap().len(), 1, "idle, nothing waits");
    assert_eq!(l.turn_holder("s1".into(), alive_since).await.unwrap(), None);

    let reserved = l
        .reserve_turn(
            "t1".into(),
            "s1".into(),
            "a".into(),
            by("w1", "2026-01-01T00:00:06.000Z"),
            Admission::unlimited(),
        )
        .await
        .unwrap();
    assert_eq!(reserved, Reserved::Turn(1), "numbered when taken");
    assert_eq!(l.session("s1".into()).await.unwrap().unwrap().turns, 1);
    assert!(
        idle_now().await.unwrap().is_empty(),
        "a waiting turn: not idle"
    );
    let swept = l
        .sweep_close(
            "s1".into(),
            idle(idle_before, alive_since),
            by("w2", "2026-01-02T00:00:01.000Z"),
        )
        .await
        .unwrap();
    assert!(
        !swept,
        "the sweep leaves a session with a waiting turn open"
    );
    assert_eq!(
        l.turn_holder("s1".into(), alive_since).await.unwrap(),
        Some("w1".into())
    );
    // The wait of a worker that went silent holds nothing.
    let later: Timestamp = "2026-01-01T00:00:10.000Z".into();
    assert_eq!(l.turn_holder("s1".into(), later).await.unwrap(), None);
    assert_eq!(
        l.idle_sessions(idle(idle_before, later))
            .await
            .unwrap()
            .len(),
        1
    );

    // Once running, with the number it was given, the running turn's worker holds it.
    let begun = l
        .begin_turn(TurnStart {
            session_id: "s1".into(),
            app: "a".into(),
            by: by("w1", "2026-01-01T00:00:07.000Z"),
            prompt: Recorded::of("x", true),
            alive_since,
            wait_id: Some("t1".into()),
        })
        .await
        .unwrap();
    assert!(
        matches!(begun, BeginTurn::Started { turn: 1, .. }),
        "{begun:?}"
    );
    assert_eq!(l.session("s1".into()).await.unwrap().unwrap().turns, 1);
    // A second turn taken, then given up before it began: its number is recorded with why.
    let second = l
        .reserve_turn(
            "t2".into(),
            "s1".into(),
            "a".into(),
            by("w1", "t"),
            Admission::unlimited(),
        )
        .await
        .unwrap();
    assert_eq!(second, Reserved::Turn(2));
    l.abandon_turn(
        "t2".into(),
        "t".into(),
        "timeout".parse().unwrap(),
        "did not run".into(),
    )
    .await
    .unwrap();
    // A third, left waiting by a worker that stops: recorded interrupted.
    l.reserve_turn(
        "t3".into(),
        "s1".into(),
        "a".into(),
        by("w1", "t"),
        Admission::unlimited(),
    )
    .await
    .unwrap();
    l.interrupt_own(by("w1", "2026-01-01T00:00:08.000Z"), "stop".into())
        .await
        .unwrap();
    let outcomes: Vec<_> = l
        .events_of("s1".into())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event == SessionEvent::Turn)
        .map(|e| (e.turn, e.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            (Some(1), EventOutcome::Interrupted),
            (Some(2), EventOutcome::Failed(ErrorKind::Timeout)),
            (Some(3), EventOutcome::Interrupted)
        ]
    );
    assert_eq!(l.turn_holder("s1".into(), alive_since).await.unwrap(), None);
    assert_eq!(l.session("s1".into()).await.unwrap().unwrap().turns, 3);
    assert_eq!(
        l.reserve_turn(
            "t4".into(),
            "nope".into(),
            "a".into(),
            by("w1", "t"),
            Admission::unlimited()
        )
        .await
        .unwrap(),
        Reserved::NotFound
    );
}

#[tokio::test]
async fn a_session_changes_owner_only_by_compare_and_set() {
    let (_d, l) = ledger();
    let (a, b) = ("wa".to_string(), "wb".to_string());
    let (long_ago, now) = ("2000-01-01T00:00:00.000Z", "2100-01-01T00:00:00.000Z");
    for w in [&a, &b] {
        l.heartbeat(w.clone(), now.into()).await.unwrap();
    }
    l.create_session(session("s1", "app"), a.clone(), 10, Default::default())
        .await
        .unwrap();
    l.set_agent_state("s1".into(), "agent-1".into(), Some(a.clone()))
        .await
        .unwrap();
    let claim = |w: &String, since: &str| l.claim_session("s1".into(), w.clone(), since.into());
    assert_eq!(
        claim(&a, long_ago).await.unwrap(),
        Some(Owner::Mine { generation: 1 })
    );
    let held = Owner::Held {
        worker_id: a.clone(),
        generation: 1,
    };
    assert_eq!(claim(&b, long_ago).await.unwrap(), Some(held));
    // A stale taker loses: the generation moved on.
    assert_eq!(
        l.take_session("s1".into(), b.clone(), 1).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        l.take_session("s1".into(), a.clone(), 1).await.unwrap(),
        None
    );
    // An owner whose heartbeat is older than `alive_since` is dead: the claimer takes it.
    assert_eq!(
        claim(&a, "2200-01-01T00:00:00.000Z").await.unwrap(),
        Some(Owner::Mine { generation: 3 })
    );
    // A draining owner loses it at the next claim.
    l.worker_draining(a.clone(), now.into()).await.unwrap();
    assert_eq!(
        claim(&b, long_ago).await.unwrap(),
        Some(Owner::Mine { generation: 4 })
    );
    // A worker that stops owns nothing.
    l.worker_stopped(b.clone(), now.into()).await.unwrap();
    let owner: (Option<String>, i64) = l
        .call(|c| {
            Ok(c.query_row(
                "SELECT owner_worker, owner_generation FROM sessions WHERE session_id = ?1",
                [SessionId::from("s1")],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(owner, (None, 5));
    assert_eq!(
        claim(&a, long_ago).await.unwrap(),
        Some(Owner::Mine { generation: 6 })
    );
    assert_eq!(
        l.claim_session("nope".into(), a, long_ago.into())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn values_are_stored_as_the_text_they_always_were() {
    let (_d, l) = ledger();
    let id = SessionId::parse("123e4567-e89b-42d3-a456-426614174000").unwrap();
    let row = SessionRow {
        session_id: id,
        ..session("s1", "a")
    };
    l.create_session(row, "w1".into(), 10, Default::default())
        .await
        .unwrap();
    let fail = EventOutcome::Failed(ErrorKind::AgentError);
    l.finish_create(id, fail, Some("no".into())).await.unwrap();
    let run: RunId = "r1".into();
    let new = NewRun {
        run_id: run,
        app: "a".into(),
        model: "m".into(),
        prompt: Recorded::of("p", false),
    };
    l.begin_run(new, by("w1", "2026-01-01T00:00:00.5Z"), Default::default())
        .await
        .unwrap();
    let raw: (String, String, String, String, String) = l
        .call(move |c| {
            Ok(c.query_row(
                "SELECT s.session_id, s.created_at, e.outcome, r.created_at, r.outcome
                 FROM sessions s, session_events e, runs r WHERE e.session_id = s.session_id",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(
        raw,
        (
            "123e4567-e89b-42d3-a456-426614174000".into(),
            "2026-01-01T00:00:00.000Z".into(),
            "agent_error".into(),
            "2026-01-01T00:00:00.500Z".into(),
            "running".into(),
        )
    );
}
