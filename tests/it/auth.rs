//! Agents that ask for credentials (ACP error -32000 to `session/new` or `session/load`), on the
//! native backend: the worker authenticates them with the method their `auth` configures, once
//! per agent process, and asks again; without one, or when it cannot, the app's `agent_error`
//! names the agent, what it offers and what to set. The test agent shows the mechanics; the real
//! Codex adapter and Gemini CLI (installed by scripts/setup-tools.sh) show both cases with dummy
//! credentials, under the default confinement, with nothing reachable but a loopback port that
//! nothing listens on: no model is called, and no request leaves the machine.

use std::path::Path;

use clawdforge::client::ForgeClient;
use clawdforge::wire::{CreateSession, Session};

use crate::diagnosis::create_error;
use crate::harness::{agent_command, agent_pid, env_of, free_port, repo, Forge, Options};
use crate::sessions::turn;

/// `auth` of the test agent: its method, the variable it wants.
const TEST_LOGIN: &str = r#"{ method = "test-login", env = "TEST_AGENT_KEY" }"#;

/// An `[agents.NAME]` table on the native backend, with `auth` if given.
fn native(name: &str, command: &str, auth: Option<&str>) -> String {
    let auth = auth.map(|a| format!("auth = {a}\n")).unwrap_or_default();
    format!("[agents.{name}]\ncommand = {command:?}\nbackend = \"acp\"\n{auth}")
}

fn locked() -> String {
    agent_command(" --auth-required")
}

async fn create(app: &ForgeClient, agent: &str) -> Session {
    let created = app
        .create_session(&CreateSession {
            agent: Some(agent.into()),
            ..Default::default()
        })
        .await;
    created.unwrap_or_else(|e| panic!("{agent}: {e:?}"))
}

