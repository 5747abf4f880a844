//! Errors that tell the operator what happened: an agent that is missing, crashes at start, is
//! killed by a signal or wants credentials fails its session with `agent_error` saying which,
//! with the line of its stderr that matters; the worker logs the whole stderr once. The same
//! checks, without a prompt, in `clawdforge agents check` and in health's `agents`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use clawdforge::client::{ClientError, ForgeClient};
use clawdforge::config::BackendKind;
use clawdforge::error::ErrorKind;
use clawdforge::wire::{AgentHealth, CreateSession};

use crate::harness::{agent_command, agent_read_dirs, http_client, tool, Forge, Options};

/// Native agents, one per way of failing, beside a working one.
fn agents_toml() -> String {
    let table = |name: &str, command: &str| {
        format!("[agents.{name}]\ncommand = {command:?}\nbackend = \"acp\"\n")
    };
    [
        table("working", &agent_command("")),
        table("missing", "nosuch-agent-for-tests --fast"),
        table("crashy", &agent_command(" --crash-at-start")),
        table("aborts", &agent_command(" --abort-at-start")),
        table("locked", &agent_command(" --auth-required")),
    ]
    .concat()
}

async fn failing_forge() -> Forge {
    Forge::start_with(Options {
        config_toml: Some(agents_toml()),
        ..Default::default()
    })
    .await
}

/// The `agent_error` message of a session of `agent`.
pub async fn create_error(app: &ForgeClient, agent: &str) -> String {
    let created = app
        .create_session(&CreateSession {
            agent: Some(agent.into()),
            ..Default::default()
        })
        .await;
    match created {
        Err(ClientError::Api(e)) => {
            assert_eq!(e.kind, ErrorKind::AgentError, "{agent}: {e:?}");
            e.message
        }
        other => panic!("{agent}: expected agent_error, got {other:?}"),
    }
}

/// How many warnings in the workers' logs quote an agent's stderr starting with `first`.
fn stderr_warnings(forge: &Forge, agent: &str, first: &str) -> usize {
    let needle = format!("stderr={first}");
    forge
        .workers
        .iter()
        .map(|w| std::fs::read_to_string(&w.log).unwrap_or_default())
        .map(|log| {
            log.lines()
                .filter(|l| l.contains(" WARN ") && l.contains(agent) && l.contains(&needle))
                .count()
        })
        .sum()
}

#[tokio::test]
async fn each_way_an_agent_fails_at_start_is_named_in_its_agent_error() {
    let forge = failing_forge().await;
    let app = forge.app("diagnosis").await;

    let missing = create_error(&app, "missing").await;
    assert!(
        missing.starts_with(
            "agent `missing` could not be started: `nosuch-agent-for-tests` not found on PATH \
             (PATH="
        ),
        "{missing}"
    );

    // Node's source excerpt and stack are skipped; the whole stderr is logged once per failure
    // (the worker's own check of its agents at start was the first).
    let logged = stderr_warnings(&forge, "crashy", "file://");
    let crashy = create_error(&app, "crashy").await;
    assert!(
        crashy.starts_with("agent `crashy` (")
            && crashy.ends_with(
                "acp-agent.mjs --crash-at-start) exited with code 1 at start: \
             Error: the test agent crashed at start (--crash-at-start)"
            ),
        "{crashy}"
    );
    assert_eq!(stderr_warnings(&forge, "crashy", "file://"), logged + 1);

    // Past the banner's facts (whose "Features:" line says "abort"), the panic line.
    let aborts = create_error(&app, "aborts").await;
    assert!(
        aborts.ends_with(
            "acp-agent.mjs --abort-at-start) was killed by signal SIGABRT at start: \
             panic(main thread): the test agent aborted at start (--abort-at-start)"
        ),
        "{aborts}"
    );

    // How to authenticate it: tests/it/auth.rs.
    let locked = create_error(&app, "locked").await;
    assert!(
        locked.starts_with(
            "agent `locked` needs authentication: it offers test-login (Test login); set \
             `auth = { method = \"test-login\", env = \"<VARIABLE>\" }` under [agents.locked]"
        ),
        "{locked}"
    );

    // The working agent beside them works.
    let s = app
        .create_session(&CreateSession {
            agent: Some("working".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let t = app
        .turn(&crate::sessions::turn(&s.session_id, "still here"))
        .await
        .unwrap();
    assert_eq!(t.output, "echo: still here");
}

fn by_name<'a>(agents: &'a [AgentHealth], name: &str) -> &'a AgentHealth {
    agents
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("no agent {name} in {agents:?}"))
}

