//! Bad input and faults: a seeded barrage of malformed messages, a locked ledger, a missing
//! acpx, and concurrent load on three workers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clawdforge::client::ForgeClient;
use clawdforge::error::ErrorKind;
use clawdforge::wire::{subject, CreateSession};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::{Forge, Options, ROOT_TOKEN};
use crate::sessions::{kind, turn};

/// A malformed body: never a valid request for any subject.
fn bad_body(rng: &mut StdRng, session_id: &str) -> Vec<u8> {
    let pick = |rng: &mut StdRng, n: usize| rng.random_range(0..n);
    let hostile_names = [
        "../../etc/passwd",
        "/abs",
        "a/b",
        "..",
        "x\\y",
        "nul\u{0}byte",
        "",
        ".acpxrc.json",
        "line\nbreak",
    ];
    match pick(rng, 9) {
        0 => {
            let n = rng.random_range(1..512);
            let mut v: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            v.insert(0, 0xff);
            v
        }
        1 => {
            let depth = rng.random_range(100..3000);
            let mut s = "[".repeat(depth);
            s.push_str(&"]".repeat(depth));
            s.into_bytes()
        }
        2 => {
            let depth = rng.random_range(100..3000);
            let mut s = "{\"zz\":".repeat(depth);
            s.push('1');
            s.push_str(&"}".repeat(depth));
            s.into_bytes()
        }
        3 => {
            let len = rng.random_range(10_000..600_000);
            format!(
                "{{\"session_id\": \"{}\", \"prompt\": 5, \"app\": [], \"token_id\": {{}}}}",
                "x".repeat(len)
            )
            .into_bytes()
        }
        4 => {
            let values = ["1", "-3", "[]", "{}", "null", "true", "\"\"", "1e999"];
            let field = ["session_id", "prompt", "app", "token_id", "agent", "files"][pick(rng, 6)];
            format!(
                "{{\"{field}\": {}, \"unknown_{}\": 1}}",
                values[pick(rng, values.len())],
                rng.random::<u32>()
            )
            .into_bytes()
        }
        5 => format!(
            "{{\"session_id\": \"{session_id}\", \"prompt\": \"hi\", \"files\": [{{\"name\": {}, \"content_base64\": \"aGk=\"}}], \"extra\": 1}}",
            serde_json::to_string(hostile_names[pick(rng, hostile_names.len())]).unwrap()
        )
        .into_bytes(),
        6 => format!(
            "{{\"files\": [{{\"name\": {}, \"content_base64\": \"aGk=\"}}], \"session_id\": \"{session_id}\", \"token_id\": \"nope\", \"app\": \"bad app\", \"prompt\": \"\"}}",
            serde_json::to_string(hostile_names[pick(rng, hostile_names.len())]).unwrap()
        )
        .into_bytes(),
        7 => {
            let mut s = String::from("{\"session_id\": \"");
            let n = rng.random_range(1..64);
            for _ in 0..n {
                s.push(char::from(rng.random_range(0x21u8..0x7e)));
            }
            s.push_str("\", \"bogus\": true}");
            s.into_bytes()
        }
        _ => {
            let texts = ["{", "}", "\"str\"", "42", "{\"a\":1,}", "{'single': 1}", "[{}]", "nul\u{0}"];
            texts[pick(rng, texts.len())].as_bytes().to_vec()
        }
    }
}

fn headers(rng: &mut StdRng, app_token: &str) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    match rng.random_range(0..7) {
        0 => {}
        1 => h.insert("Authorization", format!("Bearer {app_token}").as_str()),
        2 => h.insert("Authorization", format!("Bearer {ROOT_TOKEN}").as_str()),
        3 => h.insert("Authorization", "Bearer "),
        4 => h.insert("Authorization", "Basic Zm9vOmJhcg=="),
        5 => h.insert(
            "Authorization",
            "Bearer cf_forged_token_xxxxxxxxxxxxxxxxxxxxx",
        ),
        _ => h.insert("X-Garbage", "\u{7f}\u{1}"),
    }
    h
}

/// How many rows the ledger holds: tokens, sessions, session events, runs.
pub fn ledger_counts(forge: &Forge) -> (i64, i64, i64, i64) {
    (
        forge.rows_in("tokens"),
        forge.rows_in("sessions"),
        forge.rows_in("session_events"),
        forge.rows_in("runs"),
    )
}