/// The pids of the test agent's processes of `app` that were authenticated, in order.
fn authenticated(forge: &Forge, app: &str) -> Vec<u32> {
    let log = forge.app_home(app).join("test-agent-auth.log");
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|line| line.strip_suffix(" test-login").unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn an_agent_process_is_authenticated_once_for_all_its_sessions() {
    let forge = Forge::start_with(Options {
        config_toml: Some(native("locked", &locked(), Some(TEST_LOGIN))),
        env: env_of(&[
            ("TEST_AGENT_KEY", "dummy-key"),
            ("CLAWDFORGE_AGENT_ENV", "TEST_AGENT_KEY"),
        ]),
        ..Default::default()
    })
    .await;
    // The worker's check of its agents authenticates as a session does: ready.
    forge.wait_for_log(&["agent ready", "agent=locked"]).await;
    let health = forge.admin.health().await.unwrap();
    let checked = health.agents.iter().find(|a| a.name == "locked").unwrap();
    assert!(checked.ready, "{checked:?}");

    let app = forge.app("one").await;
    let (a, b) = (create(&app, "locked").await, create(&app, "locked").await);
    let first = app.turn(&turn(&a.session_id, "hi #count")).await.unwrap();
    let pid = agent_pid(&first.output);
    let second = app.turn(&turn(&b.session_id, "hi #count")).await.unwrap();
    assert_eq!(agent_pid(&second.output), pid, "one process for both");
    assert_eq!(authenticated(&forge, "one"), [pid]);

    // Another app: a process of its own, authenticated once too.
    let other = forge.app("two").await;
    let c = create(&other, "locked").await;
    let theirs = other.turn(&turn(&c.session_id, "hi #count")).await;
    let theirs = agent_pid(&theirs.unwrap().output);
    assert_ne!(theirs, pid);
    assert_eq!(authenticated(&forge, "two"), [theirs]);

    // The process crashes; the next one loads both sessions (session/load asks for
    // credentials as session/new did) after one authentication of its own.
    assert!(app.turn(&turn(&a.session_id, "#crash")).await.is_err());
    let mut pids = Vec::new();
    for s in [&a, &b] {
        let t = app.turn(&turn(&s.session_id, "again #origin #count")).await;
        let t = t.unwrap();
        assert!(t.output.contains("[origin=load]"), "{}", t.output);
        pids.push(agent_pid(&t.output));
    }
    assert_eq!(pids[0], pids[1]);
    assert_eq!(authenticated(&forge, "one"), [pid, pids[0]]);
}

#[tokio::test]
async fn what_keeps_an_agent_from_being_authenticated_is_named() {
    // TEST_AGENT_KEY is given to agents but not set in the worker's environment; OTHER_KEY is.
    let toml = [
        native("bare", &locked(), None),
        native("unset", &locked(), Some(TEST_LOGIN)),
        native(
            "elsewhere",
            &locked(),
            Some(r#"{ method = "other-login", env = "OTHER_KEY" }"#),
        ),
        native(
            "refused",
            &locked(),
            Some(r#"{ method = "test-login", env = "OTHER_KEY" }"#),
        ),
    ]
    .concat();
    let forge = Forge::start_with(Options {
        config_toml: Some(toml),
        env: env_of(&[
            ("OTHER_KEY", "dummy-key"),
            ("CLAWDFORGE_AGENT_ENV", "TEST_AGENT_KEY,OTHER_KEY"),
        ]),
        ..Default::default()
    })
    .await;
    let app = forge.app("diagnosis").await;
    assert_eq!(
        create_error(&app, "bare").await,
        "agent `bare` needs authentication: it offers test-login (Test login); set \
         `auth = { method = \"test-login\", env = \"<VARIABLE>\" }` under [agents.bare], \
         <VARIABLE> being the variable it reads its key from, and name that variable in \
         agent_env (CLAWDFORGE_AGENT_ENV)"
    );
    let unset = "agent `unset` needs authentication with `test-login`, but TEST_AGENT_KEY, \
                 which its auth names, is not set in the worker's environment: set it there";
    assert_eq!(create_error(&app, "unset").await, unset);
    // Said again by the same process, which is not asked twice.
    assert_eq!(create_error(&app, "unset").await, unset);
    assert_eq!(
        create_error(&app, "elsewhere").await,
        "agent `elsewhere` needs authentication, but not with `other-login`, the method of its \
         auth: it offers test-login (Test login); change `auth` under [agents.elsewhere]"
    );
    assert_eq!(
        create_error(&app, "refused").await,
        "agent `refused` refused authentication with `test-login`: Internal error: \
         TEST_AGENT_KEY is not set"
    );
    assert!(authenticated(&forge, "diagnosis").is_empty());
}

/// A real agent's deployment: `.tools/agents/bin` first on PATH, agents given `agent_env` and
/// allowed to connect to `port` alone, on which nothing listens. `prepare` gets the deployment's
/// directory before the worker starts.
async fn real_forge(toml: String, env: &[(&str, &str)], port: u16, prepare: &[&str]) -> Forge {
    let agents_bin = repo().join(".tools/agents/bin");
    assert!(
        agents_bin.join("codex-acp").exists() && agents_bin.join("gemini").exists(),
        "codex-acp or gemini is missing from {}: run scripts/setup-tools.sh",
        agents_bin.display()
    );
    let path = format!(
        "{}:{}",
        agents_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut env = env_of(env);
    env.push(("PATH".into(), path));
    env.push(("CLAWDFORGE_AGENT_CONNECT_PORTS".into(), port.to_string()));
    let mut forge = Forge::start_with(Options {
        workers: 0,
        config_toml: Some(toml),
        env,
        ..Default::default()
    })
    .await;
    for app in prepare {
        codex_base_url(&forge.app_home(app), port);
    }
    forge.spawn_worker(&[]);
    forge.wait_for_workers(1).await;
    forge
}

/// Codex reads its model's base URL from `$CODEX_HOME/config.toml` (`~/.codex`), not from the
/// environment: loopback, for the app whose home is `home`.
fn codex_base_url(home: &Path, port: u16) {
    let dir = home.join(".codex");
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!("openai_base_url = \"http://127.0.0.1:{port}/v1\"\n");
    std::fs::write(dir.join("config.toml"), config).unwrap();
}

/// A gateway on loopback, its token in GW_TOKEN.
fn gateway(port: u16) -> String {
    format!(
        r#"{{ method = "gateway", base_url = "http://127.0.0.1:{port}/v1", token_env = "GW_TOKEN" }}"#
    )
}

#[tokio::test]
async fn codex_asks_for_authentication_and_gets_it_once_configured() {
    let port = free_port("127.0.0.1");
    let toml = [
        native("codex", "codex", None),
        native("codex-gw", "codex", Some(&gateway(port))),
    ]
    .concat();
    let apps = ["bare", "gw", "@check"];
    let forge = real_forge(toml, &[("GW_TOKEN", "gw-dummy")], port, &apps).await;
    // No key, no auth: what to set. (No browser login is offered: agents get NO_BROWSER=1.)
    let bare = forge.app("bare").await;
    assert_eq!(
        create_error(&bare, "codex").await,
        "agent `codex` needs authentication: it offers api-key (API Key); set `auth = { method = \
         \"api-key\", env = \"OPENAI_API_KEY\" }` under [agents.codex] and name OPENAI_API_KEY in \
         agent_env (CLAWDFORGE_AGENT_ENV)"
    );
    // A gateway: the worker says it takes one, codex offers it, and takes the URL and token.
    let gw = forge.app("gw").await;
    create(&gw, "codex-gw").await;
    drop(forge);

    let toml = [
        native(
            "codex",
            "codex",
            Some(r#"{ method = "api-key", env = "OPENAI_API_KEY" }"#),
        ),
        native("codex-bare", "codex", None),
    ]
    .concat();
    let env = [
        ("OPENAI_API_KEY", "sk-dummy"),
        ("CLAWDFORGE_AGENT_ENV", "OPENAI_API_KEY"),
    ];
    let apps = ["keyed", "bare", "@check"];
    let forge = real_forge(toml, &env, port, &apps).await;
    let keyed = forge.app("keyed").await;
    create(&keyed, "codex").await;
    // Codex keeps the key it was given in its home.
    assert!(forge.app_home("keyed").join(".codex/auth.json").is_file());
    // The variable alone is not enough for codex: it wants `authenticate`.
    let bare = forge.app("bare").await;
    let said = create_error(&bare, "codex-bare").await;
    assert!(
        said.starts_with("agent `codex-bare` needs authentication: it offers api-key (API Key)"),
        "{said}"
    );
}

#[tokio::test]
async fn gemini_asks_for_authentication_and_gets_it_once_configured() {
    let port = free_port("127.0.0.1");
    let toml = [
        native("gemini", "gemini", None),
        native("gemini-gw", "gemini", Some(&gateway(port))),
    ]
    .concat();
    let forge = real_forge(toml, &[("GW_TOKEN", "gw-dummy")], port, &[]).await;
    // No key, no auth: what to set, past the browser login it offers first.
    let bare = forge.app("bare").await;
    assert_eq!(
        create_error(&bare, "gemini").await,
        "agent `gemini` needs authentication: it offers oauth-personal (Log in with Google), \
         gemini-api-key (Gemini API key), vertex-ai (Vertex AI), gateway (AI API Gateway); set \
         `auth = { method = \"gemini-api-key\", env = \"GEMINI_API_KEY\" }` under [agents.gemini] \
         and name GEMINI_API_KEY in agent_env (CLAWDFORGE_AGENT_ENV)"
    );
    let gw = forge.app("gw").await;
    create(&gw, "gemini-gw").await;
    drop(forge);

    let base_url = format!("http://127.0.0.1:{port}");
    let env = [
        ("GEMINI_API_KEY", "dummy-gemini-key"),
        ("GOOGLE_GEMINI_BASE_URL", base_url.as_str()),
        (
            "CLAWDFORGE_AGENT_ENV",
            "GEMINI_API_KEY,GOOGLE_GEMINI_BASE_URL",
        ),
    ];
    let toml = native(
        "gemini",
        "gemini",
        Some(r#"{ method = "gemini-api-key", env = "GEMINI_API_KEY" }"#),
    );
    let forge = real_forge(toml, &env, port, &[]).await;
    let keyed = forge.app("keyed").await;
    create(&keyed, "gemini").await;
}