#[tokio::test]
async fn health_lists_each_agent_ready_or_why_not() {
    let forge = failing_forge().await;
    let health = forge.admin.health().await.unwrap();
    let names: Vec<&str> = health.agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["aborts", "crashy", "default", "locked", "missing", "working"]
    );
    for name in ["default", "working"] {
        let agent = by_name(&health.agents, name);
        assert!(agent.ready && agent.reason.is_none(), "{agent:?}");
        assert_eq!(
            agent.version.as_deref(),
            Some("clawdforge-test-agent 1.0.0")
        );
        assert_eq!(agent.protocol_version, Some(1));
        assert_eq!(agent.auth_methods.as_deref(), Some(&[][..]));
    }
    assert_eq!(
        by_name(&health.agents, "default").backend,
        BackendKind::Acpx
    );
    assert_eq!(by_name(&health.agents, "working").backend, BackendKind::Acp);
    let locked = by_name(&health.agents, "locked");
    assert!(!locked.ready);
    assert_eq!(locked.auth_methods, Some(vec!["test-login".to_string()]));
    assert!(
        locked
            .reason
            .as_deref()
            .unwrap()
            .contains("needs authentication"),
        "{locked:?}"
    );
    let missing = by_name(&health.agents, "missing");
    assert!(!missing.ready && missing.version.is_none() && missing.protocol_version.is_none());
    assert!(
        missing
            .reason
            .as_deref()
            .unwrap()
            .contains("not found on PATH"),
        "{missing:?}"
    );
    let aborts = by_name(&health.agents, "aborts");
    assert!(aborts
        .reason
        .as_deref()
        .unwrap()
        .contains("SIGABRT at start"));
    // An unready agent is the agent's trouble, not the worker's.
    assert!(health.ok);

    // The sidecar's /healthz carries them too.
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let body: serde_json::Value = http_client()
        .get(sidecar.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agents: Vec<AgentHealth> = serde_json::from_value(body["agents"].clone()).unwrap();
    assert_eq!(agents, health.agents);
}

/// Runs `clawdforge agents check [args]` in `dir`, with the test agent as the default agent and
/// `toml` as the config file.
fn agents_check(dir: &Path, toml: &str, args: &[&str]) -> Output {
    let config = dir.join("clawdforge.toml");
    std::fs::write(&config, toml).unwrap();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_clawdforge"))
        .args(["agents", "check"])
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.join("home"))
        .env("CLAWDFORGE_CONFIG", &config)
        .env("ACPX_SESSIONS_CWD", dir.join("data/sessions"))
        .env("ACPX_BIN", tool("acpx"))
        .env("ACPX_AGENT", agent_command(""))
        .env("CLAWDFORGE_AGENT_READ_DIRS", agent_read_dirs())
        .stdin(Stdio::null())
        .output()
        .expect("running clawdforge agents check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn agents_check_prints_each_agent_and_fails_when_one_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let ready = agents_check(dir.path(), "", &[]);
    let out = text(&ready.stdout);
    assert!(ready.status.success(), "{out}{}", text(&ready.stderr));
    let node = tool("node").display().to_string();
    let expected = format!(
        "default (acpx): ready\n  command   {}\n  found     {node}\n  \
         version   clawdforge-test-agent 1.0.0\n  protocol  1\n  auth      none\n",
        agent_command("")
    );
    assert_eq!(out, expected);
    // Nothing of the check is left running or lying about.
    let check_dir = dir.path().join("data/sessions/apps/@check");
    assert_eq!(std::fs::read_dir(check_dir).unwrap().count(), 0);

    let toml = agents_toml();
    let broken = agents_check(dir.path(), &toml, &[]);
    let (out, err) = (text(&broken.stdout), text(&broken.stderr));
    assert_eq!(broken.status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains("clawdforge: 4 of 6 agents not ready: aborts, crashy, locked, missing"),
        "{err}"
    );
    assert!(
        out.contains("missing (acp): NOT READY\n  command   nosuch-agent-for-tests --fast\n  found     no\n  reason    agent `missing` could not be started: `nosuch-agent-for-tests` not found on PATH"),
        "{out}"
    );
    assert!(out.contains("working (acp): ready\n"), "{out}");
    assert!(
        out.contains(
            "  auth      test-login (Test login)\n  reason    agent `locked` needs authentication"
        ),
        "{out}"
    );
    // The whole stderr of the crash is in the command's log, once.
    assert_eq!(err.matches("at ModuleJob.run").count(), 1, "{err}");

    let json = agents_check(dir.path(), &toml, &["--json"]);
    assert_eq!(json.status.code(), Some(1));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).unwrap();
    let crashy = all.iter().find(|a| a["name"] == "crashy").unwrap();
    assert_eq!(crashy["ready"], false);
    assert_eq!(crashy["found"], node.as_str());
    assert!(crashy["reason"].as_str().unwrap().ends_with(
        "exited with code 1 at start: Error: the test agent crashed at start (--crash-at-start)"
    ));
    let default = all.iter().find(|a| a["name"] == "default").unwrap();
    assert_eq!(default["backend"], "acpx");
    assert_eq!(default["command"], agent_command(""));
}
