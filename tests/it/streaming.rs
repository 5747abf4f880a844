//! Live turns over NATS (contract v2): `Forge-Stream: 1` on `forge.session.turn` gets the
//! turn's events as they happen, heartbeats while nothing else goes out, then the Turn and the
//! empty sentinel.

use std::time::Duration;

use bytes::Bytes;
use clawdforge::client::{ClientError, Frame, ReplyStream};
use clawdforge::error::ErrorKind;
use clawdforge::wire::{self, CreateSession, EventBody};

use crate::harness::{Forge, Options, Via};

crate::both_backends!(
    a_streamed_turn_sends_its_events_while_it_runs_then_the_turn_then_the_end,
    a_lost_stream_is_picked_up_again_with_the_same_seqs_and_a_finished_turn_replays,
    a_turn_asked_not_to_wait_answers_with_its_number_and_goes_on,
);
use crate::sessions::turn;

/// Silence longer than this fails a test's stream (it is three heartbeats by default).
const STALL: Duration = Duration::from_secs(60);

async fn stream_turn(
    app: &clawdforge::client::ForgeClient,
    req: &wire::TurnRequest,
) -> ReplyStream {
    app.open_stream(wire::subject::SESSION_TURN, req, STALL)
        .await
        .unwrap()
}

async fn next_event(stream: &mut ReplyStream) -> wire::Event {
    loop {
        match stream.next().await {
            Some(Ok(Frame::Event(e))) => return e,
            Some(Ok(Frame::Heartbeat)) => continue,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

async fn a_streamed_turn_sends_its_events_while_it_runs_then_the_turn_then_the_end(via: Via) {
    let forge = Forge::start_with(Options {
        env: vec![("CLAWDFORGE_STREAM_HEARTBEAT_SECS".into(), "1".into())],
        via,
        ..Default::default()
    })
    .await;
    let app = forge.app("live").await;
    let session = app.create_session(&CreateSession::default()).await.unwrap();
    let release = forge.dir.path().join("release");
    let prompt = format!("look #wait-file={}", release.display());
    let mut stream = stream_turn(&app, &turn(&session.session_id, &prompt)).await;

    // The agent is waiting for the file, so these came while the turn ran.
    let first = next_event(&mut stream).await;
    assert_eq!(first.seq, 1);
    assert_eq!(
        first.session_id.as_deref(),
        Some(session.session_id.as_str())
    );
    assert_eq!(first.turn, Some(1));
    assert!(
        matches!(&first.body, EventBody::Thought { text } if text.starts_with("waiting for")),
        "{first:?}"
    );
    let plan = next_event(&mut stream).await;
    assert!(
        matches!(&plan.body, EventBody::Plan { entries } if entries.len() == 1),
        "{plan:?}"
    );
    // Nothing else happens until the file exists: a heartbeat comes meanwhile.
    match stream.next().await {
        Some(Ok(Frame::Heartbeat)) => {}
        other => panic!("expected a heartbeat while the agent waits, got {other:?}"),
    }
    assert!(!release.exists());
    std::fs::write(&release, "").unwrap();

    let mut events = vec![first, plan];
    let mut reply = None;
    while let Some(frame) = stream.next().await {
        match frame.unwrap() {
            Frame::Event(e) => {
                assert!(reply.is_none(), "an event after the final message: {e:?}");
                events.push(e);
            }
            Frame::Heartbeat => {}
            Frame::Reply(r) => {
                assert!(reply.is_none(), "two final messages");
                reply = Some(r);
            }
        }
    }
    let done: wire::Turn = reply
        .expect("a final message before the end")
        .parse()
        .unwrap();
    assert_eq!(done.stop_reason, "end_turn");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "no gaps"
    );
    let said: String = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Message { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(said, done.output, "the output is the message events joined");
    assert!(said.starts_with("echo: look"), "{said}");
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.body, EventBody::ToolCall { title, .. } if title == "Echo tool")),
        "{events:?}"
    );

    // The same turn asked without the header is the v1 reply: one message, no event header.
    let v1 = app.turn(&turn(&session.session_id, "again")).await.unwrap();
    assert_eq!(v1.turn, 2);
}

