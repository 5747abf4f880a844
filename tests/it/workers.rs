use clawdforge::client::ForgeClient;
use clawdforge::error::ErrorKind;
use clawdforge::wire::CreateSession;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::{Forge, Nats, Options};
use crate::sessions::{kind, turn};

#[tokio::test]
async fn two_workers_share_the_ledger_and_serve_each_others_sessions() {
    let mut forge = Forge::start().await;
    let app = forge.app("shared").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let t1 = app
        .turn(&turn(&s.session_id, "on the first"))
        .await
        .unwrap();
    assert_eq!(t1.output, "echo: on the first");

    // A second worker joins; the first goes away. The session carries on through the second.
    forge.spawn_worker(&[]);
    forge.wait_for_workers(2).await;
    forge.kill_worker_and_wait(0).await;
    let t2 = app
        .turn(&turn(&s.session_id, "on the second"))
        .await
        .unwrap();
    assert_eq!(t2.output, "echo: on the second");
    assert_eq!(t2.turn, 2);
    let closed = app.close_session(&s.session_id).await.unwrap();
    assert!(!closed.already_closed);

    let workers: BTreeSet<String> = forge
        .events(&s.session_id)
        .into_iter()
        .map(|e| e.worker_id)
        .collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
}

/// The distinct workers the ledger names for `event`s of `app`.
fn workers_of(forge: &Forge, app: &str, event: &str) -> BTreeSet<String> {
    let events = forge.app_events(app).into_iter();
    events
        .filter(|e| e.event == event)
        .map(|e| e.worker_id)
        .collect()
}

#[tokio::test]
async fn the_cap_and_tokens_hold_across_workers() {
    // Two workers on one ledger, each behind its own NATS server, so that each request goes to
    // the worker the test means.
    let mut forge = Forge::start_with(Options {
        env: vec![("CLAWDFORGE_MAX_LIVE_SESSIONS".into(), "3".into())],
        ..Default::default()
    })
    .await;
    let second_nats = Nats::start();
    forge.spawn_worker(&[("NATS_URL", &second_nats.url)]);
    let created = forge.admin.create_token("many", false).await.unwrap();
    let first = forge.admin.with_token(Some(created.token.clone()));
    let nats = async_nats::connect(&second_nats.url).await.unwrap();
    let second = ForgeClient::new(nats, Some(created.token));
    wait_until_served(&second).await;

    let req = CreateSession::default();
    for client in [&first, &first, &second] {
        client.create_session(&req).await.unwrap();
    }
    assert_eq!(workers_of(&forge, "many", "create").len(), 2);
    // The cap counts the sessions of both: each worker refuses the next.
    for client in [&first, &second] {
        assert_eq!(
            kind(client.create_session(&req).await),
            ErrorKind::AtCapacity
        );
    }
    // A token revoked through one worker is refused by both at once.
    forge.admin.revoke_token(&created.token_id).await.unwrap();
    for client in [&first, &second] {
        assert_eq!(kind(client.list_sessions().await), ErrorKind::Unauthorized);
    }
}

/// Waits until a worker answers `client` (its own NATS server's).
async fn wait_until_served(client: &ForgeClient) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.list_sessions().await.is_err() {
        assert!(Instant::now() < deadline, "no worker answers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_session_runs_one_turn_at_a_time_across_workers() {
    let mut forge = Forge::start().await;
    let app = forge.app("one-at-a-time").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let release = forge.dir.path().join("release");
    let first_prompt = format!("first #wait-file={}", release.display());
    let first = {
        let app = app.clone();
        let mut req = turn(&s.session_id, &first_prompt);
        req.timeout_secs = Some(30);
        tokio::spawn(async move { app.turn(&req).await })
    };
    forge.running_turn(&s.session_id).await;

    // A second worker joins; the first stops taking requests but finishes its turn (it has its
    // grace period). The next turn can only go to the second worker, which must wait for it.
    forge.spawn_worker(&[]);
    forge.wait_for_workers(2).await;
    let draining = forge.instance_id(0).await;
    kill(
        Pid::from_raw(forge.workers[0].child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    forge.wait_until_not_serving(&draining).await;
    let second = {
        let app = app.clone();
        let id = s.session_id.clone();
        tokio::spawn(async move { app.turn(&turn(&id, "second")).await })
    };
    // The second worker waits for the first one's turn, which ends only now.
    forge
        .wait_for_log(&[
            "waiting for another worker's turn of the session",
            &s.session_id,
        ])
        .await;
    std::fs::write(&release, "").unwrap();
    let second = second.await.unwrap().unwrap();
    assert_eq!((second.turn, second.output.as_str()), (2, "echo: second"));
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.turn, 1);
    assert_eq!(first.output, format!("echo: {first_prompt}"));
    assert!(forge.workers[0].child.wait().unwrap().success());

    // Two workers, and the second turn started only once the first had ended.
    let turns = forge.turn_events(&s.session_id);
    let workers: BTreeSet<&str> = turns.iter().map(|e| e.worker_id.as_str()).collect();
    assert_eq!(workers.len(), 2, "{turns:?}");
    assert!(
        forge.turn_began_after_the_one_before_ended(&s.session_id, 2),
        "the second turn started while the first ran"
    );
}
