//! Prometheus metrics: a worker's `/metrics` on `metrics_addr` and the sidecar's own. Each figure
//! moves by exactly what the test's requests did (scrapes before and after, compared); labels
//! stay bounded (no id, no token); a worker serves metrics only when `metrics_addr` is set, and
//! one that cannot serve them there does not start.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use clawdforge::client::{ClientError, ForgeClient, Frame};
use clawdforge::error::ErrorKind;
use clawdforge::wire::{self, CreateSession, EventBody};
use prometheus_parse::{Scrape, Value};
use serde_json::json;

use crate::harness::{addr_port, http_client, Forge, HttpProcess, Options, Via};
use crate::ledger::wait_for_running_turn;
use crate::runs::{claude_env, run};
use crate::sessions::{kind, turn};

/// The labels a series may carry.
const ALLOWED_LABELS: [&str; 12] = [
    "op", "outcome", "agent", "backend", "app", "type", "kind", "status", "model", "limit", "le",
    "quantile",
];

/// How long a streamed turn may stay silent.
const STALL: Duration = Duration::from_secs(60);

/// A worker with `/metrics` on a port of its own, and a sidecar.
struct Scraped {
    forge: Forge,
    worker: String,
    sidecar: HttpProcess,
}

/// One worker with METRICS_ADDR=127.0.0.1:0 (the stand-in claude for runs), its default agent
/// through `via`, and a sidecar (which is given no METRICS_ADDR).
async fn start(via: Via, extra: &[(&str, &str)]) -> Scraped {
    let mut forge = Forge::start_with(Options {
        workers: 0,
        via,
        env: claude_env(extra),
        ..Default::default()
    })
    .await;
    forge.spawn_worker(&[("METRICS_ADDR", "127.0.0.1:0")]);
    forge.wait_for_workers(1).await;
    let port = metrics_port(&forge, 0).await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    Scraped {
        forge,
        worker: format!("http://127.0.0.1:{port}/metrics"),
        sidecar,
    }
}

/// The port of worker `n`'s "metrics ready" line.
async fn metrics_port(forge: &Forge, n: usize) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&forge.workers[n].log).unwrap_or_default();
        let ready = log.lines().filter(|l| l.contains("metrics ready"));
        if let Some(port) = ready.clone().find_map(addr_port) {
            return port;
        }
        assert!(
            ready.count() == 0,
            "no port in the metrics ready line:\n{log}"
        );
        assert!(
            Instant::now() < deadline,
            "worker {n} serves no metrics:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Prometheus text at `url`, which must answer 200 in the text format.
async fn text_at(url: &str) -> String {
    let answer = http_client().get(url).send().await.expect("a scrape");
    assert_eq!(answer.status().as_u16(), 200, "{url}");
    let content_type = answer.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    answer.text().await.unwrap()
}

/// A parsed scrape, with its text for messages.
struct Figures {
    scrape: Scrape,
    text: String,
}

impl Figures {
    async fn of(url: &str) -> Figures {
        let text = text_at(url).await;
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        Figures { scrape, text }
    }

    /// The sum of the series `name` whose labels include `labels` (0 when there is none). A
    /// histogram's `_count` and `_sum` are series of their own.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{name} is not a plain series: {other:?}"),
            })
            .sum()
    }

    /// Whether some series is named `name`.
    fn has(&self, name: &str) -> bool {
        self.scrape.samples.iter().any(|s| s.metric == name)
    }
}

/// How far `name{labels}` moved from `before` to `after`.
fn moved(before: &Figures, after: &Figures, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.get(name, labels) - before.get(name, labels)
}

/// Asserts that `name{labels}` moved by exactly `by` (to a millionth, for the dollar figures).
#[track_caller]
fn assert_moved(before: &Figures, after: &Figures, name: &str, labels: &[(&str, &str)], by: f64) {
    let delta = moved(before, after, name, labels);
    assert!(
        (delta - by).abs() < 1e-6,
        "{name}{labels:?} moved by {delta}, not {by}:\n{}",
        after.text
    );
}

/// An open session of `app`'s client.
async fn session(app: &ForgeClient) -> String {
    app.create_session(&CreateSession::default())
        .await
        .unwrap()
        .session_id
}

