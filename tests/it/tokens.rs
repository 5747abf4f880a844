use std::time::Duration;

use clawdforge::error::ErrorKind;
use clawdforge::wire::{self, subject, CreateSession};

use crate::harness::Forge;
use crate::sessions::kind;

#[tokio::test]
async fn tokens_are_minted_listed_and_revoked() {
    let forge = Forge::start().await;
    let minted = forge.admin.create_token("photos", false).await.unwrap();
    assert_eq!(minted.app, "photos");
    assert!(!minted.admin);
    assert!(minted.token.len() >= 40);
    let app = forge.admin.with_token(Some(minted.token.clone()));
    app.list_sessions().await.unwrap();

    let listed = forge.admin.list_tokens().await.unwrap();
    let row = listed
        .tokens
        .iter()
        .find(|t| t.token_id == minted.token_id)
        .unwrap();
    assert_eq!(row.app, "photos");
    assert!(row.revoked_at.is_none());
    let json = serde_json::to_value(&listed).unwrap();
    assert!(
        !json.to_string().contains(&minted.token),
        "the token is shown once, never listed"
    );

    // The ledger holds a hash, not the token.
    let stored = forge.token_hash(&minted.token_id);
    assert_ne!(stored, minted.token);
    assert_eq!(stored.len(), 64);

    let revoked = forge.admin.revoke_token(&minted.token_id).await.unwrap();
    assert!(revoked.revoked);
    assert_eq!(kind(app.list_sessions().await), ErrorKind::Unauthorized);
    let listed = forge.admin.list_tokens().await.unwrap();
    assert!(listed
        .tokens
        .iter()
        .any(|t| t.token_id == minted.token_id && t.revoked_at.is_some()));

    assert_eq!(
        kind(
            forge
                .admin
                .revoke_token(&uuid::Uuid::new_v4().to_string())
                .await
        ),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(forge.admin.revoke_token("not-a-uuid").await),
        ErrorKind::BadRequest
    );
    assert_eq!(
        kind(forge.admin.create_token("bad app name!", false).await),
        ErrorKind::BadRequest
    );
}

#[tokio::test]
async fn missing_unknown_and_revoked_tokens_are_unauthorized() {
    let forge = Forge::start().await;
    let nobody = forge.admin.with_token(None);
    assert_eq!(kind(nobody.list_sessions().await), ErrorKind::Unauthorized);
    assert_eq!(
        kind(nobody.create_session(&CreateSession::default()).await),
        ErrorKind::Unauthorized
    );
    let stranger = forge.admin.with_token(Some("cf_not_a_real_token".into()));
    assert_eq!(
        kind(stranger.list_sessions().await),
        ErrorKind::Unauthorized
    );
    assert_eq!(kind(stranger.list_tokens().await), ErrorKind::Unauthorized);

    // A header that is not a bearer token is no token at all.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Authorization", "Basic cm9vdDpyb290");
    let reply = forge
        .admin
        .nats()
        .request_with_headers(subject::SESSION_LIST, headers, "{}".into())
        .await
        .unwrap();
    let h = reply.headers.unwrap();
    assert_eq!(h.get("Nats-Service-Error-Code").unwrap().as_str(), "401");

    // The token is checked first: without one, a malformed body is still unauthorized.
    let reply = forge
        .admin
        .nats()
        .request(subject::SESSION_CREATE, "{not json".into())
        .await
        .unwrap();
    let h = reply.headers.unwrap();
    assert_eq!(h.get("Nats-Service-Error-Code").unwrap().as_str(), "401");

    // Revocation holds at once.
    let app = forge.app("short-lived").await;
    app.list_sessions().await.unwrap();
    let id = forge
        .admin
        .list_tokens()
        .await
        .unwrap()
        .tokens
        .into_iter()
        .find(|t| t.app == "short-lived")
        .unwrap()
        .token_id;
    forge.admin.revoke_token(&id).await.unwrap();
    assert_eq!(kind(app.list_sessions().await), ErrorKind::Unauthorized);
}

#[tokio::test]
async fn admin_subjects_need_an_admin_token() {
    let forge = Forge::start().await;
    let app = forge.app("plain").await;
    assert_eq!(kind(app.list_tokens().await), ErrorKind::Forbidden);
    assert_eq!(
        kind(app.create_token("x", true).await),
        ErrorKind::Forbidden
    );
    assert_eq!(
        kind(app.revoke_token(&uuid::Uuid::new_v4().to_string()).await),
        ErrorKind::Forbidden
    );
    // Forbidden before the body is even read.
    let created = forge.admin.create_token("plain2", false).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Authorization",
        format!("Bearer {}", created.token).as_str(),
    );
    let reply = forge
        .admin
        .nats()
        .request_with_headers(subject::TOKEN_CREATE, headers, "{not json".into())
        .await
        .unwrap();
    assert_eq!(
        reply
            .headers
            .unwrap()
            .get("Nats-Service-Error-Code")
            .unwrap()
            .as_str(),
        "403"
    );
    // A minted admin token works without the bootstrap token.
    let ops = forge.admin.create_token("ops", true).await.unwrap();
    let ops = forge.admin.with_token(Some(ops.token));
    let minted = ops.create_token("from-ops", false).await.unwrap();
    assert_eq!(minted.app, "from-ops");
    assert!(ops.list_tokens().await.unwrap().tokens.len() >= 2);
}

#[tokio::test]
async fn health_needs_no_token_and_ping_finds_the_worker() {
    let forge = Forge::start().await;
    let health: wire::Health = forge.admin.with_token(None).health().await.unwrap();
    assert!(health.ok, "{health:?}");
    assert!(health.acpx_present);
    assert_eq!(health.acpx_version.as_deref(), Some("0.19.1"));
    assert!(!health.claude_present, "CLAUDE_BIN points nowhere in tests");
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(health.open_sessions, 0);

    // $SRV.PING answers with the service name and the worker id in its metadata.
    let inbox = forge.admin.nats().new_inbox();
    let mut sub = forge.admin.nats().subscribe(inbox.clone()).await.unwrap();
    forge
        .admin
        .nats()
        .publish_with_reply("$SRV.PING", inbox, "".into())
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut sub))
        .await
        .unwrap()
        .unwrap();
    let ping: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(ping["name"], "clawdforge");
    assert_eq!(ping["metadata"]["worker_id"], health.worker_id.as_str());
}

/// A client nobody here wrote: nats-py, driven from the contract alone.
#[tokio::test]
async fn a_python_nats_client_can_use_the_contract() {
    let forge = Forge::start().await;
    let out = tokio::process::Command::new(crate::harness::tool("python"))
        .arg(crate::harness::repo().join("tests/clients/contract_check.py"))
        .arg(&forge.nats.url)
        .arg(crate::harness::ROOT_TOKEN)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok   turn 2: 'echo: second question'"),
        "{stdout}"
    );
}
