//! Confinement of agents (docs/security.md): an app's agent — the test ACP agent through acpx
//! for sessions, the stand-in claude for runs — runs as the worker's user, so only the
//! confinement stops it. Told to try (`#probe=<json>`, tests/fixtures/probes.mjs), it is refused
//! the ledger, the config, the sessions root, another app's files and acpx records, the
//! worker's and another app's agent's `/proc/<pid>/environ` and `mem`, any other place to write
//! and the NATS port, while its own directory, its home, its own `/proc/self` and the tools
//! work. With `agent_confinement = "off"` the same probes succeed: the checks can fail. Both
//! backends are probed: acpx's agents and the native backend's one process per app.

use std::collections::BTreeSet;

use clawdforge::client::ForgeClient;
use clawdforge::wire::{CreateSession, TurnRequest};
use serde_json::{json, Value};

use crate::harness::{agent_pid, tool, Forge, Options, Via};
use crate::runs::{claude_env, run};
use crate::sessions::{file, turn};

/// The variable that lets these tests pass on a kernel without Landlock (saying so).
const SKIP_VAR: &str = "CLAWDFORGE_TEST_SKIP_WITHOUT_LANDLOCK";

/// The largest file agents may write in these tests.
const MAX_FILE: u64 = 1024 * 1024;

/// Whether the kernel can confine; without Landlock the tests fail, unless told to skip.
fn kernel_has_landlock() -> bool {
    if clawdforge::agent::confine::kernel_abi().is_some() {
        return true;
    }
    let message = "this kernel has no Landlock: the confinement tests cannot prove anything";
    assert!(
        std::env::var_os(SKIP_VAR).is_some(),
        "{message}; set {SKIP_VAR}=1 to skip them"
    );
    eprintln!("SKIPPED: {message} ({SKIP_VAR} is set)");
    false
}

/// A deployment with agents confined as `mode` says, app "photos" holding a session with an
/// attached file and acpx records of its own, and app "notes" whose agents probe.
struct Setup {
    forge: Forge,
    via: Via,
    notes: ForgeClient,
    photos_session: String,
    /// The process of the agent that serves "photos"' session.
    photos_agent: u32,
    /// A TCP port on loopback that is neither NATS nor in `agent_connect_ports`.
    other_port: std::net::TcpListener,
}

/// The operator's Claude credentials file, outside every agent's directories.
const CREDENTIALS: &str = "claude-credentials.json";

async fn setup(mode: &str, via: Via) -> Setup {
    let max_file = MAX_FILE.to_string();
    // The harness's workers run in their test directory: the file is relative to it.
    let forge = Forge::start_with(Options {
        env: claude_env(&[
            ("CLAWDFORGE_AGENT_CONFINEMENT", mode),
            ("CLAWDFORGE_AGENT_MAX_FILE_BYTES", &max_file),
            ("CLAWDFORGE_AGENT_CREDENTIALS_FILE", CREDENTIALS),
        ]),
        config_toml: Some("max_live_sessions = 8\n".into()),
        via,
        ..Default::default()
    })
    .await;
    std::fs::write(
        forge.dir.path().join(CREDENTIALS),
        "{\"claudeAiOauth\": {}}",
    )
    .unwrap();
    let photos = forge.app("photos").await;
    let s = photos
        .create_session(&CreateSession {
            files: vec![file("secret.txt", "photos' secret")],
            ..Default::default()
        })
        .await
        .unwrap();
    let hello = photos.turn(&turn(&s.session_id, "hello #count")).await;
    let photos_agent = agent_pid(&hello.unwrap().output);
    let notes = forge.app("notes").await;
    Setup {
        forge,
        via,
        notes,
        photos_session: s.session_id,
        photos_agent,
        other_port: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    }
}

fn read(name: &str, path: impl AsRef<std::path::Path>) -> Value {
    json!({"name": name, "op": "read", "path": path.as_ref()})
}

fn write(name: &str, path: impl AsRef<std::path::Path>) -> Value {
    json!({"name": name, "op": "write", "path": path.as_ref()})
}

fn list(name: &str, path: impl AsRef<std::path::Path>) -> Value {
    json!({"name": name, "op": "list", "path": path.as_ref()})
}

/// Opens a file for reading without reading it: `/proc/<pid>/mem` is checked at open (a read at
/// offset 0 would fail on an unmapped page whoever asks).
fn open(name: &str, path: impl AsRef<std::path::Path>) -> Value {
    json!({"name": name, "op": "open", "path": path.as_ref()})
}