#[tokio::test]
async fn hundreds_of_malformed_messages_get_contract_errors_and_change_nothing() {
    let mut forge = Forge::start().await;
    let created = forge.admin.create_token("target", false).await.unwrap();
    let app = forge.admin.with_token(Some(created.token.clone()));
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let before = ledger_counts(&forge);
    let nats = forge.admin.nats().clone();

    let mut rng = StdRng::seed_from_u64(0x5eed_f0a6e);
    let mut sent = 0;
    for round in 0..40 {
        for subject in clawdforge::nats::SUBJECTS {
            let body = bad_body(&mut rng, &s.session_id);
            let h = headers(&mut rng, &created.token);
            let reply = tokio::time::timeout(
                Duration::from_secs(30),
                nats.request_with_headers(subject.to_string(), h, body.clone().into()),
            )
            .await
            .unwrap_or_else(|_| panic!("no reply in time: round {round} {subject}"))
            .unwrap_or_else(|e| panic!("round {round} {subject}: {e}"));
            let status = reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Service-Error-Code"))
                .map(|v| v.as_str().to_string());
            let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).to_string();
            let status =
                status.unwrap_or_else(|| panic!("round {round} {subject}: success for {shown:?}"));
            assert!(
                ["400", "401", "403", "404", "413"].contains(&status.as_str()),
                "round {round} {subject}: status {status} for {shown:?}"
            );
            let body: serde_json::Value = serde_json::from_slice(&reply.payload)
                .unwrap_or_else(|e| panic!("round {round} {subject}: body not JSON: {e}"));
            let code = body["error"]["code"].as_str().unwrap();
            assert_eq!(
                ErrorKind::from_code(code).map(|k| k.status().to_string()),
                Some(status.clone())
            );
            sent += 1;
        }
    }
    assert_eq!(sent, 40 * clawdforge::nats::SUBJECTS.len());
    assert_eq!(
        ledger_counts(&forge),
        before,
        "the ledger holds nothing of them"
    );
    assert!(
        forge.workers[0].child.try_wait().unwrap().is_none(),
        "the worker lives"
    );
    // And it still works.
    let t = app.turn(&turn(&s.session_id, "still fine")).await.unwrap();
    assert_eq!(t.output, "echo: still fine");
    let _ = &mut forge;
}

