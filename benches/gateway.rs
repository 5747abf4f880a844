//! The gateway's costs, each next to a baseline measured in the same run on the same machine:
//! control operations against a raw NATS echo responder, a turn against `acpx prompt` run
//! directly, HTTP against NATS, one worker against two, and a worker's memory.
//!
//! Run: `cargo bench --bench gateway`; it runs scripts/setup-tools.sh first, which installs the
//! tools it needs (nats-server, Node 22, acpx) into `.tools/` when they are missing. Prints a
//! table and writes it to `bench-results/<version>-<time>.md`. `-- --quick` takes fewer
//! samples; `-- --control-only` stops after the control operations.

#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::service::ServiceExt;
use clawdforge::client::ForgeClient;
use clawdforge::wire::{CreateSession, TurnRequest};
use futures::StreamExt;
use harness::{Forge, Options};

const ECHO_SUBJECT: &str = "bench.echo";

struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    fn new(mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        Stats { samples }
    }

    fn pct(&self, p: f64) -> Duration {
        let i = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples[i]
    }

    fn p50(&self) -> Duration {
        self.pct(0.50)
    }

    fn p99(&self) -> Duration {
        self.pct(0.99)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn sequential<F, Fut>(n: usize, mut f: F) -> Stats
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..n.min(50) {
        f().await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        samples.push(t.elapsed());
    }
    Stats::new(samples)
}

/// Requests per second with `in_flight` requests outstanding, over `total` requests.
async fn throughput<F, Fut>(total: usize, in_flight: usize, f: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let f = f.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                f().await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    total as f64 / t.elapsed().as_secs_f64()
}

/// The raw echo responder: the service API, one endpoint, the payload back. Runs in its own
/// process (this binary, re-executed), as the worker does.
async fn echo_server(url: &str) {
    let client = async_nats::connect(url).await.unwrap();
    let service = client
        .service_builder()
        .queue_group("bench")
        .start("bench-echo", "1.0.0")
        .await
        .unwrap();
    let mut endpoint = service.endpoint(ECHO_SUBJECT).await.unwrap();
    while let Some(req) = endpoint.next().await {
        let payload = req.message.payload.clone();
        tokio::spawn(async move {
            let _ = req.respond(Ok(payload)).await;
        });
    }
}

struct Report {
    rows: Vec<[String; 5]>,
}

impl Report {
    fn row(&mut self, what: &str, baseline: &str, base: f64, value: f64, unit: &str) {
        let ratio = if base > 0.0 { value / base } else { f64::NAN };
        let line = [
            what.to_string(),
            baseline.to_string(),
            format!("{base:.3} {unit}"),
            format!("{value:.3} {unit}"),
            format!("{ratio:.2}x"),
        ];
        println!(
            "{:<44} {:<28} {:>14} {:>14} {:>8}",
            line[0], line[1], line[2], line[3], line[4]
        );
        self.rows.push(line);
    }