impl Setup {
    /// What an agent of "notes" must not reach.
    fn forbidden(&self) -> Vec<Value> {
        let f = &self.forge;
        let data = f.dir.path().join("data");
        let worker = f.workers[0].child.id();
        let agent = self.photos_agent;
        let mut probes = vec![
            read("ledger", f.ledger_path()),
            write("beside_ledger", data.join("probe-beside-ledger")),
            list("sessions_root", f.sessions_root()),
            read(
                "other_apps_file",
                f.session_dir(&self.photos_session).join("secret.txt"),
            ),
            list("other_apps_home", f.app_home("photos")),
            read("config", f.dir.path().join("clawdforge.toml")),
            read("worker_environ", format!("/proc/{worker}/environ")),
            open("worker_mem", format!("/proc/{worker}/mem")),
            list("worker_cwd", format!("/proc/{worker}/cwd")),
            read("other_agent_environ", format!("/proc/{agent}/environ")),
            open("other_agent_mem", format!("/proc/{agent}/mem")),
            write("outside", f.dir.path().join("probe-outside")),
            write(
                "tmp",
                format!("/tmp/clawdforge-probe-{}", std::process::id()),
            ),
            write("credentials_file", f.dir.path().join(CREDENTIALS)),
            json!({"name": "nats", "op": "connect", "host": "127.0.0.1", "port": f.nats.port()}),
            json!({"name": "other_port", "op": "connect", "host": "127.0.0.1",
                   "port": self.other_port.local_addr().unwrap().port()}),
        ];
        if self.via == Via::Acpx {
            let records = f.app_home("photos").join(".acpx/sessions");
            probes.push(list("other_apps_records", records));
        }
        probes
    }

    /// What it must still do: its own directory, its home, the tools; and what it sees. (The
    /// agent itself is the tools' Node running a script of the checkout. Under acpx 0.19 a
    /// program the test agent starts ends acpx's connection to it, confined or not, so only a
    /// run starts programs.)
    fn allowed(work: Work) -> Vec<Value> {
        let mut probes = vec![
            write("own_dir", "probe-own.txt"),
            write("home", "~/probe-home.txt"),
            write("home_tmp", "~/tmp/probe.txt"),
            read("credentials", "~/.claude/.credentials.json"),
            read("tool_file", std::fs::canonicalize(tool("node")).unwrap()),
            read("system_file", "/bin/sh"),
            read("own_proc_status", "/proc/self/status"),
            read("own_proc_environ", "/proc/self/environ"),
            read("proc_cpuinfo", "/proc/cpuinfo"),
            json!({"name": "too_big", "op": "write_big", "path": "probe-big", "bytes": MAX_FILE + 1}),
            json!({"name": "env", "op": "env"}),
        ];
        if work == Work::Run {
            probes.extend([
                // Soft and hard core size, soft file size (in 512-byte blocks).
                json!({"name": "limits", "op": "output",
                       "argv": ["/bin/sh", "-c", "echo $(ulimit -c) $(ulimit -Hc) $(ulimit -f)"]}),
                json!({"name": "shell", "op": "exec", "argv": ["/bin/sh", "-c", "echo hi"]}),
                json!({"name": "node", "op": "exec", "argv": [tool("node"), "-e", "0"]}),
            ]);
        }
        probes
    }

    fn prompt(&self, work: Work) -> String {
        let mut probes = self.forbidden();
        probes.extend(Self::allowed(work));
        format!("#probe={}", serde_json::to_string(&probes).unwrap())
    }

    /// The probes' results as a session's agent reports them.
    async fn in_a_session(&self) -> Value {
        let s = self
            .notes
            .create_session(&CreateSession::default())
            .await
            .unwrap();
        let t = self
            .notes
            .turn(&TurnRequest {
                timeout_secs: Some(60),
                ..turn(&s.session_id, &self.prompt(Work::Session))
            })
            .await
            .unwrap();
        results(&t.output)
    }

    /// The probes' results as a run's claude reports them.
    async fn in_a_run(&self) -> Value {
        let r = self.notes.run(&run(&self.prompt(Work::Run))).await.unwrap();
        assert!(r.ok, "{r:?}\n{}", self.forge.logs());
        results(r.result.as_deref().unwrap_or_default())
    }
}

fn results(output: &str) -> Value {
    let json = output
        .rsplit_once("PROBES ")
        .unwrap_or_else(|| panic!("no probe results in {output:?}"))
        .1;
    serde_json::from_str(json).unwrap()
}

/// "ok", or "ok" with what the probe saw, or the error it met.
fn outcome(v: &Value) -> &str {
    match v {
        Value::String(s) => s,
        Value::Array(a) => a[0].as_str().unwrap(),
        other => panic!("{other}"),
    }
}

