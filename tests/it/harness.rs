//! Starts the real things for a test: its own nats-server, worker processes on a temp ledger
//! with their own HOME, the real acpx driving the test ACP agent. Everything it started is
//! ended when the harness drops, acpx's detached queue owners included.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clawdforge::client::ForgeClient;

pub const ROOT_TOKEN: &str = "root-secret-for-tests";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool installed by scripts/setup-tools.sh. A missing tool fails the test, loudly.
pub fn tool(name: &str) -> PathBuf {
    let path = repo().join(".tools/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup-tools.sh (the README's test command, scripts/test.sh, does)",
        path.display()
    );
    path
}

pub fn agent_command(extra: &str) -> String {
    format!(
        "{} {}{extra}",
        tool("node").display(),
        repo().join("tests/fixtures/acp-agent.mjs").display()
    )
}

/// A configuration whose `default` agent is the test agent, natively, asking the caller for
/// every permission (`permissions = "ask"`).
pub fn asking_agent_toml() -> String {
    format!(
        "[agents.default]\ncommand = {:?}\nbackend = \"acp\"\npermissions = \"ask\"\n",
        agent_command("")
    )
}

pub struct Nats {
    child: Child,
    pub url: String,
    /// Where other servers route to it, when its configuration names a cluster.
    pub cluster_url: Option<String>,
    port_dir: tempfile::TempDir,
}

/// A nats-server configuration that opens a cluster port (for [`Nats::start_routed_to`]).
pub const CLUSTERED: &str = "cluster { name: forge, listen: \"127.0.0.1:-1\" }\n";

impl Nats {
    pub fn start() -> Nats {
        Self::start_on(None)
    }

    /// Starts nats-server on `port`, or on a free port it picks.
    pub fn start_on(port: Option<u16>) -> Nats {
        Self::start_configured(port, None)
    }

    /// Starts nats-server with a configuration file holding `config` (users, permissions).
    pub fn start_configured(port: Option<u16>, config: Option<&str>) -> Nats {
        let port_dir = tempfile::tempdir().unwrap();
        let port_arg = port.map(|p| p.to_string()).unwrap_or_else(|| "-1".into());
        let mut cmd = Command::new(tool("nats-server"));
        if let Some(text) = config {
            let file = port_dir.path().join("nats.conf");
            std::fs::write(&file, text).unwrap();
            cmd.arg("-c").arg(file);
        }
        let child = cmd
            .args(["-a", "127.0.0.1", "-p", &port_arg, "--ports_file_dir"])
            .arg(port_dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        let ports_file = port_dir
            .path()
            .join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let ports = loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    if v["nats"][0].is_string() {
                        break v;
                    }
                }
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Nats {
            child,
            url: ports["nats"][0].as_str().unwrap().to_string(),
            cluster_url: ports["cluster"][0].as_str().map(str::to_string),
            port_dir,
        }
    }

    /// Starts a second nats-server in `first`'s cluster (started with [`CLUSTERED`]). A
    /// request published on one server goes to a queue subscriber on that same server when it
    /// has one: a test picks the worker a request reaches by where it publishes.
    pub fn start_routed_to(first: &Nats) -> Nats {
        let route = first
            .cluster_url
            .as_deref()
            .expect("a clustered nats-server");
        let config =
            format!("cluster {{ name: forge, listen: \"127.0.0.1:-1\", routes: [\"{route}\"] }}\n");
        Self::start_configured(None, Some(&config))
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.port_dir;
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct WorkerProcess {
    pub child: Child,
    pub log: PathBuf,
}

/// A test deployment: nats-server, workers, a temp data directory, an admin client.
pub struct Forge {
    pub nats: Nats,
    /// More nats-servers of the test, stopped with it.
    pub more_nats: Vec<Nats>,
    pub dir: tempfile::TempDir,
    pub workers: Vec<WorkerProcess>,
    pub env: Vec<(String, String)>,
    pub admin: ForgeClient,
}

/// Which backend the default agent's sessions go through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Via {
    #[default]
    Acpx,
    Acp,
}

/// Runs each named `async fn(Via)` of the module as two tests, `acpx::<name>` and
/// `acp::<name>`: the same test against both backends.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod acpx {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::harness::Via::Acpx).await
            })*
        }
        mod acp {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::harness::Via::Acp).await
            })*
        }
    };
}