/// Reads a turn's stream until an event of type `until` (or to its end when `None`): the events
/// read, and the reply when the stream ended.
async fn read_stream(
    stream: &mut clawdforge::client::ReplyStream,
    events: &mut Vec<wire::Event>,
    until: Option<&str>,
) -> Option<wire::Turn> {
    while let Some(frame) = stream.next().await {
        match frame.expect("a frame") {
            Frame::Event(e) => {
                let kind = e.body.kind();
                events.push(e);
                if until == Some(kind) {
                    return None;
                }
            }
            Frame::Heartbeat => {}
            Frame::Reply(r) => return Some(r.parse().expect("the turn's reply")),
        }
    }
    assert!(until.is_none(), "the stream ended before a {until:?} event");
    panic!("the stream ended without its reply")
}

/// Tool calls by (kind, final status).
type ToolCalls = BTreeMap<(String, String), u64>;

/// Events by type, and tool calls by (kind, final status) as the turn's tally counts them.
fn counted(events: &[wire::Event]) -> (BTreeMap<&'static str, u64>, ToolCalls) {
    let mut by_type = BTreeMap::new();
    let mut calls: BTreeMap<String, (String, String)> = BTreeMap::new();
    for e in events {
        *by_type.entry(e.body.kind()).or_default() += 1;
        match &e.body {
            EventBody::ToolCall {
                tool_call_id,
                kind,
                status,
                ..
            } => {
                let kind = kind.clone().unwrap_or_else(|| "other".into());
                let status = status.clone().unwrap_or_else(|| "pending".into());
                calls.insert(tool_call_id.clone(), (kind, status));
            }
            EventBody::ToolCallUpdate {
                tool_call_id,
                status: Some(status),
                ..
            } => {
                if let Some(call) = calls.get_mut(tool_call_id) {
                    call.1 = status.clone();
                }
            }
            _ => {}
        }
    }
    let mut tools = BTreeMap::new();
    for call in calls.into_values() {
        *tools.entry(call).or_default() += 1;
    }
    (by_type, tools)
}

