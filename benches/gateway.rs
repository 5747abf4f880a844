//! The gateway's costs, each next to a baseline measured in the same run on the same machine:
//! control operations against a raw NATS echo responder, a turn against `acpx prompt` run
//! directly and against a direct ACP client, a confined turn against an unconfined one, HTTP
//! against NATS, one worker against two, a worker's memory, an app with a policy against one
//! without, metrics and traces on against off, a turn over the agent protocol against one
//! through `forge.session.turn` (`agent_protocol.rs`), and the real Claude Code adapter against
//! the model stand-in (`real.rs`).
//!
//! Run: `cargo bench --bench gateway`; it runs scripts/setup-tools.sh first, which installs the
//! tools it needs (nats-server, Node 22, acpx, the real agents) into `.tools/` when they are
//! missing. Prints a table and writes it to `bench-results/<version>-<time>.md`. `-- --quick`
//! takes fewer samples; `-- --control-only` measures only the control operations, the policy,
//! telemetry and agent protocol rows and HTTP against NATS; `-- --real-only` measures only the
//! real adapter's rows, `-- --protocol-only` only the agent protocol's, `-- --telemetry-only`
//! only what metrics and traces cost.

#[path = "gateway/agent_protocol.rs"]
mod agent_protocol;
#[allow(dead_code)]
#[path = "../tests/it/harness.rs"]
mod harness;
#[path = "gateway/real.rs"]
mod real;

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::service::ServiceExt;
use clawdforge::client::ForgeClient;
use clawdforge::wire::{CreateSession, PolicySet, TurnRequest};
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

/// The median of `a[i] - b[i]`, in ms: samples taken in pairs, one right after the other.
fn paired_ms(a: &[Duration], b: &[Duration]) -> f64 {
    let mut d: Vec<f64> = a.iter().zip(b).map(|(a, b)| ms(*a) - ms(*b)).collect();
    d.sort_by(f64::total_cmp);
    d[d.len() / 2]
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

#[derive(Default)]
struct Report {
    rows: Vec<[String; 5]>,
    notes: Vec<String>,
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
            "{:<50} {:<30} {:>14} {:>14} {:>8}",
            line[0], line[1], line[2], line[3], line[4]
        );
        self.rows.push(line);
    }

    /// A p50 row and a p90 row.
    fn latency(&mut self, what: &str, baseline: &str, base: &Stats, value: &Stats) {
        for (p, pct) in [("p50", 0.5), ("p90", 0.9)] {
            let (b, v) = (ms(base.pct(pct)), ms(value.pct(pct)));
            self.row(
                &format!("{what} {p}"),
                &format!("{baseline} {p}"),
                b,
                v,
                "ms",
            );
        }
    }

    /// A line under the table.
    fn note(&mut self, text: &str) {
        println!("  {text}");
        self.notes.push(text.to_string());
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
        out.push('\n');
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
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

fn turn(id: &str, prompt: &str) -> TurnRequest {
    TurnRequest {
        session_id: id.into(),
        prompt: prompt.into(),
        files: vec![],
        timeout_secs: None,
        wait: None,
    }
}

/// The environment a worker gives the agents of an app whose home is `home` (PATH, LANG,
/// HOME, TMPDIR, CLAUDE_CONFIG_DIR): the direct runs get the same, without confinement.
fn direct_env(home: &Path) -> Vec<(String, String)> {
    for dir in [home.join("tmp"), home.join(".claude")] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        (
            "LANG".into(),
            std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
        ),
        ("HOME".into(), path(home.to_path_buf())),
        ("TMPDIR".into(), path(home.join("tmp"))),
        ("CLAUDE_CONFIG_DIR".into(), path(home.join(".claude"))),
    ]
}

/// `acpx` run directly, as the worker runs it, for one agent in one directory.
struct DirectAcpx {
    home: PathBuf,
    cwd: PathBuf,
    /// `--agent <command>`, or a built-in agent's name.
    agent: Vec<String>,
    env: Vec<(String, String)>,
}