#[tokio::test]
async fn a_refused_streamed_turn_is_its_error_and_the_end() {
    let forge = Forge::start().await;
    let app = forge.app("refused").await;
    let unknown = turn("123e4567-e89b-42d3-a456-426614174000", "hi");
    let mut stream = stream_turn(&app, &unknown).await;
    match stream.next().await {
        Some(Ok(Frame::Reply(r))) => {
            assert_eq!(r.status, Some(404));
            match r.parse::<wire::Turn>() {
                Err(ClientError::Api(e)) => assert_eq!(e.kind, ErrorKind::NotFound),
                other => panic!("{other:?}"),
            }
        }
        other => panic!("expected the error, got {other:?}"),
    }
    assert!(stream.next().await.is_none(), "the sentinel ends it");

    let stranger = app.with_token(Some("not-a-token".into()));
    let body = Bytes::from(serde_json::to_vec(&unknown).unwrap());
    let mut stream = stranger
        .stream(
            wire::subject::SESSION_TURN,
            clawdforge::client::Caller::new(Some("Bearer nope"), None),
            body,
            STALL,
        )
        .await
        .unwrap();
    match stream.next().await {
        Some(Ok(Frame::Reply(r))) => assert_eq!(r.status, Some(401)),
        other => panic!("expected unauthorized, got {other:?}"),
    }
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn a_v1_turn_reply_carries_no_stream_headers() {
    let forge = Forge::start().await;
    let app = forge.app("plain").await;
    let session = app.create_session(&CreateSession::default()).await.unwrap();
    let body = serde_json::to_vec(&turn(&session.session_id, "hi")).unwrap();
    let token = format!("Bearer {}", app.token().unwrap());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(wire::AUTHORIZATION, token.as_str());
    let reply = app
        .nats()
        .request_with_headers(wire::subject::SESSION_TURN, headers, body.into())
        .await
        .unwrap();
    assert!(
        reply
            .headers
            .as_ref()
            .is_none_or(|h| h.get(wire::EVENT_HEADER).is_none()),
        "{:?}",
        reply.headers
    );
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["duration_ms", "output", "session_id", "stop_reason", "turn"]
    );
}

/// Every event of a streamed reply to `events`, and the final message, parsed.
async fn drain(mut stream: ReplyStream, events: &mut Vec<wire::Event>) -> wire::Turn {
    let mut reply = None;
    while let Some(frame) = stream.next().await {
        match frame.unwrap() {
            Frame::Event(e) => events.push(e),
            Frame::Heartbeat => {}
            Frame::Reply(r) => reply = Some(r),
        }
    }
    reply.expect("a final message").parse().unwrap()
}

async fn events_of(
    app: &clawdforge::client::ForgeClient,
    req: &wire::EventsRequest,
) -> ReplyStream {
    app.open_stream(wire::subject::SESSION_EVENTS, req, STALL)
        .await
        .unwrap()
}

