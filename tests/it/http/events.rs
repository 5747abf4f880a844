//! Cancel and re-attach over HTTP.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::sse::{sse_send, sse_turn, SseReader};
use super::{answer, app_session, assert_error, post, raw_http, typed_answer};
use crate::harness::{http_client, Forge, HttpProcess};

// Cancel and re-attach over HTTP (contract v2): `POST /sessions/{id}/cancel` and
// `GET /sessions/{id}/events`.

#[tokio::test]
async fn a_cancel_over_http_stops_the_running_turn_which_answers_cancelled() {
    let forge = Forge::start().await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let (token, id) = app_session(&forge, &sidecar, "canceller").await;
    let cancel = format!("/sessions/{id}/cancel");
    let nothing = (200, json!({ "session_id": id, "cancelled": false }));
    assert_eq!(post(&sidecar, &cancel, Some(&token), "").await, nothing);

    // In the app's home: the confined agent may write there.
    let told = forge.app_home("canceller").join("told-to-cancel");
    let never = forge.dir.path().join("never");
    let prompt = format!(
        "hold #wait-file={} #on-cancel={}",
        never.display(),
        told.display()
    );
    // Followed as events, so that the cancel comes once the agent has the prompt: it said its
    // thought and plan, and waits.
    let request = sse_turn(&sidecar, &token, &id).json(&json!({ "prompt": prompt }));
    let mut running = SseReader::new(sse_send(request).await);
    assert_eq!(running.next_event().await.1, "thought");
    assert_eq!(running.next_event().await.1, "plan");
    assert!(!told.exists());

    let cancelled = (200, json!({ "session_id": id, "cancelled": true }));
    assert_eq!(post(&sidecar, &cancel, Some(&token), "").await, cancelled);
    let (_, last, turn) = running.rest().await;
    assert_eq!(last, "turn", "{turn}");
    assert_eq!(
        (&turn["turn"], &turn["stop_reason"], &turn["output"]),
        (&json!(1), &json!("cancelled"), &json!("")),
        "the turn's own answer ends cancelled with what it had said"
    );
    // acpx may answer the cancelled prompt a moment before the agent has handled
    // session/cancel.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !told.is_file() {
        assert!(
            Instant::now() < deadline,
            "the agent was never told to cancel:\n{}",
            forge.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(post(&sidecar, &cancel, Some(&token), "").await, nothing);

    // Another app's session is not found, in the very bytes an unknown id gets.
    let other = forge
        .admin
        .create_token("other", false)
        .await
        .unwrap()
        .token;
    let unknown = "123e4567-e89b-42d3-a456-426614174000";
    let theirs = raw_http(&sidecar, Method::POST, &cancel, &other, None).await;
    let nobodys = raw_http(
        &sidecar,
        Method::POST,
        &format!("/sessions/{unknown}/cancel"),
        &other,
        None,
    )
    .await;
    assert_eq!(theirs.0, 404, "{}", String::from_utf8_lossy(&theirs.1));
    assert_eq!(
        (theirs.0, String::from_utf8_lossy(&theirs.1)),
        (nobodys.0, String::from_utf8_lossy(&nobodys.1))
    );
    let bad_token = post(&sidecar, &cancel, Some("not-a-token"), "").await;
    assert_error(&bad_token, 401, "unauthorized");
    let bad_id = post(&sidecar, "/sessions/not-an-id/cancel", Some(&token), "").await;
    assert_error(&bad_id, 400, "bad_request");
}

/// `GET /sessions/{session}/events<query>`, without an `Accept` header: the route streams
/// whatever the client accepts.
fn events_request(
    sidecar: &HttpProcess,
    token: &str,
    session: &str,
    query: &str,
) -> reqwest::RequestBuilder {
    http_client()
        .get(sidecar.url(&format!("/sessions/{session}/events{query}")))
        .bearer_auth(token)
}

/// The `seq`s of `events`.
fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn events_over_sse_replay_a_finished_turn_as_it_went_live() {
    let forge = Forge::start().await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let (token, id) = app_session(&forge, &sidecar, "replay").await;
    let request = sse_turn(&sidecar, &token, &id).json(&json!({ "prompt": "look" }));
    let (live, last, turn) = SseReader::new(sse_send(request).await).rest().await;
    assert_eq!(last, "turn", "{turn}");
    assert!(live.len() >= 3, "{live:?}");

    let request = events_request(&sidecar, &token, &id, "?turn=1");
    let (replayed, last, again) = SseReader::new(sse_send(request).await).rest().await;
    assert_eq!((last.as_str(), &again), ("turn", &turn));
    assert_eq!(seqs(&replayed), seqs(&live));
    assert_eq!(replayed, live, "the same events, numbers, times and texts");
    // Without `turn`, the latest one.
    let request = events_request(&sidecar, &token, &id, "");
    let (latest, _, again) = SseReader::new(sse_send(request).await).rest().await;
    assert_eq!((latest, again), (live, turn));
}

#[tokio::test]
async fn events_over_sse_follow_a_running_turn_and_last_event_id_resumes_after_it() {
    let forge = Forge::start().await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let (token, id) = app_session(&forge, &sidecar, "follow").await;
    let release = forge.dir.path().join("release-follow");
    let prompt = format!("look #wait-file={}", release.display());
    let request = http_client()
        .post(sidecar.url(&format!("/sessions/{id}/turn")))
        .bearer_auth(&token)
        .json(&json!({ "prompt": prompt }));
    let running = tokio::spawn(async move { answer(request.send().await.unwrap()).await });
    crate::ledger::wait_for_running_turn(&forge.ledger_path(), &id).await;

    let request = events_request(&sidecar, &token, &id, "");
    let mut stream = SseReader::new(sse_send(request).await);
    let (seq, event, _) = stream.next_event().await;
    assert_eq!((seq.as_deref(), event.as_str()), (Some("1"), "thought"));
    let (seq, event, _) = stream.next_event().await;
    assert_eq!((seq.as_deref(), event.as_str()), (Some("2"), "plan"));
    // The turn cannot have ended: what comes next comes live.
    assert!(!release.exists());
    std::fs::write(&release, "").unwrap();
    let (rest, last, followed) = stream.rest().await;
    assert_eq!(last, "turn", "{followed}");
    assert_eq!(seqs(&rest), (3..3 + rest.len() as u64).collect::<Vec<_>>());
    assert!(rest.iter().any(|e| e["type"] == "message"), "{rest:?}");
    let (status, turn) = running.await.unwrap();
    assert_eq!((status, &followed), (200, &turn), "the turn's own answer");
    assert_eq!(followed["stop_reason"], "end_turn");

    // A reconnecting EventSource sends the last id it got: the stream resumes after it, and the
    // header wins over the query's `after`.
    let resumed = |query: &'static str, last_id: Option<&'static str>| {
        let mut request = events_request(&sidecar, &token, &id, query);
        if let Some(last_id) = last_id {
            request = request.header("Last-Event-ID", last_id);
        }
        async move { SseReader::new(sse_send(request).await).rest().await }
    };
    let (after_two, _, again) = resumed("?turn=1", Some("2")).await;
    assert_eq!((after_two.as_slice(), &again), (rest.as_slice(), &turn));
    let (header_wins, _, _) = resumed("?turn=1&after=1", Some("2")).await;
    assert_eq!(header_wins, rest);
    let (after_one, _, _) = resumed("?turn=1&after=1", None).await;
    assert_eq!(
        seqs(&after_one)[0],
        2,
        "the query's after without the header"
    );
}

#[tokio::test]
async fn a_refused_events_request_is_its_plain_json_error() {
    let forge = Forge::start().await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let (token, id) = app_session(&forge, &sidecar, "refused-events").await;
    let (_, fresh) = app_session(&forge, &sidecar, "refused-events").await;
    let turn = post(
        &sidecar,
        &format!("/sessions/{id}/turn"),
        Some(&token),
        r#"{"prompt": "hi"}"#,
    )
    .await;
    assert_eq!(turn.0, 200, "{turn:?}");

    let unknown = "123e4567-e89b-42d3-a456-426614174000";
    let other = forge
        .admin
        .create_token("other", false)
        .await
        .unwrap()
        .token;
    for (session, token, query, last_id, status, kind) in [
        (unknown, token.as_str(), "", None, 404, "not_found"),
        (id.as_str(), other.as_str(), "", None, 404, "not_found"),
        (
            id.as_str(),
            token.as_str(),
            "?turn=9",
            None,
            404,
            "not_found",
        ),
        (fresh.as_str(), token.as_str(), "", None, 404, "not_found"),
        (id.as_str(), "not-a-token", "", None, 401, "unauthorized"),
        ("not-an-id", token.as_str(), "", None, 400, "bad_request"),
        (
            id.as_str(),
            token.as_str(),
            "?turn=one",
            None,
            400,
            "bad_request",
        ),
        (
            id.as_str(),
            token.as_str(),
            "?after=-1",
            None,
            400,
            "bad_request",
        ),
        (
            id.as_str(),
            token.as_str(),
            "?from=1",
            None,
            400,
            "bad_request",
        ),
        (
            id.as_str(),
            token.as_str(),
            "",
            Some("two"),
            400,
            "bad_request",
        ),
    ] {
        let mut request = events_request(&sidecar, token, session, query);
        if let Some(last_id) = last_id {
            request = request.header("Last-Event-ID", last_id);
        }
        let (got, content_type, body) = typed_answer(sse_send(request).await).await;
        let what = format!("{session}{query} {last_id:?}: {body}");
        assert_eq!(
            (got, content_type.as_str()),
            (status, "application/json"),
            "{what}"
        );
        assert_eq!(body["error"]["code"], kind, "{what}");
        assert!(body["error"]["message"].is_string(), "{what}");
    }
}