impl DirectAcpx {
    fn new(home: PathBuf, cwd: PathBuf, agent: Vec<String>, env: Vec<(String, String)>) -> Self {
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&cwd).unwrap();
        DirectAcpx {
            home,
            cwd,
            agent,
            env,
        }
    }

    /// The test agent's, with `home` as HOME.
    fn test_agent(home: PathBuf, cwd: PathBuf) -> Self {
        let agent = vec!["--agent".into(), harness::agent_command("")];
        let env = direct_env(&home);
        DirectAcpx::new(home, cwd, agent, env)
    }

    /// `acpx <flags> <global> <agent> <words>`: a global option such as `--timeout` goes
    /// before the agent, where a built-in agent's subcommand does not take it.
    fn command(&self, global: &[&str], words: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(harness::tool("acpx"));
        cmd.args([
            "--format",
            "json",
            "--json-strict",
            "--approve-all",
            "--cwd",
        ])
        .arg(&self.cwd)
        .args(["--ttl", "300"])
        .args(global)
        .args(&self.agent)
        .args(words)
        .env_clear()
        .envs(self.env.iter().cloned());
        cmd
    }

    /// A control command; it must succeed.
    fn run(&self, words: &[&str]) {
        let out = self.command(&[], words).output().unwrap();
        assert!(out.status.success(), "acpx {words:?}: {out:?}");
    }

    fn sessions_new(&self, name: &str) {
        self.run(&["sessions", "new", "--name", name]);
    }

    /// One `acpx prompt`: time to the turn's result line, and to the process's exit.
    fn prompt(&self, name: &str, text: &str) -> (Duration, Duration) {
        use std::io::{BufRead, Write};
        let t = Instant::now();
        let mut child = self
            .command(
                &["--timeout", "120"],
                &["prompt", "-s", name, "--file", "-"],
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let blocks = serde_json::json!([{"type": "text", "text": text}]).to_string();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(blocks.as_bytes()).unwrap();
        drop(stdin);
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
}

impl Drop for DirectAcpx {
    /// acpx's socket directory for this HOME is in /tmp; the rest is in the forge's directory.
    fn drop(&mut self) {
        let dir = clawdforge::agent::confine::acpx_socket_dir_of(&self.home);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The worker's confinement (`src/agent/confine.rs`: Landlock rules, then no capabilities),
/// applied to a process the benchmark starts itself, working in `home`.
fn confine(cmd: &mut std::process::Command, home: &Path, abi: u32) {
    use std::os::unix::process::CommandExt;
    let mut ruleset = Some(ruleset(landlock::ABI::from(abi as i32), home).unwrap());
    // SAFETY: the closure runs in the forked child and only makes system calls.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(ruleset) = ruleset.take() {
                ruleset
                    .restrict_self()
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))?;
            }
            drop_capabilities()
        });
    }
}

/// The rules the worker gives an acpx process of a session whose app's home is `home`.
fn ruleset(
    abi: landlock::ABI,
    home: &Path,
) -> Result<landlock::RulesetCreated, landlock::RulesetError> {
    use landlock::{
        Access, AccessFs, AccessNet, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
        RulesetCreatedAttr, Scope,
    };
    let mut ruleset = Ruleset::default().handle_access(AccessFs::from_all(abi))?;
    if abi >= landlock::ABI::V4 {
        ruleset = ruleset.handle_access(AccessNet::ConnectTcp)?;
    }
    if abi >= landlock::ABI::V6 {
        ruleset = ruleset.scope(Scope::AbstractUnixSocket)?;
    }
    let mut created = ruleset.create()?;
    let read = harness::agent_read_dirs() + ",/dev,/proc";
    let dirs = read
        .split(',')
        .map(|d| (PathBuf::from(d), AccessFs::from_read(abi)));
    let home = (home.to_path_buf(), AccessFs::from_all(abi));
    let null = (PathBuf::from("/dev/null"), AccessFs::from_file(abi));
    for (dir, access) in dirs.chain([home, null]) {
        if let Ok(fd) = PathFd::new(dir) {
            created = created.add_rule(PathBeneath::new(fd, access))?;
        }
    }
    if abi >= landlock::ABI::V4 {
        created = created.add_rule(NetPort::new(443, AccessNet::ConnectTcp))?;
    }
    Ok(created)
}