    fn markdown(&self) -> String {
        let mut out = String::from(
            "| measure | baseline | baseline value | clawdforge | ratio |\n|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r[0], r[1], r[2], r[3], r[4]
            );
        }
        out
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The native backend (`backend = "acp"`, the same test agent) against acpx: a warm turn
/// against acpx's result line, create+close against the gateway's acpx create+close, and the
/// agent processes of warm sessions of two apps against as many acpx sessions.
async fn native_rows(
    forge: &Forge,
    report: &mut Report,
    acpx_turn: &Stats,
    acpx_create: &Stats,
    quick: bool,
) {
    let native = || CreateSession {
        agent: Some("native".into()),
        files: vec![],
    };
    let app = forge.app("bench-native").await;
    let s = app.create_session(&native()).await.unwrap();
    app.turn(&turn(&s.session_id, "warm up")).await.unwrap();
    let n = if quick { 100 } else { 500 };
    let mut turns = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        app.turn(&turn(&s.session_id, &format!("native {i}")))
            .await
            .unwrap();
        turns.push(t.elapsed());
    }
    let turns = Stats::new(turns);
    report.row(
        "turn p50, backend acp (warm)",
        "acpx prompt: result line",
        ms(acpx_turn.p50()),
        ms(turns.p50()),
        "ms",
    );
    report.row(
        "turn p99, backend acp (warm)",
        "acpx prompt: result line p99",
        ms(acpx_turn.p99()),
        ms(turns.p99()),
        "ms",
    );
    let mut creates = Vec::new();
    for _ in 0..if quick { 10 } else { 50 } {
        let t = Instant::now();
        let c = app.create_session(&native()).await.unwrap();
        app.close_session(&c.session_id).await.unwrap();
        creates.push(t.elapsed());
    }
    let creates = Stats::new(creates);
    report.row(
        "create+close p50, backend acp",
        "create+close p50, acpx",
        ms(acpx_create.p50()),
        ms(creates.p50()),
        "ms",
    );
    app.close_session(&s.session_id).await.unwrap();
    let homes = forge.dir.path().join("data/homes");
    let acpx_sessions = if quick { 2 } else { 4 };
    let acpx_app = forge.app("bench-acpx-procs").await;
    let before = harness::agent_processes(&homes).len();
    let mut acpx_ids = Vec::new();
    for _ in 0..acpx_sessions {
        let s = acpx_app
            .create_session(&CreateSession::default())
            .await
            .unwrap();
        acpx_app.turn(&turn(&s.session_id, "warm")).await.unwrap();
        acpx_ids.push(s.session_id);
    }
    let acpx_per_session =
        (harness::agent_processes(&homes).len() - before) as f64 / acpx_sessions as f64;
    for id in &acpx_ids {
        acpx_app.close_session(id).await.unwrap();
    }
    let before = harness::agent_processes(&homes).len();
    let worker = forge.workers[0].child.id();
    let rss_before = rss_kib(worker) as f64 / 1024.0;
    let mut native_ids = Vec::new();
    for name in ["bench-native-a", "bench-native-b"] {
        let a = forge.app(name).await;
        for _ in 0..16 {
            let s = a.create_session(&native()).await.unwrap();
            a.turn(&turn(&s.session_id, "warm")).await.unwrap();
            native_ids.push((a.clone(), s.session_id));
        }
    }
    let native_procs = (harness::agent_processes(&homes).len() - before) as f64;
    report.row(
        "agent processes, 32 warm sessions of 2 apps",
        &format!("acpx: {acpx_sessions} warm sessions, scaled to 32"),
        acpx_per_session * 32.0,
        native_procs,
        "procs",
    );
    report.row(
        "worker RSS, 32 warm acp sessions of 2 apps",
        "worker RSS before them",
        rss_before,
        rss_kib(worker) as f64 / 1024.0,
        "MiB",
    );
    for (a, id) in native_ids {
        a.close_session(&id).await.unwrap();
    }
}

/// acp turns per second with 8 sessions and 8 turns in flight: on one worker, then on two
/// (the sessions made with both up, so each owns about half; turns that reach the other worker
/// are passed on to the owner).
async fn two_worker_rows(forge: &mut Forge, report: &mut Report, quick: bool) {
    let total = if quick { 400 } else { 2000 };
    let rate = |app: ForgeClient, ids: Vec<String>| {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        throughput(total, ids.len(), move || {
            let (app, ids, next) = (app.clone(), ids.clone(), next.clone());
            async move {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                app.turn(&turn(&ids[i % ids.len()], "tps")).await.unwrap();
            }
        })
    };
    let sessions = |app: ForgeClient| async move {
        let mut ids = Vec::new();
        for _ in 0..8 {
            let s = app
                .create_session(&CreateSession {
                    agent: Some("native".into()),
                    files: vec![],
                })
                .await
                .unwrap();
            app.turn(&turn(&s.session_id, "warm")).await.unwrap();
            ids.push(s.session_id);
        }
        ids
    };
    let one = forge.app("bench-tps-one").await;
    let ids = sessions(one.clone()).await;
    let single = rate(one.clone(), ids.clone()).await;
    for id in &ids {
        one.close_session(id).await.unwrap();
    }
    forge.spawn_worker(&[]);
    forge.wait_for_workers(2).await;
    let two = forge.app("bench-tps-two").await;
    let ids = sessions(two.clone()).await;
    let double = rate(two.clone(), ids.clone()).await;
    for id in &ids {
        two.close_session(id).await.unwrap();
    }
    report.row(
        "acp turns/s, 2 workers (8 sessions, 8 in flight)",
        "acp turns/s, 1 worker",
        single,
        double,
        "turns/s",
    );
}

fn turn(id: &str, prompt: &str) -> TurnRequest {
    TurnRequest {
        session_id: id.into(),
        prompt: prompt.into(),
        files: vec![],
        timeout_secs: None,
        wait: None,
    }
}

