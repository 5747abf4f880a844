//! Every route against real workers: the same answers, and the same errors, as over NATS.

use std::time::Duration;

use clawdforge::http;
use clawdforge::wire::{subject, SessionStatus};
use reqwest::multipart::{Form, Part};
use reqwest::Method;
use serde_json::{json, Value};

use super::{
    answer, assert_error, code, delete, get, nats, post, raw_http, send, shape, without_position,
};
use crate::harness::{http_client, Forge, HttpProcess, Options, ROOT_TOKEN};

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
    let page = get(
        &sidecar,
        "/admin/sessions?app=web&status=open&limit=1",
        root,
    )
    .await;
    assert_eq!(page.0, 200, "{page:?}");
    assert_eq!(page.1["total"], 2);
    let asked = r#"{"app":"web","status":"open","limit":1}"#;
    assert_eq!(
        page,
        nats(&forge, subject::ADMIN_SESSION_LIST, root, asked).await
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
