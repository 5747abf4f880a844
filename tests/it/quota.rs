//! Contract v3: apps' policies, limits and usage. Each limit refuses with its kind over NATS and
//! HTTP and writes nothing but its count in app_refusals; workers sharing the ledger admit
//! exactly up to a limit; a change holds on running workers within a second; usage is what the
//! ledger holds; the operator's `app` and `usage` commands; the permission cap.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use clawdforge::client::{ClientError, ForgeClient};
use clawdforge::error::ErrorKind;
use clawdforge::wire::{
    self, subject, CreateSession, EventBody, PermissionDecision, PolicySet, Source,
};
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{agent_command, http_client, Forge, HttpProcess, Options, Via, CLUSTERED};
use crate::runs::{claude_env, run, wait_for_running_runs};
use crate::sessions::{kind, turn};

/// A day and a month, in seconds: the most a `retry_after_secs` of those windows can be.
const DAY: u64 = 24 * 3600;
const MONTH: u64 = 31 * DAY;

/// A little more than a worker keeps an app's policy before it reads it again.
const POLICY_CACHE: Duration = Duration::from_millis(1300);

/// A second agent, `spare`, beside the default one: something an app's `agents` can leave out.
fn spare_agent() -> String {
    format!("[agents.spare]\ncommand = {:?}\n", agent_command(""))
}

/// Sets `app`'s policy fields as `fields` (a JSON object) says, over NATS.
async fn set_policy(forge: &Forge, app: &str, fields: Value) -> wire::Policy {
    forge
        .admin
        .set_app_policy(&policy_set(app, fields))
        .await
        .unwrap_or_else(|e| panic!("setting {app}'s policy: {e}"))
}

fn policy_set(app: &str, fields: Value) -> PolicySet {
    let mut body = fields.as_object().cloned().unwrap_or_default();
    body.insert("app".into(), json!(app));
    serde_json::from_value(Value::Object(body)).unwrap()
}

/// A request over NATS with `client`'s token, as it came back: the error status (the
/// `Nats-Service-Error-Code` header) and the JSON body.
async fn nats(client: &ForgeClient, subject: &str, body: &Value) -> (Option<u16>, Value) {
    let raw = client
        .raw(
            subject,
            client.token(),
            serde_json::to_vec(body).unwrap().into(),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    (raw.status, serde_json::from_slice(&raw.body).unwrap())
}

/// An HTTP answer: status, `Retry-After` and the JSON body.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

async fn http(
    sidecar: &HttpProcess,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let mut request = http_client().request(method, sidecar.url(path));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.json(b);
    }
    let response = request.send().await.expect("an HTTP answer");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
    Answer {
        status,
        retry_after,
        body,
    }
}

/// What a refusal must say.
#[derive(Debug, Clone, Copy)]
enum Refused<'a> {
    /// `quota_exceeded` (429) by `limit`; `retry_after_secs` present and at most `Some(max)`
    /// for a limit that frees with time, absent for `None`.
    Quota(&'a str, Option<u64>),
    /// `forbidden` (403) by `limit`, the message naming `name`.
    Forbidden(&'a str, &'a str),
}

impl Refused<'_> {
    fn status(self) -> u16 {
        match self {
            Refused::Quota(..) => 429,
            Refused::Forbidden(..) => 403,
        }
    }

    /// Checks an error body; returns its `retry_after_secs`.
    fn check(self, body: &Value, how: &str) -> Option<u64> {
        let error = &body["error"];
        let retry = error.get("retry_after_secs").map(|v| v.as_u64().unwrap());
        match self {
            Refused::Quota(limit, frees) => {
                assert_eq!(error["code"], "quota_exceeded", "{how}: {body}");
                assert_eq!(error["limit"], limit, "{how}: {body}");
                match frees {
                    None => assert_eq!(retry, None, "{how}: a limit of now: {body}"),
                    Some(max) => {
                        let secs = retry.unwrap_or_else(|| panic!("{how}: no retry: {body}"));
                        assert!((1..=max).contains(&secs), "{how}: {secs} > {max}");
                    }
                }
            }
            Refused::Forbidden(limit, name) => {
                assert_eq!(error["code"], "forbidden", "{how}: {body}");
                assert_eq!(error["limit"], limit, "{how}: {body}");
                let message = error["message"].as_str().unwrap();
                assert!(message.contains(&format!("{name:?}")), "{how}: {body}");
                assert_eq!(retry, None, "{how}: {body}");
            }
        }
        retry
    }

    fn limit(self) -> &'static str {
        let name = match self {
            Refused::Quota(limit, _) | Refused::Forbidden(limit, _) => limit,
        };
        clawdforge::quota::Limit::from_name(name).unwrap().name()
    }
}

/// The work in the ledger: rows of sessions, session events, runs and turns waiting, and the
/// turns the sessions have numbered.
fn work_rows(forge: &Forge) -> [i64; 5] {
    let [a, b, c, d] =
        ["sessions", "session_events", "runs", "turn_waits"].map(|t| forge.rows_in(t));
    let numbered = i64_of(forge, "SELECT COALESCE(SUM(turns), 0) FROM sessions", []);
    [a, b, c, d, numbered]
}

/// The refusals app_refusals counts for `app` and `limit` (all days).
fn refusals(forge: &Forge, app: &str, limit: &str) -> i64 {
    forge
        .ledger()
        .query_row(
            "SELECT COALESCE(SUM(refused), 0) FROM app_refusals WHERE app = ?1 AND limit_name = ?2",
            [app, limit],
            |r| r.get(0),
        )
        .unwrap()
}

/// A deployment and a sidecar in front of it.
struct Gateway {
    forge: Forge,
    sidecar: HttpProcess,
}