async fn a_lost_stream_is_picked_up_again_with_the_same_seqs_and_a_finished_turn_replays(via: Via) {
    let forge = Forge::start_via(via).await;
    let app = forge.app("reattach").await;
    let session = app.create_session(&CreateSession::default()).await.unwrap();
    let id = session.session_id.clone();
    let release = forge.dir.path().join("release");
    let prompt = format!("look #wait-file={}", release.display());
    let mut live = stream_turn(&app, &turn(&id, &prompt)).await;
    let first = next_event(&mut live).await;
    let second = next_event(&mut live).await;
    assert_eq!(app.get_session(&id).await.unwrap().running_turn, Some(1));
    // The connection is lost: the turn goes on without its caller.
    drop(live);

    // Re-attached after the events it had, from another connection, while the turn runs.
    let other = forge.app("reattach").await;
    let follower = events_of(
        &other,
        &wire::EventsRequest {
            session_id: id.clone(),
            after: Some(second.seq),
            ..Default::default()
        },
    )
    .await;
    let follow = tokio::spawn(async move {
        let mut events = Vec::new();
        let done = drain(follower, &mut events).await;
        (events, done)
    });
    std::fs::write(&release, "").unwrap();
    let (rest, done) = follow.await.unwrap();
    assert_eq!(done.stop_reason, "end_turn");
    assert_eq!(
        rest.first().map(|e| e.seq),
        Some(3),
        "it goes on after seq 2: {rest:?}"
    );
    let said: String = rest
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Message { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(said, done.output);
    assert_eq!(app.get_session(&id).await.unwrap().running_turn, None);

    // The finished turn replays whole, with the same numbers and bodies.
    let mut replayed = Vec::new();
    let again = drain(
        events_of(
            &app,
            &wire::EventsRequest {
                session_id: id.clone(),
                turn: Some(1),
                after: None,
            },
        )
        .await,
        &mut replayed,
    )
    .await;
    assert_eq!(again, done);
    let mut expected = vec![first, second];
    expected.extend(rest);
    assert_eq!(replayed, expected);

    // Another app's session, and a turn that does not exist, are not found.
    let stranger = forge.app("stranger").await;
    for (who, turn) in [(&stranger, None), (&app, Some(9))] {
        let req = wire::EventsRequest {
            session_id: id.clone(),
            turn,
            after: None,
        };
        let mut s = events_of(who, &req).await;
        match s.next().await {
            Some(Ok(Frame::Reply(r))) => assert_eq!(r.status, Some(404)),
            other => panic!("{other:?}"),
        }
        assert!(s.next().await.is_none());
    }
}

async fn a_turn_asked_not_to_wait_answers_with_its_number_and_goes_on(via: Via) {
    use clawdforge::wire::{TurnAccepted, TurnStatus};
    let forge = Forge::start_via(via).await;
    let app = forge.app("nowait").await;
    let session = app.create_session(&CreateSession::default()).await.unwrap();
    let id = session.session_id.clone();
    let release = forge.dir.path().join("release");
    let first = app
        .turn_nowait(&turn(
            &id,
            &format!("first #wait-file={}", release.display()),
        ))
        .await
        .unwrap();
    assert_eq!(
        first,
        TurnAccepted {
            session_id: id.clone(),
            turn: 1,
            status: TurnStatus::Running
        }
    );
    // Taken while the first runs: numbered at once, and it waits.
    let second = app.turn_nowait(&turn(&id, "second")).await.unwrap();
    assert_eq!((second.turn, second.status), (2, TurnStatus::Queued));
    assert!(
        !release.exists(),
        "both answered while the first turn still waits for its file"
    );

    std::fs::write(&release, "").unwrap();
    let follow = |turn| wire::EventsRequest {
        session_id: id.clone(),
        turn: Some(turn),
        after: None,
    };
    let done = app.follow_turn(&follow(1), STALL, |_| {}).await.unwrap();
    assert!(done.output.starts_with("echo: first"), "{done:?}");
    let done = app.follow_turn(&follow(2), STALL, |_| {}).await.unwrap();
    assert_eq!(done.output, "echo: second");
    assert_eq!(app.get_session(&id).await.unwrap().turns, 2);

    // Refused before it is numbered: the error, and no number is used up.
    app.close_session(&id).await.unwrap();
    match app.turn_nowait(&turn(&id, "late")).await {
        Err(ClientError::Api(e)) => assert_eq!(e.kind, ErrorKind::Conflict),
        other => panic!("{other:?}"),
    }
    assert_eq!(app.get_session(&id).await.unwrap().turns, 2);
}
