//! Live turns and runs as server-sent events.

use std::time::Duration;

use reqwest::multipart::Form;
use serde_json::{json, Value};

use super::connections::{HEADER_TIMEOUT, IDLE_TIMEOUT};
use super::{answer, app_session, delete, post, typed_answer};
use crate::harness::{http_client, Forge, HttpProcess, Options};

// Live turns as server-sent events (contract v2): `Accept: text/event-stream` on the turn route.

/// Longer than any wait of these tests for the next part of a stream: what has not come by then
/// is not coming while the turn runs.
pub(super) const SSE_WAIT: Duration = Duration::from_secs(30);

/// One block of a text/event-stream answer.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Sse {
    /// A block of comment lines only, without their `:`.
    Comment(String),
    Event {
        id: Option<String>,
        event: String,
        data: Value,
    },
}

fn sse_block(block: &str) -> Sse {
    let (mut id, mut event, mut data, mut comments) = (None, None, Vec::new(), Vec::new());
    for line in block.lines().filter(|l| !l.is_empty()) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "" => comments.push(value.to_string()),
            "id" => id = Some(value.to_string()),
            "event" => event = Some(value.to_string()),
            "data" => data.push(value),
            other => panic!("unexpected field {other:?} in {block:?}"),
        }
    }
    match event {
        None => {
            assert!(id.is_none() && data.is_empty(), "{block:?}");
            Sse::Comment(comments.join("\n"))
        }
        Some(event) => Sse::Event {
            id,
            event,
            data: serde_json::from_str(&data.join("\n")).expect("JSON data"),
        },
    }
}

/// Reads an event stream block by block, as its bytes arrive.
pub struct SseReader {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> SseReader {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseReader {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next block, or `None` at the end of the stream; fails after [`SSE_WAIT`] without.
    pub(super) async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(at) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..at + 2).collect();
                return Some(sse_block(std::str::from_utf8(&block).unwrap()));
            }
            let chunk = tokio::time::timeout(SSE_WAIT, self.response.chunk())
                .await
                .expect("nothing more of the stream within SSE_WAIT")
                .expect("the stream reads to its end");
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => {
                    assert!(self.buffer.is_empty(), "cut in a block: {:?}", self.buffer);
                    return None;
                }
            }
        }
    }

    /// The next event, past any comments: its id, name and data.
    pub(super) async fn next_event(&mut self) -> (Option<String>, String, Value) {
        loop {
            match self.next().await {
                Some(Sse::Event { id, event, data }) => return (id, event, data),
                Some(Sse::Comment(_)) => continue,
                None => panic!("the stream ended before the next event"),
            }
        }
    }

    /// The rest of the stream: its events up to the final one, which must be the last; and the
    /// final one's name and data.
    pub async fn rest(&mut self) -> (Vec<Value>, String, Value) {
        let mut events = Vec::new();
        loop {
            let (id, event, data) = self.next_event().await;
            if event == "turn" || event == "run" || event == "error" {
                assert_eq!(id, None, "{data}");
                assert_eq!(self.next().await, None, "more after the final event");
                return (events, event, data);
            }
            assert_eq!(id, Some(data["seq"].to_string()), "{data}");
            assert_eq!(event, data["type"].as_str().unwrap(), "{data}");
            events.push(data);
        }
    }
}

/// A turn request on `session` that asks for server-sent events.
pub fn sse_turn(sidecar: &HttpProcess, token: &str, session: &str) -> reqwest::RequestBuilder {
    http_client()
        .post(sidecar.url(&format!("/sessions/{session}/turn")))
        .bearer_auth(token)
        .header("Accept", "text/event-stream")
}

/// Sends `request`; its headers must come within [`SSE_WAIT`].
pub async fn sse_send(request: reqwest::RequestBuilder) -> reqwest::Response {
    tokio::time::timeout(SSE_WAIT, request.send())
        .await
        .expect("the answer's headers within SSE_WAIT")
        .expect("an HTTP answer")
}

