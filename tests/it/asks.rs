//! `permissions = "ask"` (native backend): the turn's stream carries a `permission_request`, the
//! caller answers it (NATS or HTTP), or the timeout rejects it, or a cancel answers it
//! `cancelled`; a caller that does not stream is not asked.

use std::time::Duration;

use clawdforge::client::ForgeClient;
use clawdforge::error::ErrorKind;
use clawdforge::wire::{
    CreateSession, DecidedBy, Event, EventBody, EventsRequest, PermissionDecision, Turn,
};
use tokio::sync::mpsc;

use crate::harness::{Forge, Options, Via, CLUSTERED};
use crate::sessions::{kind, turn};

async fn asking(workers: usize, env: &[(&str, &str)]) -> Forge {
    Forge::start_with(asking_options(workers, env)).await
}

fn asking_options(workers: usize, env: &[(&str, &str)]) -> Options {
    let toml = crate::harness::asking_agent_toml();
    Options {
        workers,
        via: Via::Acpx,
        config_toml: Some(toml),
        env: crate::harness::env_of(env),
        ..Default::default()
    }
}

/// A streamed turn `#permission=execute` of a new session, its events into the returned
/// receiver as they come.
async fn asked_turn(
    app: &ForgeClient,
) -> (
    String,
    mpsc::UnboundedReceiver<Event>,
    tokio::task::JoinHandle<Turn>,
) {
    let id = app
        .create_session(&CreateSession::default())
        .await
        .unwrap()
        .session_id;
    let (tx, rx) = mpsc::unbounded_channel();
    let (app, req) = (app.clone(), turn(&id, "#permission=execute"));
    let running = tokio::spawn(async move {
        app.turn_streaming(&req, Duration::from_secs(60), |e| {
            let _ = tx.send(e.clone());
        })
        .await
        .unwrap()
    });
    (id, rx, running)
}

/// The `request_id` of the first `permission_request`, once it comes.
async fn request_id(events: &mut mpsc::UnboundedReceiver<Event>) -> String {
    while let Some(e) = events.recv().await {
        if let EventBody::PermissionRequest {
            request_id,
            title,
            options,
            ..
        } = e.body
        {
            assert_eq!(title.as_deref(), Some("Try execute"));
            let ids: Vec<_> = options.iter().map(|o| o.option_id.as_str()).collect();
            assert_eq!(ids, ["allow", "reject"]);
            return request_id;
        }
    }
    panic!("the turn ended without a permission request");
}

/// The `permission` decisions among a turn's remaining events.
async fn decisions(
    mut events: mpsc::UnboundedReceiver<Event>,
) -> Vec<(PermissionDecision, DecidedBy)> {
    let mut out = Vec::new();
    while let Some(e) = events.recv().await {
        if let EventBody::Permission { decision, by, .. } = e.body {
            out.push((decision, by));
        }
    }
    out
}

