//! The sidecar: every route against real workers, the same answers as over NATS, the allowlist,
//! multipart forms, /healthz, `clawdforge serve`, and what a connection may hold of the server.
//! One module per area; here, what they share: requests over HTTP and over NATS, and how their
//! answers compare.

use std::time::Duration;

use base64::Engine;
use reqwest::Method;
use serde_json::Value;

use crate::harness::{http_client, Forge, HttpProcess};

mod allowlist;
mod connections;
mod events;
mod forms;
mod routes;
mod sse;
mod startup;

pub use sse::{sse_send, sse_turn, SseReader};

/// The status and JSON body of an answer.
type Answer = (u16, Value);

async fn send(
    sidecar: &HttpProcess,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Answer {
    let mut request = http_client().request(method, sidecar.url(path));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.header("Content-Type", "application/json").body(b);
    }
    let response = request.send().await.expect("an HTTP answer");
    answer(response).await
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

async fn get(sidecar: &HttpProcess, path: &str, token: Option<&str>) -> Answer {
    send(sidecar, Method::GET, path, token, None).await
}

async fn post(sidecar: &HttpProcess, path: &str, token: Option<&str>, body: &str) -> Answer {
    send(
        sidecar,
        Method::POST,
        path,
        token,
        Some(body.as_bytes().to_vec()),
    )
    .await
}

async fn delete(sidecar: &HttpProcess, path: &str, token: Option<&str>) -> Answer {
    send(sidecar, Method::DELETE, path, token, None).await
}

/// The same request over NATS: 200 or the reply's error status, and its body.
async fn nats(forge: &Forge, subject: &str, token: Option<&str>, body: &str) -> Answer {
    let reply = forge
        .admin
        .raw(
            subject,
            token,
            body.as_bytes().to_vec().into(),
            Duration::from_secs(60),
        )
        .await
        .expect("a NATS reply");
    let body = serde_json::from_slice(&reply.body).expect("a JSON reply");
    (reply.status.unwrap_or(200), body)
}

/// serde's position in a message depends on the bytes around it, which the sidecar may add to
/// (the turn's session id): compare without it.
fn without_position(mut a: Answer) -> Answer {
    if let Some(Value::String(m)) = a.1.pointer_mut("/error/message") {
        if let Some(at) = m.find(" at line ") {
            m.truncate(at);
        }
    }
    a
}

fn code(a: &Answer) -> &str {
    a.1["error"]["code"].as_str().unwrap_or("")
}

fn assert_error(a: &Answer, status: u16, kind: &str) {
    assert_eq!((a.0, code(a)), (status, kind), "{a:?}");
    assert!(a.1["error"]["message"].is_string(), "{a:?}");
}

/// A session's JSON without what differs between two sessions.
fn shape(mut v: Value, drop: &[&str]) -> Value {
    for key in drop {
        v.as_object_mut().unwrap().remove(*key);
    }
    v
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The status and the body's bytes, exactly as they came.
async fn raw_http(
    sidecar: &HttpProcess,
    method: Method,
    path: &str,
    token: &str,
    body: Option<String>,
) -> (u16, Vec<u8>) {
    let mut request = http_client()
        .request(method, sidecar.url(path))
        .bearer_auth(token);
    if let Some(b) = body {
        request = request.header("Content-Type", "application/json").body(b);
    }
    let response = request.send().await.expect("an HTTP answer");
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

/// A token of a new app and a session of it opened over HTTP.
async fn app_session(forge: &Forge, sidecar: &HttpProcess, app: &str) -> (String, String) {
    let token = forge.admin.create_token(app, false).await.unwrap().token;
    let (status, session) = post(sidecar, "/sessions", Some(&token), "{}").await;
    assert_eq!(status, 200, "{session}");
    (token, session["session_id"].as_str().unwrap().to_string())
}

/// The status, Content-Type and JSON body of an answer.
async fn typed_answer(response: reqwest::Response) -> (u16, String, Value) {
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let (status, body) = answer(response).await;
    (status, content_type, body)
}