/// One `acpx prompt` run directly, as the worker runs it: time to the turn's result line, and
/// to the process's exit.
fn acpx_direct(
    forge: &Forge,
    cwd: &std::path::Path,
    name: &str,
    text: &str,
) -> (Duration, Duration) {
    use std::io::{BufRead, Write};
    let t = Instant::now();
    let mut child = std::process::Command::new(harness::tool("acpx"))
        .args([
            "--format",
            "json",
            "--json-strict",
            "--approve-all",
            "--cwd",
        ])
        .arg(cwd)
        .args([
            "--ttl",
            "300",
            "--timeout",
            "120",
            "--agent",
            &harness::agent_command(""),
        ])
        .args(["prompt", "-s", name, "--file", "-"])
        .env("HOME", forge.home())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let blocks = serde_json::json!([{"type": "text", "text": text}]).to_string();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(blocks.as_bytes())
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut result_at = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if result_at.is_none() && line.contains("\"stopReason\"") {
            result_at = Some(t.elapsed());
        }
    }
    child.wait().unwrap();
    (result_at.expect("a result line"), t.elapsed())
}

/// The benchmark drives the real tools: install them (idempotent, about a second when present).
fn install_tools() {
    let script = harness::repo().join("scripts/setup-tools.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(status.success(), "{} failed ({status})", script.display());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--echo-server") {
        echo_server(&args[i + 1]).await;
        return;
    }
    install_tools();
    let quick = args.iter().any(|a| a == "--quick");
    let n = if quick { 300 } else { 2000 };
    let total = if quick { 3000 } else { 20000 };
    let turns_n = if quick { 5 } else { 15 };

    println!("clawdforge {} gateway benchmark", env!("CARGO_PKG_VERSION"));
    println!(
        "{:<44} {:<28} {:>14} {:>14} {:>8}",
        "measure", "baseline", "baseline", "clawdforge", "ratio"
    );
    let mut report = Report { rows: Vec::new() };

    let mut forge = Forge::start_with(Options {
        env: vec![
            ("CLAWDFORGE_MAX_LIVE_SESSIONS".into(), "100".into()),
            ("RUST_LOG".into(), "warn".into()),
        ],
        config_toml: Some(format!(
            "[agents.native]\ncommand = {:?}\nbackend = \"acp\"\n",
            harness::agent_command("")
        )),
        ..Default::default()
    })
    .await;
    let mut echo = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--echo-server", &forge.nats.url])
        .spawn()
        .unwrap();
    let nats = forge.admin.nats().clone();
    for _ in 0..100 {
        if nats.request(ECHO_SUBJECT, "x".into()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let app = forge.app("bench").await;
    let session = app.create_session(&CreateSession::default()).await.unwrap();
    let sid = session.session_id.clone();

    // --- control operations vs the echo floor ---
    let body = serde_json::to_vec(&serde_json::json!({"session_id": sid})).unwrap();
    let echo_body: bytes::Bytes = body.clone().into();
    let echo_seq = {
        let nats = nats.clone();
        let b = echo_body.clone();
        sequential(n, move || {
            let nats = nats.clone();
            let b = b.clone();
            async move {
                nats.request(ECHO_SUBJECT, b).await.unwrap();
            }
        })
        .await
    };
    let echo_tput = {
        let nats = nats.clone();
        let b = echo_body.clone();
        throughput(total, 64, move || {
            let nats = nats.clone();
            let b = b.clone();
            async move {
                nats.request(ECHO_SUBJECT, b).await.unwrap();
            }
        })
        .await
    };
    macro_rules! control {
        ($name:expr, $op:expr) => {{
            let a = app.clone();
            let id = sid.clone();
            let seq = sequential(n, move || {
                let a = a.clone();
                let id = id.clone();
                async move {
                    #[allow(clippy::redundant_closure_call)]
                    ($op)(a, id).await;
                }
            })
            .await;
            report.row(
                &format!("{} p50 (sequential)", $name),
                "echo p50",
                ms(echo_seq.p50()),
                ms(seq.p50()),
                "ms",
            );
            report.row(
                &format!("{} p99 (sequential)", $name),
                "echo p99",
                ms(echo_seq.p99()),
                ms(seq.p99()),
                "ms",
            );
            let a = app.clone();
            let id = sid.clone();
            let tput = throughput(total, 64, move || {
                let a = a.clone();
                let id = id.clone();
                async move {
                    #[allow(clippy::redundant_closure_call)]
                    ($op)(a, id).await;
                }
            })
            .await;
            report.row(
                &format!("{} throughput (64 in flight)", $name),
                "echo throughput",
                echo_tput,
                tput,
                "req/s",
            );
        }};
    }
    control!("forge.health", |a: ForgeClient, _id: String| async move {
        a.health().await.unwrap();
    });
    control!(
        "forge.session.get",
        |a: ForgeClient, id: String| async move {
            a.get_session(&id).await.unwrap();
        }
    );
    control!(
        "forge.session.list",
        |a: ForgeClient, _id: String| async move {
            a.list_sessions().await.unwrap();
        }
    );

    if args.iter().any(|a| a == "--control-only") {
        let _ = echo.kill();
        let _ = echo.wait();
        return;
    }

    // --- create + close with the test agent, vs acpx doing the same directly ---
    let k = if quick { 3 } else { 8 };
    let mut gw = Vec::new();
    for _ in 0..k {
        let t = Instant::now();
        let s = app.create_session(&CreateSession::default()).await.unwrap();
        app.close_session(&s.session_id).await.unwrap();
        gw.push(t.elapsed());
    }
    let mut direct = Vec::new();
    let scratch = forge.dir.path().join("direct");
    for i in 0..k {
        let cwd = scratch.join(format!("c{i}"));
        std::fs::create_dir_all(&cwd).unwrap();
        let t = Instant::now();
        for verb in [
            &["sessions", "new", "--name", "x"][..],
            &["sessions", "close", "x"][..],
        ] {
            let ok = std::process::Command::new(harness::tool("acpx"))
                .args([
                    "--format",
                    "json",
                    "--json-strict",
                    "--approve-all",
                    "--cwd",
                ])
                .arg(&cwd)
                .args(["--agent", &harness::agent_command("")])
                .args(verb)
                .env("HOME", forge.home())
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok);
        }
        direct.push(t.elapsed());
    }
    let (gw, direct) = (Stats::new(gw), Stats::new(direct));
    report.row(
        "create+close p50",
        "echo p50",
        ms(echo_seq.p50()),
        ms(gw.p50()),
        "ms",
    );
    report.row(
        "create+close p50",
        "acpx new+close direct p50",
        ms(direct.p50()),
        ms(gw.p50()),
        "ms",
    );

    // --- a warm turn: the gateway vs acpx prompt directly ---
    app.turn(&turn(&sid, "warm up")).await.unwrap();
    // Back to back, a turn waits in acpx's queue for the previous acpx client's idle second;
    // spaced, it does not, and compares with a direct run that starts on an idle session.
    let mut back_to_back = Vec::new();
    for i in 0..turns_n {
        let t = Instant::now();
        app.turn(&turn(&sid, &format!("turn {i}"))).await.unwrap();
        back_to_back.push(t.elapsed());
    }
    let back_to_back = Stats::new(back_to_back);
    let direct_cwd = scratch.join("turns");
    std::fs::create_dir_all(&direct_cwd).unwrap();
    let made = std::process::Command::new(harness::tool("acpx"))
        .args([
            "--format",
            "json",
            "--json-strict",
            "--approve-all",
            "--cwd",
        ])
        .arg(&direct_cwd)
        .args([
            "--agent",
            &harness::agent_command(""),
            "sessions",
            "new",
            "--name",
            "direct",
        ])
        .env("HOME", forge.home())
        .output()
        .unwrap();
    assert!(made.status.success());
    acpx_direct(&forge, &direct_cwd, "direct", "warm up");
    let mut gw_turns = Vec::new();
    let mut to_result = Vec::new();
    let mut to_exit = Vec::new();
    // Interleaved, so that both see the same machine.
    for i in 0..turns_n {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let t = Instant::now();
        app.turn(&turn(&sid, &format!("spaced turn {i}")))
            .await
            .unwrap();
        gw_turns.push(t.elapsed());
        let (r, e) = acpx_direct(&forge, &direct_cwd, "direct", &format!("turn {i}"));
        to_result.push(r);
        to_exit.push(e);
    }
    let (gw_turns, to_result, to_exit) = (
        Stats::new(gw_turns),
        Stats::new(to_result),
        Stats::new(to_exit),
    );
    report.row(
        "turn p50 (warm, spaced)",
        "acpx prompt: result line",
        ms(to_result.p50()),
        ms(gw_turns.p50()),
        "ms",
    );
    report.row(
        "turn p50 (warm, back to back)",
        "acpx prompt: process exit",
        ms(to_exit.p50()),
        ms(back_to_back.p50()),
        "ms",
    );
    println!(
        "  gateway overhead per turn over acpx's result line: {:.1} ms",
        ms(gw_turns.p50()) - ms(to_result.p50())
    );
    native_rows(&forge, &mut report, &to_result, &gw, quick).await;

    // --- HTTP (sidecar) vs NATS ---
    let sidecar = forge.spawn_http("sidecar", &[("RUST_LOG", "warn")]).await;
    let http = harness::http_client();
    let token = {
        let created = forge.admin.create_token("bench-http", false).await.unwrap();
        created.token
    };
    let http_app = forge.admin.with_token(Some(token.clone()));
    let s2 = http_app
        .create_session(&CreateSession::default())
        .await
        .unwrap();
    let get_url = sidecar.url(&format!("/sessions/{}", s2.session_id));
    let nats_get = {
        let a = http_app.clone();
        let id = s2.session_id.clone();
        sequential(n, move || {
            let a = a.clone();
            let id = id.clone();
            async move {
                a.get_session(&id).await.unwrap();
            }
        })
        .await
    };
    let http_get = {
        let http = http.clone();
        let url = get_url.clone();
        let token = token.clone();
        sequential(n, move || {
            let http = http.clone();
            let url = url.clone();
            let token = token.clone();
            async move {
                let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
            }
        })
        .await
    };
    report.row(
        "GET /sessions/{id} p50",
        "forge.session.get p50",
        ms(nats_get.p50()),
        ms(http_get.p50()),
        "ms",
    );
    report.row(
        "GET /sessions/{id} p99",
        "forge.session.get p99",
        ms(nats_get.p99()),
        ms(http_get.p99()),
        "ms",
    );
    let nats_tput = {
        let a = http_app.clone();
        let id = s2.session_id.clone();
        throughput(total, 64, move || {
            let a = a.clone();
            let id = id.clone();
            async move {
                a.get_session(&id).await.unwrap();
            }
        })
        .await
    };
    let http_tput = {
        let http = http.clone();
        let url = get_url.clone();
        let token = token.clone();
        throughput(total, 64, move || {
            let http = http.clone();
            let url = url.clone();
            let token = token.clone();
            async move {
                let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
            }
        })
        .await
    };
    report.row(
        "GET /sessions/{id} throughput (64)",
        "forge.session.get throughput",
        nats_tput,
        http_tput,
        "req/s",
    );
    drop(sidecar);

    // --- short turns: one worker vs two ---
    let sessions_n = if quick { 4 } else { 8 };
    let per_session = if quick { 3 } else { 5 };
    let mut ids = Vec::new();
    for _ in 0..sessions_n {
        let s = app.create_session(&CreateSession::default()).await.unwrap();
        app.turn(&turn(&s.session_id, "warm up")).await.unwrap();
        ids.push(s.session_id);
    }
    let run_turns = |ids: Vec<String>| {
        let app = app.clone();
        async move {
            let t = Instant::now();
            let tasks: Vec<_> = ids
                .into_iter()
                .map(|id| {
                    let app = app.clone();
                    tokio::spawn(async move {
                        for i in 0..per_session {
                            app.turn(&turn(&id, &format!("short {i}"))).await.unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            (sessions_n * per_session) as f64 / t.elapsed().as_secs_f64()
        }
    };
    let one = run_turns(ids.clone()).await;
    forge.spawn_worker(&[]);
    forge.wait_for_workers(2).await;
    let two = run_turns(ids.clone()).await;
    report.row(
        &format!("short turns, {sessions_n} sessions, 2 workers"),
        "1 worker",
        one,
        two,
        "turns/s",
    );

    // --- memory of a worker process (its own, not the agents') ---
    forge.kill_worker(1);
    let pid = forge.workers[0].child.id();
    for id in &ids {
        app.close_session(id).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(pid) as f64 / 1024.0;
    let open_now = forge.admin.health().await.unwrap().open_sessions;
    let mut opened = Vec::new();
    for _ in open_now..32 {
        opened.push(
            app.create_session(&CreateSession::default())
                .await
                .unwrap()
                .session_id,
        );
    }
    let busy = rss_kib(pid) as f64 / 1024.0;
    report.row(
        "worker RSS with 32 open sessions",
        "worker RSS idle",
        idle,
        busy,
        "MiB",
    );
    println!("  worker RSS idle: {idle:.1} MiB (target: under 30 MiB)");
    for id in opened {
        app.close_session(&id).await.unwrap();
    }

    two_worker_rows(&mut forge, &mut report, quick).await;

    let _ = echo.kill();
    let _ = echo.wait();

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let file = dir.join(format!("{}-{stamp}.md", env!("CARGO_PKG_VERSION")));
    let text = format!(
        "# clawdforge {} gateway benchmark, {stamp}\n\n{}\nRatios are clawdforge / baseline; for throughput higher is better, for latency and memory lower is better.\n",
        env!("CARGO_PKG_VERSION"),
        report.markdown()
    );
    std::fs::write(&file, text).unwrap();
    println!("written to {}", file.display());
}