/// Every figure moves by what the requests did: refusals, a turn with its events and tool
/// calls, a cancelled turn, a run and its cost, an agent's cost, the gauges; the sidecar
/// counts the workers; both report their memory.
#[tokio::test]
async fn the_figures_move_by_exactly_what_the_requests_did() {
    let Scraped {
        forge,
        worker,
        sidecar,
    } = start(Via::Acpx, &[]).await;
    let app = forge.app("measured").await;

    // Refusals: a bad token, then a quota.
    let before = Figures::of(&worker).await;
    let stranger = forge.admin.with_token(Some("not-a-token".into()));
    assert_eq!(
        kind(stranger.list_sessions().await),
        ErrorKind::Unauthorized
    );
    forge
        .admin
        .set_app_policy(
            &serde_json::from_value(json!({"app": "capped", "max_open_sessions": 1})).unwrap(),
        )
        .await
        .unwrap();
    let capped = forge.app("capped").await;
    session(&capped).await;
    assert_eq!(
        kind(capped.create_session(&CreateSession::default()).await),
        ErrorKind::QuotaExceeded
    );
    let after = Figures::of(&worker).await;
    let requests = "clawdforge_requests_total";
    let unauthorized = [("op", "session.list"), ("outcome", "unauthorized")];
    assert_moved(&before, &after, requests, &unauthorized, 1.0);
    let refused = [("app", "capped"), ("limit", "max_open_sessions")];
    assert_moved(
        &before,
        &after,
        "clawdforge_quota_refusals_total",
        &refused,
        1.0,
    );
    let quota = [("op", "session.create"), ("outcome", "quota_exceeded")];
    assert_moved(&before, &after, requests, &quota, 1.0);
    assert_moved(
        &before,
        &after,
        requests,
        &[("op", "session.create"), ("outcome", "ok")],
        1.0,
    );
    assert_moved(&before, &after, "clawdforge_quota_refusals_total", &[], 1.0);

    // A turn held by #wait-file: running while held, then its events and tool calls counted.
    let held = session(&app).await;
    let release = forge.dir.path().join("release");
    let before = Figures::of(&worker).await;
    let prompt = format!("look #wait-file={}", release.display());
    let mut stream = app
        .open_stream(wire::subject::SESSION_TURN, &turn(&held, &prompt), STALL)
        .await
        .unwrap();
    let mut events = Vec::new();
    read_stream(&mut stream, &mut events, Some("plan")).await;
    let during = Figures::of(&worker).await;
    assert_eq!(
        during.get("clawdforge_turns_running", &[]),
        1.0,
        "{}",
        during.text
    );
    assert_eq!(
        during.get("clawdforge_turns_queued", &[]),
        0.0,
        "{}",
        during.text
    );
    std::fs::write(&release, "").unwrap();
    let ended = read_stream(&mut stream, &mut events, None).await.unwrap();
    assert_eq!(ended.stop_reason, "end_turn");
    let after = Figures::of(&worker).await;
    assert_eq!(
        after.get("clawdforge_turns_running", &[]),
        0.0,
        "{}",
        after.text
    );
    let (by_type, tools) = counted(&events);
    assert!(
        tools.values().sum::<u64>() >= 1,
        "the turn made tool calls: {events:?}"
    );
    for (kind, n) in &by_type {
        assert_moved(
            &before,
            &after,
            "clawdforge_events_total",
            &[("type", kind)],
            *n as f64,
        );
    }
    let all_events = events.len() as f64;
    assert_moved(&before, &after, "clawdforge_events_total", &[], all_events);
    for ((kind, status), n) in &tools {
        let labels = [
            ("agent", "default"),
            ("kind", kind.as_str()),
            ("status", status.as_str()),
        ];
        assert_moved(
            &before,
            &after,
            "clawdforge_tool_calls_total",
            &labels,
            *n as f64,
        );
    }
    let all_calls = tools.values().sum::<u64>() as f64;
    assert_moved(
        &before,
        &after,
        "clawdforge_tool_calls_total",
        &[],
        all_calls,
    );
    let agent = [("agent", "default"), ("backend", "acpx")];
    let end_turn = [agent[0], agent[1], ("outcome", "end_turn")];
    assert_moved(&before, &after, "clawdforge_turns_total", &end_turn, 1.0);
    assert_moved(&before, &after, "clawdforge_turns_total", &[], 1.0);
    for histogram in [
        "clawdforge_turn_duration_seconds",
        "clawdforge_turn_first_event_seconds",
    ] {
        assert_moved(&before, &after, &format!("{histogram}_count"), &agent, 1.0);
    }
    let turned = [("op", "session.turn"), ("outcome", "ok")];
    assert_moved(&before, &after, requests, &turned, 1.0);
    assert_moved(
        &before,
        &after,
        "clawdforge_request_duration_seconds_count",
        &[("op", "session.turn")],
        1.0,
    );

    // A cancelled turn.
    let cancelled = session(&app).await;
    let before = Figures::of(&worker).await;
    let hanging = {
        let (app, req) = (app.clone(), turn(&cancelled, "wait #hang"));
        tokio::spawn(async move { app.turn(&req).await })
    };
    wait_for_running_turn(&forge.ledger_path(), &cancelled).await;
    assert!(app.cancel_turn(&cancelled).await.unwrap().cancelled);
    let ended = hanging.await.unwrap().unwrap();
    assert_eq!(ended.stop_reason, "cancelled");
    let after = Figures::of(&worker).await;
    let outcome = [agent[0], agent[1], ("outcome", "cancelled")];
    assert_moved(&before, &after, "clawdforge_turns_total", &outcome, 1.0);
    assert_moved(&before, &after, "clawdforge_turns_total", &[], 1.0);
    assert_moved(
        &before,
        &after,
        requests,
        &[("op", "session.cancel"), ("outcome", "ok")],
        1.0,
    );
    assert_eq!(
        after.get("clawdforge_turns_running", &[]),
        0.0,
        "{}",
        after.text
    );

    // A run, with the stand-in's cost, and one that states its own.
    let before = Figures::of(&worker).await;
    let ran = app.run(&run("hello")).await.unwrap();
    assert!(ran.ok, "{ran:?}");
    let costly = app.run(&run("hello #cost=0.5")).await.unwrap();
    assert!(costly.ok, "{costly:?}");
    let after = Figures::of(&worker).await;
    let ok = [("model", ran.model.as_str()), ("outcome", "ok")];
    assert_moved(&before, &after, "clawdforge_runs_total", &ok, 2.0);
    assert_moved(
        &before,
        &after,
        "clawdforge_run_cost_usd_total",
        &[("app", "measured")],
        0.5123,
    );
    assert_moved(
        &before,
        &after,
        requests,
        &[("op", "run"), ("outcome", "ok")],
        2.0,
    );
    assert_eq!(
        after.get("clawdforge_runs_running", &[]),
        0.0,
        "{}",
        after.text
    );

    // An agent's cost: a turn in a fresh session that reports 0.25 USD, against a budget of 5
    // (the runs' dollars above have no budget: not reported).
    let budget = json!({"app": "measured", "agent_usd_per_month": 5});
    let budget = serde_json::from_value(budget).unwrap();
    forge.admin.set_app_policy(&budget).await.unwrap();
    let paying = session(&app).await;
    let before = Figures::of(&worker).await;
    app.turn(&turn(&paying, "pay #cost=0.25")).await.unwrap();
    let after = Figures::of(&worker).await;
    let cost = [("app", "measured"), ("agent", "default")];
    assert_moved(
        &before,
        &after,
        "clawdforge_agent_cost_usd_total",
        &cost,
        0.25,
    );
    let month = [("app", "measured"), ("limit", "agent_usd_per_month")];
    assert_eq!(after.get("clawdforge_budget_usd", &month), 5.0);
    assert_moved(&before, &after, "clawdforge_budget_used_usd", &month, 0.25);
    let runs_budget = [("app", "measured"), ("limit", "runs_usd_per_day")];
    assert!(
        !after.text.contains("limit=\"runs_usd_per_day\""),
        "{:?} has no budget: {}",
        runs_budget,
        after.text
    );

    // Open sessions, as the ledger has them; one closed, one fewer.
    let open = [("app", "measured"), ("agent", "default")];
    assert_eq!(
        after.get("clawdforge_sessions_open", &open),
        3.0,
        "{}",
        after.text
    );
    let capped_open = [("app", "capped"), ("agent", "default")];
    assert_eq!(after.get("clawdforge_sessions_open", &capped_open), 1.0);
    app.close_session(&paying).await.unwrap();
    let now = Figures::of(&worker).await;
    assert_eq!(
        now.get("clawdforge_sessions_open", &open),
        2.0,
        "{}",
        now.text
    );

    // The sidecar counts the workers; both processes report their memory.
    let side = Figures::of(&sidecar.url("/metrics")).await;
    assert_eq!(side.get("clawdforge_workers", &[]), 1.0, "{}", side.text);
    assert!(
        !now.has("clawdforge_workers"),
        "a worker does not count workers"
    );
    for figures in [&now, &side] {
        let rss = figures.get("process_resident_memory_bytes", &[]);
        assert!(rss > 0.0, "{}", figures.text);
        assert!(figures.has("process_cpu_seconds_total"), "{}", figures.text);
    }
}

