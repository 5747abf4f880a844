//! Starting up: the sidecar without workers or NATS, before NATS, with a bad allowlist, and
//! `clawdforge serve`.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{get, post};
use crate::harness::{Forge, Nats, Options, ROOT_TOKEN};

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
            .env("BIND_PORT", "0")
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