/// Every capability set emptied, as the worker does for its agents; between fork and exec.
fn drop_capabilities() -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    // SAFETY: prctl and capset with plain integers and stack buffers.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0);
        for cap in 0..=63 as libc::c_ulong {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        let header = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let data = [0u32; 6];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What confinement costs a process start: `acpx --version` (Node loading acpx's modules, as
/// every turn's acpx client does) under the worker's confinement, against the same
/// unconfined, interleaved.
fn spawn_rows(forge: &Forge, report: &mut Report, n: usize) {
    let Some(abi) = clawdforge::agent::confine::kernel_abi() else {
        return report.note("no Landlock on this kernel: no confined process starts");
    };
    let home = forge.dir.path().join("spawn-home");
    let env = direct_env(&home);
    let run = |confined: bool| {
        let mut cmd = std::process::Command::new(harness::tool("acpx"));
        cmd.arg("--version").env_clear().envs(env.iter().cloned());
        cmd.stdout(std::process::Stdio::null());
        if confined {
            confine(&mut cmd, &home, abi);
        }
        let t = Instant::now();
        assert!(cmd.status().unwrap().success());
        t.elapsed()
    };
    let (mut open, mut confined) = (Vec::new(), Vec::new());
    for _ in 0..n {
        open.push(run(false));
        confined.push(run(true));
    }
    let (open, confined) = (Stats::new(open), Stats::new(confined));
    let what = "acpx --version, confined (Landlock, no caps)";
    report.latency(what, "unconfined", &open, &confined);
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

/// The raw NATS floor: the echo's sequential latency and its throughput with 64 in flight.
struct Floor {
    seq: Stats,
    tput: f64,
}

async fn echo_floor(
    nats: &async_nats::Client,
    body: bytes::Bytes,
    n: usize,
    total: usize,
) -> Floor {
    let nats = nats.clone();
    let request = move || {
        let (nats, b) = (nats.clone(), body.clone());
        async move {
            nats.request(ECHO_SUBJECT, b).await.unwrap();
        }
    };
    Floor {
        seq: sequential(n, request.clone()).await,
        tput: throughput(total, 64, request).await,
    }
}

/// A control operation's sequential p50/p99 and throughput against the echo's.
async fn control_row<F, Fut>(
    report: &mut Report,
    name: &str,
    floor: &Floor,
    (n, total): (usize, usize),
    op: F,
) where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let seq = sequential(n, op.clone()).await;
    let (base, value) = (&floor.seq, &seq);
    let p50 = format!("{name} p50 (sequential)");
    report.row(&p50, "echo p50", ms(base.p50()), ms(value.p50()), "ms");
    let p99 = format!("{name} p99 (sequential)");
    report.row(&p99, "echo p99", ms(base.p99()), ms(value.p99()), "ms");
    let tput = throughput(total, 64, op).await;
    let what = format!("{name} throughput (64 in flight)");
    report.row(&what, "echo throughput", floor.tput, tput, "req/s");
}

/// health, get and list against the echo floor; returns the floor.
async fn control_rows(
    forge: &Forge,
    app: &ForgeClient,
    sid: &str,
    report: &mut Report,
    counts: (usize, usize),
) -> Floor {
    let body = serde_json::to_vec(&serde_json::json!({"session_id": sid})).unwrap();
    let floor = echo_floor(forge.admin.nats(), body.into(), counts.0, counts.1).await;
    let a = app.clone();
    let health = move || {
        let a = a.clone();
        async move {
            a.health().await.unwrap();
        }
    };
    control_row(report, "forge.health", &floor, counts, health).await;
    let (a, id) = (app.clone(), sid.to_string());
    let get = move || {
        let (a, id) = (a.clone(), id.clone());
        async move {
            a.get_session(&id).await.unwrap();
        }
    };
    control_row(report, "forge.session.get", &floor, counts, get).await;
    let a = app.clone();
    let list = move || {
        let a = a.clone();
        async move {
            a.list_sessions().await.unwrap();
        }
    };
    control_row(report, "forge.session.list", &floor, counts, list).await;
    floor
}

/// A request of the policy rows, boxed: one type for every app's.
type Op = Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// An app of the policy rows: its client and a warm native session of it.
struct Subject {
    app: ForgeClient,
    sid: String,
}

impl Subject {
    /// `name`'s token, its policy set to `policy` (when given) and a native session warmed.
    async fn new(forge: &Forge, name: &str, policy: Option<PolicySet>) -> Subject {
        if let Some(policy) = policy {
            let app = name.to_string();
            forge
                .admin
                .set_app_policy(&PolicySet { app, ..policy })
                .await
                .unwrap();
        }
        let app = forge.app(name).await;
        let sid = app.create_session(&native()).await.unwrap().session_id;
        app.turn(&turn(&sid, "warm up")).await.unwrap();
        Subject { app, sid }
    }

    /// `forge.session.get` of its session.
    fn get(&self) -> Op {
        let (a, id) = (self.app.clone(), self.sid.clone());
        Arc::new(move || {
            let (a, id) = (a.clone(), id.clone());
            Box::pin(async move {
                a.get_session(&id).await.unwrap();
            })
        })
    }

    /// A short turn: the test agent's default answer (a thought, a tool call, the text).
    async fn short_turn(&self, i: usize) {
        let text = format!("short turn {i}");
        self.app.turn(&turn(&self.sid, &text)).await.unwrap();
    }
}

/// Sequential samples of `k` variants taken in turn, `n` of each, in a rotating order (none
/// always first, or always right after the same other); `op(v, i)` runs variant `v`. The
/// `i`th sample of each was taken in the same round.
async fn interleaved<F, Fut>(k: usize, n: usize, mut op: F) -> Vec<Vec<Duration>>
where
    F: FnMut(usize, usize) -> Fut,
    Fut: Future<Output = ()>,
{
    for i in 0..n.min(30) {
        for v in 0..k {
            op(v, i).await;
        }
    }
    let mut samples = vec![Vec::with_capacity(n); k];
    for i in 0..n {
        for j in 0..k {
            let v = (i + j) % k;
            let t = Instant::now();
            op(v, i).await;
            samples[v].push(t.elapsed());
        }
    }
    samples
}

/// Throughput with 64 in flight of each of `ops`, in `rounds` rounds of `per_round` requests
/// each, the order rotating from round to round; each op's median round.
async fn interleaved_throughput(ops: &[Op], rounds: usize, per_round: usize) -> Vec<f64> {
    let mut rates = vec![Vec::new(); ops.len()];
    for r in 0..rounds {
        for j in 0..ops.len() {
            let v = (r + j) % ops.len();
            let op = ops[v].clone();
            rates[v].push(throughput(per_round, 64, move || op()).await);
        }
    }
    rates
        .into_iter()
        .map(|mut r| {
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        })
        .collect()
}

/// What the policy step costs, on the same deployment: `forge.session.get` and a short native
/// turn of an app without a policy, against an app whose policy sets limits these requests do
/// not reach (checked in the pipeline, the counted ones counted in the ledger's admission) and
/// against an app with `requests_per_minute` set (one ledger write per request). The three
/// apps' requests are interleaved.
async fn policy_rows(forge: &Forge, report: &mut Report, (n, total): (usize, usize), quick: bool) {
    let health = forge.admin.health().await.unwrap();
    let limits = PolicySet {
        agents: Some(Some(health.agents.into_iter().map(|a| a.name).collect())),
        max_open_sessions: Some(Some(1000)),
        max_concurrent_turns: Some(Some(100)),
        turns_per_day: Some(Some(1_000_000)),
        runs_usd_per_month: Some(Some(1000.0)),
        ..Default::default()
    };
    let per_minute = PolicySet {
        requests_per_minute: Some(Some(1_000_000_000)),
        ..Default::default()
    };
    let subjects = [
        Subject::new(forge, "bench-policy-none", None).await,
        Subject::new(forge, "bench-policy-limits", Some(limits)).await,
        Subject::new(forge, "bench-policy-rpm", Some(per_minute)).await,
    ];
    let gets: Vec<Op> = subjects.iter().map(Subject::get).collect();
    let get_seq = interleaved(3, n, |v, _| gets[v]()).await;
    let rounds = if quick { 4 } else { 6 };
    let get_tput = interleaved_throughput(&gets, rounds, total / 2).await;
    let turns_n = if quick { 150 } else { 500 };
    let turns = interleaved(3, turns_n, |v, i| subjects[v].short_turn(i)).await;
    for s in &subjects {
        s.app.close_session(&s.sid).await.unwrap();
    }
    let rows = [("policy, limits", 1), ("policy, requests_per_minute", 2)];
    for (with, v) in rows {
        let (none, some) = (&get_seq[0], &get_seq[v]);
        let get = policy_latency(report, "forge.session.get", with, none, some);
        let what = format!("forge.session.get tput (64), {with}");
        report.row(&what, "no policy", get_tput[0], get_tput[v], "req/s");
        let turn = policy_latency(report, "short turn (acp)", with, &turns[0], &turns[v]);
        let verdict = match v {
            1 if get.0 < 5.0 => "under the goal of 5 % of a control operation's p50",
            1 => "NOT under the goal of 5 % of a control operation's p50",
            _ => "one ledger write per request",
        };
        report.note(&format!(
            "{with}: forge.session.get p50 {:+.1} % (median of paired requests {:+.1} %), \
             {verdict}; short turn p50 {:+.1} % (paired {:+.1} %)",
            get.0, get.1, turn.0, turn.1
        ));
    }
    report.note(
        "policy, limits: agents, max_open_sessions, max_concurrent_turns, turns_per_day, \
         runs_usd_per_month set, none reached; policy, requests_per_minute: only it set",
    );
}

/// What metrics and traces cost: `forge.session.get` and a short native turn on four
/// deployments started alike: both off, a worker's metrics (`METRICS_ADDR`) on, traces (over
/// OTLP/HTTP to a sink in this process, every span sent) on, and both on; the requests of the
/// four interleaved. Each is a row against the one with both off; the goal is for both on.
async fn telemetry_rows(standin: &real::Standin, report: &mut Report, n: usize, quick: bool) {
    let sink = otlp_sink().await;
    let metrics = ("METRICS_ADDR", "127.0.0.1:0");
    let traces = ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.as_str());
    let forges = [
        start_forge(standin, &[]).await,
        start_forge(standin, &[metrics]).await,
        start_forge(standin, &[traces]).await,
        start_forge(standin, &[metrics, traces]).await,
    ];
    let mut subjects = Vec::new();
    for forge in &forges {
        subjects.push(Subject::new(forge, "bench-telemetry", None).await);
    }
    let gets: Vec<Op> = subjects.iter().map(Subject::get).collect();
    let get_seq = interleaved(4, n, |v, _| gets[v]()).await;
    let turns_n = if quick { 150 } else { 500 };
    let turns = interleaved(4, turns_n, |v, i| subjects[v].short_turn(i)).await;
    let mut both = ((0.0, 0.0), (0.0, 0.0));
    for (v, with) in [
        (1, "metrics on"),
        (2, "traces on"),
        (3, "metrics and traces on"),
    ] {
        let pair = |s: &[Vec<Duration>]| vec![s[0].clone(), s[v].clone()];
        let get = latency_row(
            report,
            "forge.session.get p50",
            with,
            "off",
            &pair(&get_seq),
        );
        let turn = latency_row(report, "short turn (acp) p50", with, "off", &pair(&turns));
        both = (get, turn);
    }
    let ((get, get_paired), (turn, turn_paired)) = both;
    let verdict = |d: f64| if d < 3.0 { "under" } else { "NOT under" };
    report.note(&format!(
        "metrics and traces on: forge.session.get p50 {get:+.1} % (paired {get_paired:+.1} %), \
         short turn p50 {turn:+.1} % (paired {turn_paired:+.1} %): {} and {} the goal of 3 %",
        verdict(get),
        verdict(turn)
    ));
}

/// An OTLP/HTTP endpoint that takes every export and answers it (an empty response).
async fn otlp_sink() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(|_: axum::body::Bytes| async { Vec::<u8>::new() }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    endpoint
}

/// A p50 row of `what` `with` something against `baseline` (`samples[0]`, then `samples[1]`);
/// returns the difference in % of the baseline's p50: of the p50s, and the median of paired
/// samples.
fn latency_row(
    report: &mut Report,
    what: &str,
    with: &str,
    baseline: &str,
    samples: &[Vec<Duration>],
) -> (f64, f64) {
    let paired = paired_ms(&samples[1], &samples[0]);
    let (base, some) = (
        Stats::new(samples[0].clone()),
        Stats::new(samples[1].clone()),
    );
    let (b, v) = (ms(base.p50()), ms(some.p50()));
    report.row(
        &format!("{what}, {with}"),
        &format!("{baseline} p50"),
        b,
        v,
        "ms",
    );
    (100.0 * (v - b) / b, 100.0 * paired / b)
}

/// A p50 row of `what` for an app `with` a policy against one without; returns the
/// difference in % of the p50 without: of the p50s, and the median of paired samples.
fn policy_latency(
    report: &mut Report,
    what: &str,
    with: &str,
    none: &[Duration],
    some: &[Duration],
) -> (f64, f64) {
    let paired = paired_ms(some, none);
    let (none, some) = (Stats::new(none.to_vec()), Stats::new(some.to_vec()));
    let (b, v) = (ms(none.p50()), ms(some.p50()));
    report.row(&format!("{what} p50, {with}"), "no policy p50", b, v, "ms");
    (100.0 * (v - b) / b, 100.0 * paired / b)
}

/// Waits for the worker's first check of its agents (it starts each of them, the real adapter
/// too): measured alongside, its processes would take the cores from the rows.
async fn agents_checked(app: &ForgeClient) {
    while app
        .health()
        .await
        .map(|h| h.agents.is_empty())
        .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// create + close with the test agent, against the echo and against acpx doing the same
/// directly; returns the gateway's.
async fn create_close_rows(
    forge: &Forge,
    app: &ForgeClient,
    report: &mut Report,
    echo: &Stats,
    k: usize,
) -> Stats {
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
        let acpx = DirectAcpx::test_agent(forge.home(), scratch.join(format!("c{i}")));
        let t = Instant::now();
        acpx.sessions_new("x");
        acpx.run(&["sessions", "close", "x"]);
        direct.push(t.elapsed());
    }
    let (gw, direct) = (Stats::new(gw), Stats::new(direct));
    report.row(
        "create+close p50",
        "echo p50",
        ms(echo.p50()),
        ms(gw.p50()),
        "ms",
    );
    let base = "acpx new+close direct p50";
    report.row(
        "create+close p50",
        base,
        ms(direct.p50()),
        ms(gw.p50()),
        "ms",
    );
    gw
}

/// Back to back, a turn waits in acpx's queue for the previous acpx client's idle second.
async fn back_to_back(app: &ForgeClient, sid: &str, n: usize) -> Stats {
    let mut samples = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        app.turn(&turn(sid, &format!("turn {i}"))).await.unwrap();
        samples.push(t.elapsed());
    }
    Stats::new(samples)
}