#[tokio::test]
async fn a_ledger_locked_by_another_process_delays_requests_without_losing_them() {
    let forge = Forge::start().await;
    let app = forge.app("locked").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let path = forge.ledger_path();
    // Another process (here: a thread with its own connection) holds the write lock until the
    // turn has reached the worker.
    let (locked, is_locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let let_go = Arc::new(AtomicBool::new(false));
    let holder = std::thread::spawn({
        let let_go = let_go.clone();
        move || {
            let c = rusqlite::Connection::open(path).unwrap();
            c.execute_batch("BEGIN EXCLUSIVE").unwrap();
            locked.send(()).unwrap();
            released.recv().unwrap();
            let_go.store(true, Ordering::SeqCst);
            c.execute_batch("COMMIT").unwrap();
        }
    });
    is_locked.recv().expect("the lock is taken");
    let mut seen = forge
        .admin
        .nats()
        .subscribe(subject::SESSION_TURN)
        .await
        .unwrap();
    forge.admin.nats().flush().await.unwrap();
    let pending = {
        let (app, req) = (app.clone(), turn(&s.session_id, "patience"));
        tokio::spawn(async move { app.turn(&req).await })
    };
    seen.next().await.expect("the turn is sent");
    // The turn is on its way to the worker while the ledger is locked: it is not answered
    // before the lock goes, and then it is, whole.
    assert!(
        !pending.is_finished(),
        "answered while the ledger was locked"
    );
    release.send(()).unwrap();
    let t = pending.await.unwrap().unwrap();
    assert_eq!(t.output, "echo: patience");
    assert!(let_go.load(Ordering::SeqCst), "it waited for the lock");
    holder.join().unwrap();
    let got = app.get_session(&s.session_id).await.unwrap();
    assert_eq!(got.turns, 1);
}

#[tokio::test]
async fn a_missing_acpx_shows_in_health_and_answers_agent_error() {
    let forge = Forge::start_with(Options {
        env: vec![("ACPX_BIN".into(), "/nonexistent/acpx".into())],
        ..Default::default()
    })
    .await;
    let health = forge.admin.health().await.unwrap();
    assert!(!health.ok && !health.acpx_present && health.acpx_version.is_none());
    let app = forge.app("no-acpx").await;
    assert_eq!(
        kind(app.create_session(&CreateSession::default()).await),
        ErrorKind::AgentError
    );
    // Nothing stays open: the ledger has the session closed, and why.
    assert_eq!(forge.admin.health().await.unwrap().open_sessions, 0);
    let sessions = forge.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let (session_id, status) = (&sessions[0].session_id, &sessions[0].status);
    assert_eq!(status, "closed");
    assert_eq!(
        create_trail(&forge, session_id),
        [
            ("create".into(), "agent_error".into(), true),
            ("close".into(), "create_failed".into(), true),
        ]
    );
    assert!(!forge.sessions_root().join(session_id).exists());
}

/// The events of `session_id`: event, outcome, and whether an error is recorded.
fn create_trail(forge: &Forge, session_id: &str) -> Vec<(String, String, bool)> {
    let events = forge.events(session_id).into_iter();
    events
        .map(|e| (e.event, e.outcome, e.error.is_some()))
        .collect()
}

/// The load test's sessions, each made, given two turns and closed by one of `CLIENTS` clients
/// working at once: more sessions than clients, so a client goes on with another session once
/// its own is closed. The sessions' acpx and agent processes are most of the test's time.
const SESSIONS: usize = 30;
const CLIENTS: usize = 20;

#[tokio::test]
async fn three_workers_thirty_sessions_twenty_clients() {
    let forge = Forge::start_with(Options {
        workers: 3,
        env: vec![
            ("CLAWDFORGE_MAX_LIVE_SESSIONS".into(), "64".into()),
            ("CLAWDFORGE_ACPX_TTL_SECS".into(), "30".into()),
        ],
        ..Default::default()
    })
    .await;
    let app = forge.app("load").await;
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(CLIENTS));
    let mut tasks = Vec::new();
    for i in 0..SESSIONS {
        let app: ForgeClient = app.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _client = sem.acquire_owned().await.unwrap();
            let s = app.create_session(&CreateSession::default()).await?;
            for n in 1..=2 {
                let prompt = format!("session {i} turn {n}");
                let t = app.turn(&turn(&s.session_id, &prompt)).await?;
                assert_eq!(t.output, format!("echo: {prompt}"));
                assert_eq!(t.turn, n);
            }
            let closed = app.close_session(&s.session_id).await?;
            assert!(!closed.already_closed);
            Ok::<String, clawdforge::client::ClientError>(s.session_id)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().expect("every request answered correctly"));
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), SESSIONS);

    let sessions: Vec<_> = forge
        .sessions()
        .into_iter()
        .filter(|s| s.app == "load")
        .collect();
    assert_eq!(sessions.len(), SESSIONS);
    let done = sessions
        .iter()
        .filter(|s| s.status == "closed" && s.turns == 2);
    assert_eq!(done.count(), SESSIONS);
    let events = forge.app_events("load");
    let count = |event: &str, outcome: Option<&str>| {
        let of = events.iter().filter(|e| e.event == event);
        of.filter(|e| outcome.is_none_or(|o| e.outcome == o))
            .count()
    };
    assert_eq!(count("create", None), SESSIONS);
    assert_eq!(count("turn", Some("ok")), 2 * SESSIONS);
    assert_eq!(count("close", None), SESSIONS);
    assert_eq!(events.len(), 4 * SESSIONS);
    let mut turns: Vec<_> = events
        .iter()
        .filter(|e| e.is_turn())
        .map(|e| (&e.session_id, e.turn))
        .collect();
    turns.sort();
    let all = turns.len();
    turns.dedup();
    assert_eq!(turns.len(), all, "no turn recorded twice");
    let workers = events
        .iter()
        .map(|e| &e.worker_id)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert!(
        workers >= 2,
        "the queue group spread the work ({workers} workers)"
    );
}

/// Reads from a raw NATS connection until `done` holds for what it has read, or 20 s.
async fn read_until(
    stream: &mut tokio::net::TcpStream,
    seen: &mut Vec<u8>,
    done: impl Fn(&str) -> bool,
) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while !done(&String::from_utf8_lossy(seen)) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

