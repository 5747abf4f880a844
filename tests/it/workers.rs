use clawdforge::error::ErrorKind;
use clawdforge::wire::CreateSession;

use crate::harness::{Forge, Options};
use crate::sessions::{kind, turn};

#[tokio::test]
async fn two_workers_share_the_ledger_and_serve_each_others_sessions() {
    let mut forge = Forge::start().await;
    let app = forge.app("shared").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let t1 = app
        .turn(&turn(&s.session_id, "on the first"))
        .await
        .unwrap();
    assert_eq!(t1.output, "echo: on the first");

    // A second worker joins; the first goes away. The session carries on through the second.
    forge.spawn_worker(&[]);
    forge.wait_for_workers(2).await;
    forge.kill_worker(0);
    let t2 = app
        .turn(&turn(&s.session_id, "on the second"))
        .await
        .unwrap();
    assert_eq!(t2.output, "echo: on the second");
    assert_eq!(t2.turn, 2);
    let closed = app.close_session(&s.session_id).await.unwrap();
    assert!(!closed.already_closed);

    let workers: Vec<String> = forge
        .ledger()
        .prepare("SELECT DISTINCT worker_id FROM session_events WHERE session_id = ?1")
        .unwrap()
        .query_map([&s.session_id], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(workers.len(), 2, "{workers:?}");
}

#[tokio::test]
async fn the_cap_and_tokens_hold_across_workers() {
    let forge = Forge::start_with(Options {
        workers: 2,
        env: vec![("CLAWDFORGE_MAX_LIVE_SESSIONS".into(), "3".into())],
        ..Default::default()
    })
    .await;
    let app = forge.app("many").await;
    let req = CreateSession::default();
    let creates = (0..5).map(|_| app.create_session(&req));
    let results = futures::future::join_all(creates).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 3, "{results:?}");
    for r in results.into_iter().filter(|r| r.is_err()) {
        assert_eq!(kind(r), ErrorKind::AtCapacity);
    }
    // A token revoked through one worker is refused by both at once.
    let id = forge
        .admin
        .list_tokens()
        .await
        .unwrap()
        .tokens
        .into_iter()
        .find(|t| t.app == "many")
        .unwrap()
        .token_id;
    forge.admin.revoke_token(&id).await.unwrap();
    for _ in 0..6 {
        assert_eq!(kind(app.list_sessions().await), ErrorKind::Unauthorized);
    }
}