/// A session through the gateway: its app and id.
type Session<'a> = (&'a ForgeClient, &'a str);

/// Spaced, interleaved turns: the confined gateway's, the unconfined one's, and the direct
/// runs' times to their result line and to their exit, in a rotating order (so that none
/// always comes first after the pause, or right after the same other). Each session is idle
/// for more than acpx's idle second before its turn (the pause plus at least one other turn),
/// so that no turn waits for the previous client.
async fn spaced_turns(
    confined: Session<'_>,
    open: Session<'_>,
    direct: &DirectAcpx,
    n: usize,
) -> [Vec<Duration>; 4] {
    let mut samples: [Vec<Duration>; 4] = Default::default();
    for i in 0..n {
        tokio::time::sleep(Duration::from_millis(900)).await;
        let text = format!("spaced turn {i}");
        for k in 0..3 {
            match (i + k) % 3 {
                2 => {
                    let (r, e) = direct.prompt("direct", &text);
                    samples[2].push(r);
                    samples[3].push(e);
                }
                which => {
                    let (app, id) = [confined, open][which];
                    let t = Instant::now();
                    app.turn(&turn(id, &text)).await.unwrap();
                    samples[which].push(t.elapsed());
                }
            }
        }
    }
    samples
}

/// A warm turn with the test agent through acpx: back to back on the main deployment's
/// session, against the direct run's exit; spaced ([`spaced_turns`]) on two fresh deployments
/// that differ only in confinement (as shipped, and off), each on a session made for it,
/// against `acpx prompt` run directly. Returns the direct runs' time to their result line.
async fn acpx_turn_rows(
    pair: &real::Forges<'_>,
    (app, sid): Session<'_>,
    report: &mut Report,
    n: usize,
) -> Stats {
    app.turn(&turn(sid, "warm up")).await.unwrap();
    let b2b = back_to_back(app, sid, n).await;
    let apps = [
        pair.confined.app("bench").await,
        pair.open.app("bench").await,
    ];
    let mut ids = Vec::new();
    for a in &apps {
        let made = a.create_session(&CreateSession::default()).await.unwrap();
        a.turn(&turn(&made.session_id, "warm up")).await.unwrap();
        ids.push(made.session_id);
    }
    let home = pair.confined.home();
    let direct = DirectAcpx::test_agent(home, pair.confined.dir.path().join("direct/turns"));
    direct.sessions_new("direct");
    direct.prompt("direct", "warm up");
    let sessions = [(&apps[0], ids[0].as_str()), (&apps[1], ids[1].as_str())];
    let samples = spaced_turns(sessions[0], sessions[1], &direct, n).await;
    for (a, id) in sessions {
        a.close_session(id).await.unwrap();
    }
    spaced_rows(report, samples, &b2b)
}