/// The names of the variables the agent saw.
fn env_names(results: &Value) -> BTreeSet<String> {
    results["env"][1]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Session,
    Run,
}

fn assert_confined(setup: &Setup, results: &Value, who: &str, work: Work) {
    for probe in setup.forbidden() {
        let name = probe["name"].as_str().unwrap();
        assert_eq!(
            outcome(&results[name]),
            "EACCES",
            "{who}: probe {name} was not refused: {results}"
        );
    }
    for probe in Setup::allowed(work) {
        let name = probe["name"].as_str().unwrap();
        if !["too_big", "limits", "env"].contains(&name) {
            assert_eq!(outcome(&results[name]), "ok", "{who}: {name}: {results}");
        }
    }
    assert_bounded(results, who, work);
    // A clean environment: what the worker was given (NATS_URL, DB_PATH, RUST_LOG, …) is not
    // there.
    let allowed: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "LANG",
        "TMPDIR",
        "CLAUDE_CONFIG_DIR",
        "PWD",
        "IS_SANDBOX",
        "NO_BROWSER",
    ]
    .into();
    let seen = env_names(results);
    let extra: Vec<&String> = seen
        .iter()
        .filter(|n| !allowed.contains(n.as_str()))
        .collect();
    assert!(extra.is_empty(), "{who}: the agent was given {extra:?}");
}

/// No file over the limit and (seen by a run's shell) no core dumps, whatever the mode.
fn assert_bounded(results: &Value, who: &str, work: Work) {
    assert_eq!(outcome(&results["too_big"]), "EFBIG", "{who}: {results}");
    if work == Work::Run {
        let blocks = MAX_FILE / 512;
        assert_eq!(
            results["limits"][1],
            format!("0 0 {blocks}"),
            "{who}: {results}"
        );
    }
}

#[tokio::test]
async fn an_agent_reaches_its_own_work_and_nothing_else() {
    if !kernel_has_landlock() {
        return;
    }
    let setup = setup("landlock", Via::Acpx).await;
    let health = setup.notes.health().await.unwrap();
    assert!(health.confined, "{health:?}");
    assert!(health.landlock_abi.is_some_and(|v| v >= 1), "{health:?}");
    let session = setup.in_a_session().await;
    assert_confined(&setup, &session, "a session's agent", Work::Session);
    let run = setup.in_a_run().await;
    assert_confined(&setup, &run, "a run's claude", Work::Run);

    // Each app's acpx records are in its own home, and its agent wrote where it was let.
    let records = |app: &str| {
        std::fs::read_dir(setup.forge.app_home(app).join(".acpx/sessions"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(records("photos") > 0 && records("notes") > 0);
    assert!(setup
        .forge
        .app_home("notes")
        .join("probe-home.txt")
        .exists());
    assert!(!setup.forge.dir.path().join("probe-outside").exists());
}

#[tokio::test]
async fn a_native_agent_process_reaches_its_own_work_and_nothing_else() {
    if !kernel_has_landlock() {
        return;
    }
    let setup = setup("landlock", Via::Acp).await;
    let session = setup.in_a_session().await;
    assert_confined(&setup, &session, "a native agent", Work::Session);
}

#[tokio::test]
async fn with_confinement_off_the_same_probes_succeed() {
    for via in [Via::Acpx, Via::Acp] {
        let setup = setup("off", via).await;
        let health = setup.notes.health().await.unwrap();
        assert!(!health.confined, "{health:?}");
        let mut probed = vec![(
            "a session's agent",
            setup.in_a_session().await,
            Work::Session,
        )];
        if via == Via::Acpx {
            probed.push(("a run's claude", setup.in_a_run().await, Work::Run));
        }
        for (who, results, work) in probed {
            assert_unconfined(&setup, &results, &format!("{who} ({via:?})"), work);
        }
    }
    let _ = std::fs::remove_file(format!("/tmp/clawdforge-probe-{}", std::process::id()));
}

fn assert_unconfined(setup: &Setup, results: &Value, who: &str, work: Work) {
    for probe in setup.forbidden() {
        let name = probe["name"].as_str().unwrap();
        let expected = if name.starts_with("worker_") && !running_as_root() {
            // Not dumpable: closed to its own user even with confinement off.
            "EACCES"
        } else {
            "ok"
        };
        assert_eq!(
            outcome(&results[name]),
            expected,
            "{who}: {name}: {results}"
        );
    }
    let sessions = results["sessions_root"][1].to_string();
    let seen = match setup.via {
        Via::Acpx => setup.photos_session.as_str(),
        // Native sessions live under apps/<app>/.
        Via::Acp => "apps",
    };
    assert!(sessions.contains(seen), "{who}: {results}");
    assert_bounded(results, who, work);
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
