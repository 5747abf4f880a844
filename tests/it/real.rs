//! The agents people run: Claude Code's ACP adapter (through acpx, and natively) and the
//! `claude` CLI (one-shot runs), at the versions `scripts/install-runtime.sh` pins, installed by
//! `scripts/setup-tools.sh` into `.tools/agents`, under the default confinement, talking to
//! the project's model stand-in on loopback (`tests/fixtures/model-standin.mjs`): no real model
//! is called. The prompts script the stand-in: `#bash=<command>` has the model call the agent's
//! Bash tool, `#hold=<path>` holds the model's answer open until the file exists.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clawdforge::client::ForgeClient;
use clawdforge::wire::{
    CreateSession, DecidedBy, Event, EventBody, EventsRequest, PermissionDecision, RunRequest,
    Turn, TurnRequest,
};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::both_backends;
use crate::harness::{processes_with_home, repo, tool, Forge, Options, Via};
use crate::http::{sse_send, sse_turn, SseReader};
use crate::native::wait_for_file;

/// How long a real turn may take before the test fails (a bound, not a measurement).
const TURN_TIMEOUT: u64 = 120;
const STALL: Duration = Duration::from_secs(TURN_TIMEOUT);

/// A real agent's command, installed by scripts/setup-tools.sh into `.tools/agents/bin`.
pub fn real_tool(name: &str) -> PathBuf {
    let path = repo().join(".tools/agents/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup-tools.sh (the README's test command, scripts/test.sh, does)",
        path.display()
    );
    path
}

/// The model stand-in, on a loopback port of its own; it ends with the test (its stdin closes).
pub struct Standin {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Standin {
    pub fn start() -> Standin {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let log = dir.path().join("requests.jsonl");
        let child = Command::new(tool("node"))
            .arg(repo().join("tests/fixtures/model-standin.mjs"))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the model stand-in");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
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
            log,
            _dir: dir,
        }
    }

