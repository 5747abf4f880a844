//! Session ownership on the native backend: the worker whose agent process holds a session
//! serves its turns; a request that reaches another worker is passed on to it, and a dead or
//! draining owner's sessions are taken over.

use std::collections::BTreeSet;
use std::time::Duration;

use clawdforge::client::ForgeClient;
use clawdforge::wire::{CreateSession, EventBody, TurnRequest};

use crate::harness::{agent_pid, agent_processes, Forge, Options, Via, CLUSTERED};
use crate::sessions::turn;

fn two_native_workers(env: &[(&str, &str)]) -> Options {
    Options {
        workers: 2,
        via: Via::Acp,
        env: crate::harness::env_of(env),
        ..Default::default()
    }
}

/// Two native workers, each on its own server of one NATS cluster, and two clients of a new
/// token of `app`: requests of `near` reach the first worker, those of `far` the second.
async fn near_and_far(app: &str) -> (Forge, ForgeClient, ForgeClient) {
    let mut forge = Forge::start_with(Options {
        workers: 1,
        nats_config: Some(CLUSTERED.into()),
        ..two_native_workers(&[])
    })
    .await;
    let far_connection = forge.spawn_far_worker().await;
    let near = forge.app(app).await;
    let far = ForgeClient::new(far_connection, near.token().map(str::to_string));
    (forge, near, far)
}

/// The worker id each turn of the session ran on, in turn order.
fn turn_workers(forge: &Forge, session_id: &str) -> Vec<String> {
    let mut turns = forge.turn_events(session_id);
    turns.sort_by_key(|e| e.turn);
    turns.into_iter().map(|e| e.worker_id).collect()
}

#[tokio::test]
async fn turns_that_reach_another_worker_are_passed_on_to_the_owner_streams_included() {
    let (forge, near, far) = near_and_far("shared").await;
    let id = near
        .create_session(&CreateSession::default())
        .await
        .unwrap()
        .session_id;
    let (owner, generation) = forge.owner(&id);
    let owner = owner.expect("the worker that made the session owns it");
    assert_eq!(generation, 1);
    let mut pids = BTreeSet::new();
    // Every other one reaches the other worker first, and is streamed.
    for n in 1..=16 {
        let req = turn(&id, &format!("{n} #count"));
        let t = if n % 2 == 0 {
            let mut messages = 0;
            let t = far
                .turn_streaming(&req, Duration::from_secs(60), |e| {
                    messages += matches!(e.body, EventBody::Message { .. }) as usize;
                })
                .await
                .unwrap();
            assert!(messages >= 2, "the owner streams to the caller: {messages}");
            t
        } else {
            near.turn(&req).await.unwrap()
        };
        assert!(
            t.output.starts_with(&format!("echo: {n} #count [n={n} ")),
            "{}",
            t.output
        );
        pids.insert(agent_pid(&t.output));
    }
    assert_eq!(
        pids.len(),
        1,
        "one agent process served every turn: {pids:?}"
    );
    let homes = forge.dir.path().join("data/homes");
    assert_eq!(agent_processes(&homes), pids, "and no other was started");
    let workers = turn_workers(&forge, &id);
    assert_eq!(workers.len(), 16);
    assert!(workers.iter().all(|w| *w == owner), "{workers:?}");
    assert_eq!(forge.owner(&id), (Some(owner), 1), "it never changed hands");
    // The turns that reached the other worker were passed on (every turn ran on the owner,
    // above), each once. Which worker a request reaches is the cluster's choice: it prefers the
    // subscriber on the publisher's server, most of the time, so most of the eight sent far
    // were, and now and then one sent near is too.
    let passed = forge.passed_on_count(&id);
    assert!((1..=16).contains(&passed), "{passed} of 16 passed on");

    // A close goes to the owner too: its agent process lets the session go, and stops with
    // its last one.
    let mut last = pids.into_iter().next().unwrap();
    for n in 0..6 {
        if n > 0 {
            let s = near.create_session(&CreateSession::default()).await;
            let id = s.unwrap().session_id;
            last = agent_pid(&near.turn(&turn(&id, "#count")).await.unwrap().output);
            far.close_session(&id).await.unwrap();
        } else {
            far.close_session(&id).await.unwrap();
        }
        crate::native::wait_until_gone(last).await;
    }
}

#[tokio::test]
async fn a_draining_owner_hands_its_session_over_as_soon_as_its_turn_ends() {
    // Heartbeats this slow would keep a dead owner's sessions for 90 s: the hand-over does not
    // wait for them.
    let env = [
        ("CLAWDFORGE_WORKER_HEARTBEAT_SECS", "30"),
        ("CLAWDFORGE_SHUTDOWN_GRACE_SECS", "60"),
    ];
    let mut forge = Forge::start_with(two_native_workers(&env)).await;
    let app = forge.app("moving").await;
    let id = app
        .create_session(&CreateSession::default())
        .await
        .unwrap()
        .session_id;
    let owner = forge.owner(&id).0.unwrap();
    let a = forge.worker_index(&owner);
    let dir = forge.session_dir(&id);
    let (running, release) = (dir.join("running"), dir.join("release"));
    let held = {
        let (app, req) = (
            app.clone(),
            turn(
                &id,
                &format!(
                    "one #count #on-prompt={} #wait-file={}",
                    running.display(),
                    release.display()
                ),
            ),
        );
        tokio::spawn(async move { app.turn(&req).await })
    };
    crate::native::wait_for_file(&running).await;
    let draining = forge.instance_id(a).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(forge.workers[a].child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // The owner takes no more requests; its turn goes on.
    forge.wait_until_not_serving(&draining).await;
    let next = {
        let req = TurnRequest {
            timeout_secs: Some(30),
            ..turn(&id, "two #origin #count")
        };
        let app = app.clone();
        tokio::spawn(async move { app.turn(&req).await })
    };
    forge
        .wait_for_log(&["turn waiting for another worker's turn of the session", &id])
        .await;
    std::fs::write(&release, "go").unwrap();
    let first = held.await.unwrap().unwrap();
    let second = next.await.unwrap().unwrap();
    assert!(
        second
            .output
            .starts_with("echo: two #origin #count [n=1 pid=")
            && second.output.contains("[origin=load]"),
        "the other worker's agent process, the session loaded: {}",
        second.output
    );
    assert_ne!(agent_pid(&first.output), agent_pid(&second.output));
    let workers = turn_workers(&forge, &id);
    let survivor = workers[1].clone();
    assert_eq!(workers[0], owner);
    assert_ne!(survivor, owner);
    assert_eq!(
        forge.owner(&id),
        (Some(survivor), 2),
        "taken over: a new generation"
    );
    let exited = forge.workers[a].child.wait().unwrap();
    assert!(
        exited.success(),
        "the drained worker exits cleanly: {exited:?}"
    );
}