/// The rows of [`acpx_turn_rows`]; returns the direct runs' time to their result line.
fn spaced_rows(report: &mut Report, samples: [Vec<Duration>; 4], b2b: &Stats) -> Stats {
    let paired = [
        paired_ms(&samples[0], &samples[2]),
        paired_ms(&samples[1], &samples[2]),
        paired_ms(&samples[0], &samples[1]),
    ];
    let [confined, open, to_result, to_exit] = samples.map(Stats::new);
    let base = "acpx prompt: result line";
    let (b, c, o) = (ms(to_result.p50()), ms(confined.p50()), ms(open.p50()));
    report.row("turn p50 (warm, spaced)", base, b, c, "ms");
    report.row("turn p50 (warm, spaced), confinement off", base, b, o, "ms");
    report.latency(
        "turn (warm, spaced), confined",
        "confinement off",
        &open,
        &confined,
    );
    let (what, base) = ("turn p50 (warm, back to back)", "acpx prompt: process exit");
    report.row(what, base, ms(to_exit.p50()), ms(b2b.p50()), "ms");
    report.note(&format!(
        "acpx, test agent, difference of p50s (median of paired turns): the gateway adds \
         {:+.1} ms ({:+.1}) over acpx's result line, {:+.1} ms ({:+.1}) with confinement off; \
         confinement costs {:+.1} ms ({:+.1})",
        c - b,
        paired[0],
        o - b,
        paired[1],
        c - o,
        paired[2],
    ));
    to_result
}