    /// Every request the stand-in got, as it logged them.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("method").is_some())
            .collect()
    }

    /// Whether some request's body carries `needle` (a prompt, a tool result).
    pub fn received(&self, needle: &str) -> bool {
        self.requests()
            .iter()
            .any(|r| r["body"].to_string().contains(needle))
    }

    /// Whether the stand-in logged a client that went away mid-stream.
    pub fn saw_client_close(&self) -> bool {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .contains("\"client-closed\"")
    }

    /// The environment a deployment gives its workers to reach the stand-in: what agents are
    /// given (`agent_env`) and the one port they may connect to.
    pub fn env(&self) -> Vec<(String, String)> {
        let agents_bin = repo().join(".tools/agents/bin");
        let path = format!(
            "{}:{}",
            agents_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let pairs = [
            ("PATH", path),
            (
                "ANTHROPIC_BASE_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("ANTHROPIC_API_KEY", "sk-ant-standin".into()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
            ("DISABLE_AUTOUPDATER", "1".into()),
            (
                "CLAWDFORGE_AGENT_ENV",
                "ANTHROPIC_BASE_URL,ANTHROPIC_API_KEY,CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC,\
                 DISABLE_AUTOUPDATER"
                    .into(),
            ),
            ("CLAWDFORGE_AGENT_CONNECT_PORTS", self.port.to_string()),
            ("ACPX_AGENT", "claude".into()),
            (
                "CLAUDE_BIN",
                real_tool("claude").to_string_lossy().into_owned(),
            ),
            (
                "CLAWDFORGE_CLAUDE_PERMISSION_MODE",
                "bypassPermissions".into(),
            ),
        ];
        pairs.into_iter().map(|(k, v)| (k.into(), v)).collect()
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent `claude` on `via`, with `permissions`.
fn agents_toml(via: Via, permissions: &str) -> String {
    let backend = match via {
        Via::Acpx => "acpx",
        Via::Acp => "acp",
    };
    format!(
        "[agents.claude]\ncommand = \"claude\"\nbackend = \"{backend}\"\npermissions = \"{permissions}\"\n"
    )
}

/// A deployment whose default agent is the real Claude Code adapter on `via`, the stand-in as
/// its model, confinement as shipped (`auto`) unless `extra` says otherwise.
async fn real_forge(standin: &Standin, via: Via, extra: &[(&str, &str)]) -> Forge {
    real_forge_with(standin, via, "allow_all", extra).await
}

async fn real_forge_with(
    standin: &Standin,
    via: Via,
    permissions: &str,
    extra: &[(&str, &str)],
) -> Forge {
    let mut env = standin.env();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Forge::start_with(Options {
        env,
        config_toml: Some(agents_toml(via, permissions)),
        ..Default::default()
    })
    .await
}

fn turn_of(session_id: &str, prompt: &str) -> TurnRequest {
    TurnRequest {
        session_id: session_id.into(),
        prompt: prompt.into(),
        files: vec![],
        timeout_secs: Some(TURN_TIMEOUT),
        wait: None,
    }
}

async fn new_session(app: &ForgeClient) -> String {
    app.create_session(&CreateSession::default())
        .await
        .unwrap()
        .session_id
}

/// A streamed turn, its events into the returned receiver as they come.
fn streamed(
    app: &ForgeClient,
    req: TurnRequest,
) -> (
    mpsc::UnboundedReceiver<Event>,
    tokio::task::JoinHandle<Turn>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = app.clone();
    let running = tokio::spawn(async move {
        app.turn_streaming(&req, STALL, |e| {
            let _ = tx.send(e.clone());
        })
        .await
        .unwrap()
    });
    (rx, running)
}

/// Receives events until one matches, returning it.
async fn until(
    events: &mut mpsc::UnboundedReceiver<Event>,
    what: &str,
    matches: impl Fn(&EventBody) -> bool,
) -> Event {
    while let Some(e) = events.recv().await {
        if matches(&e.body) {
            return e;
        }
    }
    panic!("the turn ended without {what}");
}

async fn the_second_turn_carries_the_first(via: Via) {
    let standin = Standin::start();
    let forge = real_forge(&standin, via, &[]).await;
    let health = forge.admin.health().await.unwrap();
    assert!(
        health.confined,
        "the default confinement confines: {health:?}"
    );
    let app = forge.app("notes").await;
    let id = new_session(&app).await;
    let first = app.turn(&turn_of(&id, "first words")).await;
    let first = first.unwrap_or_else(|e| panic!("{e}\n{}", forge.logs()));
    assert_eq!(first.output.trim(), "model: first words [history=1]");
    assert_eq!(first.stop_reason, "end_turn");
    let second = app.turn(&turn_of(&id, "second words")).await.unwrap();
    assert_eq!(second.output.trim(), "model: second words [history=2]");
    assert!(standin.received("first words") && standin.received("second words"));
}

async fn a_tool_call_streams_and_its_result_reaches_the_model(via: Via) {
    let standin = Standin::start();
    let forge = real_forge(&standin, via, &[]).await;
    let app = forge.app("tools").await;
    let id = new_session(&app).await;
    let (mut events, running) = streamed(&app, turn_of(&id, "#bash=echo tool-$((6 * 7))"));
    let call = until(&mut events, "a tool call", |b| {
        matches!(b, EventBody::ToolCall { .. })
    })
    .await;
    let EventBody::ToolCall { tool_call_id, .. } = call.body else {
        unreachable!()
    };
    let t = running.await.unwrap();
    assert!(
        t.output.contains("tool said: tool-42"),
        "{}\n{}",
        t.output,
        forge.logs()
    );
    let mut rest = Vec::new();
    while let Some(e) = events.recv().await {
        rest.push(e.body);
    }
    assert!(
        rest.iter().any(|b| matches!(b,
            EventBody::ToolCallUpdate { tool_call_id: i, .. } if *i == tool_call_id)),
        "the tool call's updates: {rest:?}"
    );
    assert!(
        standin.received("tool-42"),
        "the tool's result reached the model"
    );
}

async fn a_cancel_mid_stream_ends_the_turn_and_the_next_one_is_clean(via: Via) {
    let standin = Standin::start();
    let forge = real_forge(&standin, via, &[]).await;
    let app = forge.app("cancels").await;
    let id = new_session(&app).await;
    let never = forge.dir.path().join("never-released");
    let prompt = format!("#hold={}", never.display());
    let (mut events, running) = streamed(&app, turn_of(&id, &prompt));
    // The model has begun answering: the turn is mid-stream.
    until(
        &mut events,
        "the first words",
        |b| matches!(b, EventBody::Message { text } if text.contains("holding")),
    )
    .await;
    assert!(app.cancel_turn(&id).await.unwrap().cancelled);
    let t = running.await.unwrap();
    assert_eq!(t.stop_reason, "cancelled", "{t:?}");
    let after = app.turn(&turn_of(&id, "after the cancel")).await.unwrap();
    assert_eq!(after.stop_reason, "end_turn");
    assert!(
        after.output.contains("model: after the cancel"),
        "{}",
        after.output
    );
    assert!(
        standin.saw_client_close(),
        "the agent stopped asking the model"
    );
}

async fn a_probe_from_the_agents_own_bash_tool_is_refused(via: Via) {
    let standin = Standin::start();
    for (mode, readable) in [("auto", false), ("off", true)] {
        let forge = real_forge(&standin, via, &[("CLAWDFORGE_AGENT_CONFINEMENT", mode)]).await;
        let app = forge.app("prober").await;
        let id = new_session(&app).await;
        let ledger = forge.ledger_path();
        let prompt = format!("#bash=head -c 15 {} 2>&1; echo", ledger.display());
        let t = app.turn(&turn_of(&id, &prompt)).await.unwrap();
        assert!(t.output.contains("tool said:"), "{mode}: {}", t.output);
        assert_eq!(
            t.output.contains("SQLite format 3"),
            readable,
            "{mode}: {}",
            t.output
        );
        if !readable {
            assert!(t.output.contains("Permission denied"), "{}", t.output);
        }
    }
}

async fn a_turn_streams_over_sse_with_its_tool_call(via: Via) {
    let standin = Standin::start();
    let forge = real_forge(&standin, via, &[]).await;
    let sidecar = forge.spawn_http("sidecar", &[]).await;
    let app = forge.app("web").await;
    let id = new_session(&app).await;
    let request = sse_turn(&sidecar, app.token().unwrap(), &id)
        .json(&serde_json::json!({"prompt": "#bash=echo sse-$((6 * 7))"}));
    let mut stream = SseReader::new(sse_send(request).await);
    let (events, last, turn) = stream.rest().await;
    assert_eq!(last, "turn", "{turn}");
    assert!(
        turn["output"]
            .as_str()
            .unwrap()
            .contains("tool said: sse-42"),
        "{turn}"
    );
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(
        types.contains(&"tool_call") && types.contains(&"message"),
        "{types:?}"
    );
}

/// Right after a turn has answered (acpx still waits out that turn's last second), a turn
/// accepted and cancelled at once must end `cancelled`, and the session's next turn must not
/// wait behind a prompt the agent still runs. Repeated: the race it guards against is timing.
async fn a_cancel_right_after_a_turn_still_reaches_the_agent(via: Via) {
    let standin = Standin::start();
    let forge = real_forge(&standin, via, &[]).await;
    let app = forge.app("quick").await;
    let id = new_session(&app).await;
    let never = forge.dir.path().join("never-released");
    for round in 0..4 {
        let warm = app.turn(&turn_of(&id, &format!("warm {round}"))).await;
        assert!(warm
            .unwrap()
            .output
            .contains(&format!("model: warm {round}")));
        let held = format!("held {round} #hold={}", never.display());
        let accepted = app.turn_nowait(&turn_of(&id, &held)).await.unwrap();
        assert!(
            app.cancel_turn(&id).await.unwrap().cancelled,
            "round {round}"
        );
        let events = EventsRequest {
            session_id: id.clone(),
            turn: Some(accepted.turn),
            after: None,
        };
        let ended = app.follow_turn(&events, STALL, |_| {}).await.unwrap();
        assert_eq!(ended.stop_reason, "cancelled", "round {round}: {ended:?}");
        let mut next = turn_of(&id, &format!("after {round}"));
        // Bounds the wait behind a prompt the agent would still run; not a measurement.
        next.timeout_secs = Some(60);
        let next = app.turn(&next).await;
        let next = next.unwrap_or_else(|e| panic!("round {round}: {e}\n{}", forge.logs()));
        assert!(
            next.output.contains(&format!("model: after {round}")),
            "{}",
            next.output
        );
    }
}

both_backends!(
    a_cancel_right_after_a_turn_still_reaches_the_agent,
    the_second_turn_carries_the_first,
    a_turn_streams_over_sse_with_its_tool_call,
    a_tool_call_streams_and_its_result_reaches_the_model,
    a_cancel_mid_stream_ends_the_turn_and_the_next_one_is_clean,
    a_probe_from_the_agents_own_bash_tool_is_refused,
);

#[tokio::test]
async fn a_one_shot_run_calls_a_tool() {
    let standin = Standin::start();
    let forge = real_forge(&standin, Via::Acpx, &[]).await;
    let app = forge.app("runner").await;
    let mut seen = Vec::new();
    let r = app
        .run_streaming(
            &RunRequest {
                prompt: "#bash=echo run-$((6 * 7))".into(),
                model: None,
                timeout_secs: Some(TURN_TIMEOUT),
                files: vec![],
            },
            STALL,
            |e| seen.push(e.body.clone()),
        )
        .await
        .unwrap();
    assert!(r.ok, "{r:?}\n{}", forge.logs());
    let result = r.result.unwrap_or_default();
    assert!(result.contains("tool said: run-42"), "{result}");
    assert!(
        seen.iter().any(|b| matches!(b, EventBody::ToolCall { .. })),
        "{seen:?}"
    );
    assert!(r.cost_usd.is_some_and(|c| c > 0.0), "{:?}", r.cost_usd);
}

#[tokio::test]
async fn one_adapter_process_serves_every_session_of_an_app() {
    let standin = Standin::start();
    let forge = real_forge(&standin, Via::Acp, &[]).await;
    for name in ["left", "right"] {
        let app = forge.app(name).await;
        for n in 0..3 {
            let id = new_session(&app).await;
            let t = app.turn(&turn_of(&id, &format!("{name} {n}"))).await;
            assert!(t.unwrap().output.contains(&format!("model: {name} {n}")));
        }
    }
    let adapters = adapter_processes(&forge.dir.path().join("data"));
    assert_eq!(adapters.len(), 2, "one per app: {adapters:?}");
}

/// The adapter processes whose HOME is under `root`.
fn adapter_processes(root: &Path) -> Vec<u32> {
    let adapter = |args: &[&[u8]]| {
        args.iter()
            .any(|a| String::from_utf8_lossy(a).contains("claude-agent-acp"))
    };
    processes_with_home(root, adapter).into_iter().collect()
}

#[tokio::test]
async fn a_restarted_worker_loads_the_session_with_its_history() {
    let standin = Standin::start();
    let mut forge = real_forge(&standin, Via::Acp, &[]).await;
    let app = forge.app("keeper").await;
    let id = new_session(&app).await;
    let first = app.turn(&turn_of(&id, "remember the heron")).await.unwrap();
    assert!(first.output.contains("[history=1]"), "{}", first.output);
    forge.kill_worker_and_wait(0).await;
    forge.spawn_worker(&[]);
    forge.wait_for_workers(1).await;
    let second = app.turn(&turn_of(&id, "what was it")).await.unwrap();
    assert!(
        second.output.contains("model: what was it [history=2]"),
        "the loaded session carried the first turn: {}\n{}",
        second.output,
        forge.logs()
    );
}

#[tokio::test]
async fn the_adapters_permission_request_is_answered_by_the_caller() {
    let standin = Standin::start();
    let forge = real_forge_with(&standin, Via::Acp, "ask", &[]).await;
    let app = forge.app("asker").await;
    let id = new_session(&app).await;
    let (mut events, running) = streamed(&app, turn_of(&id, "#bash=touch made-by-agent"));
    let asked = until(&mut events, "a permission request", |b| {
        matches!(b, EventBody::PermissionRequest { .. })
    })
    .await;
    let EventBody::PermissionRequest {
        request_id,
        options,
        ..
    } = asked.body
    else {
        unreachable!()
    };
    let allow = options
        .iter()
        .find(|o| o.kind.starts_with("allow"))
        .unwrap_or_else(|| panic!("no allow option in {options:?}"));
    let answered = app
        .answer_permission(&id, &request_id, &allow.option_id)
        .await
        .unwrap();
    assert!(answered.accepted);
    let t = running.await.unwrap();
    assert!(t.output.contains("tool said:"), "{}", t.output);
    let mut decided = Vec::new();
    while let Some(e) = events.recv().await {
        if let EventBody::Permission { decision, by, .. } = e.body {
            decided.push((decision, by));
        }
    }
    assert_eq!(decided, [(PermissionDecision::Allowed, DecidedBy::Caller)]);
    wait_for_file(&forge.session_dir(&id).join("made-by-agent")).await;
}
