//! The real Claude Code adapter (`claude-agent-acp`, installed by scripts/setup-tools.sh into
//! `.tools/agents`) against the project's model stand-in on loopback
//! (`tests/fixtures/model-standin.mjs`): a warm turn through clawdforge against the same adapter
//! driven directly (`acpx claude prompt` on the acpx backend; a minimal ACP client spawning the
//! adapter on the native one), the first turn of a new native session against a warm one, and
//! the resident memory of one app's adapter process tree with 8 sessions open. Also the direct
//! ACP client the test agent's native rows compare with.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clawdforge::client::ForgeClient;
use clawdforge::wire::CreateSession;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};

use super::{harness, ms, turn, DirectAcpx, Report, Stats};

/// The agents a forge of the benchmark knows besides its default (the test agent): the real
/// adapter through acpx (acpx's built-in `claude`) and natively.
pub const AGENTS_TOML: &str = "[agents.claude]\ncommand = \"claude\"\nbackend = \"acpx\"\n\
     permissions = \"allow_all\"\n[agents.claude-native]\ncommand = \"claude\"\n\
     backend = \"acp\"\npermissions = \"allow_all\"\n";

/// The model stand-in, on a loopback port of its own; it ends when dropped.
pub struct Standin {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Standin {
    pub fn start() -> Standin {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let child = Command::new(harness::tool("node"))
            .arg(harness::repo().join("tests/fixtures/model-standin.mjs"))
            .arg("--port-file")
            .arg(&port_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the model stand-in");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let read = std::fs::read_to_string(&port_file).ok();
            if let Some(port) = read.and_then(|p| p.trim().parse().ok()) {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "the model stand-in never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Standin {
            child,
            port,
            _dir: dir,
        }
    }

    /// What Claude Code needs to talk to the stand-in and nothing else.
    fn model_env(&self) -> Vec<(String, String)> {
        [
            (
                "ANTHROPIC_BASE_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("ANTHROPIC_API_KEY", "sk-ant-standin".into()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
            ("DISABLE_AUTOUPDATER", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The workers' environment, as tests/it/real.rs gives it: the agents' bin first on PATH,
    /// the model variables passed on to agents, the stand-in's port the one they may reach.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        let mut env = self.model_env();
        env.push(("PATH".into(), agents_path()));
        let names: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
        let names = names[..names.len() - 1].join(",");
        env.push(("CLAWDFORGE_AGENT_ENV".into(), names));
        env.push((
            "CLAWDFORGE_AGENT_CONNECT_PORTS".into(),
            self.port.to_string(),
        ));
        env
    }

    /// The environment of an adapter started directly in `home`: what a worker gives its
    /// agents (see [`super::direct_env`]), with the model variables.
    pub fn direct_env(&self, home: &Path) -> Vec<(String, String)> {
        let mut env = super::direct_env(home);
        env.retain(|(k, _)| k != "PATH");
        env.push(("PATH".into(), agents_path()));
        env.push(("IS_SANDBOX".into(), "1".into()));
        env.extend(self.model_env());
        env
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PATH with the real agents' bin first.
fn agents_path() -> String {
    format!(
        "{}:{}",
        harness::repo().join(".tools/agents/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A minimal ACP client over the agent's stdio (JSON-RPC 2.0, one message a line): what a
/// client of the adapter does with no gateway in between. Permission requests get their
/// first "allow" option; other requests of the agent, an error.
pub struct DirectAcp {
    child: tokio::process::Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: u64,
}

impl DirectAcp {
    /// Starts `argv` in `cwd` (with `env` only, when given) and initializes ACP.
    pub async fn start(argv: &[String], cwd: &Path, env: Option<&[(String, String)]>) -> Self {
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(env) = env {
            cmd.env_clear().envs(env.iter().cloned());
        }
        let mut child = cmd.spawn().expect("starting the agent");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acp = DirectAcp {
            child,
            stdin,
            stdout,
            next_id: 0,
        };
        let caps =
            json!({"fs": {"readTextFile": false, "writeTextFile": false}, "terminal": false});
        let init = json!({"protocolVersion": 1, "clientCapabilities": caps});
        acp.request("initialize", init).await;
        acp
    }

    async fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
    }

    /// Sends a request and reads until its response, answering the agent's requests meanwhile.
    async fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let line = self.stdout.next_line().await.unwrap();
            let line = line.unwrap_or_else(|| panic!("the agent exited during {method}"));
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if message.get("method").is_some() {
                if let Some(request_id) = message.get("id").cloned() {
                    let answer = answer_of(&message);
                    self.send(json!({"jsonrpc": "2.0", "id": request_id}).merged(answer))
                        .await;
                }
            } else if message["id"] == json!(id) {
                match message.get("result") {
                    Some(result) => return result.clone(),
                    None => panic!("{method} failed: {message}"),
                }
            }
        }
    }

    pub async fn new_session(&mut self, cwd: &Path) -> String {
        let made = self
            .request("session/new", json!({"cwd": cwd, "mcpServers": []}))
            .await;
        made["sessionId"].as_str().unwrap().to_string()
    }

    /// One turn; its stop reason.
    pub async fn prompt(&mut self, session: &str, text: &str) -> String {
        let prompt = json!([{"type": "text", "text": text}]);
        let params = json!({"sessionId": session, "prompt": prompt});
        let result = self.request("session/prompt", params).await;
        result["stopReason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for DirectAcp {
    fn drop(&mut self) {
        // The adapter's Claude Code processes are in its process group.
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The answer to a request of the agent: a permission's first "allow" option, else an error.
fn answer_of(request: &Value) -> Value {
    if request["method"] == "session/request_permission" {
        let options = request["params"]["options"].as_array().cloned();
        let allow = options.unwrap_or_default().into_iter().find(|o| {
            let kind = o["kind"].as_str().unwrap_or_default();
            kind.starts_with("allow")
        });
        if let Some(option) = allow {
            let outcome = json!({"outcome": "selected", "optionId": option["optionId"]});
            return json!({"result": {"outcome": outcome}});
        }
    }
    json!({"error": {"code": -32601, "message": "not supported by this client"}})
}

trait Merged {
    fn merged(self, other: Value) -> Value;
}

impl Merged for Value {
    fn merged(mut self, other: Value) -> Value {
        if let (Some(a), Value::Object(b)) = (self.as_object_mut(), other) {
            a.extend(b);
        }
        self
    }
}

/// The forges the rows run on: as shipped (confined), and the same with confinement off.
pub struct Forges<'a> {
    pub confined: &'a harness::Forge,
    pub open: &'a harness::Forge,
}

/// The rows of the real adapter.
pub async fn rows(forges: &Forges<'_>, standin: &Standin, report: &mut Report, quick: bool) {
    let n = if quick { 10 } else { 30 };
    let warm = native_turn_rows(forges, standin, report, n).await;
    new_session_rows(forges.confined, report, &warm, quick).await;
    acpx_turn_rows(forges.confined, standin, report, if quick { 4 } else { 8 }).await;
}

/// A native session of the real adapter and its first turn; how long both took.
async fn native_session(app: &ForgeClient) -> (String, Duration) {
    let t = Instant::now();
    let made = app
        .create_session(&CreateSession {
            agent: Some("claude-native".into()),
            files: vec![],
            name: None,
        })
        .await
        .unwrap();
    app.turn(&turn(&made.session_id, "first")).await.unwrap();
    (made.session_id, t.elapsed())
}

/// Warm turns through the gateway (confined as shipped, and with confinement off) against the
/// adapter driven directly; returns the confined gateway's turns.
async fn native_turn_rows(
    forges: &Forges<'_>,
    standin: &Standin,
    report: &mut Report,
    n: usize,
) -> Stats {
    let app = forges.confined.app("real-native").await;
    let (id, cold) = native_session(&app).await;
    report.note(&format!(
        "real adapter, native: a new app's first session (adapter process start, session/new, \
         first turn) {:.0} ms",
        ms(cold)
    ));
    let open_app = forges.open.app("real-native").await;
    let (open_id, _) = native_session(&open_app).await;
    let mut direct = start_direct(forges.confined, standin).await;
    let cwd = forges.confined.dir.path().join("direct-native");
    let direct_id = direct.new_session(&cwd).await;
    let [gw, open, dt] = warm_turns(
        (&app, &id),
        (&open_app, &open_id),
        (&mut direct, &direct_id),
        n,
    )
    .await;
    let (paired, paired_open) = (super::paired_ms(&gw, &dt), super::paired_ms(&open, &dt));
    let [gw, open, dt] = [gw, open, dt].map(Stats::new);
    let base = "direct ACP client";
    report.latency("real turn, backend acp (warm)", base, &dt, &gw);
    let what = "real turn p50, backend acp, unconfined";
    report.row(
        what,
        "direct ACP client p50",
        ms(dt.p50()),
        ms(open.p50()),
        "ms",
    );
    report.note(&format!(
        "real adapter, native: the gateway adds {:+.1} ms at p50, {:+.1} ms as the median of \
         paired turns (unconfined: {:+.1} / {:+.1} ms); target under 2 ms",
        ms(gw.p50()) - ms(dt.p50()),
        paired,
        ms(open.p50()) - ms(dt.p50()),
        paired_open
    ));
    app.close_session(&id).await.unwrap();
    open_app.close_session(&open_id).await.unwrap();
    gw
}

/// Warm turns, interleaved in a rotating order (so that none always follows the same one):
/// the confined gateway's, the unconfined one's and the direct client's. The first three of
/// each are left out: they carry Claude Code's side requests (the session's title).
async fn warm_turns(
    confined: (&ForgeClient, &str),
    open: (&ForgeClient, &str),
    (direct, direct_id): (&mut DirectAcp, &str),
    n: usize,
) -> [Vec<Duration>; 3] {
    let mut samples: [Vec<Duration>; 3] = Default::default();
    for i in 0..n + 3 {
        let text = format!("warm turn {i}");
        for k in 0..3 {
            let which = (i + k) % 3;
            let t = Instant::now();
            match which {
                0 => drop(confined.0.turn(&turn(confined.1, &text)).await.unwrap()),
                1 => drop(open.0.turn(&turn(open.1, &text)).await.unwrap()),
                _ => assert_eq!(direct.prompt(direct_id, &text).await, "end_turn"),
            }
            if i >= 3 {
                samples[which].push(t.elapsed());
            }
        }
    }
    samples
}

async fn start_direct(forge: &harness::Forge, standin: &Standin) -> DirectAcp {
    let home = forge.dir.path().join("direct-native-home");
    let cwd = forge.dir.path().join("direct-native");
    for dir in [home.join("tmp"), home.join(".claude"), cwd.clone()] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let argv = ["claude-agent-acp".to_string()];
    let env = standin.direct_env(&home);
    let program = which_on(&env, &argv[0]);
    DirectAcp::start(&[program], &cwd, Some(&env)).await
}

/// Where `name` is on the PATH of `env`.
fn which_on(env: &[(String, String)], name: &str) -> String {
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    std::env::split_paths(path.unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
        .to_string_lossy()
        .into_owned()
}

async fn timed<T, E: std::fmt::Debug>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Duration {
    let t = Instant::now();
    f.await.unwrap();
    t.elapsed()
}

/// New sessions in the warm adapter process of an app (create + first turn) against a warm
/// turn; the app's adapter process tree's memory with 1 session and with 8.
async fn new_session_rows(forge: &harness::Forge, report: &mut Report, warm: &Stats, quick: bool) {
    let app = forge.app("real-rss").await;
    let (first, _) = native_session(&app).await;
    let home = std::fs::canonicalize(forge.app_home("real-rss")).unwrap();
    let one = tree_rss(&home);
    let mut ids = vec![first];
    let mut firsts = Vec::new();
    for _ in 1..if quick { 4 } else { 8 } {
        let (id, took) = native_session(&app).await;
        ids.push(id);
        firsts.push(took);
    }
    let firsts = Stats::new(firsts);
    let what = "real create + first turn p50, backend acp";
    report.row(
        what,
        "real warm turn p50",
        ms(warm.p50()),
        ms(firsts.p50()),
        "ms",
    );
    let all = tree_rss(&home);
    let what = format!("adapter tree RSS, {} native sessions", ids.len());
    let mib = |kib: u64| kib as f64 / 1024.0;
    report.row(
        &what,
        "the same with 1 session",
        mib(one.rss),
        mib(all.rss),
        "MiB",
    );
    report.note(&format!(
        "real adapter, native: with {} sessions one app's tree is {} Claude Code processes and \
         {} others (the adapter's node, helpers); RSS {:.0} MiB, PSS {:.0} MiB (shared pages \
         counted once), {:.0} MiB RSS per session added; with 1 session RSS {:.0}, PSS {:.0}",
        ids.len(),
        all.claude,
        all.processes - all.claude,
        mib(all.rss),
        mib(all.pss),
        (mib(all.rss) - mib(one.rss)) / (ids.len() - 1) as f64,
        mib(one.rss),
        mib(one.pss)
    ));
    for id in ids {
        app.close_session(&id).await.unwrap();
    }
}

/// An app's agent processes: how many (Claude Code's among them), their memory summed.
#[derive(Default)]
struct TreeRss {
    rss: u64,
    pss: u64,
    processes: usize,
    claude: usize,
}

/// The processes whose HOME is `home` (an app's agents: its adapter process and what that
/// started), their resident (RSS) and proportional (PSS) memory summed, in KiB.
fn tree_rss(home: &Path) -> TreeRss {
    let needle = format!("HOME={}", home.display());
    let mut total = TreeRss::default();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if !environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        total.claude += usize::from(program.ends_with(b"/claude"));
        total.processes += 1;
        total.rss += super::rss_kib(pid);
        total.pss += pss_kib(&entry.path());
    }
    total
}

/// A process's proportional set size (`/proc/<pid>/smaps_rollup`), in KiB.
fn pss_kib(proc_dir: &Path) -> u64 {
    let rollup = std::fs::read_to_string(proc_dir.join("smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Warm turns of the real adapter through acpx: the gateway against `acpx claude prompt` run
/// directly (same agent, same stand-in), spaced and alternating, as the test agent's are.
async fn acpx_turn_rows(forge: &harness::Forge, standin: &Standin, report: &mut Report, n: usize) {
    let app = forge.app("real-acpx").await;
    let made = app
        .create_session(&CreateSession {
            agent: Some("claude".into()),
            files: vec![],
            name: None,
        })
        .await
        .unwrap();
    let id = made.session_id;
    let home = forge.dir.path().join("direct-acpx-home");
    let direct = DirectAcpx::new(
        home.clone(),
        forge.dir.path().join("direct-acpx"),
        vec!["claude".into()],
        standin.direct_env(&home),
    );
    direct.sessions_new("real");
    let (mut gw, mut to_result) = (Vec::new(), Vec::new());
    // Each first in turn; the pause is longer than acpx's idle second, so that a turn never
    // waits for its session's previous client. The first two start the agents.
    for i in 0..n + 2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let text = format!("acpx turn {i}");
        let mut took = Duration::ZERO;
        let mut result = Duration::ZERO;
        for k in 0..2 {
            if (i + k) % 2 == 0 {
                took = timed(app.turn(&turn(&id, &text))).await;
            } else {
                result = direct.prompt("real", &text).0;
            }
        }
        if i >= 2 {
            gw.push(took);
            to_result.push(result);
        }
    }
    let paired = super::paired_ms(&gw, &to_result);
    let (gw, to_result) = (Stats::new(gw), Stats::new(to_result));
    let base = "acpx claude prompt: result";
    report.latency(
        "real turn, backend acpx (warm, spaced)",
        base,
        &to_result,
        &gw,
    );
    report.note(&format!(
        "real adapter, acpx: the gateway adds {:+.1} ms at p50 over acpx's own result line, \
         {:+.1} ms as the median of paired turns",
        ms(gw.p50()) - ms(to_result.p50()),
        paired
    ));
    direct.run(&["sessions", "close", "real"]);
    app.close_session(&id).await.unwrap();
}