/// `(key, value)` pairs as the harness's environment holds them.
pub fn env_of(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub struct Options {
    pub workers: usize,
    /// The default agent's backend (its command is `ACPX_AGENT`'s either way).
    pub via: Via,
    pub env: Vec<(String, String)>,
    pub config_toml: Option<String>,
    /// A nats-server configuration (with `no_auth_user`, so that the harness's clients and
    /// workers need no credentials).
    pub nats_config: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 1,
            via: Via::Acpx,
            env: Vec::new(),
            config_toml: None,
            nats_config: None,
        }
    }
}

impl Forge {
    pub async fn start() -> Forge {
        Self::start_with(Options::default()).await
    }

    /// One worker, its default agent through `via`.
    pub async fn start_via(via: Via) -> Forge {
        Self::start_with(Options {
            via,
            ..Default::default()
        })
        .await
    }

    pub async fn start_with(opts: Options) -> Forge {
        let nats = Nats::start_configured(None, opts.nats_config.as_deref());
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let path = |p: &str| dir.path().join(p).to_string_lossy().into_owned();
        let mut env: Vec<(String, String)> = vec![
            ("HOME".into(), home.to_string_lossy().into_owned()),
            ("NATS_URL".into(), nats.url.clone()),
            ("DB_PATH".into(), path("data/ledger.db")),
            ("ACPX_SESSIONS_CWD".into(), path("data/sessions")),
            ("RUNS_DIR".into(), path("data/runs")),
            (
                "ACPX_BIN".into(),
                tool("acpx").to_string_lossy().into_owned(),
            ),
            ("ACPX_AGENT".into(), agent_command("")),
            ("ADMIN_BOOTSTRAP_TOKEN".into(), ROOT_TOKEN.into()),
            ("CLAWDFORGE_ACPX_TTL_SECS".into(), "120".into()),
            ("CLAUDE_BIN".into(), path("no-claude-here")),
            ("RUST_LOG".into(), "info,clawdforge=debug".into()),
            ("CLAWDFORGE_AGENT_READ_DIRS".into(), agent_read_dirs()),
        ];
        for (k, v) in opts.env {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        }
        let mut toml = opts.config_toml.clone().unwrap_or_default();
        if opts.via == Via::Acp {
            let (_, command) = env.iter().find(|(k, _)| k == "ACPX_AGENT").unwrap();
            toml.push_str(&format!(
                "\n[agents.default]\ncommand = {command:?}\nbackend = \"acp\"\n"
            ));
        }
        if !toml.is_empty() {
            let file = dir.path().join("clawdforge.toml");
            std::fs::write(&file, toml).unwrap();
            env.push((
                "CLAWDFORGE_CONFIG".into(),
                file.to_string_lossy().into_owned(),
            ));
        }
        let client = async_nats::connect(&nats.url).await.unwrap();
        let admin = ForgeClient::new(client, Some(ROOT_TOKEN.into()));
        let mut forge = Forge {
            nats,
            more_nats: Vec::new(),
            dir,
            workers: Vec::new(),
            env,
            admin,
        };
        for _ in 0..opts.workers {
            forge.spawn_worker(&[]);
        }
        forge.wait_for_workers(opts.workers).await;
        forge
    }

    /// The workers' own HOME (their agents have the apps' homes); the benchmark's direct acpx
    /// runs use it.
    #[allow(dead_code)]
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The HOME of `app`'s agents (the default `agent_homes_dir`, `data/homes`, in the
    /// workers' working directory).
    pub fn app_home(&self, app: &str) -> PathBuf {
        self.dir.path().join("data/homes").join(app)
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.dir.path().join("data/ledger.db")
    }

