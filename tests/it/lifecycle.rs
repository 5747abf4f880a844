//! Lifecycle and faults: the TTL sweeper, graceful shutdown, a worker killed mid-turn, NATS
//! restarts.

use std::path::Path;
use std::time::{Duration, Instant};

use clawdforge::client::{ClientError, ForgeClient};
use clawdforge::error::ErrorKind;
use clawdforge::wire::{CreateSession, Run, RunRequest, SessionStatus, Turn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::{Forge, Nats, Options};
use crate::ledger::wait_for_running_turn;
use crate::runs::{claude_env, gone, only_run_of, run, stand_in_record, wait_for_running_runs};
use crate::sessions::{kind, turn};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub async fn wait_until<F: FnMut() -> bool>(what: &str, limit: Duration, mut f: F) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The event and outcome of each of `session_id`'s events, in order.
pub fn events(forge: &Forge, session_id: &str) -> Vec<(String, String)> {
    let events = forge.events(session_id);
    events.into_iter().map(|e| (e.event, e.outcome)).collect()
}

#[tokio::test]
async fn idle_sessions_are_closed_then_deleted_and_the_trail_stays() {
    let forge = Forge::start_with(Options {
        env: env(&[
            // Counted from creation too: leave room for a slow create under load.
            ("CLAWDFORGE_SESSION_TTL_SECS", "5"),
            ("CLAWDFORGE_SESSION_HARD_TTL_SECS", "2"),
            ("CLAWDFORGE_SWEEP_INTERVAL_SECS", "1"),
        ]),
        ..Default::default()
    })
    .await;
    let app = forge.app("sweep").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    app.turn(&turn(&s.session_id, "hello")).await.unwrap();
    let record_dir = forge.app_home("sweep").join(".acpx/sessions");
    let records_before = std::fs::read_dir(&record_dir).unwrap().count();
    assert!(records_before > 0);

    let id = s.session_id.clone();
    wait_until("the sweep close", Duration::from_secs(20), || {
        events(&forge, &id).iter().any(|(e, _)| e == "sweep_close")
    })
    .await;
    wait_until("the hard delete", Duration::from_secs(20), || {
        events(&forge, &id).iter().any(|(e, _)| e == "hard_delete")
    })
    .await;
    assert_eq!(
        kind(app.get_session(&s.session_id).await),
        ErrorKind::NotFound
    );
    let trail: Vec<String> = events(&forge, &id).into_iter().map(|(e, _)| e).collect();
    assert_eq!(trail, ["create", "turn", "sweep_close", "hard_delete"]);
    assert!(!forge.sessions_root().join(&s.session_id).exists());
    let records_after = std::fs::read_dir(&record_dir).unwrap().count();
    assert!(
        records_after < records_before,
        "acpx's record went too ({records_before} → {records_after} files)"
    );
}

fn swept(forge: &Forge, session_id: &str) -> bool {
    events(forge, session_id)
        .iter()
        .any(|(e, _)| e == "sweep_close")
}

#[tokio::test]
async fn a_session_mid_turn_is_not_swept() {
    let forge = Forge::start_with(Options {
        env: env(&[
            // Counted from creation too: leave room for a slow create and turn start.
            ("CLAWDFORGE_SESSION_TTL_SECS", "5"),
            ("CLAWDFORGE_SWEEP_INTERVAL_SECS", "1"),
        ]),
        ..Default::default()
    })
    .await;
    let app = forge.app("busy").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let release = forge.dir.path().join("release");
    let busy = {
        let (app, id) = (app.clone(), s.session_id.clone());
        let prompt = format!("slow #wait-file={}", release.display());
        tokio::spawn(async move { app.turn(&turn(&id, &prompt)).await })
    };
    wait_for_running_turn(&forge.ledger_path(), &s.session_id).await;
    // An idle session made after the turn started is swept: the sweep has run past the TTL of
    // the busy one, and left it open.
    let idle = app.create_session(&CreateSession::default()).await.unwrap();
    let idle_id = idle.session_id.clone();
    wait_until("the idle session's sweep", Duration::from_secs(30), || {
        swept(&forge, &idle_id)
    })
    .await;
    assert!(!swept(&forge, &s.session_id), "swept mid-turn");
    std::fs::write(&release, "").unwrap();
    assert_eq!(busy.await.unwrap().unwrap().stop_reason, "end_turn");
    assert_eq!(
        app.get_session(&s.session_id).await.unwrap().status,
        SessionStatus::Open
    );
    // It is swept afterwards, once idle.
    let id = s.session_id.clone();
    wait_until("the sweep close", Duration::from_secs(30), || {
        swept(&forge, &id)
    })
    .await;
    assert_eq!(
        events(&forge, &s.session_id),
        [
            ("create".to_string(), "ok".to_string()),
            ("turn".to_string(), "ok".to_string()),
            ("sweep_close".to_string(), "ok".to_string()),
        ]
    );
}

/// A ledger timestamp.
fn stamp(at: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(at).unwrap_or_else(|e| panic!("{at:?}: {e}"))
}

#[tokio::test]
async fn sessions_expire_counted_from_their_last_turn_not_from_their_creation() {
    // Counted from creation too until the first turn: leave room for a slow create under load.
    const TTL_SECS: i64 = 5;
    let forge = Forge::start_with(Options {
        env: env(&[
            ("CLAWDFORGE_SESSION_TTL_SECS", &TTL_SECS.to_string()),
            ("CLAWDFORGE_SWEEP_INTERVAL_SECS", "1"),
        ]),
        ..Default::default()
    })
    .await;
    let app = forge.app("ttl").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let release = forge.dir.path().join("release");
    let busy = held_turn(&app, &s.session_id, "late", &release);
    forge.running_turn(&s.session_id).await;
    // A session made after `s` and swept: `s` is past its TTL counted from its creation, and
    // only its running turn keeps it.
    let witness = app.create_session(&CreateSession::default()).await.unwrap();
    let witness_id = witness.session_id.clone();
    wait_until("the witness's sweep", Duration::from_secs(30), || {
        swept(&forge, &witness_id)
    })
    .await;
    std::fs::write(&release, "").unwrap();
    busy.await.unwrap().unwrap();
    let id = s.session_id.clone();
    wait_until("the sweep close", Duration::from_secs(30), || {
        swept(&forge, &id)
    })
    .await;

    // The ledger's own stamps: the turn ended past the TTL counted from creation, and the sweep
    // came only past the TTL counted from that turn's end.
    let ttl = chrono::Duration::seconds(TTL_SECS);
    let got = app.get_session(&s.session_id).await.unwrap();
    let last_turn = stamp(got.last_turn_at.as_deref().expect("a last turn"));
    assert!(stamp(&got.created_at) + ttl < last_turn, "{got:?}");
    let events = forge.events(&s.session_id);
    let closed = events.iter().find(|e| e.event == "sweep_close").unwrap();
    assert!(
        stamp(&closed.at) >= last_turn + ttl,
        "swept at {} though its last turn ended at {last_turn}",
        closed.at
    );
}

/// A turn or run request in flight.
type Pending<T> = tokio::task::JoinHandle<Result<T, ClientError>>;

/// Sends a turn of `session_id` that runs until `release` exists.
fn held_turn(app: &ForgeClient, session_id: &str, word: &str, release: &Path) -> Pending<Turn> {
    let app = app.clone();
    let req = turn(
        session_id,
        &format!("{word} #wait-file={}", release.display()),
    );
    tokio::spawn(async move { app.turn(&req).await })
}

/// Sends a run that runs until `release` exists.
fn held_run(app: &ForgeClient, word: &str, release: &Path) -> Pending<Run> {
    let app = app.clone();
    let req = run(&format!("{word} #wait-file={}", release.display()));
    tokio::spawn(async move { app.run(&req).await })
}

/// Two runs sent at once to a worker whose one run slot is taken and whose run queue has one
/// place: one is refused `at_capacity`, and the other is then waiting in the queue; returns it.
async fn one_run_queued(app: &ForgeClient, release: &Path) -> Pending<Run> {
    let (a, b) = (held_run(app, "a", release), held_run(app, "b", release));
    let (refused, queued) = match futures::future::select(a, b).await {
        futures::future::Either::Left((done, other)) => (done, other),
        futures::future::Either::Right((done, other)) => (done, other),
    };
    assert_eq!(kind(refused.unwrap()), ErrorKind::AtCapacity);
    queued
}

/// The outcomes of the ledger's runs, in order.
fn run_outcomes(forge: &Forge) -> Vec<String> {
    forge.runs().into_iter().map(|r| r.outcome).collect()
}

/// `signal` makes the worker stop taking requests at once, then lets what it took finish —
/// a running turn and run, and a turn and run queued behind them — and exit 0.
async fn a_signal_drains_running_and_queued_work(signal: Signal) {
    let mut forge = Forge::start_with(Options {
        env: claude_env(&[
            ("CLAWDFORGE_MAX_CONCURRENT_RUNS", "1"),
            ("CLAWDFORGE_MAX_QUEUED_RUNS", "1"),
        ]),
        ..Default::default()
    })
    .await;
    let app = forge.app("graceful").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let release = forge.dir.path().join("release");
    let running_turn = held_turn(&app, &s.session_id, "first", &release);
    wait_for_running_turn(&forge.ledger_path(), &s.session_id).await;
    let queued_turn = held_turn(&app, &s.session_id, "second", &release);
    forge
        .wait_for_log(&["waiting for the session's earlier turn", &s.session_id])
        .await;
    let running_run = held_run(&app, "first", &release);
    wait_for_running_runs(&forge, 1).await;
    let queued_run = one_run_queued(&app, &release).await;

    kill(Pid::from_raw(forge.workers[0].child.id() as i32), signal).unwrap();
    forge.wait_until_no_worker_serves().await;
    // Draining: alive, but no new request reaches it.
    assert!(forge.workers[0].child.try_wait().unwrap().is_none());
    assert_eq!(
        app.list_sessions().await.unwrap_err(),
        ClientError::NoResponders
    );

    std::fs::write(&release, "").unwrap();
    let turns = [running_turn.await, queued_turn.await].map(|t| t.unwrap().unwrap().turn);
    assert_eq!(turns, [1, 2]);
    for r in [running_run.await, queued_run.await] {
        assert!(r.unwrap().unwrap().ok);
    }
    let status = forge.workers[0].child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let trail: Vec<String> = events(&forge, &s.session_id)
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    assert_eq!(trail, ["ok", "ok", "ok"]);
    assert_eq!(run_outcomes(&forge), ["ok", "ok"]);
    forge.workers.clear();
}

#[tokio::test]
async fn sigterm_lets_running_and_queued_work_finish_and_exits_cleanly() {
    a_signal_drains_running_and_queued_work(Signal::SIGTERM).await;
}

#[tokio::test]
async fn sigint_drains_like_sigterm() {
    a_signal_drains_running_and_queued_work(Signal::SIGINT).await;
}

/// A stopping worker waits, within its grace period, for another worker's turn of an acpx
/// session it ran a turn of: the session's agent (acpx's queue owner) may be its process, and
/// in a container, or a systemd unit, it ends with the worker.
#[tokio::test]
async fn a_stopping_worker_waits_for_other_workers_turns_on_agents_it_started() {
    let mut forge = Forge::start().await;
    let app = forge.app("handover").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    app.turn(&turn(&s.session_id, "first")).await.unwrap();
    let first = forge.events(&s.session_id).pop().unwrap().worker_id;
    forge.spawn_worker(&[]);
    forge.wait_for_workers(2).await;
    // The queue group hands each turn to either worker: until one runs on the second.
    let mut held = None;
    for round in 0..12 {
        let release = forge.dir.path().join(format!("release-{round}"));
        let pending = held_turn(&app, &s.session_id, &format!("held{round}"), &release);
        let running = wait_for_running_turn(&forge.ledger_path(), &s.session_id).await;
        if running.worker_id != first {
            held = Some((pending, release));
            break;
        }
        std::fs::write(&release, "").unwrap();
        pending.await.unwrap().unwrap();
    }
    let (pending, release) = held.expect("no turn reached the second worker in 12 rounds");

    kill(
        Pid::from_raw(forge.workers[0].child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    forge
        .wait_for_log(&["waiting for other workers' turns", "turns=1"])
        .await;
    assert!(forge.workers[0].child.try_wait().unwrap().is_none());
    std::fs::write(&release, "").unwrap();
    let answered = pending.await.unwrap().unwrap();
    assert!(answered.output.contains("held"), "{answered:?}");
    let status = forge.workers[0].child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sigterm_past_the_grace_period_cancels_and_records_interrupted() {
    let mut forge = Forge::start_with(Options {
        env: claude_env(&[("CLAWDFORGE_SHUTDOWN_GRACE_SECS", "1")]),
        ..Default::default()
    })
    .await;
    let app = forge.app("impatient").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let spawn_turn = |prompt: &str| {
        let app = app.clone();
        let mut req = turn(&s.session_id, prompt);
        req.timeout_secs = Some(30);
        tokio::spawn(async move { app.turn(&req).await })
    };
    // In the app's home: the confined agent may write there.
    let told = forge.app_home("impatient").join("agent-told-to-cancel");
    let got = forge.app_home("impatient").join("agent-got-the-prompt");
    let hung = spawn_turn(&format!(
        "#hang #on-cancel={} #on-prompt={}",
        told.display(),
        got.display()
    ));
    // The agent has the prompt before the worker is told to stop: it must be told to cancel.
    crate::native::wait_for_file(&got).await;
    // Waits behind the hung turn of its session.
    let queued = spawn_turn("queued");
    forge
        .wait_for_log(&["waiting for the session's earlier turn", &s.session_id])
        .await;
    let long_run = {
        let app = app.clone();
        let req = RunRequest {
            timeout_secs: Some(60),
            ..run("take your time #sleep=60000")
        };
        tokio::spawn(async move { app.run(&req).await })
    };
    wait_for_running_runs(&forge, 1).await;

    kill(
        Pid::from_raw(forge.workers[0].child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = forge.workers[0].child.wait().unwrap();
    // Past its grace it exits without waiting for the 60 s run: the run's answer below
    // (interrupted) shows it was cut short, which a clock would only guess.
    assert!(status.success(), "{status:?}");

    // The queued turn never started and says so; the run was killed and says so.
    assert_eq!(kind(queued.await.unwrap()), ErrorKind::AtCapacity);
    assert_eq!(kind(long_run.await.unwrap()), ErrorKind::AtCapacity);
    // The hung turn was cancelled, the agent told so (perhaps a moment after acpx answered),
    // and its caller got the turn as it ended.
    crate::native::wait_for_file(&told).await;
    let cancelled = hung.await.unwrap().expect("the cancelled turn answers");
    assert_eq!(
        (cancelled.turn, cancelled.stop_reason.as_str()),
        (1, "cancelled")
    );
    // The queued turn was taken and numbered: it is recorded as the answer it got.
    assert_eq!(
        events(&forge, &s.session_id),
        [
            ("create".to_string(), "ok".to_string()),
            ("turn".to_string(), "interrupted".to_string()),
            ("turn".to_string(), "at_capacity".to_string())
        ]
    );
    let row = only_run_of(&forge, "impatient");
    assert_eq!(row.outcome, "interrupted");
    assert!(row.finished_at.is_some(), "{row:?}");
    let claude_pid = stand_in_record(&forge, &row.run_id)["pid"]
        .as_i64()
        .unwrap();
    assert!(gone(claude_pid).await, "claude ({claude_pid}) survived");
    forge.workers.clear();
}

#[tokio::test]
async fn a_worker_killed_mid_turn_leaves_an_interrupted_turn_and_a_usable_session() {
    let mut forge = Forge::start_with(Options {
        workers: 1,
        env: env(&[
            ("CLAWDFORGE_WORKER_HEARTBEAT_SECS", "1"),
            ("CLAWDFORGE_SWEEP_INTERVAL_SECS", "1"),
        ]),
        ..Default::default()
    })
    .await;
    let app = forge.app("survivor").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    forge.spawn_worker(&[]);
    forge.wait_for_workers(2).await;
    // Send a held turn to whichever worker takes it, then kill that one while the turn runs.
    let release = forge.dir.path().join("release");
    let pending = held_turn(&app, &s.session_id, "doomed", &release);
    let id = s.session_id.clone();
    let victim = forge.running_turn(&id).await.worker_id;
    let logs: Vec<String> = forge
        .workers
        .iter()
        .map(|w| std::fs::read_to_string(&w.log).unwrap_or_default())
        .collect();
    let n = logs
        .iter()
        .position(|l| l.contains(&victim))
        .expect("the victim's log names it");
    forge.kill_worker(n);
    // The caller would wait for its own timeout: no reply comes from a dead worker.
    pending.abort();

    wait_until("the interrupted mark", Duration::from_secs(20), || {
        events(&forge, &id)
            .iter()
            .any(|(e, o)| e == "turn" && o == "interrupted")
    })
    .await;
    // The agent the dead worker left behind ends its prompt, which holds acpx's queue of the
    // session, only now.
    std::fs::write(&release, "").unwrap();
    let next = app.turn(&turn(&s.session_id, "next")).await.unwrap();
    assert_eq!(next.output, "echo: next");
    assert_eq!(next.turn, 2);
    let trail = events(&forge, &s.session_id);
    assert_eq!(
        trail,
        vec![
            ("create".into(), "ok".into()),
            ("turn".into(), "interrupted".into()),
            ("turn".into(), "ok".into()),
        ]
    );
}

#[tokio::test]
async fn workers_start_before_nats_and_ride_out_a_restart() {
    // Pick a port, then bring NATS up only after the worker has started.
    let port = {
        let probe = Nats::start();
        probe.port()
    };
    let mut forge = Forge::start_with(Options {
        workers: 0,
        ..Default::default()
    })
    .await;
    forge.nats.stop();
    let url = format!("nats://127.0.0.1:{port}");
    forge.env.retain(|(k, _)| k != "NATS_URL");
    forge.env.push(("NATS_URL".into(), url.clone()));
    forge.spawn_worker(&[]);
    forge.wait_for_log(&["cannot reach NATS; retrying"]).await;
    forge.nats = Nats::start_on(Some(port));
    let client = async_nats::connect(&url).await.unwrap();
    forge.admin =
        clawdforge::client::ForgeClient::new(client, Some(crate::harness::ROOT_TOKEN.into()));
    forge.wait_for_workers(1).await;

    let app = forge.app("restarts").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    app.turn(&turn(&s.session_id, "before")).await.unwrap();

    forge.nats.stop();
    forge.wait_for_log(&["disconnected from NATS"]).await;
    forge.nats = Nats::start_on(Some(port));
    // Subscribed again (it answers pings): the session works at the first try.
    forge.wait_for_workers(1).await;
    let after = app.turn(&turn(&s.session_id, "after")).await.unwrap();
    assert_eq!(after.output, "echo: after");
}

#[tokio::test]
async fn a_turn_that_ends_while_nats_is_down_is_still_recorded() {
    let mut forge = Forge::start().await;
    let port = forge.nats.port();
    let app = forge.app("outage").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let release = forge.dir.path().join("release-in-the-outage");
    let pending = {
        let app = app.clone();
        let id = s.session_id.clone();
        let prompt = format!("through the outage #wait-file={}", release.display());
        let mut req = turn(&id, &prompt);
        req.timeout_secs = Some(30);
        tokio::spawn(async move { app.turn(&req).await })
    };
    let id = s.session_id.clone();
    forge.running_turn(&id).await;
    // The turn ends only once NATS is gone.
    forge.nats.stop();
    std::fs::write(&release, "").unwrap();
    wait_until("the turn to be recorded", Duration::from_secs(20), || {
        events(&forge, &id)
            .iter()
            .any(|(e, o)| e == "turn" && o == "ok")
    })
    .await;
    pending.abort();
    forge.nats = Nats::start_on(Some(port));
    forge.wait_for_workers(1).await;
    let got = app.get_session(&s.session_id).await.unwrap();
    assert_eq!(got.turns, 1);
    let output = forge.turn_events(&s.session_id)[0].output.clone();
    let prompt = format!("through the outage #wait-file={}", release.display());
    assert_eq!(output, Some(format!("echo: {prompt}")));
}
