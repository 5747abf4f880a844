//! The native backend under the failures the acpx backend's tests cover: an agent process
//! killed mid-turn, the sweep, and a shutdown past its grace period.

use std::time::Duration;

use clawdforge::client::ForgeClient;
use clawdforge::error::ErrorKind;
use clawdforge::wire::{CreateSession, Turn, TurnRequest};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::{agent_pid, running, Forge, Options, Via};
use crate::lifecycle::{events, wait_until};
use crate::native::{wait_for_file, wait_until_gone};
use crate::sessions::{kind, turn};

fn native(env: &[(&str, &str)]) -> Options {
    Options {
        via: Via::Acp,
        env: crate::harness::env_of(env),
        ..Default::default()
    }
}

async fn session(app: &ForgeClient) -> String {
    app.create_session(&CreateSession::default())
        .await
        .unwrap()
        .session_id
}

fn spawn_turn(
    app: &ForgeClient,
    req: TurnRequest,
) -> tokio::task::JoinHandle<Result<Turn, clawdforge::client::ClientError>> {
    let app = app.clone();
    tokio::spawn(async move { app.turn(&req).await })
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn an_agent_killed_mid_turn_fails_that_turn_and_the_next_one_loads_the_session() {
    let forge = Forge::start_with(native(&[])).await;
    let app = forge.app("killed").await;
    let id = session(&app).await;
    let first = app.turn(&turn(&id, "one #count")).await.unwrap();
    let pid = agent_pid(&first.output);
    let got = forge.session_dir(&id).join("got-the-prompt");
    let never = forge.session_dir(&id).join("never");
    let held = spawn_turn(
        &app,
        turn(
            &id,
            &format!(
                "#on-prompt={} #wait-file={}",
                got.display(),
                never.display()
            ),
        ),
    );
    wait_for_file(&got).await;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let failed = held.await.unwrap().unwrap_err();
    assert_eq!(failed.kind(), ErrorKind::AgentError, "{failed}");
    assert!(
        failed.to_string().contains("SIGKILL") || failed.to_string().contains("signal"),
        "the error says the agent was killed: {failed}"
    );
    wait_until_gone(pid).await;
    let next = app.turn(&turn(&id, "three #origin #count #history")).await;
    let next = next.unwrap();
    assert_eq!(next.turn, 3);
    assert!(next.output.contains("[origin=load]"), "{}", next.output);
    assert!(
        next.output.contains("[history=one|") && next.output.ends_with("|three]"),
        "the loaded session remembers its turns: {}",
        next.output
    );
    assert_ne!(agent_pid(&next.output), pid);
    let outcomes: Vec<String> = events(&forge, &id).into_iter().map(|(_, o)| o).collect();
    assert_eq!(outcomes, ["ok", "ok", "agent_error", "ok"]);
}

#[tokio::test]
async fn a_native_session_is_swept_then_deleted_and_its_agent_goes_on_for_the_others() {
    let forge = Forge::start_with(native(&[
        // Counted from the last turn: leave room for a slow create under load.
        ("CLAWDFORGE_SESSION_TTL_SECS", "5"),
        ("CLAWDFORGE_SESSION_HARD_TTL_SECS", "2"),
        ("CLAWDFORGE_SWEEP_INTERVAL_SECS", "1"),
    ]))
    .await;
    let app = forge.app("sweep").await;
    let id = session(&app).await;
    let first = app.turn(&turn(&id, "hello #count")).await.unwrap();
    let dir = forge.session_dir(&id);
    let deleted = || {
        events(&forge, &id)
            .iter()
            .any(|(event, _)| event == "hard_delete")
    };
    wait_until("the hard delete", Duration::from_secs(60), deleted).await;
    let trail: Vec<String> = events(&forge, &id).into_iter().map(|(e, _)| e).collect();
    assert_eq!(trail, ["create", "turn", "sweep_close", "hard_delete"]);
    assert_eq!(kind(app.get_session(&id).await), ErrorKind::NotFound);
    assert!(!dir.exists(), "{} is still there", dir.display());
    // The app's agent process serves its next session as before.
    let other = session(&app).await;
    let t = app.turn(&turn(&other, "again #count")).await.unwrap();
    assert!(t.output.starts_with("echo: again #count"), "{}", t.output);
    if running(agent_pid(&first.output)) {
        assert_eq!(agent_pid(&t.output), agent_pid(&first.output));
    }
}

#[tokio::test]
async fn sigterm_past_the_grace_period_cancels_a_native_turn_and_tells_the_agent() {
    let mut opts = native(&[("CLAWDFORGE_SHUTDOWN_GRACE_SECS", "1")]);
    opts.env
        .extend(pairs(&[("RUST_LOG", "info,clawdforge=debug")]));
    let mut forge = Forge::start_with(opts).await;
    let app = forge.app("impatient").await;
    let id = session(&app).await;
    let warm = app.turn(&turn(&id, "warm #count")).await.unwrap();
    let got = forge.session_dir(&id).join("got-the-prompt");
    let told = forge.session_dir(&id).join("told-to-cancel");
    let hung = spawn_turn(
        &app,
        TurnRequest {
            timeout_secs: Some(60),
            ..turn(
                &id,
                &format!(
                    "#hang #on-prompt={} #on-cancel={}",
                    got.display(),
                    told.display()
                ),
            )
        },
    );
    wait_for_file(&got).await;
    let worker = Pid::from_raw(forge.workers[0].child.id() as i32);
    kill(worker, Signal::SIGTERM).unwrap();
    let status = forge.workers[0].child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let cancelled = hung.await.unwrap().expect("the cancelled turn answers");
    assert_eq!(
        (cancelled.turn, cancelled.stop_reason.as_str()),
        (2, "cancelled")
    );
    // The agent got the prompt, so it was told to cancel before the worker let it go.
    assert!(told.exists(), "the agent never got session/cancel");
    let outcomes: Vec<String> = events(&forge, &id).into_iter().map(|(_, o)| o).collect();
    assert_eq!(outcomes, ["ok", "ok", "interrupted"]);
    wait_until_gone(agent_pid(&warm.output)).await;
    forge.workers.clear();
}

#[tokio::test]
async fn workers_taking_over_a_dead_owners_session_at_once_leave_one_owner_and_lose_no_turn() {
    let mut forge = Forge::start_with(Options {
        workers: 3,
        ..native(&[])
    })
    .await;
    let app = forge.app("contested").await;
    let id = session(&app).await;
    let first = app.turn(&turn(&id, "one #count")).await.unwrap();
    let (owner, generation) = forge.owner(&id);
    assert_eq!(generation, 1);
    let dead = forge.worker_index(&owner.unwrap());
    forge.kill_worker_and_wait(dead).await;
    // Eight turns at once: they reach the two survivors through the queue group, each finds
    // the owner gone, and whichever takes the session over first serves them all.
    let turns: Vec<_> = (0..8)
        .map(|n| spawn_turn(&app, turn(&id, &format!("at once {n} #count"))))
        .collect();
    let mut pids = std::collections::BTreeSet::new();
    let mut numbers = std::collections::BTreeSet::new();
    for t in turns {
        let t = t.await.unwrap().unwrap();
        numbers.insert(t.turn);
        pids.insert(agent_pid(&t.output));
    }
    assert_eq!(numbers, (2..=9).collect(), "every turn answered, once");
    assert_eq!(pids.len(), 1, "one agent process served them: {pids:?}");
    assert!(!pids.contains(&agent_pid(&first.output)));
    let (owner, generation) = forge.owner(&id);
    assert_eq!(generation, 2, "taken over once");
    assert_ne!(forge.worker_index(&owner.unwrap()), dead);
}