impl Gateway {
    /// Sends one request of `app` over NATS and the same over HTTP; both must be refused as
    /// `refused` says, leave every table of work as it was, and be counted in app_refusals.
    async fn refuses(&self, (name, app): (&str, &ForgeClient), ask: Ask, refused: Refused<'_>) {
        let Ask {
            subject,
            method,
            path,
            body,
        } = ask;
        let forge = &self.forge;
        let before = (work_rows(forge), refusals(forge, name, refused.limit()));

        let (status, reply) = nats(app, subject, &body).await;
        assert_eq!(status, Some(refused.status()), "NATS {subject}: {reply}");
        refused.check(&reply, &format!("NATS {subject}"));

        let got = http(&self.sidecar, method, &path, app.token(), Some(&body)).await;
        let how = format!("HTTP {path}");
        assert_eq!(got.status, refused.status(), "{how}: {}", got.body);
        let retry = refused.check(&got.body, &how);
        assert_eq!(
            got.retry_after, retry,
            "{how}: Retry-After is retry_after_secs"
        );

        let after = (work_rows(forge), refusals(forge, name, refused.limit()));
        assert_eq!(
            after.0, before.0,
            "{name}: a refused {subject} wrote nothing"
        );
        assert_eq!(after.1, before.1 + 2, "{name}: both refusals are counted");
    }
}

/// One request, as NATS and HTTP ask it.
struct Ask {
    subject: &'static str,
    method: Method,
    path: String,
    body: Value,
}

impl Ask {
    fn create(body: Value) -> Ask {
        Ask {
            subject: subject::SESSION_CREATE,
            method: Method::POST,
            path: "/sessions".into(),
            body,
        }
    }

    /// A turn of `session_id`: `body` with the session's id in it.
    fn turn(session_id: &str, mut body: Value) -> Ask {
        body["session_id"] = json!(session_id);
        Ask {
            subject: subject::SESSION_TURN,
            method: Method::POST,
            path: format!("/sessions/{session_id}/turn"),
            body,
        }
    }

    fn run(body: Value) -> Ask {
        Ask {
            subject: subject::RUN,
            method: Method::POST,
            path: "/run".into(),
            body,
        }
    }
}

async fn session_of(app: &ForgeClient) -> String {
    app.create_session(&CreateSession::default())
        .await
        .unwrap()
        .session_id
}