#[tokio::test]
async fn the_caller_answers_a_permission_request_over_http_whichever_worker_gets_it() {
    // Two workers, each on its own server of one NATS cluster: the turns reach the first, the
    // sidecar's requests the second, which passes the answers on.
    let mut forge = Forge::start_with(Options {
        nats_config: Some(CLUSTERED.into()),
        ..asking_options(1, &[])
    })
    .await;
    forge.spawn_far_worker().await;
    let far = forge.more_nats[0].url.clone();
    let sidecar = forge.spawn_http("sidecar", &[("NATS_URL", &far)]).await;
    let app = forge.app("asker").await;
    let token = app.token().unwrap().to_string();
    let http = crate::harness::http_client();
    // Which worker a request reaches is the cluster's choice: local subscribers are preferred,
    // but not always. Rounds go on (six at most) until an answer has been passed on.
    for round in 0..6 {
        if round >= 2 && forge.logs().contains("forge.session.permission passed on") {
            break;
        }
        let (id, mut events, running) = asked_turn(&app).await;
        let request = request_id(&mut events).await;
        let offered = app.answer_permission(&id, &request, "maybe").await;
        assert_eq!(
            kind(offered),
            ErrorKind::BadRequest,
            "not an option it offers"
        );
        let url = sidecar.url(&format!("/sessions/{id}/permissions/{request}"));
        let answered = http
            .post(url)
            .bearer_auth(&token)
            .json(&serde_json::json!({"option_id": "allow"}))
            .send()
            .await
            .unwrap();
        assert_eq!(answered.status(), 200);
        let body: serde_json::Value = answered.json().await.unwrap();
        assert_eq!(body["accepted"], true, "{body}");
        let t = running.await.unwrap();
        assert!(t.output.ends_with("[permission=allow]"), "{}", t.output);
        let decided = decisions(events).await;
        assert_eq!(decided, [(PermissionDecision::Allowed, DecidedBy::Caller)]);
        let again = app
            .answer_permission(&id, &request, "reject")
            .await
            .unwrap();
        assert!(!again.accepted, "answered already");
    }
    // The answers reached the worker not running the turn, which passed them on.
    forge
        .wait_for_log(&["forge.session.permission passed on"])
        .await;
}

#[tokio::test]
async fn a_permission_request_nobody_answers_is_rejected_at_its_timeout() {
    let forge = asking(1, &[("CLAWDFORGE_PERMISSION_TIMEOUT_SECS", "1")]).await;
    let app = forge.app("silent").await;
    let (id, mut events, running) = asked_turn(&app).await;
    let request = request_id(&mut events).await;
    let t = running.await.unwrap();
    assert!(t.output.ends_with("[permission=reject]"), "{}", t.output);
    let decided = decisions(events).await;
    assert_eq!(
        decided,
        [(PermissionDecision::Rejected, DecidedBy::Timeout)]
    );
    let late = app.answer_permission(&id, &request, "allow").await.unwrap();
    assert!(!late.accepted, "timed out already");
}

#[tokio::test]
async fn a_cancel_answers_the_waiting_permission_request_cancelled() {
    let forge = asking(1, &[]).await;
    let app = forge.app("changed-mind").await;
    let (id, mut events, running) = asked_turn(&app).await;
    let request = request_id(&mut events).await;
    assert!(app.cancel_turn(&id).await.unwrap().cancelled);
    let t = running.await.unwrap();
    assert_eq!(t.stop_reason, "cancelled");
    let decided = decisions(events).await;
    assert_eq!(
        decided,
        [(PermissionDecision::Cancelled, DecidedBy::Caller)]
    );
    let late = app.answer_permission(&id, &request, "allow").await.unwrap();
    assert!(!late.accepted, "cancelled already");
}

#[tokio::test]
async fn a_caller_that_does_not_stream_is_not_asked_the_permission_is_rejected_and_recorded() {
    let forge = asking(1, &[]).await;
    let app = forge.app("batch").await;
    let id = app
        .create_session(&CreateSession::default())
        .await
        .unwrap()
        .session_id;
    let t = app.turn(&turn(&id, "#permission=execute")).await.unwrap();
    assert!(t.output.ends_with("[permission=reject]"), "{}", t.output);
    let mut recorded = Vec::new();
    let req = EventsRequest {
        session_id: id.clone(),
        ..Default::default()
    };
    app.follow_turn(&req, Duration::from_secs(30), |e| {
        recorded.push(e.body.clone())
    })
    .await
    .unwrap();
    assert!(
        !recorded
            .iter()
            .any(|b| matches!(b, EventBody::PermissionRequest { .. })),
        "{recorded:?}"
    );
    let decided: Vec<_> = recorded
        .iter()
        .filter_map(|b| match b {
            EventBody::Permission { decision, by, .. } => Some((*decision, *by)),
            _ => None,
        })
        .collect();
    assert_eq!(decided, [(PermissionDecision::Rejected, DecidedBy::Policy)]);
    let never = app.answer_permission(&id, "nope", "allow").await.unwrap();
    assert!(!never.accepted, "no such request waits");
}