#[tokio::test]
async fn a_turn_over_sse_relays_its_events_while_it_runs_then_the_turn() {
    let forge = Forge::start().await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let (token, id) = app_session(&forge, &sidecar, "sse").await;
    let release = forge.dir.path().join("release-sse");
    let prompt = format!("look #wait-file={}", release.display());
    let request = sse_turn(&sidecar, &token, &id).json(&json!({ "prompt": prompt }));
    let mut stream = SseReader::new(sse_send(request).await);

    // The agent waits for the file, so these came while the turn ran.
    let (seq, event, thought) = stream.next_event().await;
    assert_eq!((seq.as_deref(), event.as_str()), (Some("1"), "thought"));
    assert_eq!(
        (&thought["session_id"], &thought["turn"]),
        (&json!(id), &json!(1))
    );
    assert!(thought["text"].as_str().unwrap().starts_with("waiting for"));
    let (seq, event, plan) = stream.next_event().await;
    assert_eq!(
        (seq.as_deref(), event.as_str()),
        (Some("2"), "plan"),
        "{plan}"
    );
    assert!(!release.exists());
    std::fs::write(&release, "").unwrap();

    let (events, last, turn) = stream.rest().await;
    assert_eq!(last, "turn", "{turn}");
    assert_eq!(
        (turn["turn"].as_u64(), &turn["stop_reason"]),
        (Some(1), &json!("end_turn"))
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (3..3 + events.len() as u64).collect::<Vec<_>>(),
        "no gaps"
    );
    let said: String = events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        said,
        turn["output"].as_str().unwrap(),
        "the output is the messages joined"
    );
    assert!(said.starts_with("echo: look"), "{said}");
    assert!(
        events.iter().any(|e| e["type"] == "tool_call"),
        "{events:?}"
    );

    // Without the header the route answers as ever: the Turn as JSON.
    let plain = http_client()
        .post(sidecar.url(&format!("/sessions/{id}/turn")))
        .bearer_auth(&token)
        .json(&json!({ "prompt": "again" }))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.headers()["content-type"], "application/json");
    let (status, turn) = answer(plain).await;
    assert_eq!((status, &turn["turn"]), (200, &json!(2)), "{turn}");
    let mut keys: Vec<&str> = turn
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["duration_ms", "output", "session_id", "stop_reason", "turn"]
    );
}

#[tokio::test]
async fn a_refused_sse_turn_is_its_plain_json_error_and_a_form_streams_too() {
    let forge = Forge::start().await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let (token, open) = app_session(&forge, &sidecar, "refused").await;
    let (status, closed) = post(&sidecar, "/sessions", Some(&token), "{}").await;
    assert_eq!(status, 200, "{closed}");
    let closed = closed["session_id"].as_str().unwrap().to_string();
    assert_eq!(
        delete(&sidecar, &format!("/sessions/{closed}"), Some(&token))
            .await
            .0,
        200
    );

    let unknown = "123e4567-e89b-42d3-a456-426614174000";
    let hi = json!({ "prompt": "hi" });
    for (session, token, status, code) in [
        (unknown, token.as_str(), 404, "not_found"),
        (open.as_str(), "not-a-token", 401, "unauthorized"),
        (closed.as_str(), token.as_str(), 409, "conflict"),
        ("not-an-id", token.as_str(), 400, "bad_request"),
    ] {
        let streamed = typed_answer(sse_send(sse_turn(&sidecar, token, session).json(&hi)).await);
        let (got, content_type, body) = streamed.await;
        assert_eq!(
            (got, content_type.as_str()),
            (status, "application/json"),
            "{body}"
        );
        assert_eq!(body["error"]["code"], code, "{body}");
        let path = format!("/sessions/{session}/turn");
        let plain = post(&sidecar, &path, Some(token), &hi.to_string()).await;
        assert_eq!((got, body), plain, "the same answer as without the header");
    }

    // A multipart turn streams as a JSON one does.
    let form = Form::new().text("prompt", "from a form");
    let request = sse_turn(&sidecar, &token, &open).multipart(form);
    let (events, last, turn) = SseReader::new(sse_send(request).await).rest().await;
    assert_eq!(last, "turn", "{turn}");
    assert!(
        turn["output"]
            .as_str()
            .unwrap()
            .starts_with("echo: from a form"),
        "{turn}"
    );
    assert!(events.iter().any(|e| e["type"] == "message"), "{events:?}");
}