#[tokio::test]
async fn a_raw_message_with_a_bad_header_costs_no_other_reply() {
    use tokio::io::AsyncWriteExt;
    let forge = Forge::start().await;
    let port = forge.nats.port();
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut seen = Vec::new();
    raw.write_all(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n\
          SUB _INBOX.raw.* 1\r\nPING\r\n",
    )
    .await
    .unwrap();
    assert!(read_until(&mut raw, &mut seen, |s| s.contains("PONG")).await);

    // Header blocks async-nats 0.51 cannot parse: not UTF-8, a line without a colon, a name
    // with a space. Their framing is right.
    let bad: [&[u8]; 3] = [
        b"NATS/1.0\r\nAuthorization: \xff\xfe\r\n\r\n",
        b"NATS/1.0\r\nno colon here\r\n\r\n",
        b"NATS/1.0\r\nbad name: x\r\n\r\n",
    ];
    // Many requests of a well-behaved client in flight around the bad ones.
    let requests: Vec<_> = (0..120)
        .map(|_| {
            let admin = forge.admin.clone();
            tokio::spawn(async move {
                admin
                    .raw(
                        "forge.session.list",
                        Some(ROOT_TOKEN),
                        "{}".into(),
                        Duration::from_secs(15),
                    )
                    .await
            })
        })
        .collect();
    for (i, header) in bad.iter().enumerate() {
        let payload = b"{}";
        let mut message = format!(
            "HPUB forge.session.list _INBOX.raw.{i} {} {}\r\n",
            header.len(),
            header.len() + payload.len()
        )
        .into_bytes();
        message.extend_from_slice(header);
        message.extend_from_slice(payload);
        message.extend_from_slice(b"\r\n");
        raw.write_all(&message).await.unwrap();
    }
    let mut answered = 0;
    for request in requests {
        if let Ok(Ok(reply)) = request.await {
            assert!(reply.status.is_none(), "{reply:?}");
            answered += 1;
        }
    }
    assert_eq!(answered, 120, "replies lost:\n{}", forge.logs());

    // Each bad message reached the worker without its headers: no token, so unauthorized.
    let all_answered = read_until(&mut raw, &mut seen, |s| {
        s.matches("Nats-Service-Error-Code: 401").count() == bad.len()
    })
    .await;
    assert!(
        all_answered,
        "{}\n{}",
        String::from_utf8_lossy(&seen),
        forge.logs()
    );
    let logs = forge.logs();
    assert!(!logs.contains("disconnected from NATS"), "{logs}");
    assert_eq!(
        logs.matches("unreadable header block").count(),
        bad.len(),
        "{logs}"
    );
}

/// On a loaded machine acpx's queue owner can take longer to start than acpx waits for it
/// (about 6 s). The prompt was never queued then, so the worker sends it again and the turn
/// answers; here the owner is held at its start until the worker has said it is trying again.
#[tokio::test]
async fn a_queue_owner_slow_to_start_costs_a_retry_not_the_turn() {
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("open");
    let preload = crate::harness::repo().join("tests/fixtures/owner-gate.cjs");
    let read_dirs = format!(
        "{},{}",
        crate::harness::agent_read_dirs(),
        gate_dir.path().display()
    );
    let forge = Forge::start_with(Options {
        env: vec![
            (
                "NODE_OPTIONS".into(),
                format!("--require {}", preload.display()),
            ),
            ("FORGE_TEST_OWNER_GATE".into(), gate.display().to_string()),
            (
                "CLAWDFORGE_AGENT_ENV".into(),
                "NODE_OPTIONS,FORGE_TEST_OWNER_GATE".into(),
            ),
            ("CLAWDFORGE_AGENT_READ_DIRS".into(), read_dirs),
        ],
        ..Default::default()
    })
    .await;
    let app = forge.app("slowstart").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    let pending = tokio::spawn({
        let (app, id) = (app.clone(), s.session_id.clone());
        async move { app.turn(&turn(&id, "late but whole")).await }
    });
    forge
        .wait_for_log(&["queue owner was not up in time", &s.session_id])
        .await;
    std::fs::write(&gate, b"").unwrap();
    let t = pending
        .await
        .unwrap()
        .expect("the turn answers after the retry");
    assert_eq!(t.output, "echo: late but whole");
    assert_eq!(t.turn, 1);
}
