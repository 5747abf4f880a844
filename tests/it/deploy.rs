//! The deployment's NATS configurations, run for real: config/nats-server.conf (one account,
//! a user per part) and config/nats-accounts.conf (an account per app importing FORGE's
//! `forge.>` export). Each test starts the project's nats-server with the file as shipped (only
//! its ports and store moved to the test's own), a worker and the sidecar logging in as
//! compose.yml has them, and apps logging in as theirs.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clawdforge::client::ForgeClient;
use clawdforge::wire::CreateSession;

use crate::harness::{addr_port, agent_command, free_port, http_client, kill_by_home, repo, tool};
use crate::sessions::turn;

/// The passwords the configs read from the environment, as .env gives them.
const PASSWORDS: &[(&str, &str)] = &[
    ("NATS_FORGE_PASSWORD", "forge-secret"),
    ("NATS_SIDECAR_PASSWORD", "sidecar-secret"),
    ("NATS_APP_NOTES_PASSWORD", "notes-secret"),
    ("NATS_APP_PHOTOS_PASSWORD", "photos-secret"),
];

fn password(var: &str) -> &'static str {
    PASSWORDS.iter().find(|(k, _)| *k == var).unwrap().1
}

/// A nats-server run with one of the shipped configs, and the clawdforge processes on it.
struct Bus {
    server: Child,
    url: String,
    dir: tempfile::TempDir,
    processes: Vec<(Child, PathBuf)>,
}