/// The native backend (`backend = "acp"`, the same test agent): a warm turn against acpx's
/// result line and against a direct ACP client of the same agent (interleaved).
async fn native_turn_rows(
    forge: &Forge,
    app: &ForgeClient,
    report: &mut Report,
    acpx_turn: &Stats,
    n: usize,
) {
    let s = app.create_session(&native()).await.unwrap();
    app.turn(&turn(&s.session_id, "warm up")).await.unwrap();
    let argv: Vec<String> = harness::agent_command("")
        .split_whitespace()
        .map(String::from)
        .collect();
    let home = forge.dir.path().join("direct-acp-home");
    let cwd = forge.dir.path().join("direct-acp");
    std::fs::create_dir_all(&cwd).unwrap();
    let env = direct_env(&home);
    let mut direct = real::DirectAcp::start(&argv, &cwd, Some(&env)).await;
    let direct_id = direct.new_session(&cwd).await;
    direct.prompt(&direct_id, "warm up").await;
    let (mut turns, mut direct_turns) = (Vec::new(), Vec::new());
    for i in 0..n {
        let text = format!("native {i}");
        let t = Instant::now();
        app.turn(&turn(&s.session_id, &text)).await.unwrap();
        turns.push(t.elapsed());
        let t = Instant::now();
        direct.prompt(&direct_id, &text).await;
        direct_turns.push(t.elapsed());
    }
    let (turns, direct_turns) = (Stats::new(turns), Stats::new(direct_turns));
    let what = "turn p50, backend acp (warm)";
    report.row(
        what,
        "acpx prompt: result line",
        ms(acpx_turn.p50()),
        ms(turns.p50()),
        "ms",
    );
    report.latency(
        "turn, backend acp (warm)",
        "direct ACP client",
        &direct_turns,
        &turns,
    );
    report.note(&format!(
        "native, test agent: the gateway adds {:+.2} ms per turn over a direct ACP client",
        ms(turns.p50()) - ms(direct_turns.p50())
    ));
    app.close_session(&s.session_id).await.unwrap();
}

fn native() -> CreateSession {
    CreateSession {
        agent: Some("native".into()),
        files: vec![],
        name: None,
    }
}

/// create+close on the native backend against the gateway's acpx create+close.
async fn native_create_rows(app: &ForgeClient, report: &mut Report, acpx_create: &Stats, k: usize) {
    let mut creates = Vec::new();
    for _ in 0..k {
        let t = Instant::now();
        let c = app.create_session(&native()).await.unwrap();
        app.close_session(&c.session_id).await.unwrap();
        creates.push(t.elapsed());
    }
    let creates = Stats::new(creates);
    let (what, base) = ("create+close p50, backend acp", "create+close p50, acpx");
    report.row(what, base, ms(acpx_create.p50()), ms(creates.p50()), "ms");
}

/// Sessions opened and warmed, `per_app` in each app named.
async fn warm_sessions(
    forge: &Forge,
    apps: &[&str],
    per_app: usize,
    req: &CreateSession,
) -> Vec<(ForgeClient, String)> {
    let mut ids = Vec::new();
    for name in apps {
        let a = forge.app(name).await;
        for _ in 0..per_app {
            let s = a.create_session(req).await.unwrap();
            a.turn(&turn(&s.session_id, "warm")).await.unwrap();
            ids.push((a.clone(), s.session_id));
        }
    }
    ids
}

