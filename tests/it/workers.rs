use clawdforge::error::ErrorKind;
use clawdforge::wire::CreateSession;

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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

#[tokio::test]
async fn a_session_runs_one_turn_at_a_time_across_workers() {
    let mut forge = Forge::start().await;
    let app = forge.app("one-at-a-time").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let first = {
        let app = app.clone();
        let mut req = turn(&s.session_id, "first #sleep=3000");
        req.timeout_secs = Some(30);
        tokio::spawn(async move { app.turn(&req).await })
    };
    let running = |forge: &Forge| -> i64 {
        forge
            .ledger()
            .query_row(
                "SELECT COUNT(*) FROM session_events WHERE session_id = ?1 AND outcome = 'running'",
                [&s.session_id],
                |r| r.get(0),
            )
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(&forge) == 0 {
        assert!(Instant::now() < deadline, "the first turn did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A second worker joins; the first stops taking requests but finishes its turn (it has its
    // grace period). The next turn can only go to the second worker, which must wait for it.
    forge.spawn_worker(&[]);
    forge.wait_for_workers(2).await;
    kill(
        Pid::from_raw(forge.workers[0].child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while forge
        .admin
        .ping_workers(Duration::from_millis(200))
        .await
        .unwrap_or_default()
        .len()
        != 1
    {
        assert!(Instant::now() < deadline, "the first worker still answers");
    }
    let second = app.turn(&turn(&s.session_id, "second")).await.unwrap();
    assert_eq!((second.turn, second.output.as_str()), (2, "echo: second"));
    let first = first.await.unwrap().unwrap();
    assert_eq!(
        (first.turn, first.output.as_str()),
        (1, "echo: first #sleep=3000")
    );
    assert!(forge.workers[0].child.wait().unwrap().success());

    // Two workers, and the second turn started only once the first had ended.
    let (workers, after_first): (i64, bool) = forge
        .ledger()
        .query_row(
            "SELECT COUNT(DISTINCT t.worker_id),
                    (julianday(MAX(t.at)) - julianday(MIN(t.at))) * 86400000
                        >= (SELECT duration_ms FROM session_events
                            WHERE session_id = ?1 AND event = 'turn' AND turn = 1)
             FROM session_events t WHERE t.session_id = ?1 AND t.event = 'turn'",
            [&s.session_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(workers, 2);
    assert!(after_first, "the second turn started while the first ran");
    forge
        .wait_for_log(&[
            "waiting for another worker's turn of the session",
            &s.session_id,
        ])
        .await;
}
