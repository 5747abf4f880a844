//! The sidecar: every route against real workers, the same answers as over NATS, the allowlist,
//! multipart forms, /healthz, `clawdforge serve`, and what a connection may hold of the server.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use base64::Engine;
use clawdforge::client::ForgeClient;
use clawdforge::http::{self, Access, Settings, Sidecar};
use clawdforge::wire::{subject, SessionStatus};
use futures::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tower::ServiceExt;

use crate::harness::{http_client, Forge, HttpProcess, Nats, Options, ROOT_TOKEN};

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

#[tokio::test]
async fn every_route_over_http_answers_as_nats_does() {
    let forge = Forge::start().await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let root = Some(ROOT_TOKEN);

    // Tokens.
    let created = post(&sidecar, "/admin/tokens", root, r#"{"app": "web"}"#).await;
    assert_eq!(created.0, 200, "{created:?}");
    assert_eq!(created.1["app"], "web");
    assert_eq!(created.1["admin"], false);
    let over_nats = nats(&forge, subject::TOKEN_CREATE, root, r#"{"app": "other"}"#).await;
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&created.1), keys(&over_nats.1));
    let token = created.1["token"].as_str().unwrap().to_string();
    let token_id = created.1["token_id"].as_str().unwrap().to_string();
    let app = Some(token.as_str());
    assert_eq!(
        get(&sidecar, "/admin/tokens", root).await,
        nats(&forge, subject::TOKEN_LIST, root, "{}").await
    );

    // Sessions.
    let s1 = post(&sidecar, "/sessions", app, "{}").await;
    assert_eq!(s1.0, 200, "{s1:?}");
    let id1 = s1.1["session_id"].as_str().unwrap().to_string();
    let s2 = nats(&forge, subject::SESSION_CREATE, app, "{}").await;
    let id2 = s2.1["session_id"].as_str().unwrap().to_string();
    assert_eq!(
        shape(s1.1.clone(), &["session_id", "created_at"]),
        shape(s2.1, &["session_id", "created_at"])
    );
    let ref1 = json!({ "session_id": id1 }).to_string();
    assert_eq!(
        get(&sidecar, &format!("/sessions/{id1}"), app).await,
        nats(&forge, subject::SESSION_GET, app, &ref1).await
    );
    assert_eq!(
        get(&sidecar, "/sessions", app).await,
        nats(&forge, subject::SESSION_LIST, app, "{}").await
    );

    // Turns: the id from the path, or the same id in the body too.
    let t1 = post(
        &sidecar,
        &format!("/sessions/{id1}/turn"),
        app,
        r#"{"prompt": "hello"}"#,
    )
    .await;
    assert_eq!(t1.0, 200, "{t1:?}");
    assert_eq!(t1.1["session_id"], id1.as_str());
    let t2 = nats(
        &forge,
        subject::SESSION_TURN,
        app,
        &json!({ "session_id": id2, "prompt": "hello" }).to_string(),
    )
    .await;
    assert_eq!(
        shape(t1.1, &["session_id", "duration_ms"]),
        shape(t2.1, &["session_id", "duration_ms"])
    );
    let again = post(
        &sidecar,
        &format!("/sessions/{id1}/turn"),
        app,
        &json!({ "session_id": id1, "prompt": "again" }).to_string(),
    )
    .await;
    assert_eq!((again.0, &again.1["turn"]), (200, &json!(2)), "{again:?}");

    // A form with a file, as legacy callers upload them.
    let form = Form::new().text("prompt", "read it #cat").part(
        "files",
        Part::bytes(b"from a form".to_vec()).file_name("notes.md"),
    );
    let t3 = answer(
        http_client()
            .post(sidecar.url(&format!("/sessions/{id1}/turn")))
            .bearer_auth(&token)
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(t3.0, 200, "{t3:?}");
    let output = t3.1["output"].as_str().unwrap();
    assert!(
        output.starts_with("echo: [Attached files]\n- ") && output.contains("from a form"),
        "{output}"
    );
    assert!(forge.sessions_root().join(&id1).join("notes.md").is_file());

    // Close, and close again.
    let c1 = delete(&sidecar, &format!("/sessions/{id1}"), app).await;
    assert_eq!(
        c1,
        (
            200,
            json!({ "session_id": id1, "closed": true, "already_closed": false })
        )
    );
    let c2 = nats(
        &forge,
        subject::SESSION_CLOSE,
        app,
        &json!({ "session_id": id2 }).to_string(),
    )
    .await;
    assert_eq!(shape(c1.1, &["session_id"]), shape(c2.1, &["session_id"]));
    let closed_again = (
        200,
        json!({ "session_id": id1, "closed": true, "already_closed": true }),
    );
    assert_eq!(
        delete(&sidecar, &format!("/sessions/{id1}"), app).await,
        closed_again
    );
    assert_eq!(
        nats(&forge, subject::SESSION_CLOSE, app, &ref1).await,
        closed_again
    );
    let got = get(&sidecar, &format!("/sessions/{id1}"), app).await;
    assert_eq!(
        (got.0, &got.1["status"]),
        (200, &json!("closed")),
        "{got:?}"
    );
    assert_eq!(got, nats(&forge, subject::SESSION_GET, app, &ref1).await);

    // Revoke.
    let revoked = delete(&sidecar, &format!("/admin/tokens/{token_id}"), root).await;
    assert_eq!(
        revoked,
        (200, json!({ "token_id": token_id, "revoked": true }))
    );
    // Revoking again answers the same, over HTTP and over NATS.
    assert_eq!(
        delete(&sidecar, &format!("/admin/tokens/{token_id}"), root).await,
        revoked
    );
    let revoke = json!({ "token_id": token_id }).to_string();
    assert_eq!(
        nats(&forge, subject::TOKEN_REVOKE, root, &revoke).await,
        revoked
    );
    assert_eq!(
        get(&sidecar, "/admin/tokens", root).await,
        nats(&forge, subject::TOKEN_LIST, root, "{}").await
    );
    assert_error(&get(&sidecar, "/sessions", app).await, 401, "unauthorized");

    // Health: the worker's, and what the sidecar sees.
    let (status, health) = get(&sidecar, "/healthz", None).await;
    assert_eq!(status, 200, "{health}");
    let (_, worker) = nats(&forge, subject::HEALTH, None, "{}").await;
    let mut expected = worker.as_object().unwrap().clone();
    expected.insert("nats_connected".into(), json!(true));
    expected.insert("workers".into(), json!(1));
    assert_eq!(health, Value::Object(expected));
    assert_eq!(health["ok"], true);

    // The description of it all.
    let (status, doc) = get(&sidecar, "/openapi.json", None).await;
    assert_eq!(status, 200);
    for (method, path, _) in http::ROUTES {
        assert!(
            doc["paths"][path][method.to_ascii_lowercase()].is_object(),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn errors_over_http_are_the_errors_over_nats() {
    let forge = Forge::start_with(Options {
        env: vec![("CLAWDFORGE_MAX_PROMPT_BYTES".into(), "1000".into())],
        ..Default::default()
    })
    .await;
    let sidecar = forge
        .spawn_http("sidecar", &[("CLAWDFORGE_MAX_REQUEST_BYTES", "5000")])
        .await;
    let root = Some(ROOT_TOKEN);
    let a = forge
        .admin
        .create_token("app-a", false)
        .await
        .unwrap()
        .token;
    let b = forge
        .admin
        .create_token("app-b", false)
        .await
        .unwrap()
        .token;
    let (a, b) = (Some(a.as_str()), Some(b.as_str()));
    let sid = nats(&forge, subject::SESSION_CREATE, a, "{}").await.1["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let closed = nats(&forge, subject::SESSION_CREATE, a, "{}").await.1["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    nats(
        &forge,
        subject::SESSION_CLOSE,
        a,
        &json!({ "session_id": closed }).to_string(),
    )
    .await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let long_prompt = "x".repeat(2000);

    struct Case {
        kind: &'static str,
        method: Method,
        path: String,
        token: Option<String>,
        body: Option<String>,
        subject: &'static str,
        nats_body: String,
    }
    let case = |kind: &'static str,
                method: Method,
                path: &str,
                token: Option<&str>,
                body: Option<&str>,
                subject: &'static str,
                nats_body: &str| Case {
        kind,
        method,
        path: path.to_string(),
        token: token.map(str::to_string),
        body: body.map(str::to_string),
        subject,
        nats_body: nats_body.to_string(),
    };
    let turn_path = format!("/sessions/{sid}/turn");
    let with_sid = |rest: &str| format!(r#"{{"session_id": "{sid}", {rest}}}"#);
    let cases = vec![
        // No token, an unknown one, a malformed header.
        case(
            "unauthorized",
            Method::GET,
            "/sessions",
            None,
            None,
            subject::SESSION_LIST,
            "{}",
        ),
        case(
            "unauthorized",
            Method::POST,
            "/sessions",
            Some("nope"),
            Some("{}"),
            subject::SESSION_CREATE,
            "{}",
        ),
        case(
            "unauthorized",
            Method::GET,
            "/admin/tokens",
            None,
            None,
            subject::TOKEN_LIST,
            "{}",
        ),
        case(
            "unauthorized",
            Method::POST,
            &turn_path,
            None,
            Some(r#"{"prompt": "hi"}"#),
            subject::SESSION_TURN,
            &with_sid(r#""prompt": "hi""#),
        ),
        // An app token on admin routes.
        case(
            "forbidden",
            Method::GET,
            "/admin/tokens",
            a,
            None,
            subject::TOKEN_LIST,
            "{}",
        ),
        case(
            "forbidden",
            Method::POST,
            "/admin/tokens",
            a,
            Some(r#"{"app": "x"}"#),
            subject::TOKEN_CREATE,
            r#"{"app": "x"}"#,
        ),
        case(
            "forbidden",
            Method::DELETE,
            &format!("/admin/tokens/{unknown}"),
            a,
            None,
            subject::TOKEN_REVOKE,
            &json!({ "token_id": unknown }).to_string(),
        ),
        // Malformed or unexpected bodies and ids.
        case(
            "bad_request",
            Method::POST,
            "/sessions",
            a,
            Some("{not json"),
            subject::SESSION_CREATE,
            "{not json",
        ),
        case(
            "bad_request",
            Method::POST,
            "/sessions",
            a,
            Some("[]"),
            subject::SESSION_CREATE,
            "[]",
        ),
        case(
            "bad_request",
            Method::POST,
            "/sessions",
            a,
            Some(r#"{"surprise": true}"#),
            subject::SESSION_CREATE,
            r#"{"surprise": true}"#,
        ),
        case(
            "bad_request",
            Method::POST,
            "/sessions",
            a,
            Some(r#"{"agent": "nope"}"#),
            subject::SESSION_CREATE,
            r#"{"agent": "nope"}"#,
        ),
        case(
            "bad_request",
            Method::POST,
            "/admin/tokens",
            root,
            Some(r#"{"app": 5}"#),
            subject::TOKEN_CREATE,
            r#"{"app": 5}"#,
        ),
        case(
            "bad_request",
            Method::GET,
            "/sessions/not-a-uuid",
            a,
            None,
            subject::SESSION_GET,
            r#"{"session_id": "not-a-uuid"}"#,
        ),
        case(
            "bad_request",
            Method::DELETE,
            "/sessions/..%2F..%2Fetc",
            a,
            None,
            subject::SESSION_CLOSE,
            r#"{"session_id": "../../etc"}"#,
        ),
        case(
            "bad_request",
            Method::POST,
            &turn_path,
            a,
            Some("{not json"),
            subject::SESSION_TURN,
            "{not json",
        ),
        case(
            "bad_request",
            Method::POST,
            &turn_path,
            a,
            Some(""),
            subject::SESSION_TURN,
            &format!(r#"{{"session_id": "{sid}"}}"#),
        ),
        case(
            "bad_request",
            Method::POST,
            &turn_path,
            a,
            Some(r#"{"prompt": "hi", "model": "x"}"#),
            subject::SESSION_TURN,
            &with_sid(r#""prompt": "hi", "model": "x""#),
        ),
        case(
            "bad_request",
            Method::POST,
            &turn_path,
            a,
            Some(r#"{"prompt": "   "}"#),
            subject::SESSION_TURN,
            &with_sid(r#""prompt": "   ""#),
        ),
        case(
            "bad_request",
            Method::POST,
            &turn_path,
            a,
            Some(r#"{"prompt": "hi", "timeout_secs": 0}"#),
            subject::SESSION_TURN,
            &with_sid(r#""prompt": "hi", "timeout_secs": 0"#),
        ),
        // Unknown, or another app's.
        case(
            "not_found",
            Method::GET,
            &format!("/sessions/{unknown}"),
            a,
            None,
            subject::SESSION_GET,
            &json!({ "session_id": unknown }).to_string(),
        ),
        case(
            "not_found",
            Method::GET,
            &format!("/sessions/{sid}"),
            b,
            None,
            subject::SESSION_GET,
            &json!({ "session_id": sid }).to_string(),
        ),
        case(
            "not_found",
            Method::DELETE,
            &format!("/sessions/{sid}"),
            b,
            None,
            subject::SESSION_CLOSE,
            &json!({ "session_id": sid }).to_string(),
        ),
        case(
            "not_found",
            Method::POST,
            &turn_path,
            b,
            Some(r#"{"prompt": "hi"}"#),
            subject::SESSION_TURN,
            &with_sid(r#""prompt": "hi""#),
        ),
        case(
            "not_found",
            Method::DELETE,
            &format!("/admin/tokens/{unknown}"),
            root,
            None,
            subject::TOKEN_REVOKE,
            &json!({ "token_id": unknown }).to_string(),
        ),
        // A closed session.
        case(
            "conflict",
            Method::POST,
            &format!("/sessions/{closed}/turn"),
            a,
            Some(r#"{"prompt": "hi"}"#),
            subject::SESSION_TURN,
            &json!({ "session_id": closed, "prompt": "hi" }).to_string(),
        ),
        // A prompt over the workers' limit (the body is within the sidecar's).
        case(
            "payload_too_large",
            Method::POST,
            &turn_path,
            a,
            Some(&json!({ "prompt": long_prompt }).to_string()),
            subject::SESSION_TURN,
            &json!({ "session_id": sid, "prompt": long_prompt }).to_string(),
        ),
        // The agent crashes; the agent hangs past the turn's timeout.
        case(
            "agent_error",
            Method::POST,
            &turn_path,
            a,
            Some(r##"{"prompt": "#crash"}"##),
            subject::SESSION_TURN,
            &with_sid(r##""prompt": "#crash""##),
        ),
        case(
            "timeout",
            Method::POST,
            &turn_path,
            a,
            Some(r##"{"prompt": "#hang", "timeout_secs": 2}"##),
            subject::SESSION_TURN,
            &with_sid(r##""prompt": "#hang", "timeout_secs": 2"##),
        ),
        // Runs.
        case(
            "unauthorized",
            Method::POST,
            "/run",
            None,
            Some(r#"{"prompt": "hi"}"#),
            subject::RUN,
            r#"{"prompt": "hi"}"#,
        ),
        case(
            "bad_request",
            Method::POST,
            "/run",
            a,
            Some(r#"{"prompt": "hi", "extra": 1}"#),
            subject::RUN,
            r#"{"prompt": "hi", "extra": 1}"#,
        ),
    ];

    for c in cases {
        let over_http = send(
            &sidecar,
            c.method.clone(),
            &c.path,
            c.token.as_deref(),
            c.body.map(String::into_bytes),
        )
        .await;
        let over_nats = nats(&forge, c.subject, c.token.as_deref(), &c.nats_body).await;
        let label = format!("{} {} ({})", c.method, c.path, c.kind);
        assert_eq!(code(&over_http), c.kind, "{label}: {over_http:?}");
        assert_eq!(
            without_position(over_http),
            without_position(over_nats),
            "{label}"
        );
    }

    // What only the sidecar decides.
    let differs = post(
        &sidecar,
        &turn_path,
        a,
        &json!({ "session_id": unknown, "prompt": "hi" }).to_string(),
    )
    .await;
    assert_error(&differs, 400, "bad_request");
    let too_big = post(&sidecar, "/sessions", a, &"x".repeat(6000)).await;
    assert_eq!(
        too_big,
        (
            413,
            json!({"error": {"code": "payload_too_large", "message": "the request body is larger than 5000 bytes"}})
        )
    );
    let no_route = get(&sidecar, "/nowhere", a).await;
    assert_eq!(
        no_route,
        (
            404,
            json!({"error": {"code": "not_found", "message": "no route for GET /nowhere"}})
        )
    );
    let wrong_method = send(&sidecar, Method::PUT, "/sessions", a, None).await;
    assert_eq!(wrong_method.0, 405);
}

#[tokio::test]
async fn without_workers_or_nats_the_sidecar_says_so_and_healthz_counts_workers() {
    let mut forge = Forge::start_with(Options {
        workers: 0,
        ..Default::default()
    })
    .await;
    let mut sidecar = forge.spawn_http("sidecar", &[]).await;
    let none = |connected: bool, workers: u64| {
        json!({
            "ok": false, "version": null, "worker_id": null, "acpx_present": null,
            "acpx_version": null, "claude_present": null, "open_sessions": null,
            "ledger_writable": null, "confined": null, "landlock_abi": null, "agents": null,
            "nats_connected": connected, "workers": workers
        })
    };
    assert_eq!(get(&sidecar, "/healthz", None).await, (503, none(true, 0)));
    let no_worker = json!({"error": {"code": "at_capacity", "message": "no worker available"}});
    assert_eq!(
        post(&sidecar, "/sessions", Some(ROOT_TOKEN), "{}").await,
        (503, no_worker.clone())
    );
    assert_eq!(
        get(&sidecar, "/admin/tokens", Some(ROOT_TOKEN)).await,
        (503, no_worker.clone())
    );
    let unknown = "123e4567-e89b-42d3-a456-426614174000";
    assert_eq!(
        post(
            &sidecar,
            &format!("/sessions/{unknown}/cancel"),
            Some(ROOT_TOKEN),
            ""
        )
        .await,
        (503, no_worker.clone())
    );
    assert_eq!(
        get(
            &sidecar,
            &format!("/sessions/{unknown}/events"),
            Some(ROOT_TOKEN)
        )
        .await,
        (503, no_worker)
    );

    forge.spawn_worker(&[]);
    forge.spawn_worker(&[]);
    forge.wait_for_workers(2).await;
    let (status, health) = get(&sidecar, "/healthz", None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["workers"], 2);
    assert_eq!(health["ok"], true);
    assert_eq!(health["nats_connected"], true);
    assert!(health["worker_id"].is_string() && health["version"].is_string());
    assert_eq!(health["open_sessions"], 0);

    let port = forge.nats.port();
    forge.nats.stop();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = get(&sidecar, "/healthz", None).await;
        if answer == (503, none(false, 0)) {
            break;
        }
        assert!(Instant::now() < deadline, "still {answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(&sidecar, "/sessions", Some(ROOT_TOKEN)).await,
        (
            503,
            json!({"error": {"code": "at_capacity", "message": "NATS is not reachable"}})
        )
    );
    // NATS comes back on the same port: the sidecar and the workers reconnect by themselves.
    forge.nats = Nats::start_on(Some(port));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = get(&sidecar, "/admin/tokens", Some(ROOT_TOKEN)).await;
        if answer.0 == 200 {
            assert!(answer.1["tokens"].is_array(), "{answer:?}");
            break;
        }
        assert_eq!(answer.0, 503, "{answer:?}");
        assert!(Instant::now() < deadline, "still {answer:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    forge.nats.stop();

    // With NATS gone, shutdown still ends.
    let status = sidecar
        .terminate(Duration::from_secs(20))
        .expect("the sidecar stops on SIGTERM without NATS");
    assert!(status.success(), "{status}");
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

/// What `token` hears for session `id` on every session subject over NATS (error status and
/// body bytes), then on every session route over HTTP (status and body bytes).
async fn answers_about(
    forge: &Forge,
    sidecar: &HttpProcess,
    token: &str,
    id: &str,
) -> Vec<(u16, Vec<u8>)> {
    let by_ref = json!({ "session_id": id }).to_string();
    let a_turn = json!({ "session_id": id, "prompt": "hi" }).to_string();
    let mut out = Vec::new();
    for (subject, body) in [
        (subject::SESSION_GET, &by_ref),
        (subject::SESSION_TURN, &a_turn),
        (subject::SESSION_CANCEL, &by_ref),
        (subject::SESSION_CLOSE, &by_ref),
    ] {
        let reply = forge
            .admin
            .raw(
                subject,
                Some(token),
                body.clone().into(),
                Duration::from_secs(60),
            )
            .await
            .expect("a NATS reply");
        out.push((reply.status.unwrap_or(200), reply.body.to_vec()));
    }
    let path = format!("/sessions/{id}");
    let turn = Some(r#"{"prompt": "hi"}"#.to_string());
    out.push(raw_http(sidecar, Method::GET, &path, token, None).await);
    out.push(raw_http(sidecar, Method::POST, &format!("{path}/turn"), token, turn).await);
    out.push(
        raw_http(
            sidecar,
            Method::POST,
            &format!("{path}/cancel"),
            token,
            None,
        )
        .await,
    );
    out.push(raw_http(sidecar, Method::GET, &format!("{path}/events"), token, None).await);
    out.push(raw_http(sidecar, Method::DELETE, &path, token, None).await);
    out
}

#[tokio::test]
async fn another_apps_session_answers_byte_for_byte_as_an_unknown_id() {
    let forge = Forge::start().await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let owner = forge.admin.create_token("owner", false).await.unwrap();
    let other = forge
        .admin
        .create_token("other", false)
        .await
        .unwrap()
        .token;
    let owned = forge.admin.with_token(Some(owner.token));
    let s = owned.create_session(&Default::default()).await.unwrap();
    let unknown = uuid::Uuid::new_v4().to_string();

    let theirs = answers_about(&forge, &sidecar, &other, &s.session_id).await;
    let nobodys = answers_about(&forge, &sidecar, &other, &unknown).await;
    let not_found = serde_json::from_slice::<Value>(&nobodys[0].1).unwrap();
    assert_eq!(not_found["error"]["code"], "not_found", "{not_found}");
    for (i, (a, b)) in theirs.iter().zip(&nobodys).enumerate() {
        assert_eq!(a.0, 404, "answer {i}: {}", String::from_utf8_lossy(&a.1));
        assert_eq!(
            (a.0, String::from_utf8_lossy(&a.1)),
            (b.0, String::from_utf8_lossy(&b.1)),
            "answer {i}"
        );
    }
    // The owner's session is untouched by all that.
    let got = owned.get_session(&s.session_id).await.unwrap();
    assert_eq!((got.status, got.turns), (SessionStatus::Open, 0));
}

#[tokio::test]
async fn a_sidecar_started_before_nats_serves_once_nats_comes() {
    let mut forge = Forge::start_with(Options {
        workers: 0,
        ..Default::default()
    })
    .await;
    let port = forge.nats.port();
    forge.nats.stop();
    // It serves after its wait for NATS, and says NATS is missing.
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let (status, health) = get(&sidecar, "/healthz", None).await;
    assert_eq!((status, &health["nats_connected"]), (503, &json!(false)));
    assert_eq!(
        get(&sidecar, "/sessions", Some(ROOT_TOKEN)).await,
        (
            503,
            json!({"error": {"code": "at_capacity", "message": "NATS is not reachable"}})
        )
    );

    forge.nats = Nats::start_on(Some(port));
    forge.spawn_worker(&[]);
    forge.wait_for_workers(1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, health) = get(&sidecar, "/healthz", None).await;
        if status == 200 {
            assert_eq!(
                (&health["nats_connected"], &health["workers"]),
                (&json!(true), &json!(1))
            );
            break;
        }
        assert!(Instant::now() < deadline, "still {status} {health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = get(&sidecar, "/admin/tokens", Some(ROOT_TOKEN)).await;
    assert_eq!(listed.0, 200, "{listed:?}");
    assert!(listed.1["tokens"].is_array(), "{listed:?}");
}

/// Answers every `forge.>` request in place of a worker: the body it got (as JSON when it is,
/// else as text) and its Authorization header; `forge.session.create` gets a conflict.
async fn stand_in_worker(nats: async_nats::Client) -> tokio::task::JoinHandle<()> {
    let mut requests = nats.subscribe("forge.>").await.unwrap();
    nats.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            let Some(reply) = msg.reply.clone() else {
                continue;
            };
            if msg.subject.as_str() == subject::SESSION_CREATE {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Service-Error-Code", "409");
                headers.insert("Nats-Service-Error", "already there");
                let body = json!({"error": {"code": "conflict", "message": "already there"}});
                let _ = nats
                    .publish_with_headers(reply, headers, body.to_string().into())
                    .await;
                continue;
            }
            let body = serde_json::from_slice::<Value>(&msg.payload).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&msg.payload).into_owned())
            });
            let authorization = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Authorization"))
                .map(|v| v.as_str().to_string());
            let echo = json!({
                "subject": msg.subject.as_str(),
                "body": body,
                "raw": String::from_utf8_lossy(&msg.payload),
                "authorization": authorization,
            });
            let _ = nats.publish(reply, echo.to_string().into()).await;
        }
    })
}

#[tokio::test]
async fn forms_and_bodies_reach_nats_as_the_contract_json() {
    let forge = Forge::start_with(Options {
        workers: 0,
        ..Default::default()
    })
    .await;
    let sidecar = forge
        .spawn_http("sidecar", &[("CLAWDFORGE_MAX_REQUEST_BYTES", "4000")])
        .await;
    let worker = stand_in_worker(forge.admin.nats().clone()).await;
    let client = http_client();
    let sid = uuid::Uuid::new_v4().to_string();
    let turn_url = sidecar.url(&format!("/sessions/{sid}/turn"));
    let form_post = |url: String, form: Form| {
        let client = client.clone();
        async move {
            answer(
                client
                    .post(url)
                    .header("Authorization", "Bearer tok")
                    .multipart(form)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };

    // A run with two files.
    let form = Form::new()
        .text("prompt", "summarise")
        .text("model", "haiku")
        .text("timeout_secs", "30")
        .part("files", Part::bytes(b"alpha".to_vec()).file_name("a.txt"))
        .part("upload", Part::bytes(vec![0, 255, 1]).file_name("b.bin"));
    let (status, echo) = form_post(sidecar.url("/run"), form).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["subject"], subject::RUN);
    assert_eq!(echo["authorization"], "Bearer tok");
    assert_eq!(
        echo["body"],
        json!({
            "prompt": "summarise",
            "model": "haiku",
            "timeout_secs": 30,
            "files": [
                {"name": "a.txt", "content_base64": b64(b"alpha")},
                {"name": "b.bin", "content_base64": b64(&[0, 255, 1])},
            ]
        })
    );
    // Unfilled inputs are left out; what is not a number stays text, for the worker to judge.
    let form = Form::new()
        .text("prompt", "x")
        .text("model", "")
        .part("files", Part::bytes(Vec::new()).file_name(""));
    let (_, echo) = form_post(sidecar.url("/run"), form).await;
    assert_eq!(echo["body"], json!({"prompt": "x"}));
    let form = Form::new().text("prompt", "x").text("timeout_secs", "soon");
    let (_, echo) = form_post(sidecar.url("/run"), form).await;
    assert_eq!(echo["body"], json!({"prompt": "x", "timeout_secs": "soon"}));

    // A turn: the session comes from the path.
    let form = Form::new()
        .text("prompt", "look")
        .text("timeout_secs", "5")
        .part("files", Part::bytes(b"data".to_vec()).file_name("d.csv"));
    let (status, echo) = form_post(turn_url.clone(), form).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["subject"], subject::SESSION_TURN);
    assert_eq!(
        echo["body"],
        json!({
            "session_id": sid,
            "prompt": "look",
            "timeout_secs": 5,
            "files": [{"name": "d.csv", "content_base64": b64(b"data")}]
        })
    );
    let form = Form::new()
        .text("prompt", "x")
        .text("session_id", sid.clone());
    let (status, echo) = form_post(turn_url.clone(), form).await;
    assert_eq!((status, &echo["body"]["session_id"]), (200, &json!(sid)));
    let form = Form::new().text("prompt", "x").text("session_id", "other");
    assert_error(&form_post(turn_url.clone(), form).await, 400, "bad_request");
    let form = Form::new().text("prompt", "x").text("prompt", "y");
    assert_error(&form_post(turn_url.clone(), form).await, 400, "bad_request");
    let form = Form::new()
        .text("prompt", "x")
        .part("files", Part::bytes(vec![7; 5000]).file_name("big.bin"));
    assert_error(
        &form_post(sidecar.url("/run"), form).await,
        413,
        "payload_too_large",
    );

    // JSON bodies go on byte for byte; the turn's only gains its session id.
    let raw = r#"{ "prompt" : "x" ,"timeout_secs":5 }"#;
    let (_, echo) = post(&sidecar, "/run", Some("tok"), raw).await;
    assert_eq!(echo["raw"], raw);
    let (_, echo) = post(&sidecar, &format!("/sessions/{sid}/turn"), Some("tok"), raw).await;
    assert_eq!(
        echo["raw"],
        format!(r#"{{"session_id":"{sid}", "prompt" : "x" ,"timeout_secs":5 }}"#)
    );
    let (_, echo) = get(&sidecar, &format!("/sessions/{sid}"), Some("tok")).await;
    assert_eq!(
        (&echo["subject"], &echo["body"]),
        (&json!(subject::SESSION_GET), &json!({ "session_id": sid }))
    );
    let (_, echo) = delete(&sidecar, "/admin/tokens/t-1", Some("tok")).await;
    assert_eq!(
        (&echo["subject"], &echo["body"]),
        (&json!(subject::TOKEN_REVOKE), &json!({"token_id": "t-1"}))
    );
    let (_, echo) = get(&sidecar, "/sessions", Some("tok")).await;
    assert_eq!(echo["body"], json!({}));

    // The Authorization header goes on as it came.
    let (_, echo) = answer(
        client
            .get(sidecar.url("/sessions"))
            .header("Authorization", "Basic Zm9vOmJhcg==")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echo["authorization"], "Basic Zm9vOmJhcg==");
    let (_, echo) = get(&sidecar, "/sessions", None).await;
    assert_eq!(echo["authorization"], Value::Null);

    // An error reply keeps its status and body.
    assert_eq!(
        post(&sidecar, "/sessions", Some("tok"), "{}").await,
        (
            409,
            json!({"error": {"code": "conflict", "message": "already there"}})
        )
    );
    worker.abort();
}

/// The sidecar in this process, as a client at `peer` reaches it.
fn in_process(forge: &Forge, access: Access, peer: &str) -> axum::Router {
    let sidecar = Sidecar::new(
        ForgeClient::new(forge.admin.nats().clone(), None),
        Settings {
            access,
            max_request_bytes: 1 << 20,
            conn: Default::default(),
            stream_heartbeat: Duration::from_secs(10),
        },
    );
    let peer: SocketAddr = peer.parse().unwrap();
    http::router(sidecar).layer(MockConnectInfo(peer))
}

async fn call(router: axum::Router, path: &str, token: &str, forwarded: &[&str]) -> Answer {
    let mut request =
        axum::http::Request::get(path).header("Authorization", format!("Bearer {token}"));
    for f in forwarded {
        request = request.header("X-Forwarded-For", *f);
    }
    let response = router
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn the_allowlist_decides_by_peer_and_believes_only_trusted_proxies() {
    let forge = Forge::start().await;
    let token = forge.admin.create_token("lan", false).await.unwrap().token;
    let access = Access::parse(
        "10.0.0.0/8, 2001:db8::/32",
        "ALLOW_CIDRS",
        "192.168.0.1, fd00::/8",
        "TRUSTED_PROXIES",
    )
    .unwrap();
    let allowed = (200, json!({"sessions": []}));
    let denied = |ip: &str| {
        (
            403,
            json!({"error": {"code": "forbidden", "message": format!("client address {ip} is not allowed")}}),
        )
    };
    let cases: Vec<(&str, Vec<&str>, Answer)> = vec![
        // Direct peers, IPv4 and IPv6; loopback always.
        ("10.1.2.3:5000", vec![], allowed.clone()),
        ("192.0.2.7:5000", vec![], denied("192.0.2.7")),
        ("[2001:db8::5]:5000", vec![], allowed.clone()),
        ("[2001:db9::5]:5000", vec![], denied("2001:db9::5")),
        ("[::ffff:10.1.2.3]:5000", vec![], allowed.clone()),
        ("127.0.0.1:5000", vec![], allowed.clone()),
        ("[::1]:5000", vec![], allowed.clone()),
        // X-Forwarded-For from a peer that is no trusted proxy counts for nothing.
        ("192.0.2.7:5000", vec!["10.1.2.3"], denied("192.0.2.7")),
        ("10.1.2.3:5000", vec!["192.0.2.7"], allowed.clone()),
        // From a trusted proxy: the right-most entry that is not a trusted proxy.
        ("192.168.0.1:443", vec!["10.1.2.3"], allowed.clone()),
        ("192.168.0.1:443", vec!["192.0.2.7"], denied("192.0.2.7")),
        (
            "192.168.0.1:443",
            vec!["10.1.2.3, 192.0.2.7"],
            denied("192.0.2.7"),
        ),
        (
            "192.168.0.1:443",
            vec!["192.0.2.7", "10.1.2.3, fd00::2"],
            allowed.clone(),
        ),
        ("192.168.0.1:443", vec![], denied("192.168.0.1")),
        ("[fd00::1]:443", vec!["2001:db8::9"], allowed.clone()),
        (
            "[fd00::1]:443",
            vec!["[2001:db9::9]:1234"],
            denied("2001:db9::9"),
        ),
    ];
    for (peer, forwarded, expected) in cases {
        let router = in_process(&forge, access.clone(), peer);
        assert_eq!(
            call(router, "/sessions", &token, &forwarded).await,
            expected,
            "{peer} {forwarded:?}"
        );
    }
    let garbage = call(
        in_process(&forge, access.clone(), "192.168.0.1:443"),
        "/sessions",
        &token,
        &["not-an-address"],
    )
    .await;
    assert_error(&garbage, 403, "forbidden");
    // Every route is behind it, /healthz and unknown paths too.
    for path in ["/healthz", "/openapi.json", "/admin/tokens", "/nowhere"] {
        let answer = call(
            in_process(&forge, access.clone(), "192.0.2.7:5000"),
            path,
            &token,
            &[],
        )
        .await;
        assert_eq!(answer, denied("192.0.2.7"), "{path}");
    }
    // With an empty list, loopback only.
    let loopback_only = Access::default();
    let outside = call(
        in_process(&forge, loopback_only.clone(), "10.1.2.3:5000"),
        "/sessions",
        &token,
        &[],
    )
    .await;
    assert_eq!(outside, denied("10.1.2.3"));
    let inside = call(
        in_process(&forge, loopback_only, "[::1]:5000"),
        "/sessions",
        &token,
        &[],
    )
    .await;
    assert_eq!(inside, allowed);
}

#[tokio::test]
async fn loopback_is_allowed_over_real_sockets() {
    let forge = Forge::start().await;
    let token = forge
        .admin
        .create_token("local", false)
        .await
        .unwrap()
        .token;
    let secret = token.as_str();
    let token = Some(secret);
    let listed = (200, json!({"sessions": []}));

    let v4 = forge.spawn_http("sidecar", &[]).await;
    assert_eq!(get(&v4, "/healthz", None).await.0, 200);
    assert_eq!(get(&v4, "/sessions", token).await, listed);

    let v6 = forge
        .spawn_http(
            "sidecar",
            &[("BIND_HOST", "::1"), ("ALLOW_CIDRS", "10.0.0.0/8")],
        )
        .await;
    assert!(v6.base.starts_with("http://[::1]:"));
    assert_eq!(get(&v6, "/sessions", token).await, listed);

    // Behind a proxy on loopback: X-Forwarded-For decides.
    let proxied = forge
        .spawn_http(
            "sidecar",
            &[
                ("ALLOW_CIDRS", "10.0.0.0/8"),
                ("CLAWDFORGE_TRUSTED_PROXIES", "127.0.0.1/32"),
            ],
        )
        .await;
    let via = |xff: &'static str| {
        let request = http_client()
            .get(proxied.url("/sessions"))
            .bearer_auth(secret)
            .header("X-Forwarded-For", xff);
        async move { answer(request.send().await.unwrap()).await }
    };
    assert_eq!(via("10.9.8.7").await, listed);
    assert_error(&via("192.0.2.1").await, 403, "forbidden");
    assert_error(&via("10.9.8.7, 192.0.2.1").await, 403, "forbidden");
    // No header: the proxy (loopback) is the client.
    assert_eq!(get(&proxied, "/sessions", token).await, listed);
}

#[test]
fn a_bad_cidr_stops_startup_and_names_its_setting() {
    for (command, var, value, named) in [
        (
            "sidecar",
            "ALLOW_CIDRS",
            "10.0.0.0/8,10.0.0.0/33",
            "ALLOW_CIDRS",
        ),
        (
            "serve",
            "ALLOW_CIDRS",
            "10.0.0.0/8,not-a-network",
            "ALLOW_CIDRS",
        ),
        (
            "sidecar",
            "CLAWDFORGE_TRUSTED_PROXIES",
            "fd00::/200",
            "TRUSTED_PROXIES",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_clawdforge"))
            .arg(command)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NATS_URL", "nats://127.0.0.1:9")
            .env("DB_PATH", dir.path().join("ledger.db"))
            .env("BIND_HOST", "127.0.0.1")
            .env(
                "BIND_PORT",
                crate::harness::free_port("127.0.0.1").to_string(),
            )
            .env(var, value)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("clawdforge {command} with {var}={value} kept running");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains(named) && stderr.contains(value.rsplit(',').next().unwrap()),
            "{command} {var}: {stderr}"
        );
    }
}

#[tokio::test]
async fn serve_is_a_worker_and_a_sidecar_in_one_process() {
    let forge = Forge::start_with(Options {
        workers: 0,
        ..Default::default()
    })
    .await;
    let mut serve = forge.spawn_http("serve", &[]).await;
    forge.wait_for_workers(1).await;
    let (status, health) = get(&serve, "/healthz", None).await;
    assert_eq!((status, &health["workers"]), (200, &json!(1)), "{health}");

    let token = forge
        .admin
        .create_token("one-box", false)
        .await
        .unwrap()
        .token;
    let app = Some(token.as_str());
    let (status, session) = post(&serve, "/sessions", app, "{}").await;
    assert_eq!(status, 200, "{session}");
    let id = session["session_id"].as_str().unwrap().to_string();
    let (status, turn) = post(
        &serve,
        &format!("/sessions/{id}/turn"),
        app,
        r#"{"prompt": "hi"}"#,
    )
    .await;
    assert_eq!(
        (status, &turn["output"]),
        (200, &json!("echo: hi")),
        "{turn}"
    );
    // The same session over NATS, from the worker inside `serve`.
    let over_nats = forge
        .admin
        .with_token(Some(token.clone()))
        .get_session(&id)
        .await
        .unwrap();
    assert_eq!(over_nats.turns, 1);

    let status = serve
        .terminate(Duration::from_secs(40))
        .expect("serve stops on SIGTERM");
    assert!(status.success(), "{status}:\n{}", serve.log_text());
    let log = serve.log_text();
    assert!(
        log.contains("sidecar stopped") && log.contains("worker stopped"),
        "{log}"
    );
}

#[tokio::test]
async fn runs_over_http_answer_as_over_nats_and_take_forms() {
    // The stand-in `claude` of tests/fixtures, with the project's Node first on PATH.
    let node_dir = crate::harness::tool("node").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        node_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let stand_in = crate::harness::repo().join("tests/fixtures/claude");
    let forge = Forge::start_with(Options {
        env: vec![
            ("CLAUDE_BIN".into(), stand_in.to_string_lossy().into_owned()),
            ("PATH".into(), path),
        ],
        ..Default::default()
    })
    .await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let token = forge
        .admin
        .create_token("runner", false)
        .await
        .unwrap()
        .token;
    let app = Some(token.as_str());

    let over_http = post(&sidecar, "/run", app, r#"{"prompt": "hello"}"#).await;
    assert_eq!(over_http.0, 200, "{over_http:?}");
    assert_eq!(over_http.1["result"], "hello");
    assert_eq!(over_http.1["ok"], true);
    let over_nats = nats(&forge, subject::RUN, app, r#"{"prompt": "hello"}"#).await;
    assert_eq!(
        shape(over_http.1, &["run_id", "duration_ms"]),
        shape(over_nats.1, &["run_id", "duration_ms"])
    );

    let form = Form::new()
        .text("prompt", "summarise")
        .text("model", "haiku")
        .text("timeout_secs", "60")
        .part(
            "files",
            Part::bytes(b"# notes\n".to_vec()).file_name("notes.md"),
        );
    let (status, run) = answer(
        http_client()
            .post(sidecar.url("/run"))
            .bearer_auth(&token)
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!((&run["ok"], &run["model"]), (&json!(true), &json!("haiku")));
    let result = run["result"].as_str().unwrap();
    assert!(
        result.starts_with("[Attached files]\n- ") && result.ends_with("notes.md\n\nsummarise"),
        "{result}"
    );
    let staged = forge
        .dir
        .path()
        .join("data/runs")
        .join(run["run_id"].as_str().unwrap())
        .join("notes.md");
    assert_eq!(std::fs::read_to_string(staged).unwrap(), "# notes\n");
}

// The connection limits. These variables are read by the configuration (keys
// `http_header_timeout_secs`, `http_idle_timeout_secs`, `http_max_connections`).
const HEADER_TIMEOUT: &str = "CLAWDFORGE_HTTP_HEADER_TIMEOUT_SECS";
const IDLE_TIMEOUT: &str = "CLAWDFORGE_HTTP_IDLE_TIMEOUT_SECS";
const MAX_CONNECTIONS: &str = "CLAWDFORGE_HTTP_MAX_CONNECTIONS";

/// Far below the 10 s default header timeout: a connection closed sooner was closed by the short
/// setting of the test, not by the default.
const SOONER_THAN_DEFAULT: Duration = Duration::from_secs(8);

/// The address a sidecar listens on, for raw connections.
fn socket_addr(sidecar: &HttpProcess) -> SocketAddr {
    sidecar
        .base
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .expect("an http://host:port base")
}

/// Everything the server sends on `stream` until it closes the connection (end of file or
/// reset); fails the test if the connection is still open after `limit`.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut sent = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => sent.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("reading from the sidecar: {e}"),
            }
        }
    };
    if tokio::time::timeout(limit, read_all).await.is_err() {
        panic!(
            "the sidecar kept the connection open for {limit:?}, having sent:\n{}",
            String::from_utf8_lossy(&sent)
        );
    }
    sent
}

/// Asserts that the server closed `stream` within `limit` without sending a byte.
async fn assert_closed_unanswered(stream: &mut TcpStream, limit: Duration, what: &str) {
    let sent = until_closed(stream, limit).await;
    assert!(
        sent.is_empty(),
        "{what}: the sidecar answered before closing:\n{}",
        String::from_utf8_lossy(&sent)
    );
}

/// Sends `GET path` (with `headers`, each ending in CRLF) on `stream` and reads the whole
/// answer, leaving the connection open; its status. An error when the server closes instead.
async fn get_on(stream: &mut TcpStream, path: &str, headers: &str) -> std::io::Result<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: sidecar\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().expect("a length"));
    let mut body = vec![0; length.expect("answers have a length")];
    stream.read_exact(&mut body).await?;
    Ok(status.expect("a status line"))
}

/// A connection to `addr` that has been answered once and is now idle, kept alive. Connections
/// are opened until one is served: one that just closed may still be counted for a moment.
async fn served_connection(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut stream = TcpStream::connect(addr).await.expect("connecting");
        if let Ok(status) = get_on(&mut stream, "/openapi.json", "").await {
            assert_eq!(status, 200);
            return stream;
        }
        assert!(Instant::now() < deadline, "no connection to {addr} served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A turn over HTTP that the test agent holds until `release` exists, started and running; it
/// resolves to the status and body of its answer.
async fn held_turn(
    forge: &Forge,
    sidecar: &HttpProcess,
    release: &std::path::Path,
) -> tokio::task::JoinHandle<Answer> {
    let token = forge.admin.create_token("held", false).await.unwrap().token;
    let (status, session) = post(sidecar, "/sessions", Some(&token), "{}").await;
    assert_eq!(status, 200, "{session}");
    let id = session["session_id"].as_str().unwrap().to_string();
    let prompt = format!("held #wait-file={}", release.display());
    let request = http_client()
        .post(sidecar.url(&format!("/sessions/{id}/turn")))
        .bearer_auth(&token)
        .json(&json!({ "prompt": prompt }));
    let turn = tokio::spawn(async move {
        let response = request
            .send()
            .await
            .expect("the turn's connection stays open");
        answer(response).await
    });
    crate::harness::wait_for_running_turn(&forge.ledger_path(), &id).await;
    turn
}

#[tokio::test]
async fn headers_that_never_end_and_silent_connections_are_closed_by_the_header_timeout() {
    let forge = Forge::start().await;
    let sidecar = forge
        .spawn_http("sidecar", &[(HEADER_TIMEOUT, "1"), (IDLE_TIMEOUT, "600")])
        .await;
    let addr = socket_addr(&sidecar);
    let started = Instant::now();
    let mut half_open = TcpStream::connect(addr).await.unwrap();
    half_open
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut answered = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        get_on(&mut answered, "/openapi.json", "").await.unwrap(),
        200
    );

    // Each is closed as the server gives up waiting for headers: never finished, never
    // started, or not started again after an answer.
    let limit = Duration::from_secs(15);
    tokio::join!(
        assert_closed_unanswered(&mut half_open, limit, "unfinished headers"),
        assert_closed_unanswered(&mut silent, limit, "a silent connection"),
        assert_closed_unanswered(&mut answered, limit, "a kept-alive connection"),
    );
    assert!(
        started.elapsed() < SOONER_THAN_DEFAULT,
        "closed after {:?}: {HEADER_TIMEOUT}=1 did not apply",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_a_request_in_flight_is_not_cut() {
    let forge = Forge::start().await;
    let sidecar = forge
        .spawn_http("sidecar", &[(HEADER_TIMEOUT, "30"), (IDLE_TIMEOUT, "1")])
        .await;
    let release = forge.dir.path().join("release-idle");
    let turn = held_turn(&forge, &sidecar, &release).await;

    // Opened once the turn runs, this one is closed only when the turn has been in flight for
    // longer than the idle timeout too; the header timeout is far.
    let started = Instant::now();
    let mut idle = served_connection(socket_addr(&sidecar)).await;
    assert_closed_unanswered(&mut idle, Duration::from_secs(15), "an idle connection").await;
    assert!(
        started.elapsed() < SOONER_THAN_DEFAULT,
        "closed after {:?}: {IDLE_TIMEOUT}=1 did not apply",
        started.elapsed()
    );

    std::fs::write(&release, "").unwrap();
    let (status, body) = turn.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body["output"]
            .as_str()
            .unwrap_or("")
            .starts_with("echo: held"),
        "{body}"
    );
}

#[tokio::test]
async fn connections_beyond_the_maximum_are_closed_at_once() {
    let forge = Forge::start().await;
    let sidecar = forge
        .spawn_http(
            "sidecar",
            &[
                (MAX_CONNECTIONS, "2"),
                (HEADER_TIMEOUT, "60"),
                (IDLE_TIMEOUT, "600"),
            ],
        )
        .await;
    let addr = socket_addr(&sidecar);
    let first = served_connection(addr).await;
    let _second = served_connection(addr).await;

    // Both open and idle: a third is closed unanswered, long before any timeout.
    let mut third = TcpStream::connect(addr).await.unwrap();
    // The server may have closed it before the request is written, or while.
    let _ = third
        .write_all(b"GET /openapi.json HTTP/1.1\r\nHost: sidecar\r\n\r\n")
        .await;
    assert_closed_unanswered(&mut third, Duration::from_secs(15), "a third connection").await;
    assert!(
        sidecar.log_text().contains("maximum of connections"),
        "{}",
        sidecar.log_text()
    );

    // One closed, there is room for another.
    drop(first);
    let _fourth = served_connection(addr).await;
}

/// An address of this machine that is not loopback, if it has one: the source address of a
/// route to a documentation network (a UDP `connect` sends nothing).
fn non_loopback_address() -> Option<IpAddr> {
    for (bind, target) in [
        ("0.0.0.0:0", "198.51.100.1:9"),
        ("[::]:0", "[2001:db8::1]:9"),
    ] {
        let Ok(socket) = std::net::UdpSocket::bind(bind) else {
            continue;
        };
        if socket.connect(target).is_err() {
            continue;
        }
        if let Ok(local) = socket.local_addr() {
            let ip = local.ip();
            if !ip.is_loopback() && !ip.is_unspecified() {
                return Some(ip);
            }
        }
    }
    None
}

/// A connection to `to` from the local address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn a_peer_outside_the_allowlist_is_closed_unread_and_a_trusted_proxy_is_let_in() {
    // Loopback is always allowed: the refused peer is this machine at another address.
    let local = non_loopback_address().expect(
        "this test needs an address of this machine other than loopback to connect from; \
         it has none",
    );
    let (any, loopback) = match local {
        IpAddr::V4(_) => ("0.0.0.0", IpAddr::from([127, 0, 0, 1])),
        IpAddr::V6(_) => ("::", IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    };
    let forge = Forge::start().await;
    let allow = ("ALLOW_CIDRS", "10.0.0.0/8");
    let sidecar = forge
        .spawn_http("sidecar", &[("BIND_HOST", any), allow])
        .await;
    let port = socket_addr(&sidecar).port();
    let mut inside = TcpStream::connect((loopback, port)).await.unwrap();
    assert_eq!(get_on(&mut inside, "/openapi.json", "").await.unwrap(), 200);

    // Not even a 403: the connection is closed before its request is read.
    let mut outside = connect_from(local, SocketAddr::new(local, port)).await;
    let _ = outside
        .write_all(b"GET /openapi.json HTTP/1.1\r\nHost: sidecar\r\n\r\n")
        .await;
    let what = format!("a connection from {local}");
    assert_closed_unanswered(&mut outside, Duration::from_secs(15), &what).await;

    // A trusted proxy outside the allowlist is let in; X-Forwarded-For decides each request.
    let proxy = local.to_string();
    let proxied = forge
        .spawn_http(
            "sidecar",
            &[
                ("BIND_HOST", any),
                allow,
                ("CLAWDFORGE_TRUSTED_PROXIES", &proxy),
            ],
        )
        .await;
    let to = SocketAddr::new(local, socket_addr(&proxied).port());
    let mut via = connect_from(local, to).await;
    let forwarded = |client: &str| format!("X-Forwarded-For: {client}\r\n");
    let status = get_on(&mut via, "/openapi.json", &forwarded("10.1.2.3")).await;
    assert_eq!(status.expect("the proxy is served"), 200);
    let status = get_on(&mut via, "/openapi.json", &forwarded("192.0.2.99")).await;
    assert_eq!(status.unwrap(), 403);
    assert_eq!(get_on(&mut via, "/openapi.json", "").await.unwrap(), 403);
}

#[tokio::test]
async fn sigterm_closes_idle_connections_and_answers_the_request_in_flight() {
    let forge = Forge::start().await;
    let mut sidecar = forge
        .spawn_http("sidecar", &[(HEADER_TIMEOUT, "60"), (IDLE_TIMEOUT, "600")])
        .await;
    let addr = socket_addr(&sidecar);
    let release = forge.dir.path().join("release-shutdown");
    let turn = held_turn(&forge, &sidecar, &release).await;
    let mut idle = served_connection(addr).await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sidecar.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_closed_unanswered(&mut idle, Duration::from_secs(15), "an idle connection").await;
    // No new connections: the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sidecar.child.try_wait().unwrap().is_none(), "exited early");

    std::fs::write(&release, "").unwrap();
    let (status, body) = turn.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if let Some(status) = sidecar.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the sidecar did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = sidecar.log_text();
    assert!(exited.success(), "{exited}:\n{log}");
    assert!(
        log.contains("sidecar stopped") && !log.contains("grace period over"),
        "{log}"
    );
}

// Live turns as server-sent events (contract v2): `Accept: text/event-stream` on the turn route.

/// Longer than any wait of these tests for the next part of a stream: what has not come by then
/// is not coming while the turn runs.
const SSE_WAIT: Duration = Duration::from_secs(30);

/// One block of a text/event-stream answer.
#[derive(Debug, Clone, PartialEq)]
enum Sse {
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
    async fn next(&mut self) -> Option<Sse> {
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
    async fn next_event(&mut self) -> (Option<String>, String, Value) {
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

/// A token of a new app and a session of it opened over HTTP.
async fn app_session(forge: &Forge, sidecar: &HttpProcess, app: &str) -> (String, String) {
    let token = forge.admin.create_token(app, false).await.unwrap().token;
    let (status, session) = post(sidecar, "/sessions", Some(&token), "{}").await;
    assert_eq!(status, 200, "{session}");
    (token, session["session_id"].as_str().unwrap().to_string())
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

/// The status, Content-Type and JSON body of an answer.
async fn typed_answer(response: reqwest::Response) -> (u16, String, Value) {
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let (status, body) = answer(response).await;
    (status, content_type, body)
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

    let started = Instant::now();
    let mut heartbeats = 0;
    while started.elapsed() < Duration::from_secs(5) {
        match stream.next().await {
            Some(Sse::Comment(text)) => {
                assert_eq!(text, "heartbeat");
                heartbeats += 1;
            }
            other => panic!("expected a heartbeat while the agent waits, got {other:?}"),
        }
    }
    assert!(
        heartbeats >= 4,
        "{heartbeats} heartbeats in {:?}",
        started.elapsed()
    );
    std::fs::write(&release, "").unwrap();
    let (_, last, turn) = stream.rest().await;
    assert_eq!(last, "turn", "{turn}");
    assert!(
        turn["output"].as_str().unwrap().starts_with("echo: quiet"),
        "{turn}"
    );
}

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
    crate::harness::wait_for_running_turn(&forge.ledger_path(), &id).await;

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
