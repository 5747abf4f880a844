//! Confinement of agents (README "Security"): an app's agent — the test ACP agent through acpx
//! for sessions, the stand-in claude for runs — runs as the worker's user, so only the
//! confinement stops it. Told to try (`#probe=<json>`, tests/fixtures/probes.mjs), it is refused
//! the ledger, the config, the sessions root, another app's files and acpx records, the
//! worker's environ, any other place to write and the NATS port, while its own directory, its
//! home and the tools work. With `agent_confinement = "off"` the same probes succeed: the
//! checks can fail.

use std::collections::BTreeSet;

use clawdforge::client::ForgeClient;
use clawdforge::wire::{CreateSession, TurnRequest};
use serde_json::{json, Value};

use crate::harness::{tool, Forge, Options};
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
    notes: ForgeClient,
    photos_session: String,
    /// A TCP port on loopback that is neither NATS nor in `agent_connect_ports`.
    other_port: std::net::TcpListener,
}

/// The operator's Claude credentials file, outside every agent's directories.
const CREDENTIALS: &str = "claude-credentials.json";

async fn setup(mode: &str) -> Setup {
    let max_file = MAX_FILE.to_string();
    // The harness's workers run in their test directory: the file is relative to it.
    let forge = Forge::start_with(Options {
        env: claude_env(&[
            ("CLAWDFORGE_AGENT_CONFINEMENT", mode),
            ("CLAWDFORGE_AGENT_MAX_FILE_BYTES", &max_file),
            ("CLAWDFORGE_AGENT_CREDENTIALS_FILE", CREDENTIALS),
        ]),
        config_toml: Some("max_live_sessions = 8\n".into()),
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
    photos.turn(&turn(&s.session_id, "hello")).await.unwrap();
    let notes = forge.app("notes").await;
    Setup {
        forge,
        notes,
        photos_session: s.session_id,
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

impl Setup {
    /// What an agent of "notes" must not reach.
    fn forbidden(&self) -> Vec<Value> {
        let f = &self.forge;
        let data = f.dir.path().join("data");
        vec![
            read("ledger", f.ledger_path()),
            write("beside_ledger", data.join("probe-beside-ledger")),
            list("sessions_root", f.sessions_root()),
            read(
                "other_apps_file",
                f.sessions_root()
                    .join(&self.photos_session)
                    .join("secret.txt"),
            ),
            list(
                "other_apps_records",
                f.app_home("photos").join(".acpx/sessions"),
            ),
            list("other_apps_home", f.app_home("photos")),
            read("config", f.dir.path().join("clawdforge.toml")),
            read(
                "worker_environ",
                format!("/proc/{}/environ", f.workers[0].child.id()),
            ),
            write("outside", f.dir.path().join("probe-outside")),
            write(
                "tmp",
                format!("/tmp/clawdforge-probe-{}", std::process::id()),
            ),
            write("credentials_file", f.dir.path().join(CREDENTIALS)),
            json!({"name": "nats", "op": "connect", "host": "127.0.0.1", "port": f.nats.port()}),
            json!({"name": "other_port", "op": "connect", "host": "127.0.0.1",
                   "port": self.other_port.local_addr().unwrap().port()}),
        ]
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
    let allowed: BTreeSet<&str> =
        ["PATH", "HOME", "LANG", "TMPDIR", "CLAUDE_CONFIG_DIR", "PWD"].into();
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
    let setup = setup("landlock").await;
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
async fn with_confinement_off_the_same_probes_succeed() {
    let setup = setup("off").await;
    let health = setup.notes.health().await.unwrap();
    assert!(!health.confined, "{health:?}");
    for (who, results, work) in [
        (
            "a session's agent",
            setup.in_a_session().await,
            Work::Session,
        ),
        ("a run's claude", setup.in_a_run().await, Work::Run),
    ] {
        for probe in setup.forbidden() {
            let name = probe["name"].as_str().unwrap();
            assert_eq!(outcome(&results[name]), "ok", "{who}: {name}: {results}");
        }
        let sessions = results["sessions_root"][1].to_string();
        assert!(sessions.contains(&setup.photos_session), "{who}: {results}");
        assert_bounded(&results, who, work);
    }
    let _ = std::fs::remove_file(format!("/tmp/clawdforge-probe-{}", std::process::id()));
}