impl Bus {
    fn start(config: &str) -> Bus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port("127.0.0.1");
        let monitor = free_port("127.0.0.1");
        // The file as shipped, but for its JetStream store (a server flag cannot replace it).
        let text = std::fs::read_to_string(repo().join("config").join(config)).unwrap();
        let store = "store_dir: /data/jetstream";
        assert!(text.contains(store), "config/{config} has no `{store}`");
        let copy = dir.path().join(config);
        let js = dir.path().join("jetstream");
        std::fs::write(&copy, text.replace(store, &format!("store_dir: {:?}", js))).unwrap();
        let server = Command::new(tool("nats-server"))
            .arg("-c")
            .arg(&copy)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string()])
            .env_clear()
            .envs(PASSWORDS.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("nats.log")).unwrap())
            .spawn()
            .expect("starting nats-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start with config/{config}:\n{}",
                std::fs::read_to_string(dir.path().join("nats.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Bus {
            server,
            url: format!("nats://127.0.0.1:{port}"),
            dir,
            processes: Vec::new(),
        }
    }

    /// The environment of a clawdforge process on this bus, logging in as `user`.
    fn env(&self, user: &str, password_var: &str) -> Vec<(String, String)> {
        let path = |p: &str| self.dir.path().join(p).to_string_lossy().into_owned();
        [
            ("HOME", path("home")),
            ("NATS_URL", self.url.clone()),
            ("NATS_USER", user.into()),
            ("NATS_PASSWORD", password(password_var).into()),
            ("DB_PATH", path("data/clawdforge.db")),
            ("ACPX_SESSIONS_CWD", path("data/acpx-cwds")),
            ("RUNS_DIR", path("data/runs")),
            ("ACPX_BIN", tool("acpx").to_string_lossy().into_owned()),
            ("ACPX_AGENT", agent_command("")),
            ("CLAUDE_BIN", path("no-claude-here")),
            ("RUST_LOG", "info".into()),
            (
                "CLAWDFORGE_AGENT_READ_DIRS",
                crate::harness::agent_read_dirs(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn command(&self, args: &[&str], env: &[(String, String)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_clawdforge"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Starts `clawdforge <args>` in the background; its log goes to a file.
    fn spawn(&mut self, args: &[&str], env: &[(String, String)]) {
        let log = self
            .dir
            .path()
            .join(format!("{}-{}.log", args[0], self.processes.len()));
        let child = self
            .command(args, env)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting clawdforge");
        self.processes.push((child, log));
    }

    /// Runs `clawdforge <args>` to its end.
    fn run(&self, args: &[&str], env: &[(String, String)]) -> Output {
        self.command(args, env)
            .output()
            .expect("running clawdforge")
    }

    /// The port the last process spawned bound, as its "sidecar ready" line says.
    async fn bound_port(&self) -> u16 {
        let (_, log) = self.processes.last().expect("a process");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let ready = text.lines().find(|l| l.contains("sidecar ready"));
            if let Some(port) = ready.and_then(addr_port) {
                return port;
            }
            assert!(Instant::now() < deadline, "no port in:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (_, log) in &self.processes {
            out.push_str(&format!("--- {} ---\n", log.display()));
            out.push_str(&std::fs::read_to_string(log).unwrap_or_default());
        }
        out
    }

    /// A client logged in as `user`; the server's complaints about it are collected in
    /// `errors`.
    async fn connect(
        &self,
        user: &str,
        password: &str,
    ) -> Result<(async_nats::Client, Arc<Mutex<Vec<String>>>), async_nats::ConnectError> {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = errors.clone();
        let client =
            async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
                .event_callback(move |event| {
                    let seen = seen.clone();
                    async move {
                        if let async_nats::Event::ServerError(e) = event {
                            seen.lock().unwrap().push(e.to_string());
                        }
                    }
                })
                .connect(&self.url)
                .await?;
        Ok((client, errors))
    }

    /// Mints an app token with the operator's command, on the workers' ledger.
    fn mint(&self, app: &str) -> String {
        let out = self.run(
            &["token", "create", "--app", app, "--json"],
            &self.env("forge", "NATS_FORGE_PASSWORD"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        created["token"].as_str().unwrap().to_string()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for (child, _) in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_by_home(self.dir.path());
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Waits until `n` workers answer `$SRV.PING` (asked as the sidecar, which may).
async fn wait_for_workers(bus: &Bus, sidecar: &ForgeClient, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ids = sidecar
            .ping_workers(Duration::from_millis(200))
            .await
            .unwrap_or_default();
        if ids.len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} workers answered:\n{}",
            ids.len(),
            bus.logs()
        );
    }
}

/// One session, one turn, through `app`: the long way, request and reply, across the bus.
async fn session_round_trip(app: &ForgeClient) {
    let session = app.create_session(&CreateSession::default()).await.unwrap();
    let answer = app.turn(&turn(&session.session_id, "hello")).await.unwrap();
    assert_eq!(answer.output, "echo: hello");
    app.close_session(&session.session_id).await.unwrap();
}

/// A streamed turn (`Forge-Stream: 1`): its events and its final message reach the caller,
/// which takes the export's `response_type: stream` when the caller is in another account.
async fn streamed_round_trip(app: &ForgeClient) {
    let session = app.create_session(&CreateSession::default()).await.unwrap();
    let mut events = Vec::new();
    let done = app
        .turn_streaming(
            &turn(&session.session_id, "live"),
            Duration::from_secs(60),
            |e| events.push(e.clone()),
        )
        .await
        .unwrap();
    assert_eq!(done.output, "echo: live");
    assert!(
        events.len() >= 4,
        "thought, tool call and two chunks: {events:?}"
    );
    app.close_session(&session.session_id).await.unwrap();
}

/// Waits (a little) for the server to report to this client a permissions violation for
/// `what` (`Publish to "subject"`, `Subscription to "subject"`).
async fn violation(errors: &Arc<Mutex<Vec<String>>>, what: &str) {
    let needle = format!("Permissions Violation for {what}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !errors.lock().unwrap().iter().any(|e| e.contains(&needle)) {
        assert!(
            Instant::now() < deadline,
            "no \"{needle}\" reported; the server said {:?}",
            errors.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn the_shipped_nats_configs_are_valid() {
    for config in ["nats-server.conf", "nats-accounts.conf"] {
        let out = Command::new(tool("nats-server"))
            .arg("-c")
            .arg(repo().join("config").join(config))
            .arg("-t")
            .env_clear()
            .envs(PASSWORDS.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "config/{config}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn the_secured_bus_gives_each_part_what_it_needs() {
    let mut bus = Bus::start("nats-server.conf");
    let worker_env = bus.env("forge", "NATS_FORGE_PASSWORD");
    bus.spawn(&["worker"], &worker_env);
    let (sidecar_nats, _) = bus
        .connect("sidecar", password("NATS_SIDECAR_PASSWORD"))
        .await
        .unwrap();
    wait_for_workers(&bus, &ForgeClient::new(sidecar_nats, None), 1).await;

    // No login, or a wrong password: no connection.
    assert!(async_nats::connect(&bus.url).await.is_err());
    assert!(bus.connect("notes", "guess").await.is_err());

    // An app: health, and a session with a token the operator minted.
    let token = bus.mint("notes");
    let (notes_nats, notes_errors) = bus
        .connect("notes", password("NATS_APP_NOTES_PASSWORD"))
        .await
        .unwrap();
    let notes = ForgeClient::new(notes_nats.clone(), Some(token));
    assert!(notes.health().await.unwrap().ok);
    session_round_trip(&notes).await;
    streamed_round_trip(&notes).await;
    // Admin subjects are closed to it on the bus itself, whatever its token.
    let asked = tokio::spawn({
        let notes = notes.clone();
        async move { notes.list_tokens().await }
    });
    violation(&notes_errors, "Publish to \"forge.admin.token.list\"").await;
    // Nobody answers a request the bus refused: not waited for.
    asked.abort();
    // And it cannot listen to the workers' subjects.
    let _sub = notes_nats.subscribe("forge.>").await.unwrap();
    violation(&notes_errors, "Subscription to \"forge.>\"").await;

    // The sidecar, logged in as compose.yml has it: /healthz sees the worker.
    let mut sidecar_env = bus.env("sidecar", "NATS_SIDECAR_PASSWORD");
    sidecar_env.push(("BIND_HOST".into(), "127.0.0.1".into()));
    sidecar_env.push(("BIND_PORT".into(), "0".into()));
    bus.spawn(&["sidecar"], &sidecar_env);
    let port = bus.bound_port().await;
    // The container's health check is told the port it listens on.
    sidecar_env.retain(|(k, _)| k != "BIND_PORT");
    sidecar_env.push(("BIND_PORT".into(), port.to_string()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        if let Ok(r) = http_client()
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            if r.status() == 200 {
                break r.json::<serde_json::Value>().await.unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar is not healthy:\n{}",
            bus.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["workers"], 1, "{health}");

    // The containers' health checks, with the same logins.
    let out = bus.run(&["healthcheck"], &worker_env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bus.run(&["healthcheck", "--http"], &sidecar_env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_app_account_reaches_the_workers_through_the_forge_export() {
    let mut bus = Bus::start("nats-accounts.conf");
    let worker_env = bus.env("forge", "NATS_FORGE_PASSWORD");
    bus.spawn(&["worker"], &worker_env);
    let (sidecar_nats, _) = bus
        .connect("sidecar", password("NATS_SIDECAR_PASSWORD"))
        .await
        .unwrap();
    wait_for_workers(&bus, &ForgeClient::new(sidecar_nats, None), 1).await;

    // A user of account PHOTOS listens to everything its account carries.
    let (photos_nats, _) = bus
        .connect("photos", password("NATS_APP_PHOTOS_PASSWORD"))
        .await
        .unwrap();
    let mut overheard = photos_nats.subscribe(">").await.unwrap();
    photos_nats.flush().await.unwrap();

    // A user of account NOTES calls forge.health and runs a session on the worker in FORGE.
    let (notes_nats, notes_errors) = bus
        .connect("notes", password("NATS_APP_NOTES_PASSWORD"))
        .await
        .unwrap();
    let notes = ForgeClient::new(notes_nats, Some(bus.mint("notes")));
    let health = notes.health().await.unwrap();
    assert!(health.ok, "{health:?}");
    session_round_trip(&notes).await;
    streamed_round_trip(&notes).await;
    let asked = tokio::spawn({
        let notes = notes.clone();
        async move { notes.list_tokens().await }
    });
    violation(&notes_errors, "Publish to \"forge.admin.token.list\"").await;
    // Nobody answers a request the bus refused: not waited for.
    asked.abort();

    // PHOTOS heard none of it, and reaches the workers by its own import.
    use futures::StreamExt;
    let heard = tokio::time::timeout(Duration::from_millis(300), overheard.next()).await;
    assert!(
        heard.is_err(),
        "account PHOTOS saw {:?}",
        heard.unwrap().map(|m| m.subject)
    );
    let photos = ForgeClient::new(photos_nats, Some(bus.mint("photos")));
    assert!(photos.health().await.unwrap().ok);
    assert!(photos.list_sessions().await.unwrap().sessions.is_empty());
}

#[tokio::test]
async fn native_turns_passed_on_between_workers_reach_an_app_in_another_account() {
    let mut bus = Bus::start("nats-accounts.conf");
    let mut worker_env = bus.env("forge", "NATS_FORGE_PASSWORD");
    let config = bus.dir.path().join("clawdforge.toml");
    let toml = format!(
        "[agents.default]\ncommand = {:?}\nbackend = \"acp\"\n",
        agent_command("")
    );
    std::fs::write(&config, toml).unwrap();
    worker_env.retain(|(k, _)| k != "RUST_LOG");
    worker_env.push(("RUST_LOG".into(), "info,clawdforge=debug".into()));
    worker_env.push((
        "CLAWDFORGE_CONFIG".into(),
        config.to_string_lossy().into_owned(),
    ));
    bus.spawn(&["worker"], &worker_env);
    bus.spawn(&["worker"], &worker_env);
    let (sidecar_nats, _) = bus
        .connect("sidecar", password("NATS_SIDECAR_PASSWORD"))
        .await
        .unwrap();
    wait_for_workers(&bus, &ForgeClient::new(sidecar_nats, None), 2).await;
    let (notes_nats, notes_errors) = bus
        .connect("notes", password("NATS_APP_NOTES_PASSWORD"))
        .await
        .unwrap();
    let notes = ForgeClient::new(notes_nats.clone(), Some(bus.mint("notes")));
    let id = notes
        .create_session(&CreateSession::default())
        .await
        .unwrap()
        .session_id;
    let mut pids = std::collections::BTreeSet::new();
    // Through the queue group, about half reach the worker that does not own the session.
    for n in 1..=12 {
        let req = turn(&id, &format!("{n} #count"));
        let mut events = 0;
        let t = notes
            .turn_streaming(&req, Duration::from_secs(60), |_| events += 1)
            .await
            .unwrap();
        assert!(
            events >= 4,
            "the owner's events cross the accounts: {events}"
        );
        pids.insert(crate::harness::agent_pid(&t.output));
    }
    assert_eq!(
        pids.len(),
        1,
        "one agent process served every turn: {pids:?}"
    );
    let logs = bus.logs();
    assert!(logs.contains("forge.session.turn passed on"), "{logs}");
    // The workers' own subjects are theirs: an app cannot pass requests on itself.
    let own = "forge.worker.x.session.turn".to_string();
    notes_nats.publish(own.clone(), "{}".into()).await.unwrap();
    violation(&notes_errors, &format!("Publish to {own:?}")).await;
}

/// The agent protocol's caller (tests/fixtures/agent_protocol.py, the Python SDK) logged in as
/// app user `notes`, on each shipped config: discovery, status, a heartbeat, two turns, and a
/// permission query answered (its reply goes to the worker's `forge.query.…`).
#[tokio::test]
async fn an_agent_protocol_caller_gets_through_both_configs() {
    for config in ["nats-server.conf", "nats-accounts.conf"] {
        let mut bus = Bus::start(config);
        let mut worker_env = bus.env("forge", "NATS_FORGE_PASSWORD");
        let asking = bus.dir.path().join("asking.toml");
        std::fs::write(&asking, crate::harness::asking_agent_toml()).unwrap();
        for (k, v) in [
            ("CLAWDFORGE_CONFIG", asking.to_string_lossy().as_ref()),
            ("CLAWDFORGE_AGENT_PROTOCOL", "true"),
            ("CLAWDFORGE_AGENT_PROTOCOL_HEARTBEAT_SECS", "1"),
        ] {
            worker_env.push((k.into(), v.into()));
        }
        bus.spawn(&["worker"], &worker_env);
        let (sidecar_nats, _) = bus
            .connect("sidecar", password("NATS_SIDECAR_PASSWORD"))
            .await
            .unwrap();
        wait_for_workers(&bus, &ForgeClient::new(sidecar_nats, None), 1).await;
        let token = bus.mint("notes");
        let url = bus.url.replace(
            "nats://",
            &format!("nats://notes:{}@", password("NATS_APP_NOTES_PASSWORD")),
        );
        let (seen, context) = sdk_caller(&bus, config, &url, &token, &["converse"]).await;
        assert_eq!(seen["found"], 1, "{context}");
        assert_eq!(seen["status"]["owner"], "notes", "{context}");
        assert_eq!(seen["heartbeats"][0]["owner"], "notes", "{context}");
        assert_eq!(
            seen["turns"][1], "echo: second #history [history=first|second]",
            "{context}"
        );
        let asked = ["ask", "allow", "#permission=execute"];
        let (seen, context) = sdk_caller(&bus, config, &url, &token, &asked).await;
        assert_eq!(
            seen["queries"].as_array().map(Vec::len),
            Some(1),
            "{context}"
        );
        let output = seen["turns"][0].as_str().unwrap_or_default();
        assert!(output.ends_with("[permission=allow]"), "{context}");
    }
}

/// Runs tests/fixtures/agent_protocol.py through `url` with `token` and `args` (its mode and
/// the mode's arguments): what it printed, and the context of a failure.
async fn sdk_caller(
    bus: &Bus,
    config: &str,
    url: &str,
    token: &str,
    args: &[&str],
) -> (serde_json::Value, String) {
    let out = tokio::process::Command::new(tool("python"))
        .arg(repo().join("tests/fixtures/agent_protocol.py"))
        .args([url, "default", "notes", token])
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!(
        "config/{config}: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        bus.logs()
    );
    assert!(out.status.success(), "{context}");
    let seen = serde_json::from_str(stdout.trim()).expect(&context);
    (seen, context)
}
