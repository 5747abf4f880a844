use std::time::Duration;

use clawdforge::error::ErrorKind;
use clawdforge::wire::{subject, CreateSession};

use crate::harness::Forge;
use crate::sessions::{file, kind, turn};

/// Sends a raw body and returns the error code header, the error message header and the body.
async fn raw(
    forge: &Forge,
    subject: &str,
    token: Option<&str>,
    body: &[u8],
) -> (Option<String>, Option<String>, serde_json::Value) {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(t) = token {
        headers.insert("Authorization", format!("Bearer {t}").as_str());
    }
    let msg = tokio::time::timeout(
        Duration::from_secs(30),
        forge
            .admin
            .nats()
            .request_with_headers(subject.to_string(), headers, body.to_vec().into()),
    )
    .await
    .expect("a reply in time")
    .expect("a reply");
    let h = msg.headers.as_ref();
    let get = |name: &str| h.and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
    let body = serde_json::from_slice(&msg.payload).unwrap_or(serde_json::Value::Null);
    (
        get("Nats-Service-Error-Code"),
        get("Nats-Service-Error"),
        body,
    )
}

#[tokio::test]
async fn malformed_requests_get_bad_request_with_headers_and_body() {
    let forge = Forge::start().await;
    let created = forge.admin.create_token("inputs", false).await.unwrap();
    let token = created.token.as_str();
    let app = forge.admin.with_token(Some(created.token.clone()));
    let session = app.create_session(&CreateSession::default()).await.unwrap();
    let sid = session.session_id.as_str();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (subject::SESSION_CREATE, b"{not json".to_vec()),
        (subject::SESSION_CREATE, b"[]".to_vec()),
        (subject::SESSION_CREATE, b"\xff\xfe\xfd".to_vec()),
        (subject::SESSION_CREATE, br#"{"agent": 5}"#.to_vec()),
        (subject::SESSION_CREATE, br#"{"surprise": true}"#.to_vec()),
        (subject::SESSION_LIST, br#"{"all": true}"#.to_vec()),
        (subject::SESSION_GET, b"{}".to_vec()),
        (
            subject::SESSION_GET,
            br#"{"session_id": "not-a-uuid"}"#.to_vec(),
        ),
        (
            subject::SESSION_GET,
            br#"{"session_id": "../../etc/passwd"}"#.to_vec(),
        ),
        (subject::SESSION_CLOSE, br#"{"session_id": 12}"#.to_vec()),
        (
            subject::SESSION_TURN,
            format!(r#"{{"session_id": "{sid}"}}"#).into_bytes(),
        ),
        (
            subject::SESSION_TURN,
            format!(r#"{{"session_id": "{sid}", "prompt": "hi", "model": "x"}}"#).into_bytes(),
        ),
        (
            subject::SESSION_TURN,
            format!(r#"{{"session_id": "{sid}", "prompt": "   "}}"#).into_bytes(),
        ),
        (
            subject::SESSION_TURN,
            format!(r#"{{"session_id": "{sid}", "prompt": "hi", "timeout_secs": 0}}"#).into_bytes(),
        ),
        (
            subject::SESSION_TURN,
            format!(r#"{{"session_id": "{sid}", "prompt": "hi", "timeout_secs": -1}}"#)
                .into_bytes(),
        ),
        (
            subject::SESSION_TURN,
            format!(r#"{{"session_id": "{sid}", "prompt": "hi", "timeout_secs": 999999}}"#)
                .into_bytes(),
        ),
        (subject::HEALTH, br#"{"verbose": 1}"#.to_vec()),
        (
            "forge.admin.token.create",
            br#"{"app": "x", "admin": "yes"}"#.to_vec(),
        ),
    ];
    for (subject, body) in cases {
        let token = if subject.starts_with("forge.admin") {
            Some(crate::harness::ROOT_TOKEN)
        } else {
            Some(token)
        };
        let (code, message, json) = raw(&forge, subject, token, &body).await;
        let shown = String::from_utf8_lossy(&body);
        assert_eq!(code.as_deref(), Some("400"), "{subject} {shown}: {json}");
        assert!(message.is_some_and(|m| !m.is_empty()), "{subject} {shown}");
        assert_eq!(
            json["error"]["code"], "bad_request",
            "{subject} {shown}: {json}"
        );
        assert!(json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }

    // Nothing of that reached the ledger: one session, its create event, no turns.
    let rows = (forge.rows_in("sessions"), forge.rows_in("session_events"));
    assert_eq!(rows, (1, 1));
}

#[tokio::test]
async fn bad_file_names_and_oversized_input_are_refused() {
    let forge = Forge::start_with(crate::harness::Options {
        env: vec![
            ("CLAWDFORGE_MAX_PROMPT_BYTES".into(), "1000".into()),
            ("CLAWDFORGE_MAX_FILES_BYTES".into(), "2000".into()),
        ],
        ..Default::default()
    })
    .await;
    let app = forge.app("files").await;
    for name in [
        "../escape.md",
        "a/b.md",
        "/etc/passwd",
        "..",
        ".",
        "",
        "x\\y",
    ] {
        let r = app
            .create_session(&CreateSession {
                agent: None,
                files: vec![file(name, "x")],
                name: None,
            })
            .await;
        assert_eq!(kind(r), ErrorKind::BadRequest, "{name:?}");
    }
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let mut req = turn(&s.session_id, "hi");
    req.files = vec![file("../../x", "y")];
    assert_eq!(kind(app.turn(&req).await), ErrorKind::BadRequest);
    let mut req = turn(&s.session_id, "hi");
    req.files = vec![file("big.bin", &"z".repeat(2001))];
    assert_eq!(kind(app.turn(&req).await), ErrorKind::PayloadTooLarge);
    let req = turn(&s.session_id, &"p".repeat(1001));
    assert_eq!(kind(app.turn(&req).await), ErrorKind::PayloadTooLarge);
    assert!(
        !forge.dir.path().join("escape.md").exists()
            && !forge.sessions_root().join("escape.md").exists()
    );
    // A prompt that looks like an option is still a prompt.
    let t = app.turn(&turn(&s.session_id, "--help me")).await.unwrap();
    assert_eq!(t.output, "echo: --help me");
    let turns = forge.session_row(&s.session_id).turns;
    assert_eq!(turns, 1, "refused turns are not counted");
}
