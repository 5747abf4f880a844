//! Forms and bodies: what the sidecar puts on NATS for each, and runs over HTTP.

use clawdforge::wire::subject;
use futures::StreamExt;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use super::{answer, assert_error, b64, delete, get, nats, post, shape};
use crate::harness::{http_client, Forge, Options};

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