/// The agent processes of warm sessions of two apps against as many acpx sessions, and the
/// worker's memory with them.
async fn agent_process_rows(forge: &Forge, report: &mut Report, quick: bool) {
    let homes = forge.dir.path().join("data/homes");
    let acpx_sessions = if quick { 2 } else { 4 };
    let before = harness::agent_processes(&homes).len();
    let acpx_ids = warm_sessions(
        forge,
        &["bench-acpx-procs"],
        acpx_sessions,
        &CreateSession::default(),
    )
    .await;
    let acpx_per_session =
        (harness::agent_processes(&homes).len() - before) as f64 / acpx_sessions as f64;
    for (a, id) in acpx_ids {
        a.close_session(&id).await.unwrap();
    }
    let before = harness::agent_processes(&homes).len();
    let worker = forge.workers[0].child.id();
    let rss_before = rss_kib(worker) as f64 / 1024.0;
    let native_ids =
        warm_sessions(forge, &["bench-native-a", "bench-native-b"], 16, &native()).await;
    let native_procs = (harness::agent_processes(&homes).len() - before) as f64;
    report.row(
        "agent processes, 32 warm sessions of 2 apps",
        &format!("acpx: {acpx_sessions} warm sessions, scaled to 32"),
        acpx_per_session * 32.0,
        native_procs,
        "procs",
    );
    let rss = rss_kib(worker) as f64 / 1024.0;
    report.row(
        "worker RSS, 32 warm acp sessions of 2 apps",
        "worker RSS before them",
        rss_before,
        rss,
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
    let rate = |sessions: Vec<(ForgeClient, String)>| {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sessions = Arc::new(sessions);
        throughput(total, sessions.len(), move || {
            let (sessions, next) = (sessions.clone(), next.clone());
            async move {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (app, id) = &sessions[i % sessions.len()];
                app.turn(&turn(id, "tps")).await.unwrap();
            }
        })
    };
    let ids = warm_sessions(forge, &["bench-tps-one"], 8, &native()).await;
    let single = rate(ids.clone()).await;
    close_all(ids).await;
    forge.spawn_worker(&[]);
    forge.wait_for_workers(2).await;
    let ids = warm_sessions(forge, &["bench-tps-two"], 8, &native()).await;
    let double = rate(ids.clone()).await;
    close_all(ids).await;
    let what = "acp turns/s, 2 workers (8 sessions, 8 in flight)";
    report.row(what, "acp turns/s, 1 worker", single, double, "turns/s");
}

async fn close_all(sessions: Vec<(ForgeClient, String)>) {
    for (app, id) in sessions {
        app.close_session(&id).await.unwrap();
    }
}

/// `GET /sessions/{id}` over HTTP (the sidecar) against `forge.session.get` over NATS.
async fn http_rows(forge: &Forge, report: &mut Report, (n, total): (usize, usize)) {
    let sidecar = forge.spawn_http("sidecar", &[("RUST_LOG", "warn")]).await;
    let http = harness::http_client();
    let token = forge
        .admin
        .create_token("bench-http", false)
        .await
        .unwrap()
        .token;
    let app = forge.admin.with_token(Some(token.clone()));
    let id = app
        .create_session(&CreateSession::default())
        .await
        .unwrap()
        .session_id;
    let url = sidecar.url(&format!("/sessions/{id}"));
    let nats_get = move || {
        let (a, id) = (app.clone(), id.clone());
        async move {
            a.get_session(&id).await.unwrap();
        }
    };
    let http_get = move || {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
            assert!(r.status().is_success());
            r.bytes().await.unwrap();
        }
    };
    let (nats_seq, http_seq) = (
        sequential(n, nats_get.clone()).await,
        sequential(n, http_get.clone()).await,
    );
    let (b, v) = (&nats_seq, &http_seq);
    report.row(
        "GET /sessions/{id} p50",
        "forge.session.get p50",
        ms(b.p50()),
        ms(v.p50()),
        "ms",
    );
    report.row(
        "GET /sessions/{id} p99",
        "forge.session.get p99",
        ms(b.p99()),
        ms(v.p99()),
        "ms",
    );
    let nats_tput = throughput(total, 64, nats_get).await;
    let http_tput = throughput(total, 64, http_get).await;
    report.row(
        "GET /sessions/{id} throughput (64)",
        "forge.session.get throughput",
        nats_tput,
        http_tput,
        "req/s",
    );
}

/// Short acpx turns of several sessions at once: one worker, then two. Returns the sessions.
async fn short_turn_rows(
    forge: &mut Forge,
    app: &ForgeClient,
    report: &mut Report,
    quick: bool,
) -> Vec<String> {
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
    ids
}