/// Every limit refuses with the contract's kind, over NATS and HTTP, writing nothing; the
/// limits of now free when the work ends, budgets let the work that crosses them finish.
#[tokio::test]
async fn each_limit_refuses_with_its_kind_over_nats_and_http_and_writes_nothing() {
    let forge = Forge::start_with(Options {
        env: claude_env(&[]),
        config_toml: Some(spare_agent()),
        ..Default::default()
    })
    .await;
    for (app, fields) in [
        ("open1", json!({"max_open_sessions": 1})),
        ("turns1", json!({"max_concurrent_turns": 1})),
        ("daily", json!({"turns_per_day": 1})),
        ("runner", json!({"max_concurrent_runs": 1})),
        ("runday", json!({"runs_usd_per_day": 0.5})),
        ("runmonth", json!({"runs_usd_per_month": 0.5})),
        ("agentusd", json!({"agent_usd_per_month": 0.5})),
        ("short", json!({"max_timeout_secs": 30})),
        ("chatty", json!({"requests_per_minute": 3})),
        ("picky", json!({"agents": ["spare"]})),
        ("modelled", json!({"models": ["haiku"]})),
    ] {
        set_policy(&forge, app, fields).await;
    }
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let g = Gateway { forge, sidecar };
    let forge = &g.forge;
    let hold = |name: &str| forge.dir.path().join(name);

    // max_open_sessions: a limit of now, which frees when a session closes.
    let app = forge.app("open1").await;
    let first = session_of(&app).await;
    let refused = Refused::Quota("max_open_sessions", None);
    g.refuses(("open1", &app), Ask::create(json!({})), refused)
        .await;
    app.close_session(&first).await.unwrap();
    session_of(&app).await;

    // max_concurrent_turns: a turn held open refuses the next, which is admitted once it ends.
    let app = forge.app("turns1").await;
    let id = session_of(&app).await;
    let release = hold("turns1-release");
    let held = {
        let req = turn(&id, &format!("held #wait-file={}", release.display()));
        let app = app.clone();
        tokio::spawn(async move { app.turn(&req).await })
    };
    forge.running_turn(&id).await;
    let refused = Refused::Quota("max_concurrent_turns", None);
    let ask = Ask::turn(&id, json!({"prompt": "too many"}));
    g.refuses(("turns1", &app), ask, refused).await;
    std::fs::write(&release, "").unwrap();
    held.await.unwrap().unwrap();
    app.turn(&turn(&id, "after the held one")).await.unwrap();

    // turns_per_day: frees with the next UTC day.
    let app = forge.app("daily").await;
    let id = session_of(&app).await;
    app.turn(&turn(&id, "the only one today")).await.unwrap();
    let refused = Refused::Quota("turns_per_day", Some(DAY));
    let ask = Ask::turn(&id, json!({"prompt": "one more"}));
    g.refuses(("daily", &app), ask, refused).await;

    // Streamed over NATS, the refusal is the stream's end, with its limit and retry.
    let streamed = app
        .turn_streaming(&turn(&id, "streamed"), Duration::from_secs(60), |_| {})
        .await;
    match streamed {
        Err(ClientError::Api(e)) => {
            assert_eq!(e.kind, ErrorKind::QuotaExceeded);
            assert_eq!(e.limit.as_deref(), Some("turns_per_day"));
            assert!(e.retry_after_secs.is_some_and(|s| s <= DAY), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    // Asked for server-sent events, the refusal is the same 429 with its Retry-After.
    let sse = crate::http::sse_turn(&g.sidecar, app.token().unwrap(), &id)
        .json(&json!({"prompt": "one more, streamed"}));
    let response = crate::http::sse_send(sse).await;
    assert_eq!(response.status().as_u16(), 429);
    let header = response.headers().get("retry-after").cloned();
    let body: Value = response.json().await.unwrap();
    let retry = refused.check(&body, "SSE");
    let header = header.map(|h| h.to_str().unwrap().parse::<u64>().unwrap());
    assert_eq!(header, retry, "Retry-After over SSE");

    // max_concurrent_runs: a run held by the stand-in refuses the next.
    let app = forge.app("runner").await;
    let release = hold("runner-release");
    let held = {
        let req = run(&format!("held #wait-file={}", release.display()));
        let app = app.clone();
        tokio::spawn(async move { app.run(&req).await })
    };
    wait_for_running_runs(forge, 1).await;
    let refused = Refused::Quota("max_concurrent_runs", None);
    let ask = Ask::run(json!({"prompt": "too many"}));
    g.refuses(("runner", &app), ask, refused).await;
    std::fs::write(&release, "").unwrap();
    assert!(held.await.unwrap().unwrap().ok);
    assert!(app.run(&run("after the held one")).await.unwrap().ok);

    // runs_usd_per_day and runs_usd_per_month: the run that crosses the budget finishes.
    for (name, limit, max) in [
        ("runday", "runs_usd_per_day", DAY),
        ("runmonth", "runs_usd_per_month", MONTH),
    ] {
        let app = forge.app(name).await;
        let crossed = app.run(&run("an expensive one #cost=0.6")).await.unwrap();
        assert!(crossed.ok && crossed.cost_usd == Some(0.6), "{crossed:?}");
        let ask = Ask::run(json!({"prompt": "one more"}));
        g.refuses((name, &app), ask, Refused::Quota(limit, Some(max)))
            .await;
    }

    // agent_usd_per_month: the agents' reported cost; a turn that crosses it finishes.
    let app = forge.app("agentusd").await;
    let id = session_of(&app).await;
    // The agent reports the session's cost so far (as ACP defines it): 0.3, then 0.7.
    app.turn(&turn(&id, "first #cost=0.3")).await.unwrap();
    let crossing = app.turn(&turn(&id, "second #cost=0.7")).await.unwrap();
    assert!(crossing.output.starts_with("echo: second"), "{crossing:?}");
    let recorded = f64_of(
        forge,
        "SELECT SUM(cost_usd) FROM session_events WHERE app = 'agentusd' AND event = 'turn'",
        [],
    );
    assert!(close(recorded, 0.7), "each turn's cost: {recorded}");
    let refused = Refused::Quota("agent_usd_per_month", Some(MONTH));
    let ask = Ask::turn(&id, json!({"prompt": "third"}));
    g.refuses(("agentusd", &app), ask, refused).await;

    // max_timeout_secs: quota_exceeded, and no time makes it pass.
    let app = forge.app("short").await;
    let id = session_of(&app).await;
    let refused = Refused::Quota("max_timeout_secs", None);
    let slow = json!({"prompt": "slow", "timeout_secs": 31});
    g.refuses(("short", &app), Ask::turn(&id, slow.clone()), refused)
        .await;
    g.refuses(("short", &app), Ask::run(slow), refused).await;
    let within = wire::TurnRequest {
        timeout_secs: Some(30),
        ..turn(&id, "within")
    };
    app.turn(&within).await.unwrap();

    // requests_per_minute: every request counts; refused until the next UTC minute.
    let app = forge.app("chatty").await;
    let before = refusals(forge, "chatty", "requests_per_minute");
    let mut sent = 0;
    let (status, reply) = loop {
        let (status, reply) = nats(&app, subject::SESSION_LIST, &json!({})).await;
        sent += 1;
        if status.is_some() || sent > 8 {
            break (status, reply);
        }
    };
    // The fourth, or a later one if a new minute began meanwhile.
    assert!(sent > 3, "{sent} requests");
    assert_eq!(status, Some(429), "{reply}");
    let per_minute = Refused::Quota("requests_per_minute", Some(60));
    per_minute.check(&reply, "NATS");
    let mut sent = 0;
    let got = loop {
        let got = http(&g.sidecar, Method::GET, "/sessions", app.token(), None).await;
        sent += 1;
        if got.status != 200 || sent > 4 {
            break got;
        }
    };
    assert_eq!(got.status, 429, "{}", got.body);
    let retry = per_minute.check(&got.body, "HTTP");
    assert_eq!(got.retry_after, retry, "Retry-After is retry_after_secs");
    assert!(refusals(forge, "chatty", "requests_per_minute") >= before + 2);
    // At its limit, the app can still learn when it frees: forge.usage is not counted.
    let usage = app.usage().await.unwrap();
    let rpm = &usage.limits["requests_per_minute"];
    assert!(rpm.resets_at.is_some(), "{usage:?}");

    // agents: forbidden, naming the agent; the agents the app may use are admitted.
    let app = forge.app("picky").await;
    let refused = Refused::Forbidden("agents", "default");
    g.refuses(("picky", &app), Ask::create(json!({})), refused)
        .await;
    let spare = CreateSession {
        agent: Some("spare".into()),
        files: vec![],
        name: None,
    };
    assert_eq!(app.create_session(&spare).await.unwrap().agent, "spare");

    // models: forbidden for a run, naming the model.
    let app = forge.app("modelled").await;
    let refused = Refused::Forbidden("models", "sonnet");
    let ask = Ask::run(json!({"prompt": "which model?", "model": "sonnet"}));
    g.refuses(("modelled", &app), ask, refused).await;
    let haiku = wire::RunRequest {
        model: Some("haiku".into()),
        ..run("which model?")
    };
    assert!(app.run(&haiku).await.unwrap().ok);
}

/// Three workers on one ledger: of twenty concurrent creates of an app allowed three open
/// sessions, exactly three are admitted; of six concurrent turns of an app allowed two at once,
/// exactly two.
#[tokio::test]
async fn workers_sharing_the_ledger_admit_exactly_up_to_a_limit() {
    let forge = Forge::start_with(Options {
        workers: 3,
        ..Default::default()
    })
    .await;
    set_policy(&forge, "exact", json!({"max_open_sessions": 3})).await;
    let app = forge.app("exact").await;
    let creates = (0..20).map(|_| {
        let app = app.clone();
        tokio::spawn(async move { app.create_session(&CreateSession::default()).await })
    });
    let mut sessions = Vec::new();
    let mut refused = 0;
    for created in futures::future::join_all(creates).await {
        match created.unwrap() {
            Ok(s) => sessions.push(s.session_id),
            Err(ClientError::Api(e)) if e.kind == ErrorKind::QuotaExceeded => {
                assert_eq!(e.limit.as_deref(), Some("max_open_sessions"));
                refused += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!((sessions.len(), refused), (3, 17));
    let open = forge
        .sessions()
        .iter()
        .filter(|s| s.status == "open")
        .count();
    assert_eq!(open, 3);
    assert_eq!(refusals(&forge, "exact", "max_open_sessions"), 17);

    set_policy(&forge, "exact", json!({"max_concurrent_turns": 2})).await;
    tokio::time::sleep(POLICY_CACHE).await;
    let release = forge.dir.path().join("release");
    let prompt = format!("held #wait-file={}", release.display());
    let turns: Vec<_> = sessions
        .iter()
        .flat_map(|id| [id.clone(), id.clone()])
        .map(|id| {
            let (app, req) = (app.clone(), turn(&id, &prompt));
            tokio::spawn(async move { app.turn(&req).await })
        })
        .collect();
    // The refused ones answer at once; the admitted ones wait for the file.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while refusals(&forge, "exact", "max_concurrent_turns") < 4 {
        assert!(std::time::Instant::now() < deadline, "{}", forge.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let taken: i64 = forge
        .ledger()
        .query_row(
            "SELECT (SELECT COUNT(*) FROM session_events WHERE app = 'exact' AND event = 'turn')
                  + (SELECT COUNT(*) FROM turn_waits WHERE app = 'exact')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(taken, 2, "two turns taken while held");
    std::fs::write(&release, "").unwrap();
    let mut outcomes = (0, 0);
    for t in futures::future::join_all(turns).await {
        match t.unwrap() {
            Ok(_) => outcomes.0 += 1,
            Err(e) => {
                assert_eq!(kind(Err::<(), _>(e)), ErrorKind::QuotaExceeded);
                outcomes.1 += 1;
            }
        }
    }
    assert_eq!(outcomes, (2, 4));
}

/// Runs `clawdforge <args>` with the deployment's environment: the same ledger and config.
fn clawdforge(forge: &Forge, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clawdforge"));
    cmd.args(args)
        .current_dir(forge.dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    for (k, v) in &forge.env {
        cmd.env(k, v);
    }
    cmd.output().expect("running clawdforge")
}

/// The standard output of a command that must succeed.
fn ok(out: Output) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{}:\n{stdout}{stderr}", out.status);
    stdout
}

/// A change made over NATS, over HTTP or with the CLI holds on both of two running workers,
/// which had read the app's policy before, once their copy is a second old. Each worker is
/// reached through a native session it owns: a turn of it goes to that worker, which checks it.
#[tokio::test]
async fn a_policy_change_holds_on_running_workers_within_a_second() {
    let mut forge = Forge::start_with(Options {
        nats_config: Some(CLUSTERED.into()),
        via: Via::Acp,
        ..Default::default()
    })
    .await;
    let far = forge.spawn_far_worker().await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let near = forge.app("live").await;
    let far = ForgeClient::new(far, near.token().map(str::to_string));
    // A session owned by each worker.
    let mut owned = std::collections::BTreeMap::new();
    for n in 0..10 {
        if owned.len() == 2 {
            break;
        }
        let id = session_of(if n % 2 == 0 { &near } else { &far }).await;
        let owner = forge.owner(&id).0.expect("a native session has an owner");
        owned.entry(owner).or_insert(id);
    }
    let sessions: Vec<String> = owned.into_values().collect();
    assert_eq!(sessions.len(), 2, "a session on each worker");
    // Both workers read the policy (none) with a turn.
    on_both(&near, &sessions, true).await;

    set_policy(&forge, "live", json!({"max_timeout_secs": 10})).await;
    tokio::time::sleep(POLICY_CACHE).await;
    on_both(&near, &sessions, false).await;
    set_policy(&forge, "live", json!({"max_timeout_secs": null})).await;
    tokio::time::sleep(POLICY_CACHE).await;
    on_both(&near, &sessions, true).await;

    let put = json!({"max_timeout_secs": 10});
    let admin = Some(crate::harness::ROOT_TOKEN);
    let got = http(&sidecar, Method::PUT, "/admin/apps/live", admin, Some(&put)).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body["max_timeout_secs"], 10);
    assert_eq!(got.body["sources"]["max_timeout_secs"], "app");
    tokio::time::sleep(POLICY_CACHE).await;
    on_both(&near, &sessions, false).await;

    let clear = ["app", "set", "live", "--clear", "max_timeout_secs"];
    ok(clawdforge(&forge, &clear));
    tokio::time::sleep(POLICY_CACHE).await;
    on_both(&near, &sessions, true).await;
    let set = ["app", "set", "live", "--max-timeout-secs", "10"];
    ok(clawdforge(&forge, &set));
    tokio::time::sleep(POLICY_CACHE).await;
    on_both(&near, &sessions, false).await;
}

/// A turn of 20 s at most on each of `sessions` (each owned by another worker): `admitted`, or
/// refused by max_timeout_secs.
async fn on_both(app: &ForgeClient, sessions: &[String], admitted: bool) {
    for (n, id) in sessions.iter().enumerate() {
        let asking = wire::TurnRequest {
            timeout_secs: Some(20),
            ..turn(id, "a turn of 20 s at most")
        };
        match app.turn(&asking).await {
            Ok(_) if admitted => {}
            Err(ClientError::Api(e)) if !admitted && e.kind == ErrorKind::QuotaExceeded => {
                assert_eq!(e.limit.as_deref(), Some("max_timeout_secs"))
            }
            other => panic!("worker {n}, admitted {admitted}: {other:?}"),
        }
    }
}

fn f64_of(forge: &Forge, sql: &str, params: impl rusqlite::Params) -> f64 {
    forge.ledger().query_row(sql, params, |r| r.get(0)).unwrap()
}

fn i64_of(forge: &Forge, sql: &str, params: impl rusqlite::Params) -> i64 {
    forge.ledger().query_row(sql, params, |r| r.get(0)).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// `forge.usage` and `forge.admin.usage` say what the ledger holds, and HTTP says the same;
/// bad dates are bad requests; an app's token may not ask the admin subjects.
#[tokio::test]
async fn usage_is_what_the_ledger_holds_over_nats_and_http() {
    let forge = Forge::start_with(Options {
        env: claude_env(&[]),
        ..Default::default()
    })
    .await;
    let limits = json!({
        "max_open_sessions": 5, "max_concurrent_turns": 4, "max_concurrent_runs": 2,
        "requests_per_minute": 1000, "turns_per_day": 100, "runs_usd_per_day": 3.0,
        "runs_usd_per_month": 10.0, "agent_usd_per_month": 20.0, "max_timeout_secs": 100,
        "models": ["sonnet"],
    });
    set_policy(&forge, "metered", limits.clone()).await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let app = forge.app("metered").await;
    let token = app.token().unwrap().to_string();

    let (one, two) = (session_of(&app).await, session_of(&app).await);
    app.close_session(&two).await.unwrap();
    // The session's cost so far, as its agent reports it: the turns cost 0.25 and 0.5.
    for prompt in ["a #cost=0.25", "b #cost=0.75", "c"] {
        app.turn(&turn(&one, prompt)).await.unwrap();
    }
    for prompt in ["x #cost=0.1", "y"] {
        assert!(app.run(&run(prompt)).await.unwrap().ok);
    }
    let slow = wire::RunRequest {
        timeout_secs: Some(200),
        ..run("slow")
    };
    assert_eq!(kind(app.run(&slow).await), ErrorKind::QuotaExceeded);
    let haiku = wire::RunRequest {
        model: Some("haiku".into()),
        ..run("haiku")
    };
    assert_eq!(kind(app.run(&haiku).await), ErrorKind::Forbidden);

    let usage = app.usage().await.unwrap();
    assert_eq!(usage.app, "metered");
    let (date, month, minute) = (&usage.at[..10], &usage.at[..7], &usage.at[..16]);
    let (day_start, month_start) = (format!("{date}T00"), format!("{month}-01T00"));
    let expected: [(&str, f64, &str); 8] = [
        (
            "max_open_sessions",
            i64_of(
                &forge,
                "SELECT COUNT(*) FROM sessions WHERE app = 'metered' AND status = 'open'",
                [],
            ) as f64,
            "now",
        ),
        (
            "max_concurrent_turns",
            i64_of(
                &forge,
                "SELECT (SELECT COUNT(*) FROM session_events WHERE app = 'metered'
                          AND event = 'turn' AND outcome = 'running')
                      + (SELECT COUNT(*) FROM turn_waits WHERE app = 'metered')",
                [],
            ) as f64,
            "now",
        ),
        (
            "max_concurrent_runs",
            i64_of(
                &forge,
                "SELECT COUNT(*) FROM runs WHERE app = 'metered' AND outcome = 'running'",
                [],
            ) as f64,
            "now",
        ),
        (
            "requests_per_minute",
            i64_of(
                &forge,
                "SELECT COALESCE((SELECT requests FROM app_requests
                                   WHERE app = 'metered' AND minute = ?1), 0)",
                [minute],
            ) as f64,
            "minute",
        ),
        (
            "turns_per_day",
            i64_of(
                &forge,
                "SELECT COUNT(*) FROM session_events WHERE app = 'metered' AND event = 'turn'
                  AND at >= ?1",
                [&day_start],
            ) as f64,
            "day",
        ),
        (
            "runs_usd_per_day",
            f64_of(
                &forge,
                "SELECT SUM(cost_usd) FROM runs WHERE app = 'metered' AND created_at >= ?1",
                [&day_start],
            ),
            "day",
        ),
        (
            "runs_usd_per_month",
            f64_of(
                &forge,
                "SELECT SUM(cost_usd) FROM runs WHERE app = 'metered' AND created_at >= ?1",
                [&month_start],
            ),
            "month",
        ),
        (
            "agent_usd_per_month",
            f64_of(
                &forge,
                "SELECT SUM(cost_usd) FROM session_events WHERE app = 'metered'
                  AND event = 'turn' AND at >= ?1",
                [&month_start],
            ),
            "month",
        ),
    ];
    let shown = serde_json::to_value(&usage).unwrap();
    assert_eq!(shown["limits"].as_object().unwrap().len(), expected.len());
    for (limit, used, window) in expected {
        let entry = &shown["limits"][limit];
        let got = entry["used"].as_f64().unwrap();
        assert!(close(got, used), "{limit}: usage {got}, ledger {used}");
        assert_eq!(entry["limit"], limits[limit], "{limit}");
        assert_eq!(entry["window"], window, "{limit}");
        assert_eq!(entry.get("resets_at").is_some(), window != "now", "{limit}");
    }
    // What the test did, as the ledger counted it.
    let used = |l: &str| shown["limits"][l]["used"].as_f64().unwrap();
    assert_eq!(used("max_open_sessions"), 1.0);
    assert_eq!(used("turns_per_day"), 3.0);
    assert!(close(used("agent_usd_per_month"), 0.75));
    assert!(close(used("runs_usd_per_day"), 0.1 + 0.0123));

    let asked = wire::UsageAsked {
        app: Some("metered".into()),
        from: Some(date.into()),
        to: Some(date.into()),
    };
    let days = forge.admin.admin_usage(&asked).await.unwrap();
    assert_eq!(days.days.len(), 1);
    let day = &days.days[0];
    assert_eq!((day.date.as_str(), day.app.as_str()), (date, "metered"));
    let created = i64_of(
        &forge,
        "SELECT COUNT(*) FROM session_events WHERE app = 'metered' AND event = 'create'
          AND outcome IN ('ok', 'running')",
        [],
    );
    let turns = i64_of(
        &forge,
        "SELECT COUNT(*) FROM session_events WHERE app = 'metered' AND event = 'turn'",
        [],
    );
    let runs = i64_of(
        &forge,
        "SELECT COUNT(*) FROM runs WHERE app = 'metered'",
        [],
    );
    assert_eq!(
        (day.sessions_created, day.turns, day.runs),
        (created as u64, turns as u64, runs as u64)
    );
    assert_eq!((day.sessions_created, day.turns, day.runs), (2, 3, 2));
    assert!(close(day.runs_usd, used("runs_usd_per_day")));
    assert!(close(day.agent_usd, used("agent_usd_per_month")));
    let refused: Vec<(String, i64)> = forge
        .ledger()
        .prepare(
            "SELECT limit_name, refused FROM app_refusals WHERE app = 'metered' AND day = ?1
             ORDER BY 1",
        )
        .unwrap()
        .query_map([date], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let listed: Vec<(String, i64)> = day
        .refused
        .iter()
        .map(|(l, n)| (l.clone(), *n as i64))
        .collect();
    assert_eq!(listed, refused);
    assert_eq!(
        listed,
        [
            ("max_timeout_secs".to_string(), 1),
            ("models".to_string(), 1)
        ]
    );

    let every_app = wire::UsageAsked {
        app: None,
        ..asked.clone()
    };
    let all = forge.admin.admin_usage(&every_app).await.unwrap();
    let of_metered: Vec<_> = all.days.iter().filter(|d| d.app == "metered").collect();
    assert_eq!(of_metered, [day], "every app's days hold the app's");

    // HTTP: the same answers. /usage counts one request more, and is asked at another moment.
    let got = http(&sidecar, Method::GET, "/usage", Some(&token), None).await;
    assert_eq!(got.status, 200, "{}", got.body);
    let again = serde_json::to_value(app.usage().await.unwrap()).unwrap();
    let without_moment = |mut v: Value| {
        v.as_object_mut().unwrap().remove("at");
        let rpm = v["limits"]["requests_per_minute"].as_object_mut().unwrap();
        let used = rpm.remove("used").unwrap().as_u64().unwrap();
        // Another minute may have begun between the two.
        rpm.remove("resets_at");
        (v, used)
    };
    let ((http_usage, http_rpm), (nats_usage, nats_rpm)) =
        (without_moment(got.body), without_moment(again));
    assert_eq!(http_usage, nats_usage);
    // forge.usage is not counted against requests per minute: asking twice counts nothing
    // (unless a new minute began between the two, which counts from 0).
    assert!(
        nats_rpm == http_rpm || nats_rpm == 0,
        "{nats_rpm} {http_rpm}"
    );

    let query = format!("/admin/usage?app=metered&from={date}&to={date}");
    let admin = Some(crate::harness::ROOT_TOKEN);
    let got = http(&sidecar, Method::GET, &query, admin, None).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body, serde_json::to_value(&days).unwrap());
    let got = http(
        &sidecar,
        Method::GET,
        "/admin/usage?app=metered",
        admin,
        None,
    )
    .await;
    assert_eq!(
        got.body,
        serde_json::to_value(&days).unwrap(),
        "today by default"
    );

    // Bad dates, a range backwards: bad_request, both ways.
    for (from, to) in [
        ("2026-13-01", "2026-12-01"),
        ("yesterday", "2026-12-01"),
        ("2026-12-02", "2026-12-01"),
    ] {
        let asked = wire::UsageAsked {
            app: None,
            from: Some(from.into()),
            to: Some(to.into()),
        };
        assert_eq!(
            kind(forge.admin.admin_usage(&asked).await),
            ErrorKind::BadRequest,
            "{from}..{to}"
        );
        let path = format!("/admin/usage?from={from}&to={to}");
        let got = http(&sidecar, Method::GET, &path, admin, None).await;
        assert_eq!(got.status, 400, "{path}: {}", got.body);
        assert_eq!(got.body["error"]["code"], "bad_request");
    }

    // An app's token on the admin subjects: forbidden.
    assert_eq!(kind(app.admin_usage(&asked).await), ErrorKind::Forbidden);
    assert_eq!(kind(app.app_policy("metered").await), ErrorKind::Forbidden);
    assert_eq!(kind(app.app_policies().await), ErrorKind::Forbidden);
    let change = policy_set("metered", json!({"max_open_sessions": 50}));
    assert_eq!(
        kind(app.set_app_policy(&change).await),
        ErrorKind::Forbidden
    );
    for path in ["/admin/usage", "/admin/apps", "/admin/apps/metered"] {
        let got = http(&sidecar, Method::GET, path, Some(&token), None).await;
        assert_eq!(got.status, 403, "{path}: {}", got.body);
    }
}

/// `forge.admin.app.get` fills in `[app_defaults]` and says where each value comes from; the
/// defaults hold an app with no policy, but not the admin's operations; `list` holds every app
/// with a token or a policy; a bad change is a bad request.
#[tokio::test]
async fn policies_show_their_defaults_and_bad_changes_are_refused() {
    // requests_per_minute = 2 holds every app to two requests a minute, but not the admin,
    // which asks many more here.
    let defaults = "[app_defaults]\nmax_open_sessions = 8\nturns_per_day = 100\n\
                    max_timeout_secs = 100\nrequests_per_minute = 2\n";
    let forge = Forge::start_with(Options {
        config_toml: Some(format!("{defaults}{}", spare_agent())),
        ..Default::default()
    })
    .await;
    let fresh = forge.admin.app_policy("fresh").await.unwrap();
    assert_eq!(fresh.fields.max_open_sessions, Some(8));
    assert_eq!(fresh.fields.turns_per_day, Some(100));
    assert_eq!(fresh.fields.requests_per_minute, Some(2));
    assert_eq!(fresh.fields.runs_usd_per_month, None);
    assert_eq!(fresh.updated_at, None);
    assert_eq!(fresh.sources.len(), clawdforge::quota::Limit::ALL.len());
    assert!(
        fresh.sources.values().all(|s| *s == Source::Default),
        "{fresh:?}"
    );

    let set = set_policy(
        &forge,
        "fresh",
        json!({"max_open_sessions": 2, "agents": ["spare"], "runs_usd_per_month": 5}),
    )
    .await;
    let got = forge.admin.app_policy("fresh").await.unwrap();
    assert_eq!(got, set, "set answers the policy as get does");
    assert_eq!(got.fields.max_open_sessions, Some(2));
    assert_eq!(got.fields.agents, Some(vec!["spare".to_string()]));
    assert_eq!(got.fields.turns_per_day, Some(100));
    assert!(got.updated_at.is_some());
    for (field, source) in [
        ("max_open_sessions", Source::App),
        ("agents", Source::App),
        ("runs_usd_per_month", Source::App),
        ("turns_per_day", Source::Default),
        ("models", Source::Default),
    ] {
        assert_eq!(got.sources[field], source, "{field}");
    }
    // A default applies to an app with no policy of its own.
    let tokened = forge.app("tokened").await;
    let slow = wire::RunRequest {
        timeout_secs: Some(101),
        ..run("slow")
    };
    match tokened.run(&slow).await {
        Err(ClientError::Api(e)) => {
            assert_eq!(e.kind, ErrorKind::QuotaExceeded);
            assert_eq!(e.limit.as_deref(), Some("max_timeout_secs"));
        }
        other => panic!("{other:?}"),
    }
    let mut sent = 1;
    let refused = loop {
        sent += 1;
        match tokened.list_sessions().await {
            Err(ClientError::Api(e)) => break e,
            Ok(_) if sent < 6 => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(refused.kind, ErrorKind::QuotaExceeded);
    assert_eq!(refused.limit.as_deref(), Some("requests_per_minute"));
    // Clearing a field brings the default back.
    let cleared = set_policy(&forge, "fresh", json!({"max_open_sessions": null})).await;
    assert_eq!(cleared.fields.max_open_sessions, Some(8));
    assert_eq!(cleared.sources["max_open_sessions"], Source::Default);
    assert_eq!(cleared.fields.agents, Some(vec!["spare".to_string()]));

    let list = forge.admin.app_policies().await.unwrap();
    let names: Vec<&str> = list.apps.iter().map(|p| p.app.as_str()).collect();
    assert!(
        names.contains(&"fresh") && names.contains(&"tokened"),
        "{names:?}"
    );
    assert!(!names.contains(&"nobody"), "{names:?}");
    let listed = list.apps.iter().find(|p| p.app == "fresh").unwrap();
    assert_eq!(listed, &cleared);

    for bad in [
        json!({"app": "fresh", "agents": ["nonesuch"]}),
        json!({"app": "fresh", "runs_usd_per_day": -1.0}),
        json!({"app": "fresh", "agent_usd_per_month": -0.01}),
        json!({"app": "fresh", "max_sessions": 3}),
        json!({"app": "fresh", "max_open_sessions": -1}),
        json!({"app": "no spaces", "max_open_sessions": 1}),
    ] {
        let (status, reply) = nats(&forge.admin, subject::APP_SET, &bad).await;
        assert_eq!(status, Some(400), "{bad}: {reply}");
        assert_eq!(reply["error"]["code"], "bad_request", "{bad}: {reply}");
    }
    assert_eq!(forge.admin.app_policy("fresh").await.unwrap(), cleared);
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The row of `field` in `app show`'s table.
fn row_of<'a>(table: &'a str, field: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(field))
        .unwrap_or_else(|| panic!("no {field} in:\n{table}"));
    words(line)
}

/// `clawdforge app set|show|list` and `clawdforge usage` on the ledger, and a running worker
/// holding the app to what the CLI set.
#[tokio::test]
async fn the_cli_sets_and_shows_policies_and_usage_and_a_running_worker_enforces_them() {
    let forge = Forge::start().await;
    let app = forge.app("notes").await;
    // The worker reads the app's policy (none) before the CLI changes it.
    assert!(app.list_sessions().await.unwrap().sessions.is_empty());

    let set = ok(clawdforge(
        &forge,
        &[
            "app",
            "set",
            "notes",
            "--max-open-sessions",
            "2",
            "--runs-usd-per-month",
            "5",
        ],
    ));
    assert_eq!(
        row_of(&set, "max_open_sessions"),
        ["max_open_sessions", "2", "app"]
    );
    let shown = ok(clawdforge(&forge, &["app", "show", "notes"]));
    assert_eq!(
        row_of(&shown, "max_open_sessions"),
        ["max_open_sessions", "2", "app"]
    );
    assert_eq!(
        row_of(&shown, "runs_usd_per_month"),
        ["runs_usd_per_month", "5.0", "app"]
    );
    assert_eq!(
        row_of(&shown, "turns_per_day"),
        ["turns_per_day", "-", "default"]
    );
    let json: wire::Policy =
        serde_json::from_str(&ok(clawdforge(&forge, &["app", "show", "notes", "--json"]))).unwrap();
    assert_eq!(json.fields.max_open_sessions, Some(2));
    assert_eq!(json.fields.runs_usd_per_month, Some(5.0));
    assert_eq!(json.sources["max_open_sessions"], Source::App);
    assert_eq!(
        json,
        forge.admin.app_policy("notes").await.unwrap(),
        "as NATS says"
    );
    let listed = ok(clawdforge(&forge, &["app", "list"]));
    let line = listed
        .lines()
        .find(|l| l.starts_with("notes "))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        line.contains("max_open_sessions=2") && line.contains("runs_usd_per_month=5.0"),
        "{listed}"
    );

    // The worker, which read the policy before, holds the app to it within a second.
    tokio::time::sleep(POLICY_CACHE).await;
    let (a, _b) = (session_of(&app).await, session_of(&app).await);
    match app.create_session(&CreateSession::default()).await {
        Err(ClientError::Api(e)) => {
            assert_eq!(e.kind, ErrorKind::QuotaExceeded);
            assert_eq!(e.limit.as_deref(), Some("max_open_sessions"));
        }
        other => panic!("{other:?}"),
    }
    app.turn(&turn(&a, "hello #cost=0.2")).await.unwrap();

    let cleared = ok(clawdforge(
        &forge,
        &[
            "app",
            "set",
            "notes",
            "--clear",
            "runs_usd_per_month",
            "--json",
        ],
    ));
    let cleared: wire::Policy = serde_json::from_str(&cleared).unwrap();
    assert_eq!(cleared.fields.runs_usd_per_month, None);
    assert_eq!(cleared.sources["runs_usd_per_month"], Source::Default);
    assert_eq!(cleared.fields.max_open_sessions, Some(2));
    let bad = clawdforge(&forge, &["app", "set", "notes", "--clear", "bogus"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bogus"));

    let usage = ok(clawdforge(&forge, &["usage", "--app", "notes", "--json"]));
    let usage: wire::UsageDays = serde_json::from_str(&usage).unwrap();
    let asked = wire::UsageAsked {
        app: Some("notes".into()),
        ..Default::default()
    };
    assert_eq!(usage, forge.admin.admin_usage(&asked).await.unwrap());
    let day = &usage.days[0];
    assert_eq!((day.sessions_created, day.turns), (2, 1));
    assert!(close(day.agent_usd, 0.2));
    assert_eq!(day.refused.get("max_open_sessions"), Some(&1));
    let table = ok(clawdforge(&forge, &["usage", "--app", "notes"]));
    let line = table.lines().find(|l| l.contains(" notes ")).unwrap();
    assert_eq!(
        words(line)[1..].to_vec(),
        [
            "notes",
            "2",
            "1",
            "0",
            "0.0000",
            "0.2000",
            "max_open_sessions=1"
        ]
    );
}

/// The decision the agent's `#permission=execute` got in a new session of `app`, as the
/// turn's permission event and its output say.
async fn permission_decided(app: &ForgeClient) -> (Vec<PermissionDecision>, String) {
    let id = session_of(app).await;
    let req = turn(&id, "#permission=execute");
    let mut decisions = Vec::new();
    let t = app
        .turn_streaming(&req, Duration::from_secs(60), |e| {
            if let EventBody::Permission { decision, .. } = &e.body {
                decisions.push(*decision);
            }
        })
        .await
        .unwrap();
    (decisions, t.output)
}

/// An app capped at `deny_all` has its agents' requests rejected, where an uncapped app's
/// agent (allow_all) has them allowed: through acpx, which answers them itself, and through a
/// native connection, where the worker answers them.
async fn max_permissions_caps_what_the_agent_allows(via: Via) {
    let forge = Forge::start_via(via).await;
    set_policy(&forge, "capped", json!({"max_permissions": "deny_all"})).await;
    let (free, capped) = (forge.app("free").await, forge.app("capped").await);

    let (decisions, output) = permission_decided(&free).await;
    assert_eq!(decisions, [PermissionDecision::Allowed]);
    assert!(output.ends_with("[permission=allow]"), "{output}");

    let (decisions, output) = permission_decided(&capped).await;
    assert_eq!(decisions, [PermissionDecision::Rejected]);
    assert!(output.ends_with("[permission=reject]"), "{output}");
}

crate::both_backends!(max_permissions_caps_what_the_agent_allows);
