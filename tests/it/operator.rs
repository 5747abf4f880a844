//! The operator's first hour: `scripts/up.sh` as the README gives it (with the test build of
//! the binary instead of a release build), and the logs a worker writes.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clawdforge::client::ForgeClient;
use clawdforge::wire::CreateSession;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::console::Console;
use crate::harness::{free_port, repo, Forge, Nats, Options, ROOT_TOKEN};
use crate::sessions::turn;

/// `scripts/up.sh` in a process group of its own, as a terminal runs a foreground job.
struct UpScript {
    child: Child,
    data: tempfile::TempDir,
    output: PathBuf,
    nats_port: u16,
    http_port: u16,
}

impl UpScript {
    fn start(http_port: u16) -> UpScript {
        Self::start_in(tempfile::tempdir().unwrap(), http_port)
    }

    /// Starts up.sh on the data of `data` (a second start finds the first one's data).
    fn start_in(data: tempfile::TempDir, http_port: u16) -> UpScript {
        let output = data.path().join("up.out");
        let nats_port = free_port("127.0.0.1");
        let _ = std::fs::remove_file(data.path().join("up.err"));
        let child = Command::new("bash")
            .arg(repo().join("scripts/up.sh"))
            .env("CLAWDFORGE_BIN", env!("CARGO_BIN_EXE_clawdforge"))
            .env("CLAWDFORGE_DATA", data.path().join("data"))
            .env("NATS_PORT", nats_port.to_string())
            .env("HTTP_PORT", http_port.to_string())
            .env("METRICS_PORT", "0")
            .env("RUST_LOG", "info,clawdforge=debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&output).unwrap())
            .stderr(std::fs::File::create(data.path().join("up.err")).unwrap())
            .process_group(0)
            .spawn()
            .expect("starting scripts/up.sh");
        UpScript {
            child,
            data,
            output,
            nats_port,
            http_port,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.data.path().join("data")
    }

    /// Everything up.sh and the processes it started printed, stdout then stderr.
    fn printed(&self) -> String {
        let out = std::fs::read_to_string(&self.output).unwrap_or_default();
        let err = std::fs::read_to_string(self.data.path().join("up.err")).unwrap_or_default();
        format!("{out}{err}")
    }

    async fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.printed().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "up.sh never printed {needle:?}:\n{}",
                self.printed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ctrl-C: SIGINT to the whole foreground process group.
    fn ctrl_c(&self) {
        killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).unwrap();
    }

    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "up.sh did not exit:\n{}",
                self.printed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for UpScript {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        // NATS runs in a session of its own, out of reach of the group's signal.
        if let Ok(pid) = std::fs::read_to_string(self.data_dir().join("nats.pid")) {
            if let Ok(pid) = pid.trim().parse() {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        crate::harness::kill_by_home(&self.data_dir());
    }
}

fn port_is_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[tokio::test]
async fn ctrl_c_under_up_sh_lets_a_turn_in_flight_answer_its_caller() {
    let mut up = UpScript::start(free_port("127.0.0.1"));
    up.wait_for("clawdforge is up.").await;
    // It prints where the worker and the sidecar serve their metrics, and both answer.
    let printed = up.printed();
    let line = printed
        .lines()
        .find(|l| l.trim_start().starts_with("metrics:"));
    let line = line.unwrap_or_else(|| panic!("no metrics line:\n{printed}"));
    let urls: Vec<&str> = line
        .split_whitespace()
        .filter(|w| w.starts_with("http://"))
        .collect();
    assert_eq!(urls.len(), 2, "{line}");
    assert!(
        urls[1].ends_with(&format!(":{}/metrics", up.http_port)),
        "{line}"
    );
    for url in urls {
        let text = crate::harness::http_client().get(url).send().await.unwrap();
        let text = text.text().await.unwrap();
        assert!(
            text.contains("# TYPE clawdforge_requests_total"),
            "{url}:\n{text}"
        );
    }
    let token = std::fs::read_to_string(up.data_dir().join("admin-token")).unwrap();
    let nats = async_nats::connect(format!("nats://127.0.0.1:{}", up.nats_port))
        .await
        .unwrap();
    let client = ForgeClient::new(nats, Some(token.trim().to_string()));
    let session = client
        .create_session(&CreateSession::default())
        .await
        .unwrap();
    let release = up.data.path().join("release");
    let in_flight = {
        let client = client.clone();
        let prompt = format!("finish after Ctrl-C #wait-file={}", release.display());
        let id = session.session_id.clone();
        tokio::spawn(async move { client.turn(&turn(&id, &prompt)).await })
    };
    let ledger = up.data_dir().join("clawdforge.db");
    crate::ledger::wait_for_running_turn(&ledger, &session.session_id).await;
    console_shows_the_running_turn(&printed, token.trim(), &session.session_id).await;

    up.ctrl_c();
    // clawdforge has stopped taking requests; only now may the turn end.
    up.wait_for("shutting down: no new requests").await;
    assert!(port_is_open(up.nats_port), "NATS must outlive clawdforge");
    std::fs::write(&release, "").unwrap();

    let answered = in_flight
        .await
        .unwrap()
        .expect("the turn in flight gets its reply");
    assert_eq!(answered.stop_reason, "end_turn");
    assert!(answered.output.starts_with("echo: finish after Ctrl-C"));
    let status = up.wait_exit().await;
    let printed = up.printed();
    assert!(
        !printed.contains("did not take the last messages"),
        "{printed}"
    );
    assert!(printed.contains("worker stopped"), "{printed}");
    assert!(printed.contains("up.sh: stopped"), "{printed}");
    assert!(!port_is_open(up.nats_port), "NATS is stopped at the end");
    assert!(!port_is_open(up.http_port));
    assert!(
        matches!(status.code(), Some(0 | 130)),
        "{status:?}:\n{printed}"
    );

    // Started again on the same data: the same admin token, and no bootstrap-token warning,
    // though the ledger now holds tokens.
    let data = take_data(up);
    let again = UpScript::start_in(data, free_port("127.0.0.1"));
    again.wait_for("clawdforge is up.").await;
    let printed = again.printed();
    assert!(printed.contains(token.trim()), "{printed}");
    assert!(!printed.contains("ADMIN_BOOTSTRAP_TOKEN"), "{printed}");
}

/// The console up.sh prints: its admin token logs in, and the session's page shows its turn
/// running, for the live view to follow.
async fn console_shows_the_running_turn(printed: &str, token: &str, session_id: &str) {
    let line = printed
        .lines()
        .find(|l| l.trim_start().starts_with("console:"));
    let line = line.unwrap_or_else(|| panic!("no console line:\n{printed}"));
    let url = line.split_whitespace().nth(1).unwrap();
    let base = url
        .strip_suffix("/console")
        .unwrap_or_else(|| panic!("{line}"));
    let mut console = Console::at(base.to_string());
    let login = console.login(token).await;
    assert_eq!(
        login.location.as_deref(),
        Some("/console"),
        "{}",
        login.text
    );
    let page = console
        .page(&format!("/console/sessions/{session_id}"))
        .await;
    assert!(page.contains("<h3 id=\"turn-1\">Turn 1</h3>"), "{page}");
    assert!(page.contains("id=\"live\" data-events="), "{page}");
    assert!(page.contains("Running."), "{page}");
}

/// The data directory of a stopped up.sh, for the next one.
fn take_data(mut up: UpScript) -> tempfile::TempDir {
    let data = std::mem::replace(&mut up.data, tempfile::tempdir().unwrap());
    // The old one's processes are all gone; its drop only cleans up what it still names.
    let _ = std::fs::remove_file(data.path().join("data/nats.pid"));
    data
}

#[tokio::test]
async fn up_sh_exits_at_once_when_serve_dies_and_prints_why() {
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let http_port = taken.local_addr().unwrap().port();
    let mut up = UpScript::start(http_port);
    let status = up.wait_exit().await;
    let printed = up.printed();
    assert_eq!(status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("up.sh: clawdforge serve exited (status 1) before it was up"),
        "{printed}"
    );
    // Its last log lines, as printed by up.sh, name the cause.
    let tail = printed
        .split("before it was up")
        .nth(1)
        .expect("the lines after the notice");
    assert!(tail.contains("Address already in use"), "{printed}");
    assert!(!printed.contains("clawdforge is up."), "{printed}");
    assert!(!port_is_open(up.nats_port), "NATS is stopped too");
}

async fn wait_for_line(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no {needle:?} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn logs_have_no_colours_off_a_terminal_and_json_lines_carry_their_span() {
    let mut forge = Forge::start_with(Options::default()).await;
    let app = forge.app("logged").await;
    app.create_session(&CreateSession::default()).await.unwrap();
    let text = forge.logs();
    assert!(text.contains("session created"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{text}"
    );

    let n = forge.spawn_worker(&[("LOG_FORMAT", "json")]);
    let log = forge.workers[n].log.clone();
    wait_for_line(&log, "worker ready").await;
    forge.wait_for_workers(2).await;
    // Sessions go to either worker: create until the JSON worker has logged one.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("session created")
    {
        assert!(Instant::now() < deadline);
        app.create_session(&CreateSession::default()).await.unwrap();
    }
    let line = wait_for_line(&log, "session created").await;
    forge.kill_worker(n);
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(json["fields"]["message"], "session created");
    // The step's own span, with its session and app, inside the request's span.
    assert_eq!(json["span"]["name"], "create");
    assert_eq!(json["span"]["app"], "logged");
    assert!(json["span"]["session"].is_string(), "{line}");
    assert_eq!(json["spans"][0]["name"], "request", "{line}");
    assert_eq!(json["spans"][0]["subject"], "forge.session.create");
    assert_eq!(json["spans"][0]["app"], "logged");
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

#[tokio::test]
async fn nats_failures_are_logged_once_with_the_url_until_connected() {
    let mut forge = Forge::start_with(Options {
        workers: 0,
        ..Default::default()
    })
    .await;
    let port = free_port("127.0.0.1");
    let url = format!("nats://127.0.0.1:{port}");
    let n = forge.spawn_worker(&[("NATS_URL", &url)]);
    let log = forge.workers[n].log.clone();
    // The worker gives up waiting and goes on; async-nats retries several times a second.
    wait_for_line(&log, "worker ready").await;
    let _nats = Nats::start_on(Some(port));
    let connected = wait_for_line(&log, "connected to NATS").await;
    forge.kill_worker(n);
    let text = std::fs::read_to_string(&log).unwrap();
    let failures: Vec<&str> = text.lines().filter(|l| l.contains("reach NATS")).collect();
    assert_eq!(failures.len(), 1, "one line for the outage:\n{text}");
    assert!(failures[0].contains(&url), "{text}");
    let attempts: u64 = connected
        .split("failed_attempts=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {connected:?}"));
    assert!(
        attempts >= 2,
        "several attempts failed, one was logged: {text}"
    );
}

/// Waits until a `serve-*.log` in `dir` says "worker ready", then starts nats-server on `port`.
async fn nats_once_the_worker_is_ready(dir: &Path, port: u16) -> Nats {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = std::fs::read_dir(dir).unwrap().flatten().any(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with("serve-")
                && std::fs::read_to_string(entry.path())
                    .unwrap_or_default()
                    .contains("worker ready")
        });
        if ready {
            return Nats::start_on(Some(port));
        }
        assert!(Instant::now() < deadline, "serve's worker never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn serve_without_nats_waits_once_before_serving() {
    let forge = Forge::start_with(Options {
        workers: 0,
        ..Default::default()
    })
    .await;
    // NATS comes up as soon as the worker, done waiting for it, is ready: a sidecar that waited
    // again would find it and not say that it is unreachable.
    let port = free_port("127.0.0.1");
    let down = format!("nats://127.0.0.1:{port}");
    let extra = [("NATS_URL", down.as_str())];
    let (serve, _nats) = tokio::join!(
        forge.spawn_http("serve", &extra),
        nats_once_the_worker_is_ready(forge.dir.path(), port),
    );
    let text = serve.log_text();
    let at = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{text}"))
    };
    let unreachable: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("NATS is not reachable yet"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        unreachable.len(),
        2,
        "worker and sidecar each say so:\n{text}"
    );
    // The worker's wait, then the sidecar's, which did not wait for what came after.
    assert!(unreachable[0] < at("worker ready"), "{text}");
    assert!(at("worker ready") < unreachable[1], "{text}");
    assert!(unreachable[1] < at("sidecar ready"), "{text}");
}

fn environ_of(pid: u32) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/environ")).unwrap()
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The processes whose environment names `home` as HOME: acpx and the agents of a deployment.
fn agent_environs(home: &Path) -> Vec<Vec<u8>> {
    let needle = format!("HOME={}", home.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|s| s.parse::<u32>().is_ok())
        })
        .filter_map(|e| std::fs::read(e.path().join("environ")).ok())
        .filter(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        .collect()
}

#[tokio::test]
async fn secrets_are_not_readable_in_proc_environ_of_the_worker_or_its_agents() {
    // The probe works: a process given the secret in its environment shows it there.
    let mut plain = Command::new("sleep")
        .arg("30")
        .env("ADMIN_BOOTSTRAP_TOKEN", ROOT_TOKEN)
        .spawn()
        .unwrap();
    // (Read until the exec has happened: before it, the child shows this process's environment.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut shown = false;
    while !shown && Instant::now() < deadline {
        shown = holds(&environ_of(plain.id()), ROOT_TOKEN);
        if !shown {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = plain.kill();
    let _ = plain.wait();
    assert!(shown, "the probe must see a secret left in the environment");

    // The harness gives every worker ADMIN_BOOTSTRAP_TOKEN=ROOT_TOKEN in its environment.
    let mut forge = Forge::start().await;
    let environ = environ_of(forge.workers[0].child.id());
    assert!(
        holds(&environ, "HOME="),
        "the worker's environment is readable"
    );
    assert!(
        !holds(&environ, ROOT_TOKEN),
        "the bootstrap token is readable in /proc"
    );
    // ... and it still works, and the agents it starts never see it.
    let app = forge.app("secretive").await;
    let s = app.create_session(&CreateSession::default()).await.unwrap();
    app.turn(&turn(&s.session_id, "hello")).await.unwrap();
    let agents = agent_environs(&forge.app_home("secretive"));
    assert!(agents.len() >= 2, "acpx and the agent run");
    assert!(agents.iter().all(|env| !holds(env, ROOT_TOKEN)));

    // From a file instead (the Docker secrets convention): nothing in the environment at all.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, "token-from-a-file\n").unwrap();
    forge.kill_worker(0);
    forge.env.retain(|(k, _)| k != "ADMIN_BOOTSTRAP_TOKEN");
    let file = file.to_string_lossy().into_owned();
    let n = forge.spawn_worker(&[("ADMIN_BOOTSTRAP_TOKEN_FILE", &file)]);
    forge.wait_for_workers(1).await;
    let from_file = forge.admin.with_token(Some("token-from-a-file".into()));
    from_file.create_token("filed", false).await.unwrap();
    assert!(!holds(
        &environ_of(forge.workers[n].child.id()),
        "token-from-a-file"
    ));
}

/// A directory anyone may use, with a copy of the binary in it: a worker run as another user
/// (nobody) must reach both, wherever the checkout lies.
fn shared_dir() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = dir.path().join("clawdforge");
    std::fs::copy(env!("CARGO_BIN_EXE_clawdforge"), &bin).unwrap();
    (dir, bin)
}

const NOBODY: &str = "65534";

/// `clawdforge worker` as the user nobody, with the deployment's NATS and everything else in
/// `dir`.
fn worker_as_nobody(forge: &Forge, dir: &Path, bin: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        .arg(bin)
        .arg("worker")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NATS_URL", &forge.nats.url)
        .env("HOME", dir)
        .env("DB_PATH", dir.join("ledger.db"))
        .env("ACPX_SESSIONS_CWD", dir.join("sessions"))
        .env("RUNS_DIR", dir.join("runs"))
        .env("ADMIN_BOOTSTRAP_TOKEN", ROOT_TOKEN)
        .stdin(Stdio::null());
    cmd
}

#[tokio::test]
async fn a_worker_refuses_a_ledger_it_cannot_write_and_health_reports_one_that_stops_being_writable(
) {
    use std::os::unix::fs::PermissionsExt;
    let forge = Forge::start_with(Options {
        workers: 0,
        ..Default::default()
    })
    .await;
    let (dir, bin) = shared_dir();
    let ledger = dir.path().join("ledger.db");

    // A ledger made by root (as a restore would leave it): nobody may read it, not write it.
    let made = Command::new(&bin)
        .args(["token", "create", "--app", "ops"])
        .env("DB_PATH", &ledger)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let refused_log = dir.path().join("refused.log");
    let mut refused = worker_as_nobody(&forge, dir.path(), &bin)
        .stderr(std::fs::File::create(&refused_log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = refused.kill();
            let _ = refused.wait();
            panic!(
                "the worker started on a ledger it cannot write:\n{}",
                std::fs::read_to_string(&refused_log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let err = std::fs::read_to_string(&refused_log).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "configuration: DB_PATH (db_path) {}: cannot open the ledger: it is read-only",
            ledger.display()
        )),
        "{err}"
    );

    // A ledger of its own, made writable, then not.
    for f in ["ledger.db", "ledger.db-wal", "ledger.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let mut worker = worker_as_nobody(&forge, dir.path(), &bin)
        .stderr(std::fs::File::create(dir.path().join("worker.log")).unwrap())
        .spawn()
        .unwrap();
    forge.wait_for_workers(1).await;
    let health = forge.admin.health().await.unwrap();
    assert!(health.ledger_writable, "{health:?}");
    std::fs::set_permissions(&ledger, std::fs::Permissions::from_mode(0o444)).unwrap();
    let health = forge.admin.health().await.unwrap();
    assert!(!health.ledger_writable && !health.ok, "{health:?}");
    std::fs::set_permissions(&ledger, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(forge.admin.health().await.unwrap().ledger_writable);
    let _ = worker.kill();
    let _ = worker.wait();
    let log = std::fs::read_to_string(dir.path().join("worker.log")).unwrap();
    assert!(log.contains("the ledger cannot be written"), "{log}");
}