/// A worker's own resident memory (not its agents'), idle and with 32 open sessions.
async fn memory_rows(forge: &mut Forge, app: &ForgeClient, ids: Vec<String>, report: &mut Report) {
    forge.kill_worker(1);
    let pid = forge.workers[0].child.id();
    for id in &ids {
        app.close_session(id).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(pid) as f64 / 1024.0;
    let open_now = forge.admin.health().await.unwrap().open_sessions;
    // Made four at a time: each is an acpx process of its own, the measure is the worker's.
    let opened: Vec<String> = futures::stream::iter(open_now..32)
        .map(|_| async {
            let made = app.create_session(&CreateSession::default()).await;
            made.unwrap().session_id
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let busy = rss_kib(pid) as f64 / 1024.0;
    report.row(
        "worker RSS with 32 open sessions",
        "worker RSS idle",
        idle,
        busy,
        "MiB",
    );
    report.note(&format!(
        "worker RSS idle: {idle:.1} MiB (target: under 30 MiB)"
    ));
    let closes = futures::stream::iter(&opened).map(|id| app.close_session(id));
    let closed: Vec<_> = closes.buffer_unordered(4).collect().await;
    closed.into_iter().for_each(|c| drop(c.unwrap()));
}

/// A deployment with the test agent as its default agent, `native` (the test agent on the
/// native backend) and the real adapter on both backends, its model the stand-in; `extra`
/// on top of the worker's environment.
async fn start_forge(standin: &real::Standin, extra: &[(&str, &str)]) -> Forge {
    let mut env = standin.worker_env();
    env.push(("CLAWDFORGE_MAX_LIVE_SESSIONS".into(), "100".into()));
    env.push(("RUST_LOG".into(), "warn".into()));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let native = format!(
        "[agents.native]\ncommand = {:?}\nbackend = \"acp\"\n",
        harness::agent_command("")
    );
    Forge::start_with(Options {
        env,
        config_toml: Some(native + real::AGENTS_TOML),
        ..Default::default()
    })
    .await
}

/// The echo responder, in its own process; returns once it answers.
async fn start_echo(forge: &Forge) -> std::process::Child {
    let echo = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--echo-server", &forge.nats.url])
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if forge
            .admin
            .nats()
            .request(ECHO_SUBJECT, "x".into())
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    echo
}

fn write_report(report: &Report) {
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

/// Everything past the control operations: on `forge`, the main deployment, and on `pair`,
/// two fresh ones started together that differ only in confinement (as shipped, and off), for
/// the rows that compare them or compare a turn with the agent driven directly.
async fn agent_rows(
    forge: &mut Forge,
    pair: (Forge, Forge),
    (app, sid): Session<'_>,
    standin: &real::Standin,
    report: &mut Report,
    echo: &Stats,
    quick: bool,
) {
    let acpx_create = create_close_rows(forge, app, report, echo, if quick { 3 } else { 8 }).await;
    let forges = real::Forges {
        confined: &pair.0,
        open: &pair.1,
    };
    let to_result = acpx_turn_rows(&forges, (app, sid), report, if quick { 5 } else { 12 }).await;
    spawn_rows(forge, report, if quick { 8 } else { 16 });
    let native_app = forge.app("bench-native").await;
    native_turn_rows(
        forge,
        &native_app,
        report,
        &to_result,
        if quick { 100 } else { 500 },
    )
    .await;
    native_create_rows(
        &native_app,
        report,
        &acpx_create,
        if quick { 10 } else { 50 },
    )
    .await;
    agent_process_rows(forge, report, quick).await;
    real::rows(&forges, standin, report, quick).await;
    drop(pair);
    http_rows(
        forge,
        report,
        if quick { (300, 3000) } else { (2000, 20000) },
    )
    .await;
    let ids = short_turn_rows(forge, app, report, quick).await;
    memory_rows(forge, app, ids, report).await;
    two_worker_rows(forge, report, quick).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--echo-server") {
        echo_server(&args[i + 1]).await;
        return;
    }
    install_tools();
    let started = Instant::now();
    let quick = args.iter().any(|a| a == "--quick");
    println!("clawdforge {} gateway benchmark", env!("CARGO_PKG_VERSION"));
    println!(
        "{:<50} {:<30} {:>14} {:>14} {:>8}",
        "measure", "baseline", "baseline", "clawdforge", "ratio"
    );
    let mut report = Report::default();
    let standin = real::Standin::start();
    let mut forge = start_forge(&standin, &[]).await;
    let flag = |name: &str| args.iter().any(|a| a == name);
    let open = || start_forge(&standin, &[("CLAWDFORGE_AGENT_CONFINEMENT", "off")]);
    if flag("--protocol-only") {
        agent_protocol::rows(&standin, &mut report, quick).await;
    } else if flag("--telemetry-only") {
        let counts = if quick { 300 } else { 2000 };
        telemetry_rows(&standin, &mut report, counts, quick).await;
    } else if flag("--real-only") {
        let open = open().await;
        let forges = real::Forges {
            confined: &forge,
            open: &open,
        };
        real::rows(&forges, &standin, &mut report, quick).await;
    } else {
        let mut echo = start_echo(&forge).await;
        let app = forge.app("bench").await;
        agents_checked(&app).await;
        let made = app.create_session(&CreateSession::default()).await;
        let sid = made.unwrap().session_id;
        let counts = if quick { (300, 3000) } else { (2000, 20000) };
        let floor = control_rows(&forge, &app, &sid, &mut report, counts).await;
        policy_rows(&forge, &mut report, counts, quick).await;
        telemetry_rows(&standin, &mut report, counts.0, quick).await;
        agent_protocol::rows(&standin, &mut report, quick).await;
        if flag("--control-only") {
            http_rows(&forge, &mut report, counts).await;
        } else {
            let session = (&app, sid.as_str());
            let pair = (start_forge(&standin, &[]).await, open().await);
            let echo_p50 = &floor.seq;
            agent_rows(
                &mut forge,
                pair,
                session,
                &standin,
                &mut report,
                echo_p50,
                quick,
            )
            .await;
        }
        let _ = echo.kill();
        let _ = echo.wait();
    }
    let took = started.elapsed().as_secs();
    report.note(&format!(
        "the benchmark took {}m{:02}s",
        took / 60,
        took % 60
    ));
    write_report(&report);
}