#[tokio::test]
async fn a_quiet_sse_turn_sends_heartbeat_comments_and_no_timeout_cuts_it() {
    // One a second: four of them span three seconds, longer than either timeout below.
    const QUIET_HEARTBEATS: usize = 4;
    let forge = Forge::start_with(Options {
        env: vec![("CLAWDFORGE_STREAM_HEARTBEAT_SECS".into(), "1".into())],
        ..Default::default()
    })
    .await;
    // Both connection timeouts are shorter than the stream is kept quiet.
    let sidecar = forge
        .spawn_http("sidecar", &[(HEADER_TIMEOUT, "1"), (IDLE_TIMEOUT, "2")])
        .await;
    let (token, id) = app_session(&forge, &sidecar, "quiet").await;
    let release = forge.dir.path().join("release-quiet");
    let prompt = format!("quiet #wait-file={}", release.display());
    let request = sse_turn(&sidecar, &token, &id).json(&json!({ "prompt": prompt }));
    let mut stream = SseReader::new(sse_send(request).await);
    assert_eq!(stream.next_event().await.1, "thought");
    assert_eq!(stream.next_event().await.1, "plan");

    // Only heartbeats come while the agent waits, past both connection timeouts: the stream is
    // kept quiet for more heartbeat periods than either timeout lasts, and nothing cuts it.
    for _ in 0..QUIET_HEARTBEATS {
        match stream.next().await {
            Some(Sse::Comment(text)) => assert_eq!(text, "heartbeat"),
            other => panic!("expected a heartbeat while the agent waits, got {other:?}"),
        }
    }
    std::fs::write(&release, "").unwrap();
    let (_, last, turn) = stream.rest().await;
    assert_eq!(last, "turn", "{turn}");
    assert!(
        turn["output"].as_str().unwrap().starts_with("echo: quiet"),
        "{turn}"
    );
}

#[tokio::test]
async fn a_run_over_sse_relays_claudes_events_while_it_runs_then_the_run() {
    let forge = Forge::start_with(Options {
        env: crate::runs::claude_env(&[]),
        ..Default::default()
    })
    .await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let token = forge
        .admin
        .create_token("sse-runs", false)
        .await
        .unwrap()
        .token;
    let release = forge.dir.path().join("release-run");
    let prompt = format!("go #wait-file={}", release.display());
    let request = http_client()
        .post(sidecar.url("/run"))
        .bearer_auth(&token)
        .header("Accept", "text/event-stream")
        .json(&json!({ "prompt": prompt }));
    let mut stream = SseReader::new(sse_send(request).await);
    // claude printed its thinking before it waits: it comes while the run runs.
    let (seq, event, thought) = stream.next_event().await;
    assert_eq!(
        (seq.as_deref(), event.as_str()),
        (Some("1"), "thought"),
        "{thought}"
    );
    let run_id = thought["run_id"]
        .as_str()
        .expect("a run's event names its run")
        .to_string();
    assert!(!release.exists());
    std::fs::write(&release, "").unwrap();
    let (events, last, run) = stream.rest().await;
    assert_eq!(last, "run", "{run}");
    assert_eq!(
        (run["run_id"].as_str(), &run["ok"]),
        (Some(run_id.as_str()), &json!(true))
    );
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["tool_call", "tool_call_update", "message", "usage"]);
    // Without the header, the same route answers the Run as JSON.
    let (status, plain) = post(&sidecar, "/run", Some(&token), r#"{"prompt": "plain"}"#).await;
    assert_eq!((status, &plain["result"]), (200, &json!("plain")));
}