/// Whether `value` looks like a UUID (8-4-4-4-12 hex digits).
fn uuid_shaped(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let lengths: Vec<usize> = parts.iter().map(|p| p.len()).collect();
    lengths == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Fifty sessions (through the native backend: one agent process for them all), turns, a run,
/// refusals: no series of either endpoint carries an id or a
/// token, and every label is one of the allowed few.
#[tokio::test]
async fn labels_stay_bounded_whatever_the_sessions() {
    let Scraped {
        forge,
        worker,
        sidecar,
    } = start(Via::Acp, &[("CLAWDFORGE_MAX_LIVE_SESSIONS", "64")]).await;
    let created = forge.admin.create_token("many", false).await.unwrap();
    let app = forge.admin.with_token(Some(created.token.clone()));
    let mut ids = BTreeSet::new();
    for _ in 0..50 {
        ids.insert(session(&app).await);
    }
    for id in ids.iter().take(2) {
        app.turn(&turn(id, "hi")).await.unwrap();
    }
    let ran = app.run(&run("hello")).await.unwrap();
    ids.insert(ran.run_id.clone());
    let last = ids.iter().next().unwrap().clone();
    app.close_session(&last).await.unwrap();
    let stranger = forge.admin.with_token(Some("not-a-token".into()));
    assert!(matches!(
        stranger.list_sessions().await,
        Err(ClientError::Api(_))
    ));
    let secrets = [
        created.token.as_str(),
        created.token_id.as_str(),
        crate::harness::ROOT_TOKEN,
        "not-a-token",
    ];

    for url in [worker.clone(), sidecar.url("/metrics")] {
        let figures = Figures::of(&url).await;
        assert!(!figures.scrape.samples.is_empty(), "{url}");
        for sample in &figures.scrape.samples {
            for (name, value) in sample.labels.iter() {
                assert!(
                    ALLOWED_LABELS.contains(&name.as_str()),
                    "{url}: {} has a label {name}:\n{}",
                    sample.metric,
                    figures.text
                );
                assert!(
                    !uuid_shaped(value),
                    "{url}: {}{{{name}={value:?}}} holds an id",
                    sample.metric
                );
            }
        }
        for secret in ids.iter().map(String::as_str).chain(secrets) {
            assert!(
                !figures.text.contains(secret),
                "{url} holds {secret}:\n{}",
                figures.text
            );
        }
    }
    let figures = Figures::of(&worker).await;
    let open = [("app", "many"), ("agent", "default")];
    assert_eq!(
        figures.get("clawdforge_sessions_open", &open),
        49.0,
        "{}",
        figures.text
    );
    let native = [("backend", "acp")];
    let processes = figures.get("clawdforge_agent_processes", &native);
    assert_eq!(
        processes, 1.0,
        "one agent process for the app:\n{}",
        figures.text
    );
}

/// A worker without `metrics_addr` serves no metrics; one whose `metrics_addr` cannot be served
/// does not start, and says which setting is wrong.
#[tokio::test]
async fn metrics_addr_unset_serves_none_and_a_bad_one_stops_the_worker() {
    let mut forge = Forge::start().await;
    forge.wait_for_log(&["worker ready"]).await;
    assert!(!forge.logs().contains("metrics ready"), "{}", forge.logs());

    let n = forge.spawn_worker(&[("METRICS_ADDR", "nonsense")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = forge.workers[n].child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the worker runs with a bad metrics_addr:\n{}",
            forge.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let err = std::fs::read_to_string(&forge.workers[n].log).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("metrics_addr"), "{err}");
    assert!(err.contains("nonsense"), "{err}");
    assert!(!err.contains("worker ready"), "{err}");
}

/// Two workers on one ledger report the same open sessions, whichever created them (so
/// `max`, not `sum`, aggregates them); each counts only the requests it answered.
#[tokio::test]
async fn every_worker_reports_the_ledger_wide_open_sessions() {
    let mut forge = Forge::start_with(Options {
        workers: 0,
        via: Via::Acp,
        ..Default::default()
    })
    .await;
    for _ in 0..2 {
        forge.spawn_worker(&[("METRICS_ADDR", "127.0.0.1:0")]);
    }
    forge.wait_for_workers(2).await;
    let mut urls = Vec::new();
    for n in 0..2 {
        let port = metrics_port(&forge, n).await;
        urls.push(format!("http://127.0.0.1:{port}/metrics"));
    }
    let app = forge.app("shared").await;
    let mut before = Vec::new();
    for url in &urls {
        before.push(Figures::of(url).await);
    }
    for _ in 0..6 {
        session(&app).await;
    }
    let open = [("app", "shared"), ("agent", "default")];
    let created = [("op", "session.create"), ("outcome", "ok")];
    let mut answered = 0.0;
    for (url, before) in urls.iter().zip(&before) {
        let after = Figures::of(url).await;
        let figure = after.get("clawdforge_sessions_open", &open);
        assert_eq!(figure, 6.0, "{url}:\n{}", after.text);
        answered += moved(before, &after, "clawdforge_requests_total", &created);
    }
    assert_eq!(
        answered, 6.0,
        "the workers together answered the six creates"
    );
}
