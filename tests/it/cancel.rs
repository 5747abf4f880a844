//! `forge.session.cancel` (contract v2): the session's running turn, or the one about to start,
//! is told to stop and answers `cancelled`, whichever worker runs it.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clawdforge::client::{ClientError, ForgeClient};
use clawdforge::error::ErrorKind;
use clawdforge::wire::{self, CreateSession};

use crate::harness::{read_only_ledger, wait_for_running_turn, Forge, Options, Via};

crate::both_backends!(
    a_cancel_stops_the_running_turn_which_answers_cancelled,
    a_cancel_while_the_turn_waits_for_a_slot_is_not_lost,
    a_cancel_reaches_the_turn_on_the_worker_that_runs_it,
);
use crate::sessions::turn;

/// The outcome and stop reason the ledger recorded for turn `n` of `session_id`.
fn recorded(ledger: &Path, session_id: &str, n: u64) -> (String, Option<String>) {
    read_only_ledger(ledger)
        .query_row(
            "SELECT outcome, stop_reason FROM session_events
             WHERE session_id = ?1 AND event = 'turn' AND turn = ?2",
            rusqlite::params![session_id, n as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

/// Waits until a worker has taken a turn of `session_id` that has not begun.
async fn wait_for_waiting_turn(ledger: &Path, session_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = read_only_ledger(ledger)
            .query_row(
                "SELECT COUNT(*) FROM turn_waits WHERE session_id = ?1",
                [session_id],
                |r| r.get(0),
            )
            .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no turn waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw cancel, as it comes back: its error status and body bytes.
async fn raw_cancel(app: &ForgeClient, session_id: &str) -> (Option<u16>, Bytes) {
    let body = serde_json::to_vec(&serde_json::json!({ "session_id": session_id })).unwrap();
    let raw = app
        .raw(
            wire::subject::SESSION_CANCEL,
            app.token(),
            body.into(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    (raw.status, raw.body)
}

async fn a_cancel_stops_the_running_turn_which_answers_cancelled(via: Via) {
    let forge = Forge::start_via(via).await;
    let app = forge.app("canceller").await;
    let session = app.create_session(&CreateSession::default()).await.unwrap();
    let id = session.session_id.clone();
    assert!(
        !app.cancel_turn(&id).await.unwrap().cancelled,
        "nothing runs yet"
    );

    let never = forge.dir.path().join("never");
    let running = {
        let (app, req) = (
            app.clone(),
            turn(&id, &format!("hold #wait-file={}", never.display())),
        );
        tokio::spawn(async move { app.turn(&req).await })
    };
    wait_for_running_turn(&forge.ledger_path(), &id).await;
    let reply = app.cancel_turn(&id).await.unwrap();
    assert_eq!(
        reply,
        wire::Cancelled {
            session_id: id.clone(),
            cancelled: true
        }
    );

    let cancelled = running
        .await
        .unwrap()
        .expect("the cancelled turn answers its caller");
    assert_eq!(cancelled.stop_reason, "cancelled");
    assert_eq!(cancelled.output, "", "the agent had said no message yet");
    assert_eq!(
        recorded(&forge.ledger_path(), &id, 1),
        ("cancelled".into(), Some("cancelled".into()))
    );
    assert!(
        !app.cancel_turn(&id).await.unwrap().cancelled,
        "nothing runs any more"
    );
    // The agent stopped the turn: the session's next turn runs at once.
    let next = app.turn(&turn(&id, "after")).await.unwrap();
    assert_eq!(next.output, "echo: after");

    // Another app's session is not found, in the very words an unknown id gets.
    let stranger = forge.app("stranger").await;
    match stranger.cancel_turn(&id).await {
        Err(ClientError::Api(e)) => assert_eq!(e.kind, ErrorKind::NotFound),
        other => panic!("{other:?}"),
    }
    let theirs = raw_cancel(&stranger, &id).await;
    let unknown = raw_cancel(&stranger, "123e4567-e89b-42d3-a456-426614174000").await;
    assert_eq!(theirs.0, Some(404));
    assert_eq!(theirs, unknown);
}

async fn a_cancel_while_the_turn_waits_for_a_slot_is_not_lost(via: Via) {
    let forge = Forge::start_with(Options {
        env: vec![("CLAWDFORGE_MAX_CONCURRENT_TURNS".into(), "1".into())],
        via,
        ..Default::default()
    })
    .await;
    let app = forge.app("slots").await;
    let holder = app.create_session(&CreateSession::default()).await.unwrap();
    let waiter = app.create_session(&CreateSession::default()).await.unwrap();
    let release = forge.dir.path().join("release");
    let held = {
        let req = turn(
            &holder.session_id,
            &format!("hold #wait-file={}", release.display()),
        );
        let app = app.clone();
        tokio::spawn(async move { app.turn(&req).await })
    };
    wait_for_running_turn(&forge.ledger_path(), &holder.session_id).await;
    let queued = {
        // Should the cancel be lost, the turn gives up waiting after 15 s and the test fails.
        let mut req = turn(&waiter.session_id, "queued");
        req.timeout_secs = Some(15);
        let app = app.clone();
        tokio::spawn(async move { app.turn(&req).await })
    };
    wait_for_waiting_turn(&forge.ledger_path(), &waiter.session_id).await;

    assert!(app.cancel_turn(&waiter.session_id).await.unwrap().cancelled);
    // It answers while the only slot is still taken: it never ran.
    let answer = queued.await.unwrap().unwrap();
    assert_eq!(
        (answer.stop_reason.as_str(), answer.output.as_str()),
        ("cancelled", "")
    );
    assert!(!held.is_finished(), "the slot's turn still runs");
    assert_eq!(
        recorded(&forge.ledger_path(), &waiter.session_id, 1),
        ("cancelled".into(), Some("cancelled".into()))
    );
    std::fs::write(&release, "").unwrap();
    assert_eq!(held.await.unwrap().unwrap().stop_reason, "end_turn");
}

/// A bus on which the user `blind` may take every subject but `forge.session.cancel` (an
/// allow list: nats-server 2.15 let a queue subscription through a `deny` of its subject):
/// every cancel goes to the other worker, which must pass it on.
const BLIND_TO_CANCELS: &str = r#"
authorization {
  users: [
    { user: free, password: free }
    { user: blind, password: blind,
      permissions: { subscribe: { allow: ["forge.session.create", "forge.session.turn",
                                          "forge.session.events", "forge.session.close",
                                          "forge.session.get", "forge.session.list", "forge.run",
                                          "forge.admin.>", "forge.health", "forge.worker.>",
                                          "$SRV.>", "_INBOX.>"] } } }
  ]
}
no_auth_user: free
"#;

async fn a_cancel_reaches_the_turn_on_the_worker_that_runs_it(via: Via) {
    let mut forge = Forge::start_with(Options {
        workers: 0,
        nats_config: Some(BLIND_TO_CANCELS.into()),
        via,
        ..Default::default()
    })
    .await;
    let blind_url = forge.nats.url.replace("nats://", "nats://blind:blind@");
    forge.spawn_worker(&[("NATS_URL", blind_url.as_str())]);
    forge.wait_for_workers(1).await;
    let app = forge.app("far").await;
    let session = app.create_session(&CreateSession::default()).await.unwrap();
    let id = session.session_id.clone();
    let never = forge.dir.path().join("never");
    let running = {
        let (app, req) = (
            app.clone(),
            turn(&id, &format!("hold #wait-file={}", never.display())),
        );
        tokio::spawn(async move { app.turn(&req).await })
    };
    wait_for_running_turn(&forge.ledger_path(), &id).await;

    // Only the second worker takes cancels; the turn runs on the first.
    let other = forge.spawn_worker(&[]);
    forge.wait_for_workers(2).await;
    assert!(app.cancel_turn(&id).await.unwrap().cancelled);
    let cancelled = running.await.unwrap().unwrap();
    assert_eq!(cancelled.stop_reason, "cancelled");
    let log = std::fs::read_to_string(&forge.workers[other].log).unwrap();
    let blind = std::fs::read_to_string(&forge.workers[0].log).unwrap();
    assert!(
        log.contains("cancel passed on"),
        "{log}\n--- the blind worker:\n{blind}"
    );
}
