use std::path::Path;
use std::time::Duration;

use base64::Engine;
use clawdforge::client::{ClientError, ForgeClient};
use clawdforge::error::ErrorKind;
use clawdforge::wire::{
    CreateSession, FileUpload, SessionPage, SessionStatus, SessionsAsked, Turn, TurnRequest,
};

use crate::faults::ledger_counts;
use crate::harness::{Forge, Options, Via};

crate::both_backends!(
    a_session_from_create_to_close,
    sessions_of_other_apps_do_not_exist,
    the_live_session_cap_holds,
    a_crash_fails_one_turn_and_the_next_one_works,
    a_hung_turn_times_out_is_cancelled_and_the_next_one_works,
    files_land_in_the_session_directory_and_are_listed_ahead_of_the_prompt,
    turns_of_one_session_queue_and_sessions_run_in_parallel,
    beyond_the_concurrency_limit_and_its_queue_turns_get_at_capacity,
    a_turn_waiting_for_its_session_holds_a_queue_place_within_its_timeout,
    a_large_prompt_arrives_byte_exact,
    close_during_a_turn_closes_first_cancels_the_turn_and_leaves_no_agent,
);

pub fn kind<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorKind {
    match r {
        Err(ClientError::Api(e)) => e.kind,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

pub fn turn(session_id: &str, prompt: &str) -> TurnRequest {
    TurnRequest {
        session_id: session_id.into(),
        prompt: prompt.into(),
        files: vec![],
        timeout_secs: None,
        wait: None,
    }
}

pub fn file(name: &str, content: &str) -> FileUpload {
    FileUpload {
        name: name.into(),
        content_base64: base64::engine::general_purpose::STANDARD.encode(content),
    }
}

async fn a_session_from_create_to_close(via: Via) {
    let forge = Forge::start_via(via).await;
    let app = forge.app("notes").await;

    let s = app.create_session(&CreateSession::default()).await.unwrap();
    assert_eq!(s.app, "notes");
    assert_eq!(s.agent, "default");
    assert_eq!(s.status, SessionStatus::Open);
    assert_eq!(s.turns, 0);
    assert!(s.last_turn_at.is_none() && s.closed_at.is_none());
    assert!(
        forge.session_dir(&s.session_id).is_dir(),
        "the session has its own directory"
    );

    let t1 = app.turn(&turn(&s.session_id, "hello there")).await.unwrap();
    assert_eq!(t1.output, "echo: hello there");
    assert_eq!(t1.turn, 1);
    assert_eq!(t1.stop_reason, "end_turn");
    assert_eq!(t1.session_id, s.session_id);
    let t2 = app
        .turn(&turn(&s.session_id, "second #count"))
        .await
        .unwrap();
    assert!(
        t2.output.starts_with("echo: second #count [n=2 pid="),
        "{}",
        t2.output
    );
    assert_eq!(t2.turn, 2);

    let got = app.get_session(&s.session_id).await.unwrap();
    assert_eq!(got.turns, 2);
    assert!(got.last_turn_at.is_some());
    assert_eq!(got.status, SessionStatus::Open);

    let listed = app.list_sessions().await.unwrap();
    assert_eq!(listed.sessions.len(), 1);
    assert_eq!(listed.sessions[0].session_id, s.session_id);

    let closed = app.close_session(&s.session_id).await.unwrap();
    assert!(closed.closed && !closed.already_closed);
    let again = app.close_session(&s.session_id).await.unwrap();
    assert!(again.closed && again.already_closed);

    let got = app.get_session(&s.session_id).await.unwrap();
    assert_eq!(got.status, SessionStatus::Closed);
    assert!(got.closed_at.is_some());
    assert_eq!(
        kind(app.turn(&turn(&s.session_id, "too late")).await),
        ErrorKind::Conflict
    );

    type EventRow = (String, String, Option<i64>, Option<String>, Option<String>);
    let events: Vec<EventRow> = forge
        .events(&s.session_id)
        .into_iter()
        .map(|e| (e.event, e.outcome, e.turn, e.prompt, e.output))
        .collect();
    assert_eq!(
        events,
        vec![
            ("create".into(), "ok".into(), None, None, None),
            (
                "turn".into(),
                "ok".into(),
                Some(1),
                Some("hello there".into()),
                Some("echo: hello there".into())
            ),
            (
                "turn".into(),
                "ok".into(),
                Some(2),
                Some("second #count".into()),
                Some(t2.output.clone())
            ),
            ("close".into(), "ok".into(), None, None, None),
        ]
    );
}

async fn sessions_of_other_apps_do_not_exist(via: Via) {
    let forge = Forge::start_via(via).await;
    let a = forge.app("app-a").await;
    let b = forge.app("app-b").await;
    let s = a.create_session(&CreateSession::default()).await.unwrap();

    assert_eq!(
        kind(b.get_session(&s.session_id).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(b.turn(&turn(&s.session_id, "hi")).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(b.close_session(&s.session_id).await),
        ErrorKind::NotFound
    );
    assert!(b.list_sessions().await.unwrap().sessions.is_empty());
    // An id that exists nowhere gives the same answer.
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(kind(a.get_session(&unknown).await), ErrorKind::NotFound);
    // And the owner's session is untouched.
    let got = a.get_session(&s.session_id).await.unwrap();
    assert_eq!(got.status, SessionStatus::Open);
    assert_eq!(got.turns, 0);
}

/// `forge.admin.session.list`: every app's sessions, filtered and paged; an admin reads another
/// app's session but does not take turns on it; an app token may not list.
#[tokio::test]
async fn an_admin_lists_every_apps_sessions_and_reads_them() {
    let forge = Forge::start_via(Via::Acp).await;
    let a = forge.app("app-a").await;
    let b = forge.app("app-b").await;
    let a1 = a.create_session(&CreateSession::default()).await.unwrap();
    let a2 = a.create_session(&CreateSession::default()).await.unwrap();
    let b1 = b.create_session(&CreateSession::default()).await.unwrap();
    a.close_session(&a1.session_id).await.unwrap();
    let ids = |page: &SessionPage| -> Vec<String> {
        page.sessions.iter().map(|s| s.session_id.clone()).collect()
    };
    let all = forge
        .admin
        .admin_sessions(&SessionsAsked::default())
        .await
        .unwrap();
    assert_eq!(all.total, 3);
    let mut every = ids(&all);
    every.sort();
    let mut created = vec![
        a1.session_id.clone(),
        a2.session_id.clone(),
        b1.session_id.clone(),
    ];
    created.sort();
    assert_eq!(every, created);
    let of_a = SessionsAsked {
        app: Some("app-a".into()),
        status: Some(SessionStatus::Open),
        ..Default::default()
    };
    let of_a = forge.admin.admin_sessions(&of_a).await.unwrap();
    assert_eq!((ids(&of_a), of_a.total), (vec![a2.session_id.clone()], 1));
    let second = SessionsAsked {
        offset: Some(1),
        limit: Some(1),
        ..Default::default()
    };
    let second = forge.admin.admin_sessions(&second).await.unwrap();
    // The second of the same order (newest first; sessions created within one millisecond by id).
    assert_eq!(
        (ids(&second), second.total),
        (vec![ids(&all)[1].clone()], 3)
    );
    let too_many = SessionsAsked {
        limit: Some(501),
        ..Default::default()
    };
    let too_many = forge.admin.admin_sessions(&too_many).await;
    assert_eq!(kind(too_many), ErrorKind::BadRequest);
    assert_eq!(
        kind(a.admin_sessions(&SessionsAsked::default()).await),
        ErrorKind::Forbidden
    );
    // The admin reads app-b's session, and may not take a turn on it.
    assert_eq!(forge.admin.get_session(&b1.session_id).await.unwrap(), b1);
    assert_eq!(
        kind(forge.admin.turn(&turn(&b1.session_id, "hi")).await),
        ErrorKind::NotFound
    );
}

async fn the_live_session_cap_holds(via: Via) {
    let forge = Forge::start_with(Options {
        env: vec![("CLAWDFORGE_MAX_LIVE_SESSIONS".into(), "2".into())],
        via,
        ..Default::default()
    })
    .await;
    let app = forge.app("capped").await;
    let s1 = app.create_session(&CreateSession::default()).await.unwrap();
    let _s2 = app.create_session(&CreateSession::default()).await.unwrap();
    let before = ledger_counts(&forge);
    assert_eq!(
        kind(app.create_session(&CreateSession::default()).await),
        ErrorKind::AtCapacity
    );
    assert_eq!(
        ledger_counts(&forge),
        before,
        "the refused create wrote nothing"
    );
    app.close_session(&s1.session_id).await.unwrap();
    app.create_session(&CreateSession::default()).await.unwrap();
    let sessions = forge.sessions();
    assert_eq!(sessions.iter().filter(|s| s.status == "open").count(), 2);
}

async fn a_crash_fails_one_turn_and_the_next_one_works(via: Via) {
    let forge = Forge::start_via(via).await;
    let app = forge.app("crashy").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let first = app
        .turn(&turn(&s.session_id, "warm up #count"))
        .await
        .unwrap();
    assert_eq!(
        kind(app.turn(&turn(&s.session_id, "#crash")).await),
        ErrorKind::AgentError
    );
    let after = app
        .turn(&turn(&s.session_id, "after #count"))
        .await
        .unwrap();
    assert!(
        after.output.starts_with("echo: after #count [n=1 pid="),
        "a new agent process: {}",
        after.output
    );
    assert_ne!(
        first.output.split("pid=").nth(1),
        after.output.split("pid=").nth(1)
    );
    assert_eq!(after.turn, 3);
    assert_eq!(forge.turn_events(&s.session_id)[1].outcome, "agent_error");
}

async fn a_hung_turn_times_out_is_cancelled_and_the_next_one_works(via: Via) {
    let forge = Forge::start_via(via).await;
    let app = forge.app("hangs").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    // In the session's directory: the confined agent may write nowhere else.
    let told = forge
        .session_dir(&s.session_id)
        .join("agent-told-to-cancel");
    let mut hang = turn(
        &s.session_id,
        &format!("#hang #on-cancel={}", told.display()),
    );
    hang.timeout_secs = Some(2);
    assert_eq!(kind(app.turn(&hang).await), ErrorKind::Timeout);
    // The agent itself was told to cancel before the timeout was answered.
    assert!(told.exists(), "the agent got no session/cancel");
    let after = app
        .turn(&turn(&s.session_id, "still there?"))
        .await
        .unwrap();
    assert_eq!(after.output, "echo: still there?");
    // It ran until its timeout, not failed at once: the agent, which answers a hung prompt only
    // when cancelled, was told to cancel (above).
    assert_eq!(forge.turn_events(&s.session_id)[0].outcome, "timeout");
}

async fn files_land_in_the_session_directory_and_are_listed_ahead_of_the_prompt(via: Via) {
    let forge = Forge::start_via(via).await;
    let app = forge.app("files").await;
    let s = app
        .create_session(&CreateSession {
            agent: None,
            files: vec![file("notes.md", "from create")],
            name: None,
        })
        .await
        .unwrap();
    let mut req = turn(&s.session_id, "read them #cat");
    req.files = vec![file("data.txt", "from turn")];
    let t = app.turn(&req).await.unwrap();
    let dir = forge.session_dir(&s.session_id).canonicalize().unwrap();
    let notes = dir.join("notes.md");
    let data = dir.join("data.txt");
    assert!(
        t.output.starts_with(&format!(
            "echo: [Attached files]\n- {}\n- {}\n\nread them #cat",
            notes.display(),
            data.display()
        )),
        "{}",
        t.output
    );
    assert!(
        t.output.contains("from create") && t.output.contains("from turn"),
        "{}",
        t.output
    );
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "from create");
    // The next turn lists only what it brings itself.
    let t2 = app.turn(&turn(&s.session_id, "plain")).await.unwrap();
    assert_eq!(t2.output, "echo: plain");
}

#[tokio::test]
async fn named_agents_come_from_the_config_only() {
    let forge = Forge::start_with(Options {
        config_toml: Some(format!(
            "[agents]\necho = \"{}\"\n",
            crate::harness::agent_command(" --named")
        )),
        ..Default::default()
    })
    .await;
    let app = forge.app("named").await;
    let s = app
        .create_session(&CreateSession {
            agent: Some("echo".into()),
            files: vec![],
            name: None,
        })
        .await
        .unwrap();
    assert_eq!(s.agent, "echo");
    let t = app.turn(&turn(&s.session_id, "hi")).await.unwrap();
    assert_eq!(t.output, "echo: hi");
    for bad in ["nope", "node /bin/sh", ""] {
        assert_eq!(
            kind(
                app.create_session(&CreateSession {
                    agent: Some(bad.into()),
                    files: vec![],
                    name: None,
                })
                .await
            ),
            ErrorKind::BadRequest,
            "{bad:?}"
        );
    }
}

/// Sends a turn of `session_id` that runs until `release` exists.
fn held_turn(
    app: &ForgeClient,
    session_id: &str,
    word: &str,
    release: &Path,
) -> tokio::task::JoinHandle<Result<Turn, ClientError>> {
    let app = app.clone();
    let req = turn(
        session_id,
        &format!("{word} #wait-file={}", release.display()),
    );
    tokio::spawn(async move { app.turn(&req).await })
}

async fn turns_of_one_session_queue_and_sessions_run_in_parallel(via: Via) {
    let forge = Forge::start_via(via).await;
    let app = forge.app("parallel").await;
    let a = app.create_session(&CreateSession::default()).await.unwrap();
    let b = app.create_session(&CreateSession::default()).await.unwrap();
    let (release_a, release_b) = (forge.dir.path().join("a"), forge.dir.path().join("b"));
    let a1 = held_turn(&app, &a.session_id, "one", &release_a);
    let a2 = held_turn(&app, &a.session_id, "two", &release_a);
    let b1 = held_turn(&app, &b.session_id, "other", &release_b);

    // A turn of each session runs at once; the other turn of `a` waits for its session.
    forge.running_turn(&a.session_id).await;
    forge.running_turn(&b.session_id).await;
    forge
        .wait_for_log(&["waiting for the session's earlier turn", &a.session_id])
        .await;
    assert_eq!(turn_events(&forge, &a.session_id), (1, 1));
    assert_eq!(turn_events(&forge, &b.session_id), (1, 1));

    std::fs::write(&release_a, "").unwrap();
    let (a1, a2) = (a1.await.unwrap().unwrap(), a2.await.unwrap().unwrap());
    let mut numbers = [a1.turn, a2.turn];
    numbers.sort();
    assert_eq!(numbers, [1, 2]);
    assert!(forge.turn_began_after_the_one_before_ended(&a.session_id, 2));
    // `b`'s turn ran through both of them.
    assert_eq!(turn_events(&forge, &b.session_id), (1, 1));
    std::fs::write(&release_b, "").unwrap();
    assert_eq!(b1.await.unwrap().unwrap().turn, 1);
}

async fn beyond_the_concurrency_limit_and_its_queue_turns_get_at_capacity(via: Via) {
    let forge = Forge::start_with(Options {
        env: vec![
            ("CLAWDFORGE_MAX_CONCURRENT_TURNS".into(), "1".into()),
            ("CLAWDFORGE_MAX_QUEUED_TURNS".into(), "0".into()),
        ],
        via,
        ..Default::default()
    })
    .await;
    let app = forge.app("busy").await;
    let a = app.create_session(&CreateSession::default()).await.unwrap();
    let b = app.create_session(&CreateSession::default()).await.unwrap();
    // The slow turn holds the one place until the refusal below has been answered.
    let release = forge.dir.path().join("release-slow");
    let slow = held_turn(&app, &a.session_id, "slow", &release);
    forge.running_turn(&a.session_id).await;
    assert_eq!(
        kind(app.turn(&turn(&b.session_id, "squeeze in")).await),
        ErrorKind::AtCapacity
    );
    std::fs::write(&release, "").unwrap();
    slow.await.unwrap().unwrap();
    app.turn(&turn(&b.session_id, "now")).await.unwrap();
    // The refused turn left no trace in the ledger.
    assert_eq!(forge.turn_events(&b.session_id).len(), 1);
}

/// How many turn events the ledger holds for `session_id`, and how many are running.
fn turn_events(forge: &Forge, session_id: &str) -> (usize, usize) {
    let turns = forge.turn_events(session_id);
    (turns.len(), turns.iter().filter(|e| e.running()).count())
}

async fn a_turn_waiting_for_its_session_holds_a_queue_place_within_its_timeout(via: Via) {
    let forge = Forge::start_with(Options {
        env: vec![("CLAWDFORGE_MAX_QUEUED_TURNS".into(), "1".into())],
        via,
        ..Default::default()
    })
    .await;
    let app = forge.app("patient").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    // The slow turn runs until the turn behind it has timed out waiting.
    let release = forge.dir.path().join("release-slow");
    let slow = held_turn(&app, &s.session_id, "slow", &release);
    forge.running_turn(&s.session_id).await;

    // Behind the slow turn, which runs until this one has timed out.
    let waiting = {
        let app = app.clone();
        let mut req = turn(&s.session_id, "waits");
        req.timeout_secs = Some(3);
        tokio::spawn(async move { app.turn(&req).await })
    };
    forge
        .wait_for_log(&["waiting for the session's earlier turn", &s.session_id])
        .await;
    // The waiting turn holds the queue's one place.
    assert_eq!(
        kind(app.turn(&turn(&s.session_id, "no room")).await),
        ErrorKind::AtCapacity
    );
    match waiting.await.unwrap() {
        Err(ClientError::Api(e)) => {
            assert_eq!(e.kind, ErrorKind::Timeout);
            assert!(e.message.contains("did not run"), "{}", e.message);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }

    std::fs::write(&release, "").unwrap();
    let first = slow.await.unwrap().unwrap();
    assert_eq!(first.turn, 1);
    // The turn that timed out waiting was taken and numbered (2): it is recorded with why; the
    // refused one (no room in the queue) left no trace and took no number.
    let second = forge.turn_events(&s.session_id).remove(1);
    assert_eq!((second.turn, second.outcome.as_str()), (Some(2), "timeout"));
    let error = second.error.unwrap_or_default();
    assert!(error.contains("did not run"), "{error}");
    let next = app.turn(&turn(&s.session_id, "next")).await.unwrap();
    assert_eq!((next.turn, next.output.as_str()), (3, "echo: next"));
    assert_eq!(turn_events(&forge, &s.session_id), (3, 0));
}

async fn a_large_prompt_arrives_byte_exact(via: Via) {
    let forge = Forge::start_via(via).await;
    let app = forge.app("big").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let mut prompt = String::from("--not-an-option \"quoted\" [brackets] ünïcödé\n");
    while prompt.len() < 200_000 {
        prompt.push_str("line of text with tabs\tand spaces  \n");
    }
    let t = app.turn(&turn(&s.session_id, &prompt)).await.unwrap();
    assert_eq!(t.output.len(), prompt.len() + "echo: ".len());
    assert_eq!(t.output, format!("echo: {prompt}"));
}

async fn close_during_a_turn_closes_first_cancels_the_turn_and_leaves_no_agent(via: Via) {
    let forge = Forge::start_via(via).await;
    let app = forge.app("closer").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let id = s.session_id.clone();
    let counted = app.turn(&turn(&id, "#count")).await.unwrap();
    let agent = crate::harness::agent_pid(&counted.output);
    assert!(crate::harness::running(agent), "the session's agent runs");
    let never = forge.dir.path().join("never-released");
    let running = {
        let app = app.clone();
        let prompt = format!("hold #wait-file={}", never.display());
        let id = id.clone();
        tokio::spawn(async move { app.turn(&turn(&id, &prompt)).await })
    };
    forge.running_turn(&id).await;
    let queued = {
        let app = app.clone();
        let id = id.clone();
        tokio::spawn(async move { app.turn(&turn(&id, "queued behind")).await })
    };
    forge
        .wait_for_log(&["turn waiting for the session's earlier turn"])
        .await;

    let closed = app.close_session(&id).await.unwrap();
    assert!(closed.closed && !closed.already_closed);
    let cancelled = running.await.unwrap().expect("the running turn answers");
    assert_eq!(cancelled.stop_reason, "cancelled");
    assert_eq!(kind(queued.await.unwrap()), ErrorKind::Conflict);
    assert_eq!(
        kind(app.turn(&turn(&id, "after")).await),
        ErrorKind::Conflict
    );
    // The close stopped the agent.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while crate::harness::running(agent) {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent {agent} outlives the close"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A session may be named (v3.3): the name comes back in its replies and is unique among the
/// app's open sessions of its agent — a second open one of that name is `conflict` and writes
/// nothing; once the first is closed, or for another app, the name is free.
#[tokio::test]
async fn a_session_name_is_unique_among_the_open_sessions_of_its_app_and_agent() {
    let forge = Forge::start_via(Via::Acp).await;
    let (app, other) = (forge.app("named").await, forge.app("neighbour").await);
    let named = |name: &str| CreateSession {
        name: Some(name.into()),
        ..Default::default()
    };
    let first = app.create_session(&named("default")).await.unwrap();
    assert_eq!(first.name.as_deref(), Some("default"));
    let got = app.get_session(&first.session_id).await.unwrap();
    assert_eq!(got.name.as_deref(), Some("default"));
    assert_eq!(
        kind(app.create_session(&named("default")).await),
        ErrorKind::Conflict
    );
    for bad in ["Default", "", "a.b", &"x".repeat(64)] {
        assert_eq!(
            kind(app.create_session(&named(bad)).await),
            ErrorKind::BadRequest
        );
    }
    let listed = app.list_sessions().await.unwrap().sessions;
    assert_eq!(
        listed.len(),
        1,
        "a refused create writes nothing: {listed:?}"
    );
    assert_eq!(listed[0].name.as_deref(), Some("default"));
    let unnamed = app.create_session(&CreateSession::default()).await.unwrap();
    assert_eq!(unnamed.name, None);
    let theirs = other.create_session(&named("default")).await.unwrap();
    assert_eq!(theirs.name.as_deref(), Some("default"));
    app.close_session(&first.session_id).await.unwrap();
    let again = app.create_session(&named("default")).await.unwrap();
    assert_ne!(again.session_id, first.session_id);
    assert_eq!(again.name.as_deref(), Some("default"));
}