    pub fn sessions_root(&self) -> PathBuf {
        self.dir.path().join("data/sessions")
    }

    /// Starts one more worker process with the harness's environment plus `extra`.
    pub fn spawn_worker(&mut self, extra: &[(&str, &str)]) -> usize {
        let n = self.workers.len();
        let log = self.dir.path().join(format!("worker-{n}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_clawdforge"));
        cmd.arg("worker")
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting the worker");
        self.workers.push(WorkerProcess { child, log });
        n
    }

    /// Waits until `n` workers answer `$SRV.PING`.
    pub async fn wait_for_workers(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ids = self
                .admin
                .ping_workers(Duration::from_millis(200))
                .await
                .unwrap_or_default();
            if ids.len() >= n {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} of {n} workers answered; logs:\n{}",
                    ids.len(),
                    self.logs()
                );
            }
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, w) in self.workers.iter().enumerate() {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(&w.log) {
                let _ = f.read_to_string(&mut text);
            }
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            out.push_str(&format!("--- worker {i} ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Waits until a worker's log has a line holding every one of `needles`.
    pub async fn wait_for_log(&self, needles: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for w in &self.workers {
                let text = std::fs::read_to_string(&w.log).unwrap_or_default();
                if text.lines().any(|l| needles.iter().all(|n| l.contains(n))) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Which of the workers has the id `worker_id` (as its "worker ready" line says).
    /// How many requests about `session_id` the workers' logs say were passed on.
    pub fn passed_on_count(&self, session_id: &str) -> usize {
        let passed_on = |w: &WorkerProcess| {
            let text = std::fs::read_to_string(&w.log).unwrap_or_default();
            let lines = text.lines();
            lines
                .filter(|l| l.contains("passed on") && l.contains(session_id))
                .count()
        };
        self.workers.iter().map(passed_on).sum()
    }

    pub fn worker_index(&self, worker_id: &str) -> usize {
        let needle = format!("worker_id={worker_id} ");
        self.workers
            .iter()
            .position(|w| {
                let text = std::fs::read_to_string(&w.log).unwrap_or_default();
                text.lines()
                    .any(|l| l.contains("worker ready") && l.contains(&needle))
            })
            .unwrap_or_else(|| panic!("no worker {worker_id}:\n{}", self.logs()))
    }

    /// Starts a nats-server routed to the harness's (which must have been started with
    /// [`CLUSTERED`]) and one more worker on it; returns a connection to that server once pings
    /// through either server reach every worker. A request sent through the far
    /// connection reaches the far worker, one sent through `admin` a worker on the first server.
    pub async fn spawn_far_worker(&mut self) -> async_nats::Client {
        self.spawn_far_worker_with(&[]).await
    }

    /// [`Forge::spawn_far_worker`], the far worker with `extra` in its environment.
    pub async fn spawn_far_worker_with(&mut self, extra: &[(&str, &str)]) -> async_nats::Client {
        let far = Nats::start_routed_to(&self.nats);
        let mut env = vec![("NATS_URL", far.url.as_str())];
        env.extend_from_slice(extra);
        self.spawn_worker(&env);
        let client = async_nats::connect(&far.url).await.unwrap();
        let through_far = ForgeClient::new(client.clone(), None);
        let n = self.workers.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        for pinger in [&through_far, &self.admin] {
            while pinger
                .ping_workers(Duration::from_millis(200))
                .await
                .map_or(0, |p| p.len())
                < n
            {
                assert!(
                    Instant::now() < deadline,
                    "the far worker is not reached:\n{}",
                    self.logs()
                );
            }
        }
        self.more_nats.push(far);
        client
    }

    /// The service instance id of worker `n` (as `$SRV.PING` answers it): ask it before the
    /// worker stops, to tell when it no longer serves.
    pub async fn instance_id(&self, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pings = self.admin.ping_workers(Duration::from_millis(200)).await;
            for ping in pings.unwrap_or_default() {
                if ping.worker_id.as_deref().map(|w| self.worker_index(w)) == Some(n) {
                    return ping.id;
                }
            }
            assert!(Instant::now() < deadline, "worker {n} does not answer");
        }
    }

    /// Waits until the worker with service instance id `id` takes no more requests: its own
    /// `$SRV.PING.clawdforge.<id>` has no responders.
    pub async fn wait_until_not_serving(&self, id: &str) {
        let subject = format!("$SRV.PING.{}.{id}", clawdforge::wire::SERVICE_NAME);
        self.wait_for_no_responders(subject).await;
    }

    /// Waits until no worker takes requests: `$SRV.PING.clawdforge` has no responders.
    pub async fn wait_until_no_worker_serves(&self) {
        let subject = format!("$SRV.PING.{}", clawdforge::wire::SERVICE_NAME);
        self.wait_for_no_responders(subject).await;
    }

    /// Asks `subject` until NATS answers that nobody subscribes to it.
    async fn wait_for_no_responders(&self, subject: String) {
        use async_nats::RequestErrorKind;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let asked = self.admin.nats().request(subject.clone(), "".into()).await;
            if matches!(&asked, Err(e) if e.kind() == RequestErrorKind::NoResponders) {
                return;
            }
            assert!(Instant::now() < deadline, "{subject} is still served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client with a fresh app token.
    pub async fn app(&self, app: &str) -> ForgeClient {
        let created = self.admin.create_token(app, false).await.unwrap();
        self.admin.with_token(Some(created.token))
    }

    /// Opens the ledger read-only for assertions.
    pub fn ledger(&self) -> rusqlite::Connection {
        read_only_ledger(&self.ledger_path())
    }

    pub fn kill_worker(&mut self, n: usize) {
        let _ = self.workers[n].child.kill();
        let _ = self.workers[n].child.wait();
    }

    /// Kills worker `n` and waits until NATS has dropped its subscriptions (its own ping has no
    /// responders), so that no request goes to it after.
    pub async fn kill_worker_and_wait(&mut self, n: usize) {
        let id = self.instance_id(n).await;
        self.kill_worker(n);
        self.wait_until_not_serving(&id).await;
    }
}

impl Drop for Forge {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for w in &mut self.workers {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
        kill_by_home(self.dir.path());
        remove_socket_dirs(&self.dir.path().join("data/homes"));
    }
}

/// Removes the socket directories the workers made in /tmp for the apps' homes under `homes`.
pub fn remove_socket_dirs(homes: &Path) {
    for home in std::fs::read_dir(homes).into_iter().flatten().flatten() {
        let dir = clawdforge::agent::confine::acpx_socket_dir_of(&home.path());
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// What the tests' agents may read and execute: the system, the tools and the fixtures.
pub fn agent_read_dirs() -> String {
    let mut dirs: Vec<String> = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc"]
        .map(String::from)
        .to_vec();
    for sub in [".tools", "tests/fixtures"] {
        dirs.push(repo().join(sub).to_string_lossy().into_owned());
    }
    dirs.join(",")
}

/// The ledger at `path`, opened read-only for assertions.
pub fn read_only_ledger(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// Kills every process whose HOME is `dir` or lies under it: acpx's queue owners and the agents
/// they started (in the apps' homes), which detach from the worker.
pub fn kill_by_home(dir: &Path) {
    let needle = format!("HOME={}", dir.display());
    let under = format!("{needle}/");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|kv| kv == needle.as_bytes() || kv.starts_with(under.as_bytes()))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A port that was free a moment ago on `host`.
pub fn free_port(host: &str) -> u16 {
    std::net::TcpListener::bind((host, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP client that goes straight to the address it is given, whatever proxy the
/// environment names.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// A `clawdforge sidecar` or `clawdforge serve` process; killed when dropped.
pub struct HttpProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub base: String,
    pub log: PathBuf,
}

impl HttpProcess {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (at most `wait`) for the process to exit.
    pub fn terminate(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HttpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("--- {} ---", self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Forge {
    /// Starts `clawdforge <command>` (`sidecar` or `serve`) with the harness's environment,
    /// BIND_HOST=127.0.0.1 (unless `extra` names another) and BIND_PORT=0, plus `extra`;
    /// returns once it answers `/healthz` (with any status) on the port it bound.
    pub async fn spawn_http(&self, command: &str, extra: &[(&str, &str)]) -> HttpProcess {
        let host = extra
            .iter()
            .find(|(k, _)| *k == "BIND_HOST")
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| "127.0.0.1".into());
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.dir.path().join(format!("{command}-{n}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_clawdforge"));
        cmd.arg(command)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.env("BIND_HOST", &host).env("BIND_PORT", "0");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        // The port it bound is read from its "ready" line: whatever else the caller's filter
        // leaves out, that line stays in.
        if let Some((_, filter)) = extra.iter().find(|(k, _)| *k == "RUST_LOG") {
            cmd.env("RUST_LOG", format!("{filter},clawdforge::app=info"));
        }
        let child = cmd.spawn().expect("starting clawdforge");
        let url_host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let mut process = HttpProcess {
            child,
            base: String::new(),
            log,
        };
        let port = process.bound_port(command).await;
        process.base = format!("http://{url_host}:{port}");
        process.wait_for_healthz(command).await;
        process
    }
}

impl HttpProcess {
    /// The port the sidecar bound, as its "sidecar ready" line says (`addr=HOST:PORT`, or
    /// `"addr":"HOST:PORT"` in JSON): with BIND_PORT=0 only it knows.
    async fn bound_port(&mut self, command: &str) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.log_text();
            let ready = text.lines().find(|l| l.contains("sidecar ready"));
            if let Some(port) = ready.and_then(addr_port) {
                return port;
            }
            self.assert_running(command);
            assert!(
                Instant::now() < deadline,
                "clawdforge {command} did not say where it listens:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `/healthz` answers, with any status.
    async fn wait_for_healthz(&mut self, command: &str) {
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = client
                .get(self.url("/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answer.is_ok() {
                return;
            }
            self.assert_running(command);
            assert!(
                Instant::now() < deadline,
                "clawdforge {command} did not answer /healthz:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn assert_running(&mut self, command: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "clawdforge {command} exited with {status}:\n{}",
                self.log_text()
            );
        }
    }
}

/// The port of the `addr` field of a log line, text or JSON.
pub fn addr_port(line: &str) -> Option<u16> {
    let rest = line
        .split_once("addr=")
        .or_else(|| line.split_once("\"addr\":\""))?
        .1;
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',')
        .collect();
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

/// The pid the test agent reports for `#count`: `[n=<count> pid=<pid>]`.
pub fn agent_pid(output: &str) -> u32 {
    output
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {output:?}"))
}

/// Whether process `pid` runs (and is not a zombie).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.split(") ").nth(1).unwrap_or("").starts_with('Z'))
}

/// The processes of agents whose HOME is under `homes`: the test agent's, and acpx's queue
/// owners'.
pub fn agent_processes(homes: &Path) -> BTreeSet<u32> {
    processes_with_home(homes, |args| {
        args.get(1).is_some_and(|a| a.ends_with(b"acp-agent.mjs"))
            || args.contains(&&b"__queue-owner"[..])
    })
}

/// The running processes whose HOME is under `homes` and whose argv `is_agent` picks.
pub fn processes_with_home(homes: &Path, is_agent: impl Fn(&[&[u8]]) -> bool) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let home = format!("HOME={}", homes.display());
        let in_homes = environ
            .split(|b| *b == 0)
            .any(|v| v.starts_with(home.as_bytes()));
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if in_homes && is_agent(&args) && running(pid) {
            pids.insert(pid);
        }
    }
    pids
}
